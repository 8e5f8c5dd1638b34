"""``python -m mmsearch_r1.miniature [--smoke] [--reuse] ...``: the miniature's Finding 5 runs from a shell.

What it does: parses the options into a `MiniatureConfig` (``--smoke``: `SMOKE` sizes) and runs
`mmsearch_r1.miniature.run.reproduce_stage`; exits 1 when a Finding 5 target fails (not with
``--smoke``). What it does not: nothing beyond that call.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from mmsearch_r1.miniature.data import MiniatureConfig
from mmsearch_r1.miniature.run import SMOKE, reproduce_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmsearch_r1.miniature",
        description="The miniature: Finding 5 (search penalty, balance) on CPU.",
    )
    parser.add_argument(
        "--root", default=MiniatureConfig.root, help="data folder (questions, index, warm start)"
    )
    parser.add_argument("--runs-dir", default=MiniatureConfig.runs_dir)
    parser.add_argument("--sft-steps", type=int, default=MiniatureConfig.sft_steps)
    parser.add_argument("--grpo-steps", type=int, default=MiniatureConfig.grpo_steps)
    parser.add_argument("--penalties", type=float, nargs="+", default=list(MiniatureConfig.penalties))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse a finished warm start and finished runs")
    parser.add_argument("--smoke", action="store_true", help="every stage on a few steps")
    a = parser.parse_args(argv)
    cfg = MiniatureConfig(root=a.root, runs_dir=a.runs_dir, sft_steps=a.sft_steps, grpo_steps=a.grpo_steps,
                          penalties=tuple(a.penalties), seed=a.seed)  # fmt: skip
    if a.smoke:
        cfg = replace(cfg, **SMOKE)
    summary = reproduce_stage(cfg, fresh=not a.reuse)
    return 0 if summary["all_pass"] or a.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
