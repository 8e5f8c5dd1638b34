"""Small shared helpers used by the data modules (and open to others): RGB conversion and seeded RNGs.

What it does: ``to_rgb`` flattens any PIL image to RGB with transparent pixels on white (a plain
``convert("RGB")`` turns them black, which changes flag colours and image-search features);
``seeded_rng`` gives a numpy Generator that depends only on its parts (stable across runs and
processes, unlike ``hash()``).

What it does not: no I/O, no dataset logic.
"""

from __future__ import annotations

import hashlib

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
