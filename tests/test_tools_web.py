"""Web engines against a local HTTP server (127.0.0.1) speaking SerpAPI, SearXNG, Jina Reader and
OpenAI chat formats, with injected faults: timeouts, 429, 5xx, malformed JSON, huge bodies, redirects to
private addresses and to other hosts. Nothing may crash, failures are counted, retries happen as
configured, and no key ever leaves its own API or shows up in any output, error or cache."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from PIL import Image
from search_fakes import send_bytes

from mmsearch_r1.tools.cache import CacheConfig
from mmsearch_r1.tools.engines import EngineConfig, engine_stats, make_engines
from mmsearch_r1.tools.net import NetConfig, SafeHttp, redact, run_sync
from mmsearch_r1.tools.types import SearchError
from mmsearch_r1.tools.web import ImageHostConfig, WebConfig, WebSearch

KEYS = {
    "SERPAPI_API_KEY": "serp-SECRET-1234",
    "JINA_API_KEY": "jina-SECRET-5678",
    "OPENAI_API_KEY": "sk-SECRET-90ab",
}


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


PAGE = """<html><head><title>Page {n}</title></head><body><article><h1>Page {n}</h1>
<p>The Eiffel Tower is 330 metres tall and stands in Paris, France. It was finished in 1889 for the
World's Fair and is made of wrought iron.</p><p>Page {n} also talks about other things at some length so
that the extractor keeps it as main content of the document for the reader.</p></article></body></html>"""


class Fake:
    """Shared state of the fake server: scripted faults per route, a request log, in-flight tracking."""

    def __init__(self):
        self.faults: dict[str, list[str]] = {}
        self.log: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        self.delay = 0.0
        self.base = ""

    def fault(self, route: str) -> str | None:
        with self.lock:
            seq = self.faults.get(route)
            return seq.pop(0) if seq else None


def make_handler(fake: Fake):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, *args, **kwargs):
            send_bytes(self, *args, **kwargs)

        def do_GET(self):
            self._handle()

        def do_POST(self):
            self._handle()

        def do_PUT(self):
            self._handle()

        def _handle(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            parts = urlsplit(self.path)
            route = parts.path.split("/")[1]
            with fake.lock:
                fake.log.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body.decode("latin-1")}
                )
                fake.inflight += 1
                fake.max_inflight = max(fake.max_inflight, fake.inflight)
            try:
                if fake.delay:
                    time.sleep(fake.delay)
                f = fake.fault(route)
                if f == "timeout":
                    time.sleep(1.0)
                    return self._send(200, b"{}")
                if f in ("429", "500", "503"):
                    return self._send(int(f), b'{"error": "try later"}', headers={"Retry-After": "0"})
                if f == "malformed":
                    return self._send(200, b'{"organic_results": [ {"title": ')
                if f == "drip":  # headers at once, then one byte every 0.1 s: no single read times out
                    self.send_response(200)
                    self.send_header("Content-Length", "40")
                    self.end_headers()
                    for _ in range(40):
                        time.sleep(0.1)
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            return
                    return
                if f == "huge":
                    return self._send(200, b"x" * 3_000_000)
                if f == "redirect-private":
                    return self._send(
                        302, b"", headers={"Location": "http://169.254.169.254/latest/meta-data"}
                    )
                if f == "redirect-offsite":
                    return self._send(302, b"", headers={"Location": "http://example.invalid/steal"})
                self._route(route, parts, body)
            finally:
                with fake.lock:
                    fake.inflight -= 1

        def _route(self, route, parts, body):
            q = {k: v[0] for k, v in parse_qs(parts.query).items()}
            base = fake.base
            if route == "serpapi":
                if q.get("api_key") != KEYS["SERPAPI_API_KEY"]:
                    return self._send(401, b'{"error": "Invalid API key."}')
                if q.get("engine") == "google_lens":
                    vm = [
                        {
                            "position": i + 1,
                            "title": f"Match {i}",
                            "link": f"{base}/page/{i}",
                            "source": "example",
                            "thumbnail": f"{base}/thumb/{i}.png",
                        }
                        for i in range(6)
                    ]
                    vm[1]["thumbnail"] = f"{base}/thumb-missing/1.png"
                    return self._send(
                        200,
                        json.dumps({"search_metadata": {"status": "Success"}, "visual_matches": vm}).encode(),
                    )
                org = [
                    {
                        "position": i + 1,
                        "title": f"Result {i}",
                        "link": f"{base}/page/{i}",
                        "snippet": f"Snippet {i} about {q.get('q')}",
                    }
                    for i in range(8)
                ]
                org[0]["link"] = f"{base}/redir/0"  # this page redirects to a private address
                return self._send(
                    200,
                    json.dumps({"search_metadata": {"status": "Success"}, "organic_results": org}).encode(),
                )
            if route == "searxng":
                if q.get("engines") == "tineye":
                    res = [
                        {
                            "title": f"Tin {i}",
                            "url": f"{base}/page/{i}",
                            "img_src": f"{base}/thumb/{i}.png",
                            "thumbnail_src": f"{base}/thumb/{i}.png",
                        }
                        for i in range(3)
                    ]
                else:
                    res = [
                        {"title": f"Sx {i}", "url": f"{base}/page/{i}", "content": f"content {i}"}
                        for i in range(4)
                    ]
                return self._send(200, json.dumps({"query": q.get("q"), "results": res}).encode())
            if route == "jina":
                target = unquote(parts.path[len("/jina/") :])
                data = {
                    "code": 200,
                    "status": 20000,
                    "data": {
                        "title": "Read " + target,
                        "url": target,
                        "content": "The Eiffel Tower is 330 metres tall. It is in Paris. " * 3,
                    },
                }
                return self._send(200, json.dumps(data).encode())
            if route == "v1":
                req = json.loads(body)
                content = f"SUMMARY[{req['model']}]: The tower is 330 metres tall."
                out = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": req["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19},
                }
                return self._send(200, json.dumps(out).encode())
            if route == "page":
                return self._send(200, PAGE.format(n=parts.path.rsplit("/", 1)[1]).encode(), "text/html")
            if route == "redir":
                return self._send(302, b"", headers={"Location": "http://10.1.2.3/internal"})
            if route == "thumb":
                return self._send(200, _png(), "image/png")
            if route == "upload":
                return self._send(200, f"{base}/hosted/{parts.path.rsplit('/', 1)[1]}".encode(), "text/plain")
            return self._send(404, b"not found", "text/plain")  # fmt: skip

    return H


@pytest.fixture(scope="module")
def server():
    fake = Fake()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    srv.daemon_threads = True
    fake.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield fake
    srv.shutdown()


@pytest.fixture
def fake(server, monkeypatch):
    for _ in range(150):  # let requests left hanging by a timeout test finish
        if server.inflight == 0:
            break
        time.sleep(0.02)
    server.faults.clear()
    server.log.clear()
    server.delay = 0.0
    server.max_inflight = 0
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("SEARXNG_URL", raising=False)
    return server


def net(**kw) -> NetConfig:
    base = dict(timeout_s=0.3, retries=2, backoff_s=0.01, backoff_max_s=0.05, allow_networks=["127.0.0.0/8"],
                max_bytes=1_000_000)  # fmt: skip
    return NetConfig(**(base | kw))


def web(fake: Fake, **kw) -> WebSearch:
    cfg = dict(serpapi_url=f"{fake.base}/serpapi/search.json", jina_url=f"{fake.base}/jina/",
               llm_base_url=f"{fake.base}/v1", searxng_url=f"{fake.base}/searxng", net=net())  # fmt: skip
    return WebSearch(WebConfig(**(cfg | kw)))


def query_image(fake: Fake) -> Image.Image:
    im = Image.new("RGB", (32, 32), (1, 2, 3))
    im.info["url"] = f"{fake.base}/thumb/query.png"
    return im


def assert_no_key(*texts):
    blob = "\n".join(str(t) for t in texts)
    for v in KEYS.values():
        assert v not in blob


def keys_only_to_own_api(fake: Fake):
    for r in fake.log:
        blob = r["path"] + json.dumps(r["headers"]) + r["body"]
        route = r["path"].split("/")[1]
        for name, v in KEYS.items():
            own = {"SERPAPI_API_KEY": "serpapi", "JINA_API_KEY": "jina", "OPENAI_API_KEY": "v1"}[name]
            if route != own:
                assert v not in blob, f"{name} sent to {r['path']}"


# ---------------------------------------------------------------------------------------------------
def test_serpapi_lens_image_search(fake):
    w = web(fake)
    hits = w.search_image(query_image(fake), k=3)
    assert [h.title for h in hits] == ["Match 0", "Match 2", "Match 3"]  # Match 1's thumbnail is dead
    assert all(h.thumbnail is not None and h.thumbnail.size == (20, 12) for h in hits)
    assert w.http.counters["thumbnail_failures"] == 1
    keys_only_to_own_api(fake)


def test_serpapi_text_search_with_jina_and_llm_summaries(fake):
    w = web(fake, reader="jina", summarizer="llm", llm_model="qwen-test")
    hits = asyncio.run(w.asearch_text("eiffel tower height", k=3))
    assert len(hits) == 3 and all("SUMMARY[qwen-test]" in h.summary for h in hits)
    chat = [r for r in fake.log if r["path"].startswith("/v1/chat/completions")]
    assert len(chat) == 3 and chat[0]["headers"]["Authorization"] == "Bearer " + KEYS["OPENAI_API_KEY"]
    sent = json.loads(chat[0]["body"])
    assert sent["messages"][0]["role"] == "system" and "eiffel tower height" in sent["messages"][1]["content"]
    jina = [r for r in fake.log if r["path"].startswith("/jina/")]
    assert jina[0]["headers"]["Accept"] == "application/json"
    keys_only_to_own_api(fake)
    assert_no_key([h.__dict__ for h in hits], w.http.counters)


def test_local_reader_refuses_redirect_to_private_address_and_falls_back(fake):
    w = web(fake, reader="local", summarizer="extractive", candidates=3, snippet_fallback=True)
    hits = w.search_text("eiffel", k=3)
    # result 0 redirects to 10.1.2.3: refused, counted; no candidate is left, so its snippet stands in
    assert [h.title for h in hits] == ["Result 0", "Result 1", "Result 2"]
    assert hits[0].summary == "Snippet 0 about eiffel"
    assert all("330 metres" in h.summary for h in hits[1:])
    assert w.http.counters["refused"] == 1 and w.http.counters["page_failures"] == 1
    assert not any("10.1.2.3" in r["path"] for r in fake.log)


def test_searxng_image_and_text(fake):
    w = web(fake, image_backend="searxng", text_backend="searxng", reader="local")
    hits = w.search_image(query_image(fake), k=2)
    assert [h.title for h in hits] == ["Tin 0", "Tin 1"] and hits[0].thumbnail is not None
    tin = [r for r in fake.log if r["path"].startswith("/searxng/search")][0]["path"]
    assert "engines=tineye" in tin and "thumb%2Fquery.png" in tin
    th = w.search_text("eiffel", k=2)
    assert [h.title for h in th] == ["Sx 0", "Sx 1"] and "330 metres" in th[0].summary
    keys_only_to_own_api(fake)


def test_retries_on_429_then_succeeds(fake):
    fake.faults["serpapi"] = ["429", "503"]
    w = web(fake)
    assert len(w.search_image(query_image(fake), k=2)) == 2
    assert w.http.counters["retries"] == 2 and w.http.counters["status_429"] == 1


def test_5xx_exhausts_retries_as_configured(fake):
    fake.faults["serpapi"] = ["500"] * 10
    w = web(fake, net=net(retries=3))
    with pytest.raises(SearchError, match="HTTP 500") as e:
        w.search_image(query_image(fake), k=2)
    assert sum(r["path"].startswith("/serpapi") for r in fake.log) == 4
    assert w.http.counters["retries"] == 3 and w.http.counters["failures"] == 1
    assert_no_key(e.value)


def test_timeout_is_retried_then_reported(fake):
    fake.faults["serpapi"] = ["timeout", "timeout"]
    w = web(fake, net=net(retries=1, timeout_s=0.2))
    with pytest.raises(SearchError, match="timeout") as e:
        w.search_text("q", k=1)
    assert w.http.counters["timeouts"] == 2 and e.value.retryable
    assert_no_key(e.value)


def test_slowly_dripping_answer_hits_the_total_deadline(fake):
    fake.faults["serpapi"] = ["drip"]
    w = web(fake, net=net(retries=0, timeout_s=0.3))
    with pytest.raises(SearchError, match="no complete answer"):
        w.search_text("q", k=1)
    assert w.http.counters["timeouts"] == 1


def test_malformed_json_and_huge_body(fake):
    fake.faults["serpapi"] = ["malformed"]
    w = web(fake)
    with pytest.raises(SearchError, match="malformed JSON"):
        w.search_text("q", k=1)
    assert w.http.counters["retries"] == 0
    fake.faults["serpapi"] = ["huge"]
    with pytest.raises(SearchError, match="too large"):
        w.search_text("q", k=1)


def test_api_redirects_to_other_hosts_or_private_addresses_are_refused(fake):
    w = web(fake)
    fake.faults["serpapi"] = ["redirect-offsite"]
    with pytest.raises(SearchError, match="another origin") as e:
        w.search_text("q", k=1)
    assert_no_key(e.value)
    fake.faults["serpapi"] = ["redirect-private"]
    with pytest.raises(SearchError, match="another origin"):
        w.search_text("q", k=1)


def test_address_policy_on_untrusted_urls():
    http = SafeHttp(NetConfig(timeout_s=0.5))

    async def check(url):
        await http.check_url(url)

    for bad in (
        "file:///etc/passwd",
        "ftp://example.org/x",
        "http://127.0.0.1/",
        "http://169.254.169.254/x",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
        "http://localhost/",
    ):
        with pytest.raises(SearchError, match="refused|resolve"):
            run_sync(check(bad))
    allowed = SafeHttp(NetConfig(allow_networks=["127.0.0.0/8"]))
    run_sync(allowed.check_url("http://127.0.0.1:1/"))  # allowed explicitly (tests)


def test_missing_keys_name_the_variable(fake, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY")
    w = web(fake)
    with pytest.raises(SearchError, match="SERPAPI_API_KEY"):
        w.search_text("q", k=1)
    with pytest.raises(SearchError, match="SERPAPI_API_KEY"):
        make_engines(EngineConfig(image="web", text="none", web=w.config))
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(SearchError, match="OPENAI_API_KEY"):
        WebSearch(WebConfig(summarizer="llm", text_backend="searxng", searxng_url="http://x")).check_env(
            ("text",)
        )
    with pytest.raises(SearchError, match="SEARXNG_URL"):
        WebSearch(WebConfig(text_backend="searxng")).check_env(("text",))
    # a self-hosted OpenAI-compatible server needs no key
    WebSearch(WebConfig(summarizer="llm", text_backend="searxng", searxng_url="http://x",
                        llm_base_url="http://127.0.0.1:8000/v1")).check_env(("text",))  # fmt: skip


def test_images_given_as_pixels(fake, tmp_path, monkeypatch):
    w = web(fake)
    plain = Image.new("RGB", (8, 8), "green")
    with pytest.raises(SearchError, match="public image URL"):
        w.search_image(plain, k=1)
    w = web(
        fake, image_host=ImageHostConfig(mode="dir", dir=str(tmp_path), base_url="https://img.example.org/q")
    )
    url = run_sync(w.image_url(plain))
    assert url.startswith("https://img.example.org/q/") and (tmp_path / url.rsplit("/", 1)[1]).exists()
    w = web(fake, image_host=ImageHostConfig(mode="upload", upload_url=f"{fake.base}/upload"))
    assert run_sync(w.image_url(plain)).startswith(f"{fake.base}/hosted/")
    put = [r for r in fake.log if r["path"].startswith("/upload/")][0]
    assert put["body"].startswith("\x89PNG")


def test_concurrency_is_bounded(fake):
    fake.delay = 0.05
    w = web(fake, net=net(max_concurrency=3, timeout_s=2.0))

    async def many():
        return await asyncio.gather(*(w.http.request("GET", f"{fake.base}/thumb/{i}.png") for i in range(12)))

    outs = run_sync(many())
    assert len(outs) == 12 and fake.max_inflight <= 3


def test_guarded_engines_never_raise_other_errors_and_count(fake, tmp_path):
    cfg = EngineConfig(
        image="web", text="web",
        web=WebConfig(serpapi_url=f"{fake.base}/serpapi/search.json", jina_url=f"{fake.base}/jina/",
                      reader="jina", summarizer="llm", llm_base_url=f"{fake.base}/v1", net=net(retries=0)),
        cache=CacheConfig(path=str(tmp_path / "c.sqlite"), mode="read-write"),
    )  # fmt: skip
    eng = make_engines(cfg)
    img = query_image(fake)
    ok = eng.image.try_search_image(img, k=2)
    assert ok.error is None and len(ok.hits) == 2
    again = eng.image.try_search_image(img, k=2)  # from the cache: no new SerpAPI request
    assert [h.title for h in again.hits] == [h.title for h in ok.hits]
    assert sum(r["path"].startswith("/serpapi") for r in fake.log) == 1
    fake.faults["serpapi"] = ["500"]
    bad = eng.text.try_search_text("new query", k=2)
    assert bad.error and "HTTP 500" in bad.error and not bad.hits
    good = eng.text.try_search_text("eiffel", k=2)
    assert good.error is None and len(good.hits) == 2
    stats = engine_stats(eng)
    assert (
        stats["text"]["failures"] == 1 and stats["cache"]["hits"] == 1 and stats["cache"]["dollars_spent"] > 0
    )
    cache_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert_no_key(cache_bytes.decode("latin-1"), stats, bad.error, eng.extra)
    keys_only_to_own_api(fake)


def test_redact_removes_keys():
    msg = "GET https://x/search?api_key=abc123&q=1 Authorization: Bearer tok-999 and serp-SECRET-1234"
    out = redact(msg, ["serp-SECRET-1234"])
    assert "abc123" not in out and "tok-999" not in out and "serp-SECRET-1234" not in out


def test_per_host_rate_limit_spaces_request_starts(monkeypatch):
    http = SafeHttp(NetConfig(per_host_interval_s=10.0))
    slept: list[float] = []

    async def fake_sleep(s):
        slept.append(s)

    monkeypatch.setattr("mmsearch_r1.tools.net.asyncio.sleep", fake_sleep)

    async def go():
        for host in ("a:1", "a:1", "a:1", "b:1"):
            await http._throttle(host)

    asyncio.run(go())
    assert (
        len(slept) == 2 and slept[0] == pytest.approx(10, abs=0.5) and slept[1] == pytest.approx(20, abs=0.5)
    )


def test_package_exports_are_lazy():
    import subprocess
    import sys

    code = "import sys, mmsearch_r1.tools as t; t.EngineConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
