"""Record/replay cache: keys, modes, counters, export/import, several processes writing at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest
from PIL import Image

from mmsearch_r1.tools.cache import SearchCache, cache_key, image_from_b64, image_to_b64
from mmsearch_r1.tools.engines import CachedEngine
from mmsearch_r1.tools.types import ImageHit, SearchError, TextHit


def test_cache_key_is_content_addressed():
    a = Image.new("RGB", (4, 4), (1, 2, 3))
    b = Image.new("RGB", (4, 4), (1, 2, 3))
    c = Image.new("RGB", (4, 4), (1, 2, 4))
    assert cache_key("e", {"k": 5}, "image", a) == cache_key("e", {"k": 5}, "image", b)
    assert cache_key("e", {"k": 5}, "image", a) != cache_key("e", {"k": 5}, "image", c)
    assert cache_key("e", {"k": 5}, "text", "q") != cache_key("e", {"k": 4}, "text", "q")
    assert cache_key("e", {"k": 5}, "text", "q") != cache_key("f", {"k": 5}, "text", "q")
    assert cache_key("e", {"a": 1, "b": 2}, "text", "q") == cache_key("e", {"b": 2, "a": 1}, "text", "q")


def test_modes_and_counters(tmp_path):
    path = tmp_path / "c.sqlite"
    rw = SearchCache(path, "read-write")
    assert rw.get("k1", cost=0.01) is None
    rw.put("k1", [{"title": "t"}])
    rw.record_spend(0.01)
    assert rw.get("k1", cost=0.01) == [{"title": "t"}]
    assert rw.stats.as_dict() == {
        "hits": 1,
        "misses": 1,
        "writes": 1,
        "dollars_spent": 0.01,
        "dollars_saved": 0.01,
        "damaged": 0,
    }
    replay = SearchCache(path, "replay-only")
    assert replay.get("k1") == [{"title": "t"}]
    with pytest.raises(SearchError, match="replay-only"):
        replay.get("k2")
    replay.put("k2", 1)  # ignored
    assert len(replay) == 1
    off = SearchCache(None, "off")
    assert off.get("k1") is None and len(off) == 0
    with pytest.raises(ValueError, match="one of"):
        SearchCache(path, "sometimes")
    with pytest.raises(ValueError, match="does not exist"):
        SearchCache(tmp_path / "absent.sqlite", "replay-only")
    with pytest.raises(ValueError, match="needs a path"):
        SearchCache(None, "read-write")


def test_export_import_merge(tmp_path):
    a = SearchCache(tmp_path / "a.sqlite")
    a.put("x", 1)
    a.put("y", 2)
    exported = a.export(tmp_path / "ship" / "a.sqlite")
    b = SearchCache(tmp_path / "b.sqlite")
    b.put("y", 99)
    assert b.import_from(exported) == 1
    assert b.get("x") == 1 and b.get("y") == 99  # existing keys win
    with pytest.raises(FileNotFoundError):
        b.import_from(tmp_path / "nope.sqlite")


def _writer(path: str, worker: int, n: int) -> None:
    c = SearchCache(path, "read-write")
    for i in range(n):
        c.put(f"w{worker}-{i}", {"worker": worker, "i": i, "pad": "x" * 200})
        c.put("shared", {"last": worker})  # every process also hammers one key
        assert c.get(f"w{worker}-{i}") is not None


def test_several_processes_write_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    SearchCache(path)  # create
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    c = SearchCache(path, "replay-only")
    assert len(c) == 4 * 40 + 1
    assert c.get("w3-39")["i"] == 39
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_image_b64_roundtrip():
    im = Image.new("RGB", (5, 3), (9, 8, 7))
    back = image_from_b64(image_to_b64(im))
    assert back.size == (5, 3) and back.getpixel((0, 0)) == (9, 8, 7)
    assert image_to_b64(None) is None and image_from_b64(None) is None and image_from_b64("!!notb64") is None


class _Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def settings(self, kind):
        return {"v": 1}

    def estimated_cost(self, kind, k=5, cost=None):
        return 0.02

    def search_text(self, query, *, k=5):
        self.calls += 1
        return [TextHit(title=f"{query} {i}", url=f"u{i}", summary="s", score=1.0) for i in range(k)]

    def search_image(self, image, *, k=5):
        self.calls += 1
        return [ImageHit(title="img", url="u", thumbnail=Image.new("RGB", (3, 3), "red"))]

    async def asearch_text(self, query, *, k=5):
        return self.search_text(query, k=k)

    async def asearch_image(self, image, *, k=5):
        return self.search_image(image, k=k)


def test_cached_engine_records_then_replays(tmp_path):
    import asyncio

    inner = _Counting()
    cache = SearchCache(tmp_path / "c.sqlite")
    eng = CachedEngine(inner, cache)
    first = eng.search_text("q", k=2)
    again = eng.search_text("q", k=2)
    assert inner.calls == 1 and first == again
    assert asyncio.run(eng.asearch_text("q", k=2)) == first and inner.calls == 1
    img = Image.new("RGB", (8, 8), "blue")
    h1 = eng.search_image(img, k=1)
    h2 = eng.search_image(img.copy(), k=1)
    assert inner.calls == 2 and h2[0].thumbnail.getpixel((0, 0)) == (255, 0, 0) and h1[0].title == h2[0].title
    assert cache.stats.hits == 3 and cache.stats.misses == 2
    assert cache.stats.dollars_spent == pytest.approx(0.04) and cache.stats.dollars_saved == pytest.approx(
        0.06
    )
    replay = CachedEngine(inner, SearchCache(tmp_path / "c.sqlite", "replay-only"))
    assert replay.search_text("q", k=2) == first
    with pytest.raises(SearchError, match="not recorded"):
        replay.search_text("new query", k=2)
    assert inner.calls == 2
