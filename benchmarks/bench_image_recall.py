"""Recall@1/@5 and latency of the local image engine on the World question pool's perturbed query images.

Builds (or reuses, when fresh) the World index with ``tools.engines.world_indexes`` in
``$MMSEARCH_INDEX_DIR`` (default ``data/world/index``), builds the question pool
(``QuestionConfig(seed=0)``), and scores the visual-knowledge rows ("which country is this?", one
perturbed query image per entity and view) with ``data.questions.recall_by_view`` under three scorings of
the same index (its ``score_weights`` overridden):
- ``cnn``: EfficientNet-Lite0 features alone (the scoring of features version 2, before layout views);
- ``layout``: the colour-layout views alone (no CNN forward pass);
- ``hybrid_full``: the index's own weights (0.1 × CNN + 1 × layout), CNN always computed;
- ``hybrid``: the same with the engine's cascade (the default: the CNN only runs when the layout
  views leave the first hit in doubt; same first hits as ``hybrid_full``).
Latency is the p50/p95 of ``search_image(k=5)`` (thumbnails included) over the scored queries, one
process, ``OMP_NUM_THREADS`` as set. Weights were chosen on train and validation; test is scored only
with ``--splits ... test``.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_image_recall.py [--splits train,validation]``;
writes ``benchmarks/results/image_recall.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from mmsearch_r1.data.questions import QuestionConfig, build_pool, recall_by_view
from mmsearch_r1.data.world.build import WorldConfig, build_world
from mmsearch_r1.tools.engines import DEFAULT_INDEX_DIR, world_indexes
from mmsearch_r1.tools.local import LocalImageEngine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "image_recall.json"


class Timed:
    """Wraps an engine and records the latency of each ``search_image`` call."""

    def __init__(self, engine: LocalImageEngine):
        self.engine, self.seconds = engine, []

    def search_image(self, image, *, k: int = 5):
        t = time.perf_counter()
        hits = self.engine.search_image(image, k=k)
        self.seconds.append(time.perf_counter() - t)
        return hits


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", default="train,validation", help="comma-separated pool splits to score")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    index_dir = Path(os.environ.get("MMSEARCH_INDEX_DIR", DEFAULT_INDEX_DIR))
    t = time.perf_counter()
    image_dir = world_indexes(index_dir) / "image"
    build_s = time.perf_counter() - t
    pool = build_pool(build_world(WorldConfig()), QuestionConfig(seed=0))
    engine = LocalImageEngine.load(image_dir)
    own = engine.score_weights
    engine.search_image(pool["train"][0]["image"], k=5)  # warm-up: loads the CNN
    res: dict = {
        "index": str(image_dir),
        "index_ready_s": round(build_s, 1),
        "meta": json.loads((image_dir / "meta.json").read_text()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "scorings": {},
    }
    runs = [("cnn", (1.0, 0.0), False), ("layout", (0.0, 1.0), False), ("hybrid_full", own, False)]
    for name, weights, cascade in [*runs, ("hybrid", own, True)]:
        engine.score_weights, engine.cascade = weights, cascade
        timed = Timed(engine)
        out = {"score_weights": list(weights), "cascade": cascade}
        for split in a.splits.split(","):
            by_view = recall_by_view(pool[split], timed, ks=(1, 5))
            out[split] = {
                v: {k: round(x, 3) if k != "n" else x for k, x in r.items()} for v, r in by_view.items()
            }
        s = sorted(timed.seconds)
        out["latency_ms"] = {
            "p50": round(1000 * statistics.median(s), 1),
            "p95": round(1000 * s[int(0.95 * (len(s) - 1))], 1),
            "n": len(s),
        }
        res["scorings"][name] = out
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
