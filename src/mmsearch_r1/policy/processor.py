"""Qwen2.5-VL processors that work with and without torchvision, and image sizing for questions/thumbnails.

What it does:
- On machines with torchvision (GPU installs) `load_processor` returns transformers' own
  ``AutoProcessor``; without it (this project's CPU machines) it builds a `NoVideoQwen2_5_VLProcessor`
  around `TensorQwen2VLImageProcessor`. Two transformers/TRL traps are handled here:
  * without torchvision, ``Qwen2_5_VLProcessor(...)`` refuses a missing video processor (the video
    processor classes are gated behind torchvision; older versions fail on ``VIDEO_PROCESSOR_MAPPING``);
  * the PIL image processor returns numpy arrays, and TRL 1.16's tool loop then crashes in
    ``split_pixel_values_by_grid`` on the first tool round with no image result. The tensor
    subclass returns torch tensors, as the torchvision backend does.
- `ImageSizes`: the pixel bounds of question images (the processor's ``min_pixels``/``max_pixels``) and the
  cap for search thumbnails, applied by `fit_image` before a thumbnail reaches the processor, so that
  thumbnails cost few tokens (Qwen2.5-VL spends one token per 28x28 area). The processor is the one
  source of truth: `build_processor`/`load_processor` store the thumbnail cap on its image processor
  (saved in ``preprocessor_config.json``), `image_sizes_of(processor)` reads all three bounds back, and
  the search environment takes them (`mmsearch_r1.agent.env.policy_env_factory`).
- `fit_image`: transformers' own ``smart_resize`` plus what it lacks for thumbnails (padding of
  elongated images to an aspect ratio the cap and the processor accept, a hard clamp to the bounds).
- The tag protocol (or the native one) is installed on every processor built or loaded here.

What it does not: no tokenizer building (`mmsearch_r1.policy.tiny`), no model loading (`mmsearch_r1.policy.load`).
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
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from mmsearch_r1.helpers import to_rgb
from mmsearch_r1.protocol.chat_template import install_protocol

logger = logging.getLogger(__name__)

PATCH = 28
"""Pixels per side of one Qwen2.5-VL image token (14-pixel patches merged 2x2)."""
MAX_ASPECT = 200
"""Qwen2.5-VL's processor raises on images more elongated than this (long side / short side)."""


@dataclass
class ImageSizes:
    """Pixel budgets of the images the policy sees (areas in pixels; one token per 28*28 = 784)."""

    min_pixels: int = PATCH * PATCH * 4
    """Lower bound for every image the processor sees (smaller images are upscaled)."""
    max_pixels: int = PATCH * PATCH * 256
    """Upper bound for question images (Qwen2.5-VL's default is 28*28*1280; lower it to save tokens)."""
    thumbnail_max_pixels: int = PATCH * PATCH * 16
    """Cap for image-search thumbnails, applied by `fit_image` in the environment before processing
    (thumbnails are enlarged to ``min_pixels`` at least, as the processor would)."""

    def __post_init__(self):
        if not PATCH * PATCH <= self.thumbnail_max_pixels or not (
            0 < self.min_pixels <= self.thumbnail_max_pixels <= self.max_pixels
        ):
            raise ValueError(
                f"ImageSizes needs 0 < min_pixels <= thumbnail_max_pixels <= max_pixels and "
                f"thumbnail_max_pixels >= 28*28, got {self}; lower min_pixels or raise the other bounds."
            )


THUMBNAIL_ATTR = "thumbnail_max_pixels"
"""Attribute of the image processor holding the thumbnail cap (saved in ``preprocessor_config.json``)."""


def _set_sizes(processor, sizes: ImageSizes | None):
    if sizes is not None:
        setattr(processor.image_processor, THUMBNAIL_ATTR, sizes.thumbnail_max_pixels)
    return processor


def image_sizes_of(processor) -> ImageSizes:
    """The `ImageSizes` a processor applies: its pixel bounds and the thumbnail cap stored with it.

    The search environment uses it (`mmsearch_r1.agent.env.policy_env_factory`)
    so that thumbnails are shrunk to the policy's cap. A processor without a stored cap (a hub
    checkpoint) gets the `ImageSizes` default, clamped into its bounds.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise TypeError(
            f"image_sizes_of needs a processor with an image_processor, got {type(processor).__name__}."
        )
    size = getattr(image_processor, "size", None)

    def bound(key: str, attr: str, fallback: int) -> int:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        return value or getattr(image_processor, attr, None) or fallback

    default = ImageSizes()
    lo = bound("shortest_edge", "min_pixels", default.min_pixels)
    hi = bound("longest_edge", "max_pixels", default.max_pixels)
    thumb = getattr(image_processor, THUMBNAIL_ATTR, None) or default.thumbnail_max_pixels
    thumb = min(max(thumb, lo, PATCH * PATCH), hi)
    return ImageSizes(min_pixels=int(lo), max_pixels=int(hi), thumbnail_max_pixels=int(thumb))


def has_torchvision() -> bool:
    """True when torchvision can be imported (then transformers' own processors are used)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision that does not match torch fails at import
        return False
    return True


def _pad_to_aspect(image: Image.Image, max_aspect: float) -> Image.Image:
    """Pad the short side of ``image`` (black, centred) so that long / short <= ``max_aspect``."""
    w, h = image.size
    if max(w, h) <= max_aspect * min(w, h):
        return image
    if w > h:
        size, offset = (w, math.ceil(w / max_aspect)), (0, (math.ceil(w / max_aspect) - h) // 2)
    else:
        size, offset = (math.ceil(h / max_aspect), h), ((math.ceil(h / max_aspect) - w) // 2, 0)
    canvas = Image.new("RGB", size)
    canvas.paste(image, offset)
    return canvas


def fit_size(width: int, height: int, max_pixels: int, min_pixels: int = PATCH * PATCH) -> tuple[int, int]:
    """The ``(width, height)`` `fit_image` resizes to (before padding): multiples of 28, area in bounds.

    transformers' ``smart_resize``, then, when its result is out of bounds, the token grid within the
    bounds closest in aspect ratio: ``smart_resize`` keeps each side >= 28, so an elongated image can come
    out above ``max_pixels`` (1000x20 -> 784x28 under a 16-token cap), and its rounding down can land
    below ``min_pixels`` when the bounds are close. Raises on an aspect ratio above `MAX_ASPECT` (pad
    first, as `fit_image` does).
    """
    if not 0 < min_pixels <= max_pixels or max_pixels < PATCH * PATCH:
        raise ValueError(
            f"fit_size needs 28*28 <= max_pixels and 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, "
            f"max_pixels={max_pixels}."
        )
    h, w = smart_resize(height, width, factor=PATCH, min_pixels=min_pixels, max_pixels=max_pixels)
    if min_pixels <= h * w <= max_pixels:
        return w, h
    token = PATCH * PATCH
    lo, hi = max(1, math.ceil(min_pixels / token)), max_pixels // token
    aspect = width / height
    best: tuple[float, int, int, int] | None = None  # (aspect error, -area, rows, columns)
    for rows in range(1, hi + 1):
        cmin, cmax = max(1, math.ceil(lo / rows)), hi // rows
        if cmin > cmax:
            continue
        cols = min(max(round(rows * aspect), cmin), cmax)
        key = (abs(math.log(cols / rows / aspect)), -rows * cols, rows, cols)
        best = key if best is None or key < best else best
    if best is None:  # no grid has an area within the bounds: stay under the cap
        return PATCH, PATCH
    return best[3] * PATCH, best[2] * PATCH


def fit_image(image: Image.Image, max_pixels: int, min_pixels: int = PATCH * PATCH) -> Image.Image:
    """Resize ``image`` (converted to RGB, transparency on white) to sides that are multiples of 28 and an area in [min_pixels, max_pixels].

    Keeps the aspect ratio like Qwen2.5-VL's ``smart_resize`` (which it uses), so a processor whose own
    bounds contain [min_pixels, max_pixels] will not resize the result again. Images more elongated than
    the cap allows (a 1 x n token strip at most, and never beyond `MAX_ASPECT`) are first padded on
    their short side, so the content is not squashed and the processor never sees a ratio it rejects.
    Returns a new image.
    """
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"fit_image got an empty image of size {image.size}.")
    image = to_rgb(image)  # transparent pixels on white, not black (plain convert("RGB"))
    # The most elongated grid within the cap is 1 x n tokens (n = max_pixels // 784); allow that ratio.
    image = _pad_to_aspect(image, min(MAX_ASPECT, max(1, max_pixels // (PATCH * PATCH))))
    wb, hb = fit_size(*image.size, max_pixels=max_pixels, min_pixels=min_pixels)
    if (wb, hb) == image.size:
        return image.copy()
    return image.resize((wb, hb), Image.Resampling.BICUBIC)


class TensorQwen2VLImageProcessor(Qwen2VLImageProcessorPil):
    """The PIL (torchvision-free) Qwen2-VL image processor, returning torch tensors like the torchvision one.

    TRL 1.16 concatenates per-prompt ``pixel_values``/``image_grid_thw`` with ``torch.cat`` only when they
    are tensors; numpy arrays become Python lists and crash the tool loop. Values are identical
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
    """A torchvision-free Qwen2.5-VL processor around ``tokenizer`` with ``sizes`` and ``protocol`` installed.

    The thumbnail cap of ``sizes`` is stored on the image processor (`image_sizes_of` reads it back).
    """
    sizes = sizes or ImageSizes()
    image_processor = TensorQwen2VLImageProcessor(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels)
    processor = NoVideoQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None
    )
    return install_protocol(_set_sizes(processor, sizes), protocol)


def load_processor(path_or_id: str | Path, sizes: ImageSizes | None = None, *, protocol: str = "tags"):
    """Load a Qwen2.5-VL processor from a local path or hub id and install ``protocol``.

    With torchvision: ``AutoProcessor.from_pretrained`` (the real processor). Without: the tokenizer
    through ``AutoTokenizer`` and the image settings from ``preprocessor_config.json`` into
    `TensorQwen2VLImageProcessor`. ``sizes`` overrides the saved pixel bounds and thumbnail cap when
    given; otherwise the saved ones apply (read them with `image_sizes_of`).
    """
    from transformers import AutoProcessor, AutoTokenizer

    size_kwargs = {} if sizes is None else {"min_pixels": sizes.min_pixels, "max_pixels": sizes.max_pixels}
    if has_torchvision():
        try:
            processor = AutoProcessor.from_pretrained(str(path_or_id), **size_kwargs)
            return install_protocol(_set_sizes(processor, sizes), protocol)
        except (OSError, ValueError, TypeError) as err:  # e.g. a saved tiny policy has no video processor
            logger.warning(
                "AutoProcessor could not load %s (%s); using the image-only processor.", path_or_id, err
            )
    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    image_processor = TensorQwen2VLImageProcessor.from_pretrained(str(path_or_id), **size_kwargs)
    processor = NoVideoQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None
    )
    return install_protocol(_set_sizes(processor, sizes), protocol)
