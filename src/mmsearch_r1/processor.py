"""Qwen2.5-VL processors that work with and without torchvision, and image sizing for questions/thumbnails.

What it does:
- On machines with torchvision (GPU installs) `load_processor` returns transformers' own
  ``AutoProcessor``; without it (this project's CPU machines) it builds a `NoVideoQwen2_5_VLProcessor`
  around `TensorQwen2VLImageProcessor`. Two transformers/TRL traps are handled here:
  * without torchvision, ``Qwen2_5_VLProcessor(...)`` refuses a missing video processor (the video
    processor classes are gated behind torchvision; older versions fail on ``VIDEO_PROCESSOR_MAPPING``);
  * the PIL image processor returns numpy arrays, and TRL 1.16's tool loop then crashes in
    ``split_pixel_values_by_grid`` on the first tool round with no image result (Trap 1). The tensor
    subclass returns torch tensors, as the torchvision backend does.
- `ImageSizes`: the pixel bounds of question images (the processor's ``min_pixels``/``max_pixels``) and the
  cap for search thumbnails, applied by `fit_image` before a thumbnail reaches the processor, so that
  thumbnails cost few tokens (Qwen2.5-VL spends one token per 28x28 area).
- The tag protocol (or the native one) is installed on every processor built or loaded here.

What it does not: no tokenizer building (`mmsearch_r1.tiny`), no model loading (the policy module).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmsearch_r1.chat_template import install_protocol

logger = logging.getLogger(__name__)

PATCH = 28
"""Pixels per side of one Qwen2.5-VL image token (14-pixel patches merged 2x2)."""


@dataclass
class ImageSizes:
    """Pixel budgets of the images the policy sees (areas in pixels; one token per 28*28 = 784)."""

    min_pixels: int = PATCH * PATCH * 4
    """Lower bound for every image the processor sees (smaller images are upscaled)."""
    max_pixels: int = PATCH * PATCH * 256
    """Upper bound for question images (Qwen2.5-VL's default is 28*28*1280; lower it to save tokens)."""
    thumbnail_max_pixels: int = PATCH * PATCH * 16
    """Cap for image-search thumbnails, applied by `fit_image` in the environment before processing."""

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.thumbnail_max_pixels <= self.max_pixels:
            raise ValueError(
                f"ImageSizes needs 0 < min_pixels <= thumbnail_max_pixels <= max_pixels, got {self}; "
                "lower min_pixels or raise the other bounds."
            )


def has_torchvision() -> bool:
    """True when torchvision can be imported (then transformers' own processors are used)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision that does not match torch fails at import
        return False
    return True


def fit_image(image: Image.Image, max_pixels: int, min_pixels: int = PATCH * PATCH) -> Image.Image:
    """Resize ``image`` (RGB) to a multiple of 28 per side with area within [min_pixels, max_pixels].

    Keeps the aspect ratio (like Qwen2.5-VL's ``smart_resize``), so the processor will not resize it again
    as long as its own bounds contain the result. Returns a new image; never upscales more than needed.
    """
    image = image.convert("RGB")
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"fit_image got an empty image of size {image.size}.")
    hb, wb = max(PATCH, round(h / PATCH) * PATCH), max(PATCH, round(w / PATCH) * PATCH)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(PATCH, math.floor(h / beta / PATCH) * PATCH)
        wb = max(PATCH, math.floor(w / beta / PATCH) * PATCH)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / PATCH) * PATCH, math.ceil(w * beta / PATCH) * PATCH
    if (wb, hb) == (w, h):
        return image.copy()
    return image.resize((wb, hb), Image.Resampling.BICUBIC)


class TensorQwen2VLImageProcessor(Qwen2VLImageProcessorPil):
    """The PIL (torchvision-free) Qwen2-VL image processor, returning torch tensors like the torchvision one.

    TRL 1.16 concatenates per-prompt ``pixel_values``/``image_grid_thw`` with ``torch.cat`` only when they
    are tensors; numpy arrays become Python lists and crash the tool loop (Trap 1). Values are identical
    to the parent's; only the container type changes.
    """

    def to_dict(self):
        """Serialise under the parent's type name, so ``AutoProcessor`` can load it where torchvision exists."""
        out = super().to_dict()
        out["image_processor_type"] = "Qwen2VLImageProcessor"
        return out

    def _preprocess(self, *args, **kwargs):
        out = super()._preprocess(*args, **kwargs)
        for key in list(out.keys()):
            if not isinstance(out[key], torch.Tensor):
                out[key] = torch.as_tensor(out[key])
        return out


class NoVideoQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` that accepts ``video_processor=None`` (images only; no torchvision needed)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory, **kwargs):
        """Save the tokenizer, image processor and chat template (there is no video processor to save)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)
        if self.chat_template is not None:
            (save_directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        return [str(save_directory)]


def build_processor(tokenizer, sizes: ImageSizes | None = None, *, protocol: str = "tags"):
    """A torchvision-free Qwen2.5-VL processor around ``tokenizer`` with ``sizes`` and ``protocol`` installed."""
    sizes = sizes or ImageSizes()
    image_processor = TensorQwen2VLImageProcessor(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels)
    processor = NoVideoQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None
    )
    return install_protocol(processor, protocol)


def load_processor(path_or_id: str | Path, sizes: ImageSizes | None = None, *, protocol: str = "tags"):
    """Load a Qwen2.5-VL processor from a local path or hub id and install ``protocol``.

    With torchvision: ``AutoProcessor.from_pretrained`` (the real processor). Without: the tokenizer
    through ``AutoTokenizer`` and the image settings from ``preprocessor_config.json`` into
    `TensorQwen2VLImageProcessor`. ``sizes`` overrides the saved pixel bounds when given.
    """
    from transformers import AutoProcessor, AutoTokenizer

    size_kwargs = {} if sizes is None else {"min_pixels": sizes.min_pixels, "max_pixels": sizes.max_pixels}
    if has_torchvision():
        try:
            processor = AutoProcessor.from_pretrained(str(path_or_id), **size_kwargs)
            return install_protocol(processor, protocol)
        except (OSError, ValueError, TypeError) as err:  # e.g. a saved tiny policy has no video processor
            logger.warning(
                "AutoProcessor could not load %s (%s); using the image-only processor.", path_or_id, err
            )
    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    image_processor = TensorQwen2VLImageProcessor.from_pretrained(str(path_or_id), **size_kwargs)
    processor = NoVideoQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None
    )
    return install_protocol(processor, protocol)
