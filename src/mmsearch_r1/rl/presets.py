"""`PRESETS`: the named starting points of a GRPO run, and the CPU demo's shared settings.

What it does: ``paper`` (the `TrainConfig` defaults), ``cpu_demo`` (the CPU demo policy's own settings,
each with why) and ``tiny`` (tests and smoke runs), as plain dicts of `TrainConfig` fields; and the demo's
search settings (`DEMO_IMAGE_K`, `DEMO_TEXT_K`) and training set (`DEMO_DATASET`), which the warm start,
curation, RL and evaluation share.

What it does not: no validation or loading (`mmsearch_r1.rl.config`: `preset`, `load_config`).
"""

from __future__ import annotations

from typing import Any

DEMO_IMAGE_K = 1
"""Image hits the CPU demo policy sees (warm start, curation, RL, evaluation). One: the local image search
puts the right entity first on every world query (recall@1 1.0, benchmarks/bench_image_recall.py), and
each thumbnail is 16 tokens that the demo's untrained vision tower turns into noise for its 135M LM."""
DEMO_TEXT_K = 2
"""Text pages the CPU demo policy sees: short results are what a 135M model copies from reliably."""
DEMO_DATASET = "data/generated/world_train.parquet"
"""The search-balanced world training set notebook 01 writes (curated to ~32% search-free)."""

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # The CPU demo: the warm-started SmolLM2-135M Qwen2.5-VL policy, offline world, 2 cores. The top 8 LM
    # layers are trained (as in the warm start); beta 0 drops the reference forward (the demo runs few
    # steps); lr 1e-5, since larger steps flip a 135M policy to always-search. Sizes are chosen to fit
    # make demo's 30 minutes: the measurements behind each are in docs/cpu_demo_settings.md.
    "cpu_demo": {
        "name": "demo_grpo",
        "model": "demo-sft",
        "dtype": "float32",
        "dataset": DEMO_DATASET,
        "engine": "local",
        "train_top_layers": 8,  # as the warm start (notebook 02) trains
        "image_k": DEMO_IMAGE_K,  # as in the warm start (the policy was taught on these)
        "text_k": DEMO_TEXT_K,
        # 8 rollouts per step and 8 steps: what make demo's budget allows (docs/cpu_demo_settings.md).
        "num_generations": 4,
        "prompts_per_step": 2,
        "steps_per_generation": 1,
        "gradient_accumulation_steps": 2,  # rollouts generated together, trained 4 at a time (memory)
        "learning_rate": 1e-5,
        "weight_decay": 0.0,
        "beta": 0.0,
        "loss_type": "dapo",
        "scale_rewards": "group",
        # Model + tool tokens of one rollout, tool results included: TRL drops a result that would pass
        # it and ends the rollout there (`rl.rewards.cut_after_search`). An image-then-text trajectory
        # of the warm-started policy takes 368 tokens (median) and at most 447 (RAG and on-demand
        # evaluation records, 175 trajectories). At 256 every second search was cut before its
        # answer and scored 0, below a wrong answer's 0.1, so GRPO unlearned the second search.
        # A looping rollout (rare) runs to the cap.
        "max_completion_length": 512,
        "max_steps": 8,
        "save_steps": 4,
        "bf16": "auto",  # fp32 weights, bf16 autocast where the CPU has native bf16 matmuls (`fast_bf16`)
        "gradient_checkpointing": "false",
    },
    # Tests and smoke runs: a random tiny Qwen2.5-VL, the synthetic questions and index.
    "tiny": {
        "name": "tiny_grpo",
        "model": "tiny",
        "dtype": "float32",
        "dataset": "synthetic",
        "engine": "synthetic",
        "num_generations": 4,
        "prompts_per_step": 2,
        "steps_per_generation": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "beta": 0.0,
        "loss_type": "dapo",
        "max_completion_length": 96,
        "max_steps": 2,
        "save_steps": 1,
        "bf16": "false",
        "gradient_checkpointing": "false",
        "save_final": False,
        "report_to": "none",
    },
}
"""Named starting points; a config file or ``--set`` overrides refine them."""
