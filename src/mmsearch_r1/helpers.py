"""Small helpers shared across the stages: RGB conversion, small JPEGs for run files, and seeded RNGs.

What it does: ``to_rgb`` flattens any PIL image to RGB with transparent pixels on white (a plain
``convert("RGB")`` turns them black, which changes flag colours and image-search features);
``jpeg_b64`` encodes an image as a small bounded base64 JPEG (what evaluation records and GRPO samples
keep for the viewer); ``seeded_rng`` gives a numpy Generator that depends only on its parts (stable
across runs and processes, unlike ``hash()``).

What it does not: no I/O, no dataset logic.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as RGB; transparent (RGBA, LA, palette with transparency) pixels become white."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, "white")
        bg.paste(im, mask=im.split()[-1])
        return bg
    return im.convert("RGB")


def seeded_rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded by the SHA-256 of ``"/".join(parts)``: same parts, same stream."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def jpeg_b64(image: Any, max_side: int = 128, quality: int = 70) -> str | None:
    """A PIL image as a base64 JPEG whose longest side is at most ``max_side`` (never upscaled).

    Why: run files keep images for the viewer, so they must stay small and bounded; transparency is
    flattened onto white (flag PNGs). Anything that is not a PIL image gives None.
    """
    if not isinstance(image, Image.Image):
        return None
    im = image.copy()
    im.thumbnail((max_side, max_side))
    im = im if im.mode == "L" else to_rgb(im)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")
