"""Search tools: result types, engines (local, web, fvqa-cache) and the record/replay cache.

Public API (imported lazily, so ``import mmsearch_r1.tools`` pulls in neither torch nor httpx):
- ``EngineConfig``, ``make_engines(config) -> Engines``, ``engine_stats(engines)``, ``world_indexes()``
  (``engines.py``);
- ``LocalImageEngine``, ``LocalTextEngine``, ``build_image_index``, ``build_text_index`` (``local.py``);
- ``WebSearch``, ``WebConfig``, ``ImageHostConfig`` (``web.py``); ``FvqaCacheEngine``, ``FvqaCacheConfig``
  (``fvqa_cache.py``); ``SearchCache``, ``CacheConfig`` (``cache.py``); ``NetConfig`` (``net.py``);
- the types ``ImageHit``, ``TextHit``, ``SearchError``, ``Engines`` (``types.py``).
Command line: ``python -m mmsearch_r1.tools --help``.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "EngineConfig": "engines", "make_engines": "engines", "engine_stats": "engines", "world_indexes": "engines",
    "build_indexes": "engines", "GuardedEngine": "engines", "CachedEngine": "engines", "ToolOutcome": "engines",
    "LocalImageEngine": "local", "LocalTextEngine": "local", "build_image_index": "local",
    "build_text_index": "local", "extractive_summary": "local",
    "WebSearch": "web", "WebConfig": "web", "ImageHostConfig": "web",
    "FvqaCacheEngine": "fvqa_cache", "FvqaCacheConfig": "fvqa_cache", "load_fvqa_cache": "fvqa_cache",
    "SearchCache": "cache", "CacheConfig": "cache", "cache_key": "cache", "NetConfig": "net", "SafeHttp": "net",
    "ImageHit": "types", "TextHit": "types", "SearchError": "types", "Engines": "types",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
