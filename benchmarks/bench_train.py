"""Training profile of the CPU demo policy: seconds per GRPO step split into generation, tool calls and the
rest (reward, log-probs, backward, optimizer), generated tokens per second, peak memory; the step as it
was ("before": TRL's LM head over every position) and as it is ("after"), side by side in one run, with
the ratio.

Runs a few GRPO steps of the ``cpu_demo`` preset (`mmsearch_r1.rl.presets.PRESETS`) with the warm-started demo
policy (``demo-sft``) when notebook 02 has produced it, else the un-warm-started ``demo`` policy (same model,
same cost per token; its rollouts differ), else the tiny policy (said so in the JSON). Writes
``benchmarks/results/train.json``.

    python benchmarks/bench_train.py [--steps 3] [--model demo-sft|demo|tiny] [--only after]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).resolve().parent / "results"


def pick_model() -> tuple[str, str]:
    """The policy to profile and why."""
    from mmsearch_r1.policy.load import DEMO_SFT_DIR

    if (DEMO_SFT_DIR / "config.json").is_file() or (DEMO_SFT_DIR / "adapter_config.json").is_file():
        return "demo-sft", "the warm-started CPU demo policy"
    try:
        from mmsearch_r1.policy.demo import ensure_demo_policy

        ensure_demo_policy()
        return (
            "demo",
            "the CPU demo policy before its warm start (notebook 02 has not run): same cost per token",
        )
    except Exception as err:  # noqa: BLE001 - fall back, and say why
        return "tiny", f"the tiny policy: the demo policy is unavailable ({type(err).__name__}: {err})"


def step_profile(metrics: list[dict], rollouts: int) -> list[dict]:
    """Per-step seconds split into generation / tools / the rest, and generated tokens per second, from a
    run's metrics.jsonl records (``completion_tokens`` is the mean per rollout)."""
    steps = []
    for m in metrics:
        gen_tokens = (m.get("completion_tokens") or 0) * rollouts
        steps.append(
            {
                "step": m["step"],
                "seconds": m["step_seconds"],
                "generation_s": m["generation_seconds"],
                "tools_s": m["tool_seconds"],
                "rest_s": m["other_seconds"],
                "generated_tokens": gen_tokens,
                "generated_tokens_per_s": gen_tokens / m["generation_seconds"]
                if m["generation_seconds"]
                else None,
                "image_calls_per_rollout": m["image_calls"],
                "text_calls_per_rollout": m["text_calls"],
                "search_ratio": m["search_ratio"],
                "peak_memory_mb": m.get("peak_memory_mb"),
            }
        )
    return steps


def median_of(steps: list[dict], key: str):
    """Median of ``key`` over ``steps`` (None values left out; None when there are none)."""
    vals = [s[key] for s in steps if s.get(key) is not None]
    return statistics.median(vals) if vals else None


VARIANTS = {
    "before": {"policy_token_head": "false"},
    "after": {},
}
"""The settings each variant changes from the preset: everything else (rollouts, lengths, seeds) is equal."""


def profile(model: str, steps: int, changes: dict) -> dict:
    """Run ``steps`` GRPO steps of the preset with ``changes``; the medians over steps 2..n and each step."""
    from mmsearch_r1.rl.config import preset
    from mmsearch_r1.rl.train import train

    base = "tiny" if model == "tiny" else "cpu_demo"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset(base, model=model, max_steps=steps, save_steps=10_000, save_final=False, report_to="none",
                     output_dir=str(Path(tmp) / "run"), resume="never", log_samples=0, **changes)  # fmt: skip
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
    rollouts = cfg.prompts_per_step * cfg.num_generations
    per_step = step_profile(result.metrics, rollouts)
    later = per_step[1:] or per_step  # the first step pays one-off warm-up costs
    return {
        "changes": changes,
        "preset": base,
        "rollouts_per_step": rollouts,
        "max_completion_length": cfg.max_completion_length,
        "steps": len(per_step),
        "seconds_per_step": median_of(later, "seconds"),
        "generation_s": median_of(later, "generation_s"),
        "tools_s": median_of(later, "tools_s"),
        "rest_s (rewards, log-probs, backward, optimizer)": median_of(later, "rest_s"),
        "generated_tokens_per_s": median_of(later, "generated_tokens_per_s"),
        "peak_memory_mb": result.summary.get("peak_memory_mb"),
        "wall_seconds_including_setup": wall,
        "per_step": per_step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default=None, help="demo-sft, demo or tiny (default: the best available)")
    parser.add_argument("--only", choices=sorted(VARIANTS), help="profile one variant only (no ratio)")
    args = parser.parse_args(argv)

    model, why = (args.model, "chosen on the command line") if args.model else pick_model()
    names = [args.only] if args.only else list(VARIANTS)
    runs = {name: profile(model, args.steps, VARIANTS[name]) for name in names}
    out = {
        "what": "seconds per GRPO step of the cpu_demo preset, split by phase (median over steps 2..n), "
        "before and after the CPU step changes, in one run",
        "policy": model,
        "policy_note": why,
        "variants": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },  # fmt: skip
    }
    if len(runs) == 2:
        b, a = runs["before"], runs["after"]
        out["speedup_seconds_per_step"] = b["seconds_per_step"] / a["seconds_per_step"]
        out["speedup_rest_s"] = (
            b["rest_s (rewards, log-probs, backward, optimizer)"]
            / a["rest_s (rewards, log-probs, backward, optimizer)"]
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "variants"}, indent=2))
    for name, r in runs.items():
        print(name, {k: v for k, v in r.items() if k != "per_step"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
