"""`make demo`: the whole CPU pipeline, offline, stage by stage.

What it does: runs, in order, the stages of the pipeline (world → warm start → curation → GRPO with
penalty 0.1 → evaluation of direct, RAG and on-demand → figures) and ends with a short printed
summary. ``--reproduce`` (``make reproduce``) runs `REPRODUCE_STAGES` instead: the paper's penalty and
balance ablations on the miniature, and all figures. A stage that fails stops the run with its traceback,
its name and exit status 1, so ``make demo`` fails with it.

What it does not: no logic of its own; each stage is a call into the library.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from mmsearch_r1 import pipeline
from mmsearch_r1.evaluation import analysis, evaluate
from mmsearch_r1.miniature import figures as miniature_figures
from mmsearch_r1.miniature import run as miniature
from mmsearch_r1.protocol.rewards import reward_parts
from mmsearch_r1.protocol.tags import render_turn
from mmsearch_r1.rl import train
from mmsearch_r1.sft import warmstart

# (stage name, function run with no arguments, what it does)
STAGES: list[tuple[str, Callable, str]] = [
    ("world", pipeline.world_stage, "the offline world, its search indexes, the question pool"),
    ("warm start", warmstart.demo_stage, "supervised warm start of the CPU policy"),
    ("curation", pipeline.curation_stage, "search-balanced curation with the warm-started policy"),
    ("GRPO", train.demo_stage, "GRPO with on-demand search, penalty 0.1"),
    ("evaluation", evaluate.demo_stage, "direct / RAG / on-demand on the test split"),
    ("figures", analysis.demo_stage, "figures from the run folders"),
]
REPRODUCE_STAGES: list[tuple[str, Callable, str]] = [
    ("Finding 5", miniature.reproduce_stage, "the miniature's penalty and balance ablations"),
    ("figures", miniature_figures.demo_stage, "the miniature's curves, frontier, table"),
    ("demo figures", analysis.demo_stage, "figures of any make demo runs under runs/"),
]
"""``make reproduce``: the paper's ablations. They run on the miniature (a from-scratch ~1M-parameter
policy) because the CPU demo policy is far slower per GRPO step; run ``make demo`` for the demo
policy's own pipeline."""


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
    done = []
    for name, fn, what in REPRODUCE_STAGES if args.reproduce else STAGES:
        t0 = time.perf_counter()
        print(f"[run] {name}: {what}", flush=True)
        try:
            fn()
        except Exception:  # noqa: BLE001 - say which stage failed, keep its traceback, stop
            traceback.print_exc()
            print(
                f"\n[failed] {name}: {what} (stages before it finished: {[n for n, _ in done]})",
                file=sys.stderr,
            )
            return 1
        done.append((name, time.perf_counter() - t0))
    print("\nReward self-check (the paper's six values):")
    for name, value in reward_table():
        print(f"  {name:<32} {value:.2f}")
    print("\nSummary:")
    for name, secs in done:
        print(f"  ran     {name:<12} {secs:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
