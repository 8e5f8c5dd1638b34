"""`make demo`: the whole CPU pipeline, offline, stage by stage.

What it does: runs, in order, the stages of the pipeline (world → warm start → curation → GRPO with
penalty 0.1 → evaluation of direct, RAG and on-demand → figures) and ends with a short printed
summary. ``--reproduce`` (``make reproduce``) runs `REPRODUCE_STAGES` instead: the paper's penalty and
balance ablations on the miniature, and all figures. A stage whose module is not in this checkout yet is
reported as missing, never faked.

What it does not: no logic of its own; each stage is a call into the library.
"""

from __future__ import annotations

import argparse
import importlib
import time

from mmsearch_r1.protocol import render_turn
from mmsearch_r1.rewards import reward_parts

# (stage name, module, function run with no arguments, what it does)
STAGES: list[tuple[str, str, str, str]] = [
    (
        "world",
        "mmsearch_r1.pipeline",
        "world_stage",
        "the offline world, its search indexes, the question pool",
    ),
    ("warm start", "mmsearch_r1.warmstart", "demo_stage", "supervised warm start of the CPU policy"),
    (
        "curation",
        "mmsearch_r1.pipeline",
        "curation_stage",
        "search-balanced curation with the warm-started policy",
    ),
    ("GRPO", "mmsearch_r1.train", "demo_stage", "GRPO with on-demand search, penalty 0.1"),
    ("evaluation", "mmsearch_r1.evaluate", "demo_stage", "direct / RAG / on-demand on the test split"),
    ("figures", "mmsearch_r1.analysis", "demo_stage", "figures from the run folders"),
]
REPRODUCE_STAGES: list[tuple[str, str, str, str]] = [
    (
        "Finding 5",
        "mmsearch_r1.miniature",
        "reproduce_stage",
        "the miniature's penalty and balance ablations",
    ),
    ("figures", "mmsearch_r1.miniature_figures", "demo_stage", "the miniature's curves, frontier, table"),
    ("demo figures", "mmsearch_r1.analysis", "demo_stage", "figures of any make demo runs under runs/"),
]
"""``make reproduce``: the paper's ablations. They run on the miniature (a from-scratch ~1M-parameter
policy, 2-4 s per GRPO step) because the CPU demo policy costs ~75 s per step; run ``make demo`` for
the demo policy's own pipeline."""


def reward_table() -> list[tuple[str, float]]:
    """The paper's six reward values, computed by the library (a self-check printed by the demo)."""
    ok, bad = render_turn("answer", "r", answer="Lima"), render_turn("answer", "r", answer="Cusco")
    search = render_turn("image_search", "r")
    rows = [
        ("correct, no search", [ok]),
        ("correct, searched", [search, ok]),
        ("correct, no search, bad format", ["<answer>Lima</answer>"]),
        ("correct, searched, bad format", [search, "<answer>Lima</answer>"]),
        ("wrong", [bad]),
        ("wrong, bad format", ["<answer>Cusco</answer>"]),
    ]
    return [(name, reward_parts(turns, ["Lima"]).reward) for name, turns in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reproduce", action="store_true", help="run the ablations instead (make reproduce)")
    args = parser.parse_args(argv)
    missing, done = [], []
    for name, module, func, what in REPRODUCE_STAGES if args.reproduce else STAGES:
        try:
            mod = importlib.import_module(module)
            fn = getattr(mod, func)
        except (ImportError, AttributeError):
            print(f"[missing] {name}: {what} ({module}.{func} is not in this checkout yet)")
            missing.append(name)
            continue
        t0 = time.perf_counter()
        print(f"[run] {name}: {what}", flush=True)
        fn()
        done.append((name, time.perf_counter() - t0))
    print("\nReward self-check (the paper's six values):")
    for name, value in reward_table():
        print(f"  {name:<32} {value:.2f}")
    print("\nSummary:")
    for name, secs in done:
        print(f"  ran     {name:<12} {secs:7.1f} s")
    for name in missing:
        print(f"  missing {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
