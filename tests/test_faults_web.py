"""Fault injection against the web engines, each fault served by a loopback HTTP server (127.0.0.1):

- content bombs: pages of repeated ``<title`` and chat answers of repeated unclosed ``<think>`` must be
  handled in linear time, off the event loop, and a search must end within its budget;
- thumbnails declaring 12000x12000 pixels must be refused before decoding (peak memory measured in a
  subprocess);
- the address policy must let only globally routable addresses through (6to4, NAT64, mapped unwrapped);
- API keys must reach no log record (httpx logs request URLs), no hit and no cache row, even when the
  API echoes the key;
- a body that stalls after the headers or ends early must be retried, then reported as a SearchError.

Every test is bounded in time; the only wall-clock assertions are the budgets the engines promise.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from search_fakes import send_bytes

import mmsearch_r1
from mmsearch_r1.tools.cache import CacheConfig
from mmsearch_r1.tools.engines import EngineConfig, make_engines
from mmsearch_r1.tools.net import NetConfig, SafeHttp, run_sync
from mmsearch_r1.tools.types import SearchError
from mmsearch_r1.tools.web import WebConfig, WebSearch

KEYS = {
    "SERPAPI_API_KEY": "serp-FAULTKEY-4242",
    "JINA_API_KEY": "jina-FAULTKEY-4343",
    "OPENAI_API_KEY": "sk-FAULTKEY-4444",
}
PAGE = """<html><head><title>Page {n}</title></head><body><article><h1>Page {n}</h1>
<p>The Eiffel Tower is 330 metres tall and stands in Paris, France. It was finished in 1889 for the
World's Fair and is made of wrought iron.</p><p>Page {n} also talks about other things at some length so
that the extractor keeps it as main content of the document for the reader.</p></article></body></html>"""


def huge_png(side: int = 12000) -> bytes:
    """A valid 8-bit grey PNG of side x side black pixels, ~140 KB for 12000 (deflate of zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (side + 1)
    idat = b"".join(z.compress(row * 100) for _ in range(side // 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# -- a scriptable loopback server ------------------------------------------------------------------
class Server:
    """Routes are ``{first path segment: fn(handler, query, body)}``, set per test; hits are counted."""

    def __init__(self):
        self.routes: dict = {}
        self.hits: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []  # (route, path + headers + body) of every request
        self.release = threading.Event()  # set at teardown: frees handlers that stall on purpose
        self.base = ""


def _handler(srv: Server):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, *args, **kwargs):
            send_bytes(self, *args, **kwargs)

        def _handle(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            parts = urlsplit(self.path)
            route = parts.path.split("/")[1]
            srv.hits[route] = srv.hits.get(route, 0) + 1
            srv.log.append((route, self.path + str(dict(self.headers)) + body.decode("latin-1")))
            fn = srv.routes.get(route)
            if fn is None:
                return self.send(404, b"not found", "text/plain")
            fn(self, {k: v[0] for k, v in parse_qs(parts.query).items()}, body)

        do_GET = do_POST = _handle

    return H


@pytest.fixture
def srv(monkeypatch):
    s = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    httpd.daemon_threads = True
    httpd.block_on_close = False
    s.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield s
    s.release.set()
    httpd.shutdown()
    httpd.server_close()


def web(s: Server, *, timeout_s: float = 0.5, retries: int = 1, **kw) -> WebSearch:
    n = NetConfig(timeout_s=timeout_s, retries=retries, backoff_s=0.01, backoff_max_s=0.05,
                  allow_networks=["127.0.0.0/8"], max_bytes=6_000_000)  # fmt: skip
    cfg = dict(serpapi_url=f"{s.base}/serpapi/search.json", jina_url=f"{s.base}/jina/",
               llm_base_url=f"{s.base}/v1", llm_model="m", net=n)  # fmt: skip
    return WebSearch(WebConfig(**(cfg | kw)))


def serp_google(s: Server, page_route: str = "page", n: int = 3):
    def fn(h, q, body):
        org = [{"title": f"Result {i}", "link": f"{s.base}/{page_route}/{i}", "snippet": f"Snippet {i}"}
               for i in range(n)]  # fmt: skip
        h.send(200, json.dumps({"organic_results": org}).encode())

    return fn


def chat(content: str):
    def fn(h, q, body):
        h.send(
            200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        )

    return fn


def finishes_within(seconds: float, fn):
    """Run `fn` in a thread; fail the test if it is still running after `seconds` (no hang)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"call still running after {seconds}s"
    return box, time.monotonic() - t0


SEARCH_SCRIPT = r"""
import json, resource, sys, time
from PIL import Image
from mmsearch_r1.tools.net import NetConfig
from mmsearch_r1.tools.web import WebConfig, WebSearch
import trafilatura  # noqa: F401 - imported before the clock starts, as in a warm process

def rss_mb():  # peak resident memory of this process; ru_maxrss would include the parent's (kept over exec)
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

spec = json.loads(sys.argv[1])
base = spec["base"]
net = NetConfig(allow_networks=["127.0.0.0/8"], backoff_s=0.01, max_bytes=6_000_000, **spec["net"])
w = WebSearch(WebConfig(serpapi_url=base + "/serpapi/search.json", jina_url=base + "/jina/",
                        llm_base_url=base + "/v1", llm_model="m", net=net, **spec["web"]))
before, t0 = rss_mb(), time.perf_counter()
if spec["kind"] == "image":
    query = Image.new("RGB", (8, 8))
    query.info["url"] = base + "/small.png"
    rows = [[h.title, h.thumbnail is not None] for h in w.search_image(query, k=spec["k"])]
else:
    rows = [[h.title, h.summary] for h in w.search_text("eiffel tower", k=spec["k"])]
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_before_mb": before, "rss_peak_mb": rss_mb(),
                  "hits": rows, "counters": dict(w.http.counters)}))
"""


def search_in_subprocess(s: Server, spec: dict) -> dict:
    """Run one web search in a fresh interpreter against `s`: its peak memory is its own, and a call
    that hangs (a regex holding the GIL cannot be interrupted in-process) is killed, failing the test."""
    env = {**os.environ, "PYTHONPATH": str(Path(mmsearch_r1.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    arg = json.dumps({"base": s.base, **spec})
    proc = subprocess.run([sys.executable, "-c", SEARCH_SCRIPT, arg], capture_output=True, text=True, timeout=90,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 1. content bombs, off-loop parsing, one budget per call --------------------------------------------
def test_title_and_think_parsers_handle_real_input_and_bombs():
    from mmsearch_r1.tools.content import html_title, strip_think

    assert html_title("<html><head><TITLE lang='en'>\n A &amp; B </TITLE></head>") == "A & B"
    assert html_title("<titlebar>x</titlebar><title>Real</title>") == "Real"
    assert html_title("<p>no title</p>") == "" and html_title("<title>unclosed") == ""
    assert strip_think("<think>plan</think> Answer.") == " Answer."
    assert strip_think("a<think>x</think>b<think>y</think>c") == "abc"
    assert strip_think("reasoning opened by the template</think>Answer") == "Answer"
    assert strip_think("Answer <think>unfinished reasoning") == "Answer "
    # bombs: megabytes of openings without a close (quadratic or worse for the old regexes)
    for bomb in ("<title" * 800_000, "<title>" * 700_000, "<title " * 700_000 + ">"):
        assert html_title(bomb) == ""
    assert strip_think("<think>" * 700_000) == ""
    assert strip_think("<think>" * 700_000 + "</think>ok") == "ok"


def test_bomb_page_and_bomb_answer_finish_within_twice_the_timeout(srv):
    timeout_s = 2.0
    text = PAGE.format(n=0).replace("<title>Page 0</title>", "")  # readable text, then 2 MB of openings
    bombs = [(text + "<title" * 350_000).encode(), (text + "<title>" * 300_000).encode()]
    srv.routes = {
        "serpapi": serp_google(srv),
        "page": lambda h, q, b: h.send(200, bombs[int(h.path.rsplit("/", 1)[1]) % 2], "text/html"),
        "jina": lambda h, q, b: h.send(200, json.dumps({"data": {"title": "T", "content": "Eiffel. " * 50}}).encode()),
        "v1": chat("<think>" * 150_000),  # 1 MB of reasoning that never closes
    }  # fmt: skip
    net = {"timeout_s": timeout_s, "retries": 1}
    out = search_in_subprocess(srv, {"kind": "text", "k": 3, "net": net, "web": {"reader": "local"}})
    assert out["seconds"] < 2 * timeout_s, out
    assert [h[0] for h in out["hits"]] == ["Result 0", "Result 1", "Result 2"]
    assert all("330 metres" in h[1] for h in out["hits"])  # the pages were read, not skipped

    web_cfg = {"reader": "jina", "summarizer": "llm"}
    out = search_in_subprocess(srv, {"kind": "text", "k": 2, "net": net, "web": web_cfg})
    assert out["seconds"] < 2 * timeout_s, out
    # the answer is all unfinished reasoning: no summary, so the search snippets stand in
    assert [h[1] for h in out["hits"]] == ["Snippet 0", "Snippet 1"]
    assert out["counters"]["page_failures"] == 3  # every candidate was tried before falling back


def test_fetched_content_is_parsed_off_the_event_loop(srv, monkeypatch):
    from mmsearch_r1.tools import web as webmod

    seen: list[int] = []
    for name in ("page_text", "decode_thumbnail", "parse_json", "chat_reply"):
        real = getattr(webmod, name)

        def spy(*a, _real=real):
            seen.append(threading.get_ident())
            return _real(*a)

        monkeypatch.setattr(webmod, name, spy)

    async def loop_thread() -> int:
        return threading.get_ident()

    srv.routes = {"serpapi": serp_google(srv), "page": lambda h, q, b: h.send(200, PAGE.format(n=1).encode()),
                  "v1": chat("Summary.")}  # fmt: skip
    assert len(web(srv, reader="local", summarizer="llm").search_text("eiffel", k=2)) == 2
    assert len(seen) >= 5 and run_sync(loop_thread()) not in seen


def test_call_budget_bounds_a_search_and_run_sync_cancels(srv):
    def stall(h, q, b):  # answers each page only after 3 s: every attempt times out
        srv.release.wait(3.0)
        h.send(200, PAGE.format(n=0).encode(), "text/html")

    srv.routes = {"serpapi": serp_google(srv), "page": stall}
    w = web(srv, timeout_s=0.5, retries=4, reader="local", call_timeout_s=1.0)
    box, took = finishes_within(10.0, lambda: w.search_text("eiffel", k=2))
    assert isinstance(box.get("error"), SearchError) and "call_timeout_s=1" in str(box["error"])
    assert took < 2 * 1.0  # the budget ended it, not the 5 attempts x 0.5 s of the retry policy

    cancelled = threading.Event()

    async def hangs():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(SearchError, match="cancelled"):
        run_sync(hangs(), timeout=0.3)
    assert cancelled.wait(5.0)


# -- 2. thumbnails: pixel cap before decoding ---------------------------------------------------------
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, looser check
def test_decode_thumbnail_refuses_before_decoding_and_shrinks_jpegs():
    from mmsearch_r1.tools.content import ThumbnailTooLarge, decode_thumbnail

    with pytest.raises(ThumbnailTooLarge, match="12000x12000"):
        decode_thumbnail(huge_png())
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (0, 90, 200)).save(buf, format="JPEG")
    im = decode_thumbnail(buf.getvalue(), max_pixels=200 * 150)  # JPEG decodes at 1/4 scale
    assert im.size == (200, 150) and im.mode == "RGB"
    with pytest.raises(ThumbnailTooLarge):
        decode_thumbnail(buf.getvalue(), max_pixels=50 * 50)  # even 1/8 scale is too big
    with pytest.raises(SearchError, match="not a readable image"):
        decode_thumbnail(b"<html>not an image</html>")
    assert decode_thumbnail(small_png()).size == (20, 12)


def test_lens_result_with_pixel_bomb_thumbnails_stays_small(srv):
    huge, small = huge_png(), small_png()
    assert len(huge) < 200_000

    def lens(h, q, b):
        vm = [{"title": f"Huge {i}", "link": f"{srv.base}/p/{i}", "thumbnail": f"{srv.base}/huge/{i}.png"}
              for i in range(10)]  # fmt: skip
        vm.insert(5, {"title": "Small", "link": f"{srv.base}/p/s", "thumbnail": f"{srv.base}/small.png"})
        h.send(200, json.dumps({"visual_matches": vm}).encode())

    srv.routes = {"serpapi": lens, "huge": lambda h, q, b: h.send(200, huge, "image/png"),
                  "small.png": lambda h, q, b: h.send(200, small, "image/png")}  # fmt: skip
    # k=6 looks at 2k = 12 results: all eleven
    out = search_in_subprocess(
        srv, {"kind": "image", "k": 6, "net": {"timeout_s": 5, "retries": 0}, "web": {}}
    )
    assert out["hits"] == [["Small", True]]  # the ten bombs are skipped, the good hit stays
    assert out["counters"]["thumbnails_too_large"] == 10
    assert out["rss_peak_mb"] < 500, out
    assert out["seconds"] < 30, out


# -- 3. address policy ------------------------------------------------------------------------------------
REFUSED = ["100.64.0.1", "100.100.100.200", "192.0.0.8", "fec0::1", "2002:a9fe:a9fe::1", "2002:7f00:1::1",
           "127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1",
           "0.0.0.0", "224.0.0.1", "ff0e::1", "fe80::1", "fc00::1", "64:ff9b:1::1", "::127.0.0.1",
           "2001:0:4136:e378:8000:63bf:3fff:fdd2"]  # fmt: skip
ALLOWED = ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


def test_only_globally_routable_addresses_pass():
    from mmsearch_r1.tools.addresses import is_public_address

    assert [a for a in REFUSED if is_public_address(a)] == []
    assert [a for a in ALLOWED if not is_public_address(a)] == []
    http = SafeHttp(NetConfig())
    for a in REFUSED:  # literal addresses: check_url resolves nothing, so no network is touched
        host = f"[{a}]" if ":" in a else a
        with pytest.raises(SearchError, match="refused"):
            asyncio.run(http.check_url(f"http://{host}/x"))
    for a in ALLOWED:
        host = f"[{a}]" if ":" in a else a
        asyncio.run(http.check_url(f"https://{host}/x"))
    assert http.counters["refused"] == len(REFUSED)


# -- 5. keys never reach logs, hits or the cache -----------------------------------------------------------
def test_keys_never_reach_logs_hits_or_cache(srv, tmp_path, caplog):
    def serp(h, q, b):  # a hostile or buggy API that echoes the key everywhere
        key = q.get("api_key", "")
        if q.get("engine") == "google_lens":
            vm = [{"title": f"Match {i} {key}", "link": f"{srv.base}/p/{i}?k={key}", "source": key,
                   "thumbnail": f"{srv.base}/thumb/{i}.png"} for i in range(3)]  # fmt: skip
            return h.send(200, json.dumps({"visual_matches": vm, "echo": key}).encode())
        org = [{"title": f"Result {i} {key}", "link": f"{srv.base}/page/{i}?api_key={key}", "snippet": key}
               for i in range(3)]  # fmt: skip
        h.send(200, json.dumps({"organic_results": org}).encode(), headers={"X-Echo": key})

    def jina(h, q, b):
        tok = h.headers.get("Authorization", "")
        h.send(
            200,
            json.dumps({"data": {"title": tok, "content": f"Eiffel is tall. Token {tok}. " * 5}}).encode(),
        )

    def v1(h, q, b):
        chat(f"Summary mentioning {h.headers.get('Authorization', '')}.")(h, q, b)

    srv.routes = {"serpapi": serp, "jina": jina, "v1": v1, "thumb": lambda h, q, b: h.send(200, small_png())}
    caplog.set_level(logging.DEBUG)
    cfg = EngineConfig(image="web", text="web", cache=CacheConfig(path=str(tmp_path / "c.sqlite"), mode="read-write"),
                       web=web(srv, reader="jina", summarizer="llm").config)  # fmt: skip
    eng = make_engines(cfg)
    img = Image.new("RGB", (8, 8))
    img.info["url"] = f"{srv.base}/thumb/q.png"
    image_hits = eng.image.search_image(img, k=2)
    text_hits = eng.text.search_text("eiffel", k=2)
    assert len(image_hits) == 2 and len(text_hits) == 2 and "Summary mentioning" in text_hits[0].summary
    requests = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("api_key=***" in m for m in requests), requests  # the URL was logged, with the key cut out
    blobs = [r.getMessage() + repr(r.args) + str(r.msg) for r in caplog.records]
    blobs += [json.dumps(h.__dict__, default=str) for h in [*image_hits, *text_hits]]
    blobs += [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir()]  # sqlite file and its WAL
    for name, key in KEYS.items():
        assert not [b for b in blobs if key in b], f"{name} leaked"
    own = {"SERPAPI_API_KEY": "serpapi", "JINA_API_KEY": "jina", "OPENAI_API_KEY": "v1"}
    sent = [
        (route, name)
        for route, req in srv.log
        for name, key in KEYS.items()
        if key in req and route != own[name]
    ]
    assert sent == [], "an echoed key was sent on to another host"


# -- 6. errors while reading the body ------------------------------------------------------------------------
def test_body_stall_and_short_body_are_retried_then_reported(srv):
    def stall(h, q, b):  # headers and 10 of 1000 bytes, then nothing
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"{" * 10)
        h.wfile.flush()
        srv.release.wait(5.0)

    def short(h, q, b):  # headers and 10 of 1000 bytes, then the connection closes
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"{" * 10)
        h.close_connection = True

    srv.routes = {"stall": stall, "short": short, "serpapi": stall}
    # 1 s, not less: on a loaded machine a shorter timeout can fire before the headers are read
    http = SafeHttp(NetConfig(timeout_s=1.0, retries=2, backoff_s=0.01, backoff_max_s=0.05))
    for route, msg in (
        ("stall", "timeout after 1.0s reading the answer body"),
        ("short", "connection broke"),
    ):
        with pytest.raises(SearchError, match=msg) as e:
            run_sync(http.request("GET", f"{srv.base}/{route}/x", trusted=True), timeout=20)
        assert e.value.retryable and srv.hits[route] == 3
    assert http.counters["retries"] == 4 and http.counters["failures"] == 2

    w = web(srv, timeout_s=1.0, retries=2, call_timeout_s=10.0)  # an API call that hangs mid-body
    box, took = finishes_within(20.0, lambda: w.search_text("q", k=1))
    assert isinstance(box.get("error"), SearchError) and "reading the answer body" in str(box["error"])
    assert KEYS["SERPAPI_API_KEY"] not in str(box["error"])
    assert w.http.counters["retries"] == 2 and took < 10.0  # the retry policy ended it, not the budget
