"""FVQA released-cache engine (pickles made in the test, thumbnails from a loopback server), the guard
wrapper that turns every failure into a counted SearchError, and `make_engines` for the local engines."""

from __future__ import annotations

import asyncio
import io
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mmsearch_r1.tools.engines import EngineConfig, GuardedEngine, engine_stats, make_engines
from mmsearch_r1.tools.fvqa_cache import FvqaCacheConfig, FvqaCacheEngine, load_fvqa_cache
from mmsearch_r1.tools.local import build_image_index, build_text_index
from mmsearch_r1.tools.net import NetConfig
from mmsearch_r1.tools.types import Engines, ImageHit, SearchError


@pytest.fixture(scope="module")
def thumbs():
    served: list[str] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            served.append(self.path)
            if self.path.startswith("/gone"):
                self.send_response(404)
                self.end_headers()
                return
            buf = io.BytesIO()
            Image.new("RGB", (30, 20), (0, 0, 250)).save(buf, format="JPEG")
            self.send_response(200)
            self.send_header("Content-Length", str(len(buf.getvalue())))
            self.end_headers()
            self.wfile.write(buf.getvalue())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", served
    srv.shutdown()


def write_cache(path, base):
    entries = {
        "fvqa_train_0": {"tool_returned_web_title_list": ["Namus system", "Other page", "Third"],
                         "tool_returned_images_urls": [f"{base}/a.jpg", f"{base}/gone.jpg", f"{base}/c.jpg"]},
        "fvqa_train_1": {"tool_returned_web_title_list": ["Embedded thumbnail"],
                         "tool_returned_images_urls": [Image.new("RGB", (7, 5), (9, 9, 9))]},
    }  # fmt: skip
    with open(path, "wb") as f:
        pickle.dump(entries, f)
    return path


def engine(tmp_path, base, **kw) -> FvqaCacheEngine:
    cfg = FvqaCacheConfig(
        cache_files=[str(write_cache(tmp_path / "train.pkl", base))],
        thumb_dir=str(tmp_path / "thumbs"),
        net=NetConfig(timeout_s=2, retries=0, allow_networks=["127.0.0.0/8"]),
        **kw,
    )
    return FvqaCacheEngine(cfg)


def test_fvqa_cache_hits_thumbnails_fetched_once(tmp_path, thumbs):
    base, served = thumbs
    eng = engine(tmp_path, base)
    im = Image.new("RGB", (10, 10), "white")
    im.info["data_id"] = "fvqa_train_0"
    hits = eng.search_image(im, k=5)
    assert [h.title for h in hits] == ["Namus system", "Other page", "Third"]
    assert hits[0].thumbnail.size == (30, 20) and hits[1].thumbnail is None and hits[2].thumbnail is not None
    n = len(served)
    again = asyncio.run(eng.asearch_image(im, k=2))
    assert (
        len(again) == 2 and again[0].thumbnail is not None and len(served) == n
    )  # stored, dead link remembered
    assert eng.counters["thumbnails_fetched"] == 2 and eng.counters["thumbnails_missing"] == 1


def test_fvqa_cache_embedded_images_registration_and_missing_ids(tmp_path, thumbs):
    eng = engine(tmp_path, thumbs[0], fetch_thumbnails=False)
    q = Image.new("RGB", (12, 12), (5, 6, 7))
    eng.register("fvqa_train_1", q)
    hits = eng.search_image(q.copy(), k=5)  # found by pixel hash, no info needed
    assert hits[0].title == "Embedded thumbnail" and hits[0].thumbnail.size == (7, 5)
    missing = Image.new("RGB", (3, 3))
    missing.info["data_id"] = "fvqa_train_72"
    with pytest.raises(SearchError, match="fvqa_train_72"):
        eng.search_image(missing, k=5)
    with pytest.raises(SearchError, match="data_id"):
        eng.search_image(Image.new("RGB", (4, 4), "pink"), k=5)
    assert eng.counters["missing_entries"] == 1 and eng.counters["unknown_image"] == 1


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_fvqa_cache_loader_refuses_code_and_reports_missing_file(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"fvqa_train_0": _Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        load_fvqa_cache(bad)
    with pytest.raises(FileNotFoundError, match="lmms-lab/FVQA"):
        load_fvqa_cache(tmp_path / "absent.pkl")


class _Broken:
    name = "broken"

    def search_text(self, query, *, k=5):
        raise KeyError("bug inside the engine")

    def search_image(self, image, *, k=5):
        return "not a list"

    async def asearch_text(self, query, *, k=5):
        raise RuntimeError("boom with key serp-LEAK-0001")

    async def asearch_image(self, image, *, k=5):
        return [ImageHit(title="ok")]


def test_guard_turns_every_failure_into_counted_search_error(monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", "serp-LEAK-0001")
    g = GuardedEngine(_Broken(), "text")
    with pytest.raises(SearchError, match="KeyError"):
        g.search_text("q")
    with pytest.raises(SearchError, match="not a list of ImageHit"):
        g.search_image(Image.new("RGB", (2, 2)))
    with pytest.raises(SearchError) as e:
        asyncio.run(g.asearch_text("q"))
    assert "serp-LEAK-0001" not in str(e.value)
    assert asyncio.run(g.asearch_image(Image.new("RGB", (2, 2))))[0].title == "ok"
    out = g.try_search_text("q")
    assert out.hits == [] and "KeyError" in out.error
    assert g.counters["calls"] == 5 and g.counters["failures"] == 4


def test_make_engines_local(tmp_path):
    gallery = [
        {"image": Image.new("RGB", (16, 16), c), "title": c, "url": f"u://{c}"} for c in ("red", "blue")
    ]
    build_image_index(gallery, tmp_path / "image", embedder="pixel", show_progress=False)
    build_text_index([{"title": "Paris", "text": "Paris is the capital of France."}], tmp_path / "text",
                     show_progress=False)  # fmt: skip
    eng = make_engines(EngineConfig(index_dir=str(tmp_path)))
    assert isinstance(eng, Engines) and eng.extra["cache_mode"] == "off"
    assert eng.image.search_image(Image.new("RGB", (16, 16), "blue"), k=1)[0].title == "blue"
    assert eng.text.search_text("capital of France", k=1)[0].title == "Paris"
    assert engine_stats(eng)["text"]["calls"] == 1
    none = make_engines(EngineConfig(image="none", text="none"))
    assert none.image is None and none.text is None
    with pytest.raises(ValueError, match="unknown image engine"):
        make_engines(EngineConfig(image="bing", text="none"))
    with pytest.raises(FileNotFoundError, match="no text index"):
        make_engines(EngineConfig(image="none", index_dir=str(tmp_path / "nothing")))


class _OldImage:
    """Stands in for a PIL image pickled by an old Pillow (4-item state, no palette)."""

    def __getstate__(self):
        return [{"dpi": (72, 72)}, "RGB", (2, 1), bytes([255, 0, 0, 0, 255, 0])]


def test_fvqa_cache_reads_images_pickled_by_an_old_pillow(tmp_path):
    raw = pickle.dumps({"fvqa_test_3": {"tool_returned_web_title_list": ["x"],
                                        "tool_returned_images_urls": [_OldImage()]}}, protocol=0)  # fmt: skip
    raw = raw.replace(f"{__name__}\n_OldImage".encode(), b"PIL.JpegImagePlugin\nJpegImageFile")
    assert b"JpegImageFile" in raw
    (tmp_path / "old.pkl").write_bytes(raw)
    entry = load_fvqa_cache(tmp_path / "old.pkl")["fvqa_test_3"]
    im = entry["tool_returned_images_urls"][0]
    assert isinstance(im, Image.Image) and im.size == (2, 1) and im.getpixel((1, 0)) == (0, 255, 0)
