"""TRL's ``GRPOConfig`` from a `TrainConfig`, and the run settings it needs (processes, bf16, loggers).

What it does: `to_grpo_config(config, processes=, suppress_tokens=)` builds TRL's ``GRPOConfig`` (logging
every step, checkpoints every ``save_steps``, ``remove_unused_columns=False``, ``log_completions=False``);
`per_device_batch` checks that a step's rollouts split over processes and accumulation steps;
`world_size` reads the launch's processes; `fast_bf16` says whether bf16 mixed precision pays on this
machine; `reporters` turns ``report_to`` into the Trainer's list (the warm start's SFT uses these two too).

What it does not: no settings of its own (`mmsearch_r1.rl.config`), no training (`mmsearch_r1.rl.train`).
"""

from __future__ import annotations

import os
from typing import Any

from mmsearch_r1.rl.config import TrainConfig


def _flag(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "true"


def fast_bf16() -> bool:
    """Whether bf16 mixed precision pays here: a GPU with bf16, or a CPU whose oneDNN has native bf16
    matmuls (AVX512-BF16 or AMX), where it roughly halves a demo-policy SFT step (docs/cpu_demo_settings.md)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # older or non-x86 builds
        return False


def reporters(report_to: str) -> list[str]:
    """``report_to`` ("tensorboard", "wandb,trackio", "none") as the Trainer's list; an integration that is
    not installed is a clear error rather than a failure at the first step."""
    from transformers.integrations import get_available_reporting_integrations

    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise ValueError(f"report_to={report_to!r}: {', '.join(missing)} is not installed (or not a logger that "
                         f"transformers knows); pip install {' '.join(missing)}, or report_to=none (metrics.jsonl is "
                         "written anyway).")  # fmt: skip
    return names


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` from torchrun/accelerate; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(cfg: TrainConfig, processes: int | None = None) -> int:
    """Rollouts per device per micro-batch; raises when the batch does not split evenly."""
    processes = processes or world_size()
    rollouts = cfg.prompts_per_step * cfg.num_generations
    denom = processes * cfg.gradient_accumulation_steps
    if rollouts % denom:
        raise ValueError(
            f"prompts_per_step * num_generations = {rollouts} rollouts per step do not split over "
            f"{processes} processes x {cfg.gradient_accumulation_steps} accumulation steps; change "
            "prompts_per_step or gradient_accumulation_steps."
        )
    return rollouts // denom


def to_grpo_config(
    cfg: TrainConfig, *, processes: int | None = None, suppress_tokens: list[int] | None = None
):
    """TRL's ``GRPOConfig`` for ``cfg`` (logging every step, checkpoints every ``save_steps``)."""
    import torch
    from trl import GRPOConfig

    gpu = torch.cuda.is_available()
    bf16 = _flag(cfg.bf16, fast_bf16())
    generation_kwargs = {"suppress_tokens": list(suppress_tokens)} if suppress_tokens else None
    kwargs: dict[str, Any] = dict(
        output_dir=str(cfg.run_dir),
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_device_batch(cfg, processes),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        steps_per_generation=cfg.steps_per_generation * cfg.gradient_accumulation_steps,
        num_generations=cfg.num_generations,
        num_iterations=cfg.num_iterations,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_completion_length=cfg.max_completion_length,
        max_tool_calling_iterations=cfg.max_tool_calling_iterations,
        generation_kwargs=generation_kwargs,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_server_base_url=cfg.vllm_server_base_url,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,
        vllm_max_model_length=cfg.vllm_max_model_length,
        bf16=bf16,
        gradient_checkpointing=_flag(cfg.gradient_checkpointing, gpu),
        use_cpu=not gpu,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        remove_unused_columns=False,  # SearchEnv.reset and the reward read question/answer/aliases/image
        log_completions=False,  # TRL 1.16 cannot write completions that hold tool images to parquet
        report_to=reporters(cfg.report_to),
        disable_tqdm=False,
    )
    kwargs.update(cfg.grpo_overrides)
    return GRPOConfig(**kwargs)
