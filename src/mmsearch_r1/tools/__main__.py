"""Command line for people: search with the configured engine and print the hits.

    python -m mmsearch_r1.tools image PATH [--engine local|web|fvqa-cache] [--k 5]
    python -m mmsearch_r1.tools text "QUERY" [--engine local|web] [--mode bm25|dense|hybrid]
    python -m mmsearch_r1.tools build-index [--index-dir data/world/index] [--rebuild]
    python -m mmsearch_r1.tools cache-stats PATH | cache-export SRC DEST | cache-import DEST SRC
    python -m mmsearch_r1.tools cache-check PATH [--quick]

Local engines read ``--index-dir`` (default: env MMSEARCH_INDEX_DIR or data/world/index; build it with
``build-index``, which builds the offline World first). Web engines read their keys from env vars
(see ``web.py``) and record their calls in ``--cache PATH`` (default data/cache/search.sqlite) unless
``--cache-mode off``; ``--cache-mode replay-only`` answers only from the cache. ``cache-check`` runs
SQLite's integrity check on a cache file (exit 0 when ok, 1 when damaged).
User errors (bad arguments, missing files or keys, unreadable caches, failed searches) print as one
``error: ...`` line on stderr with exit code 2, never a traceback.

What it does not: no formatting for the policy; thumbnails are not displayed (``--save-thumbs DIR``
writes them as PNG files).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from PIL import Image

from .cache import SearchCache, check_cache
from .engines import DEFAULT_INDEX_DIR, EngineConfig, make_engines, world_indexes
from .types import SearchError

EXAMPLES = """examples:
  python -m mmsearch_r1.tools build-index
  python -m mmsearch_r1.tools text "height of Mount Everest" --k 3
  python -m mmsearch_r1.tools image photo.jpg --save-thumbs thumbs/
  SERPAPI_API_KEY=... python -m mmsearch_r1.tools text "Eiffel Tower" --engine web --cache data/cache/search.sqlite
  python -m mmsearch_r1.tools text "Eiffel Tower" --engine web --cache-mode replay-only
  python -m mmsearch_r1.tools cache-stats data/cache/search.sqlite
  python -m mmsearch_r1.tools cache-check data/cache/search.sqlite
"""


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (its subcommand parsers are of this class too)."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mmsearch_r1.tools", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, arg in (("image", "path"), ("text", "query")):
        s = sub.add_parser(name, help=f"{name} search")
        s.add_argument(arg)
        s.add_argument("--engine", default=None, help="local (default), web, fvqa-cache (image only)")
        s.add_argument("--k", type=int, default=5)
        s.add_argument("--index-dir", default=None)
        s.add_argument("--mode", default="bm25", choices=["bm25", "dense", "hybrid"])
        s.add_argument("--cache", default=None, help="SQLite cache file (default data/cache/search.sqlite)")
        s.add_argument("--cache-mode", default="read-write", choices=["off", "read-write", "replay-only"])
        s.add_argument("--data-id", default=None, help="fvqa-cache: the question's data_id")
        s.add_argument("--fvqa-cache-file", action="append", default=[])
        s.add_argument("--save-thumbs", default=None)
        s.add_argument("--json", action="store_true", help="print JSON lines")
    b = sub.add_parser("build-index", help="build the local indexes from the offline World")
    b.add_argument("--index-dir", default=DEFAULT_INDEX_DIR)
    b.add_argument("--rebuild", action="store_true")
    st = sub.add_parser("cache-stats", help="number of entries in a cache file")
    st.add_argument("path")
    ck = sub.add_parser("cache-check", help="integrity of a cache file (exit 0 ok, 1 damaged)")
    ck.add_argument("path")
    ck.add_argument("--quick", action="store_true", help="SQLite quick_check only (large files)")
    ex = sub.add_parser("cache-export", help="copy a cache file (consistent snapshot)")
    ex.add_argument("src")
    ex.add_argument("dest")
    im = sub.add_parser("cache-import", help="merge SRC's entries into DEST (existing keys win)")
    im.add_argument("dest")
    im.add_argument("src")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors become one ``error: ...`` line on stderr and exit code 2 (`cli.run`)."""
    from mmsearch_r1.cli import run

    return run(_main, argv)


def _main(argv: list[str] | None) -> int:
    from mmsearch_r1.cli import UserError

    a = _parser().parse_args(argv)
    try:
        return _run(a)
    except (SearchError, ValueError, OSError, sqlite3.Error) as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception holds
        raise UserError(message) from e


def _engines(cfg: EngineConfig, kind: str, engine: str):
    """``make_engines`` with ``kind`` set to ``engine``; a missing local index names ``build-index``."""
    setattr(cfg, kind, engine)
    try:
        return make_engines(cfg)
    except FileNotFoundError as e:
        if engine != "local":
            raise
        raise FileNotFoundError(
            f"no local {kind} index in {Path(cfg.index_dir) / kind}: build it with "
            f"`python -m mmsearch_r1.tools build-index --index-dir {cfg.index_dir}` "
            "(it builds the offline World first)"
        ) from e


def _run(a: argparse.Namespace) -> int:
    if a.cmd == "build-index":
        print(world_indexes(a.index_dir, rebuild=a.rebuild))
        return 0
    if a.cmd == "cache-stats":
        print(json.dumps({"entries": len(SearchCache(a.path, "replay-only"))}))
        return 0
    if a.cmd == "cache-export":
        print(SearchCache(a.src, "replay-only").export(a.dest))
        return 0
    if a.cmd == "cache-import":
        print(json.dumps({"imported": SearchCache(a.dest, "read-write").import_from(a.src)}))
        return 0
    if a.cmd == "cache-check":
        report = check_cache(a.path, quick=a.quick)
        print(json.dumps(report))
        return 0 if report["status"] == "ok" else 1

    cfg = EngineConfig(image="none", text="none", text_mode=a.mode)
    if a.index_dir:
        cfg.index_dir = a.index_dir
    if a.cache:
        cfg.cache.path = a.cache
    cfg.cache.mode = a.cache_mode  # used by web engines only (local ones are not cached)
    cfg.fvqa.cache_files = a.fvqa_cache_file
    if a.cmd == "image":
        engines = _engines(cfg, "image", a.engine or "local")
        image = Image.open(a.path)
        image.load()
        if a.data_id:
            image.info["data_id"] = a.data_id
        hits = engines.image.search_image(image, k=a.k)
    else:
        engines = _engines(cfg, "text", a.engine or "local")
        hits = engines.text.search_text(a.query, k=a.k)
    for i, h in enumerate(hits, 1):
        row = {"rank": i, "title": h.title, "url": h.url, "score": h.score}
        if a.cmd == "text":
            row["summary"] = h.summary
        else:
            row["thumbnail"] = None if h.thumbnail is None else list(h.thumbnail.size)
            if a.save_thumbs and h.thumbnail is not None:
                Path(a.save_thumbs).mkdir(parents=True, exist_ok=True)
                h.thumbnail.save(Path(a.save_thumbs) / f"{i:02d}.png")
        if a.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            score = f"  ({h.score:.3f})" if h.score is not None else ""
            print(f"{i}. {h.title}{score}  {h.url}")
            if a.cmd == "text":
                print(f"   {h.summary}")
            elif h.thumbnail is not None:
                print(f"   thumbnail {h.thumbnail.size[0]}x{h.thumbnail.size[1]}")
    if not hits:
        print("(no results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
