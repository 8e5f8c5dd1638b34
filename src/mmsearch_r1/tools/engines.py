"""Choose and assemble the search engines: `EngineConfig` → `make_engines` → `Engines(image, text)`.

What it does:
- `EngineConfig` picks an image engine (``local`` | ``web`` | ``fvqa-cache`` | ``none``) and a text
  engine (``local`` | ``web`` | ``none``), their settings, and the record/replay cache.
- `CachedEngine` puts the SQLite cache (`cache.py`) in front of an engine: the key hashes the engine
  name, its result-affecting settings, k and the query text or image pixels; hits are stored as JSON
  (thumbnails as base64 PNG); each miss adds the engine's estimated dollars to the counters.
- `GuardedEngine` is the outermost layer: any failure (timeouts, HTTP errors, malformed answers,
  missing keys, replay misses, bugs) leaves it only as a `SearchError` with a redacted message, and is
  counted; `try_search_image`/`try_search_text` return a `ToolOutcome` and never raise at all.
- `build_indexes(gallery, corpus, index_dir)` builds both local indexes; `world_indexes()` builds them
  from the offline World (``mmsearch_r1.data.world.build``) into ``data/world/index`` unless present.

What it does not: no result formatting for the policy (``protocol.prompts``), no budgets (``agent.env``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .cache import CacheConfig, SearchCache, cache_key, image_from_b64, image_to_b64
from .fvqa_cache import FvqaCacheConfig, FvqaCacheEngine
from .net import SECRET_VARS, redact, run_sync, secret_values
from .types import Engines, ImageHit, SearchError, TextHit
from .web import WebConfig, WebSearch

DEFAULT_INDEX_DIR = "data/world/index"


@dataclass
class EngineConfig:
    """Which engines a run uses and how their calls are cached."""

    image: Literal["local", "web", "fvqa-cache", "none"] = "local"
    """Image engine."""
    text: Literal["local", "web", "none"] = "local"
    """Text engine."""
    index_dir: str = field(default_factory=lambda: os.environ.get("MMSEARCH_INDEX_DIR", DEFAULT_INDEX_DIR))
    """Local indexes: ``index_dir/image`` and ``index_dir/text`` (env MMSEARCH_INDEX_DIR)."""
    text_mode: Literal["bm25", "dense", "hybrid"] = "bm25"
    """Local text retrieval: BM25, MiniLM dense, or BM25 top-50 re-ranked by MiniLM."""
    web: WebConfig = field(default_factory=WebConfig)
    """Web engine settings (keys come from env vars, never from here)."""
    fvqa: FvqaCacheConfig = field(default_factory=FvqaCacheConfig)
    """FVQA released-cache engine settings."""
    cache: CacheConfig = field(
        default_factory=lambda: CacheConfig(path="data/cache/search.sqlite", mode="off")
    )
    """Record/replay cache. Turn on (read-write) for web runs; replay-only to rerun for free."""
    cache_local: bool = False
    """Also cache the (already fast, free) local engines."""
    check_env: bool = True
    """Web engines: fail at construction when a needed key/URL env var is missing."""


# -- hit (de)serialisation ----------------------------------------------------------------------------
def _dump(hits: list, kind: str) -> list[dict]:
    if kind == "image":
        return [{"title": h.title, "url": h.url, "snippet": h.snippet, "score": h.score,
                 "thumbnail": image_to_b64(h.thumbnail)} for h in hits]  # fmt: skip
    return [{"title": h.title, "url": h.url, "summary": h.summary, "score": h.score} for h in hits]


def _load(rows: list[dict], kind: str) -> list:
    if kind == "image":
        return [ImageHit(title=r["title"], url=r["url"], snippet=r.get("snippet", ""), score=r.get("score"),
                         thumbnail=image_from_b64(r.get("thumbnail"))) for r in rows]  # fmt: skip
    return [TextHit(title=r["title"], url=r["url"], summary=r["summary"], score=r.get("score")) for r in rows]


def _settings(engine: Any, kind: str) -> dict:
    fn = getattr(engine, "settings", None)
    return fn(kind) if callable(fn) else {}


class CachedEngine:
    """Record/replay cache in front of an engine (image, text or both)."""

    def __init__(self, inner: Any, cache: SearchCache, cost: dict[str, float] | None = None):
        self.inner, self.cache, self.cost = inner, cache, cost or {}
        self.name = inner.name

    def _key(self, kind: str, query: str | Image.Image, k: int) -> tuple[str, float]:
        key = cache_key(self.name, {**_settings(self.inner, kind), "k": k}, kind, query)
        est = getattr(self.inner, "estimated_cost", None)
        return key, (est(kind, k, self.cost) if callable(est) else 0.0)

    async def _acall(self, kind: str, query, k: int):
        key, dollars = self._key(kind, query, k)
        rows = self.cache.get(key, cost=dollars)
        if rows is not None:
            return _load(rows, kind)
        fn = self.inner.asearch_image if kind == "image" else self.inner.asearch_text
        hits = await fn(query, k=k)
        self.cache.record_spend(dollars)
        self.cache.put(key, _dump(hits, kind), engine=self.name, kind=kind)
        return hits

    def _call(self, kind: str, query, k: int):
        key, dollars = self._key(kind, query, k)
        rows = self.cache.get(key, cost=dollars)
        if rows is not None:
            return _load(rows, kind)
        fn = self.inner.search_image if kind == "image" else self.inner.search_text
        hits = fn(query, k=k)
        self.cache.record_spend(dollars)
        self.cache.put(key, _dump(hits, kind), engine=self.name, kind=kind)
        return hits

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return self._call("image", image, k)

    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return await self._acall("image", image, k)

    def search_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        return self._call("text", query, k)

    async def asearch_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        return await self._acall("text", query, k)


@dataclass
class ToolOutcome:
    """What a tool call produced: hits, or an error message for the policy (never both)."""

    hits: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class GuardedEngine:
    """Outermost wrapper: failures leave only as redacted `SearchError`s, and are counted."""

    def __init__(self, inner: Any, kind: str):
        self.inner, self.kind, self.name = inner, kind, inner.name
        self.counters: Counter[str] = Counter()
        self.cache: SearchCache | None = None
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _error(self, err: BaseException) -> SearchError:
        self._count("failures")
        self._count(f"failures_{type(err).__name__}")
        msg = redact(" ".join(str(err).split())[:400] or type(err).__name__, secret_values())
        if not isinstance(err, SearchError):
            msg = f"{type(err).__name__}: {msg}"
        return SearchError(msg, engine=self.name, retryable=getattr(err, "retryable", False))

    def _check(self, hits: Any, typ: type) -> list:
        if not isinstance(hits, list) or not all(isinstance(h, typ) for h in hits):
            raise SearchError(
                f"engine {self.name} returned {type(hits).__name__}, not a list of {typ.__name__}"
            )
        return hits

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        self._count("calls")
        try:
            return self._check(self.inner.search_image(image, k=k), ImageHit)
        except Exception as err:  # noqa: BLE001 - every failure becomes a SearchError
            raise self._error(err) from None

    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        self._count("calls")
        try:
            return self._check(await self.inner.asearch_image(image, k=k), ImageHit)
        except Exception as err:  # noqa: BLE001
            raise self._error(err) from None

    def search_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        self._count("calls")
        try:
            return self._check(self.inner.search_text(query, k=k), TextHit)
        except Exception as err:  # noqa: BLE001
            raise self._error(err) from None

    async def asearch_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        self._count("calls")
        try:
            return self._check(await self.inner.asearch_text(query, k=k), TextHit)
        except Exception as err:  # noqa: BLE001
            raise self._error(err) from None

    def try_search_image(self, image: Image.Image, *, k: int = 5) -> ToolOutcome:
        t = time.perf_counter()
        try:
            return ToolOutcome(hits=self.search_image(image, k=k), seconds=time.perf_counter() - t)
        except SearchError as e:
            return ToolOutcome(error=str(e), seconds=time.perf_counter() - t)

    def try_search_text(self, query: str, *, k: int = 5) -> ToolOutcome:
        t = time.perf_counter()
        try:
            return ToolOutcome(hits=self.search_text(query, k=k), seconds=time.perf_counter() - t)
        except SearchError as e:
            return ToolOutcome(error=str(e), seconds=time.perf_counter() - t)


# -- assembly ----------------------------------------------------------------------------------------
def build_indexes(gallery: list[dict] | None, corpus: list[dict] | None, index_dir: str | Path, **kw) -> Path:
    """Build ``index_dir/image`` from `gallery` and ``index_dir/text`` from `corpus` (either may be None)."""
    from .local import build_image_index, build_text_index

    d = Path(index_dir)
    if gallery:
        build_image_index(gallery, d / "image", embedder=kw.get("embedder", "effnet-lite0"))
    if corpus:
        build_text_index(corpus, d / "text", dense=kw.get("dense", False))
    return d


def world_indexes(index_dir: str | Path = DEFAULT_INDEX_DIR, *, rebuild: bool = False) -> Path:
    """Build the local indexes from the offline World into `index_dir` (skipped when present)."""
    import json

    from .embed import FEATURES_VERSION

    d = Path(index_dir)
    img_meta = d / "image" / "meta.json"
    fresh = img_meta.exists() and json.loads(img_meta.read_text()).get("features_version") == FEATURES_VERSION
    if not rebuild and fresh and (d / "text" / "meta.json").exists():
        return d
    from mmsearch_r1.data.world.build import build_world

    world = build_world()
    return build_indexes(world.search_gallery(), world.search_corpus(), d)


def make_engines(config: EngineConfig | None = None) -> Engines:
    """Build the configured engines, each wrapped as cache (optional) → guard."""
    cfg = config or EngineConfig()
    cache: SearchCache | None = None
    web: WebSearch | None = None

    def wrap(inner: Any, kind: str, cacheable: bool) -> GuardedEngine:
        nonlocal cache
        if cacheable and cfg.cache.mode != "off":  # opened only when an engine uses it
            if cache is None:
                cache = SearchCache(cfg.cache.path, cfg.cache.mode)
            inner = CachedEngine(inner, cache, cfg.cache.cost_per_call)
        guarded = GuardedEngine(inner, kind)
        guarded.cache = cache
        return guarded

    def get_web() -> WebSearch:
        nonlocal web
        web = web or WebSearch(cfg.web)
        return web

    image = text = None
    if cfg.image == "local":
        from .local import LocalImageEngine

        image = wrap(LocalImageEngine.load(Path(cfg.index_dir) / "image"), "image", cfg.cache_local)
    elif cfg.image == "web":
        if cfg.check_env:
            get_web().check_env(("image",))
        image = wrap(get_web(), "image", True)
    elif cfg.image == "fvqa-cache":
        image = wrap(FvqaCacheEngine(cfg.fvqa), "image", cfg.cache_local)
    elif cfg.image != "none":
        raise ValueError(f"unknown image engine {cfg.image!r}; use local, web, fvqa-cache or none")
    if cfg.text == "local":
        from .local import LocalTextEngine

        inner = LocalTextEngine.load(Path(cfg.index_dir) / "text", mode=cfg.text_mode)
        text = wrap(inner, "text", cfg.cache_local)
    elif cfg.text == "web":
        if cfg.check_env:
            get_web().check_env(("text",))
        text = wrap(get_web(), "text", True)
    elif cfg.text != "none":
        raise ValueError(f"unknown text engine {cfg.text!r}; use local, web or none")
    extra = {"image": cfg.image, "text": cfg.text, "cache_mode": cfg.cache.mode if cache is not None else "off",
             "cache_path": str(cfg.cache.path) if cache is not None else None}  # fmt: skip
    return Engines(image=image, text=text, extra=extra)


def engine_stats(engines: Engines) -> dict[str, Any]:
    """Counters of all layers (calls, failures, HTTP statuses, cache hits/misses/dollars); no secrets."""
    out: dict[str, Any] = {}
    for kind in ("image", "text"):
        eng = getattr(engines, kind)
        if isinstance(eng, GuardedEngine):
            out[kind] = dict(eng.counters)
            inner = eng.inner.inner if isinstance(eng.inner, CachedEngine) else eng.inner
            for attr in ("http", "counters"):
                obj = getattr(inner, attr, None)
                c = getattr(obj, "counters", obj) if attr == "http" else obj
                if isinstance(c, Counter) and c:
                    out[f"{kind}_{inner.name}_{attr}"] = dict(c)
    caches = {id(c): c for c in (getattr(engines.image, "cache", None), getattr(engines.text, "cache", None))}
    for c in caches.values():
        if isinstance(c, SearchCache):
            out["cache"] = c.stats.as_dict()
    return out


__all__ = ["EngineConfig", "make_engines", "engine_stats", "CachedEngine", "GuardedEngine", "ToolOutcome",
           "build_indexes", "world_indexes", "run_sync", "SECRET_VARS"]  # fmt: skip
