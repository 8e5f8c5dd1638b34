"""Image engine over the released FVQA image-search cache files (``fvqa_{train,test}_image_search_results_cache.pkl``).

What it does:
- `load_fvqa_cache(path)` reads a cache pickle with a restricted unpickler: only plain containers,
  numpy arrays and PIL images are accepted (PIL images pickled by an older Pillow are rebuilt from
  their saved mode/size/bytes by a shim, so any Pillow version reads them); anything else is refused,
  so the file cannot run code. Entries are keyed by ``data_id`` and hold
  ``tool_returned_web_title_list`` and ``tool_returned_images_urls`` (thumbnail URLs).
- `FvqaCacheEngine.search_image(image, k)`: finds the question's ``data_id`` (from
  ``image.info["data_id"]``, set by the data loader, or from a pixel hash registered with
  `register`/`register_rows`), returns up to k (thumbnail, title) hits. Thumbnails are fetched once
  through the safe HTTP client and stored in ``thumb_dir`` (a failed fetch is remembered too, so a dead
  link costs one request ever); hits keep their title when the thumbnail is gone. A thumbnail that
  declares more than ``max_thumbnail_pixels`` is refused before decoding (`content.decode_thumbnail`),
  and decoding runs in a worker thread; one call takes at most ``call_timeout_s``.
- A ``data_id`` missing from the cache (the release lacks train 72, 279, 332, 489, 738, 4345, 4633 and
  test 1470, 1753) is a `SearchError` and a counter, not a crash.

What it does not: no live search (see `web.py`), no download of the pickles (hub access is the user's).
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .cache import image_bytes
from .content import MAX_THUMBNAIL_PIXELS, decode_thumbnail, offload
from .net import NetConfig, SafeHttp, deadline, run_sync
from .types import ImageHit, SearchError

TITLES = "tool_returned_web_title_list"
URLS = "tool_returned_images_urls"


class _PickledImage:
    """Receives the state of a pickled PIL image of any Pillow version; `to_pil` rebuilds it."""

    def __setstate__(self, state):
        self.state = state

    def to_pil(self) -> Image.Image | None:
        st = self.state
        try:
            if isinstance(st, (list, tuple)) and len(st) >= 4:
                info, mode, size = st[0], st[1], st[2]
                data, palette = st[-1], st[3] if len(st) >= 5 else None
                im = Image.frombytes(mode, tuple(size), data)
                if palette and mode in ("P", "PA"):
                    im.putpalette(palette)
                im.info.update(info or {})
                return im
        except Exception:
            return None
        return None


_SAFE = {
    ("builtins", n)
    for n in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "bool",
    )
}
_SAFE |= {("collections", "OrderedDict"), ("collections", "defaultdict")}
_SAFE |= {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_SAFE |= {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar")}
_SAFE |= {("numpy._core.multiarray", "scalar")}
_SAFE |= {("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "object")}
_SAFE |= {
    ("copy_reg", "_reconstructor"),
    ("__builtin__", "object"),
}  # protocol 0/1 pickles from Python 2 names


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("PIL.") and (name == "Image" or name.endswith("ImageFile")):
            return _PickledImage
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to unpickle {module}.{name}: FVQA cache files should hold only lists, dicts, "
            "strings and images"
        )


def _fix(obj: Any) -> Any:
    if isinstance(obj, _PickledImage):
        return obj.to_pil()
    if isinstance(obj, dict):
        return {k: _fix(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_fix(v) for v in obj]
    return obj


def load_fvqa_cache(path: str | Path) -> dict[str, dict]:
    """Read one released cache pickle into ``{data_id: entry}`` (keys as strings)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"FVQA image-search cache not found: {p}. Download fvqa_*_image_search_results_cache.pkl "
            "from the lmms-lab/FVQA dataset repository and point FvqaCacheConfig.cache_files at it."
        )
    with p.open("rb") as f:
        raw = _Unpickler(f).load()
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a dict keyed by data_id, got {type(raw).__name__}")
    return {str(k): _fix(v) for k, v in raw.items()}


@dataclass
class FvqaCacheConfig:
    """Where the released cache files and the fetched thumbnails live."""

    cache_files: list[str] = field(default_factory=list)
    """Paths of fvqa_train/test_image_search_results_cache.pkl."""
    thumb_dir: str = "data/fvqa_thumbs"
    """Folder where fetched thumbnails are stored (fetched once)."""
    fetch_thumbnails: bool = True
    """False: never touch the network (hits carry titles only, unless thumbnails are stored already)."""
    net: NetConfig = field(default_factory=lambda: NetConfig(timeout_s=10.0, retries=1, max_bytes=2_000_000))
    """HTTP policy for thumbnail fetches (untrusted URLs: private addresses refused)."""
    max_thumbnail_pixels: int = MAX_THUMBNAIL_PIXELS
    """Thumbnails declaring more pixels are refused before decoding (and remembered as missing)."""
    call_timeout_s: float = 120.0
    """Wall-clock budget of one search call (all its thumbnail fetches); past it, a SearchError."""


def _decode_and_store(raw: bytes, path: Path, max_pixels: int) -> Image.Image:
    """Decode a fetched thumbnail within the pixel cap and store it as PNG (runs in a worker thread)."""
    im = decode_thumbnail(raw, max_pixels)
    im.save(path)
    return im


class FvqaCacheEngine:
    """`ImageSearchEngine` answering from the released FVQA cache, keyed by data_id."""

    name = "fvqa-cache"

    def __init__(self, config: FvqaCacheConfig | None = None, entries: dict[str, dict] | None = None):
        self.config = config or FvqaCacheConfig()
        self.entries: dict[str, dict] = dict(entries or {})
        for f in self.config.cache_files:
            self.entries.update(load_fvqa_cache(f))
        self._by_hash: dict[str, str] = {}
        self.http = SafeHttp(self.config.net)
        self.counters: Counter[str] = Counter()
        Path(self.config.thumb_dir).mkdir(parents=True, exist_ok=True)

    # -- data_id lookup -------------------------------------------------------------------------------
    @staticmethod
    def _hash(image: Image.Image) -> str:
        return hashlib.sha256(image_bytes(image)).hexdigest()

    def register(self, data_id: str, image: Image.Image) -> None:
        """Remember which data_id an image belongs to (for callers that cannot set image.info)."""
        self._by_hash[self._hash(image)] = str(data_id)

    def register_rows(self, rows) -> None:
        """Register every ``{data_id, image}`` row of a dataset."""
        for r in rows:
            self.register(r["data_id"], r["image"])

    def data_id_of(self, image: Image.Image) -> str | None:
        did = image.info.get("data_id") if hasattr(image, "info") else None
        return str(did) if did is not None else self._by_hash.get(self._hash(image))

    def _entry(self, data_id: str) -> dict | None:
        e = self.entries.get(data_id)
        if e is None and "_" in data_id:  # some copies key by the bare index
            e = self.entries.get(data_id.rsplit("_", 1)[1])
        return e

    # -- thumbnails -----------------------------------------------------------------------------------
    async def _thumb(self, url: str) -> Image.Image | None:
        stem = hashlib.sha256(url.encode()).hexdigest()[:32]
        path, dead = (
            Path(self.config.thumb_dir) / f"{stem}.png",
            Path(self.config.thumb_dir) / f"{stem}.missing",
        )
        if path.exists():
            im = Image.open(path)
            im.load()
            return im
        if dead.exists() or not self.config.fetch_thumbnails:
            return None
        try:
            _, _, raw = await self.http.request("GET", url)
            t = self.config.net.timeout_s
            im = await offload(_decode_and_store, raw, path, self.config.max_thumbnail_pixels, seconds=t,
                               message=f"decoding a thumbnail took longer than NetConfig.timeout_s={t:g}s")  # fmt: skip
            self.counters["thumbnails_fetched"] += 1
            return im
        except Exception:
            dead.write_text("unavailable\n")
            self.counters["thumbnails_missing"] += 1
            return None

    # -- search ---------------------------------------------------------------------------------------
    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        b = self.config.call_timeout_s
        return await deadline(self._search_image(image, k), b, (
            f"fvqa-cache search did not finish within FvqaCacheConfig.call_timeout_s={b:g}s: thumbnail "
            "hosts are slow or hung; raise the budget or set fetch_thumbnails=False"))  # fmt: skip

    async def _search_image(self, image: Image.Image, k: int) -> list[ImageHit]:
        did = self.data_id_of(image)
        if did is None:
            self.counters["unknown_image"] += 1
            raise SearchError(
                "fvqa-cache cannot tell which question this image belongs to: set image.info['data_id'] "
                "or call FvqaCacheEngine.register(data_id, image)",
                engine=self.name,
            )
        entry = self._entry(did)
        if not entry:
            self.counters["missing_entries"] += 1
            raise SearchError(f"no cached image-search results for data_id {did!r}", engine=self.name)
        titles = list(entry.get(TITLES) or [])
        urls = list(entry.get(URLS) or [])
        urls += [""] * (len(titles) - len(urls))
        hits = []
        for title, u in zip(titles, urls, strict=False):
            if not title:
                continue
            if isinstance(u, Image.Image):  # older cache versions stored the thumbnails themselves
                hits.append(ImageHit(title=str(title), url="", thumbnail=u.convert("RGB")))
            else:
                hits.append(ImageHit(title=str(title), url=str(u or ""), thumbnail=None))
            if len(hits) >= k:
                break
        todo = [h for h in hits if h.thumbnail is None and h.url]
        for h, th in zip(todo, await asyncio.gather(*(self._thumb(h.url) for h in todo)), strict=True):
            h.thumbnail = th
        self.counters["hits"] += 1
        return hits

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return run_sync(self.asearch_image(image, k=k), timeout=self.config.call_timeout_s + 5.0)
