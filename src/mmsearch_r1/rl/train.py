"""GRPO training with on-demand search: ``python -m mmsearch_r1.rl.train --config …`` and `train(config)`.

What it does: builds everything from one `mmsearch_r1.rl.config.TrainConfig` and hands it to TRL's
``GRPOTrainer`` (which owns generation, the multi-turn tool loop, tool-token masking, the GRPO loss,
PEFT, vLLM and accelerate/DeepSpeed/FSDP):
- the policy (`mmsearch_r1.policy.load.load_policy`: a checkpoint, ``tiny``, ``demo``, ``demo-sft``; LoRA/QLoRA)
  with the protocol's chat template and parser installed and checked;
- the questions in TRL's conversational VLM format (`mmsearch_r1.rl.data`);
- the search engines (`mmsearch_r1.tools.engines.make_engines`), one `mmsearch_r1.agent.env.SearchEnv` per
  rollout (``environment_factory``), and the paper's reward (`mmsearch_r1.rl.rewards`);
- the run folder ``runs/<name>/``: ``config.json`` (resolved), ``launch.json`` (command, overrides,
  versions), ``metrics.jsonl`` (one line per step), ``samples.jsonl``, ``checkpoint-*/`` every
  ``save_steps``, ``final/``, ``summary.json``. With ``resume="auto"`` a killed run continues from its last
  checkpoint and metrics.jsonl keeps each completed step exactly once (`mmsearch_r1.rl.run_logging`).
`demo_stage()` is the GRPO stage of ``make demo`` (the ``cpu_demo`` preset).

What it does not: no GRPO loop or rollout loop of its own, no evaluation (``mmsearch_r1.evaluation.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.rl.config import (
    TrainConfig,
    coerce_config,
    describe_fields,
    load_config,
    parse_overrides,
    preset,
)
from mmsearch_r1.rl.grpo_args import to_grpo_config
from mmsearch_r1.rl.resume import (
    check_resume_compatible,
    clear_checkpoints,
    find_resume_checkpoint,
    fingerprint,
    steps_done,
)


@dataclass
class TrainResult:
    """What `train` returns."""

    run_dir: Path
    """The run folder."""
    config: TrainConfig
    """The resolved config (also in ``run_dir/config.json``)."""
    metrics: list[dict]
    """metrics.jsonl's records, one per step."""
    summary: dict
    """Steps, seconds per step, peak memory, first/last reward, accuracy and search ratio."""
    trainer: Any = None
    """The ``GRPOTrainer`` (its ``last_rollouts`` hold the last batch with images)."""
    resumed_from: str | None = None
    """Checkpoint the run resumed from, if any."""
    extra: dict = field(default_factory=dict)

    def final_dir(self, label: str, hint: str = "run the same command again to resume") -> Path:
        """``run_dir/final``, the finished policy; SystemExit naming ``label`` when a signal stopped the run
        before it was saved (the folder is then missing, or stale from an earlier run, and must not be read)."""
        if self.summary.get("stopped_by_signal"):
            raise SystemExit(f"{label}: GRPO stopped by a signal after step {self.summary['steps']} and "
                             f"checkpointed; {hint}")  # fmt: skip
        return self.run_dir / "final"


def _is_main() -> bool:
    """Global rank 0 (read from the launcher's environment, so no process group is started here)."""
    return int(os.environ.get("RANK", "0")) == 0


def _versions() -> dict:
    import torch
    import transformers
    import trl

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    out["trl"] = trl.__version__
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def write_run_files(cfg: TrainConfig, *, source: str | None = None, overrides: Any = None) -> Path:
    """Write ``config.json`` (every resolved field), ``fingerprint.json`` and ``launch.json`` into the run folder."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (run_dir / "fingerprint.json").write_text(json.dumps(fingerprint(cfg), indent=2) + "\n")
    launch = {
        "argv": sys.argv,
        "config_file": source,
        "config_file_text": Path(source).read_text() if source and Path(source).is_file() else None,
        "overrides": overrides,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "max_tool_calling_iterations": cfg.max_tool_calling_iterations,
    }
    (run_dir / "launch.json").write_text(json.dumps(launch, indent=2, default=str) + "\n")
    return run_dir


def freeze_lower_layers(model, top: int) -> int:
    """Leave only the top ``top`` language-model layers and the final norm trainable; return their size."""
    base = getattr(model, "model", model)
    lm = getattr(base, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(
            "train_top_layers needs a Qwen2.5-VL/Qwen3-VL-style model (model.language_model.layers)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for module in [*lm.layers[max(len(lm.layers) - top, 0) :], lm.norm]:
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_policy(cfg: TrainConfig):
    """The `mmsearch_r1.policy.load.Policy` of ``cfg`` (a tiny policy is saved first when TRL needs a path)."""
    from mmsearch_r1.policy.load import load_policy

    if cfg.model == "tiny" and cfg.beta > 0 and not cfg.lora:
        # TRL builds the reference model from the policy's path: save the tiny one to disk first.
        from mmsearch_r1.policy.tiny import build_tiny_policy

        build_tiny_policy(save_dir=cfg.run_dir / "tiny_base", seed=cfg.seed, protocol=cfg.protocol)
        policy = load_policy(cfg.run_dir / "tiny_base", dtype=cfg.dtype, protocol=cfg.protocol)
    else:
        policy = _load(cfg)
    if cfg.train_top_layers >= 0 and not (cfg.lora or cfg.qlora):
        policy.extra["trainable_params"] = freeze_lower_layers(policy.model, cfg.train_top_layers)
    return policy


def _load(cfg: TrainConfig):
    from mmsearch_r1.policy.load import load_policy

    return load_policy(
        cfg.model,
        lora=cfg.lora,
        qlora=cfg.qlora,
        dtype=cfg.dtype,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        protocol=cfg.protocol,
        seed=cfg.seed,
    )


def build_trainer(cfg: TrainConfig, *, policy=None, rows=None, engines=None, callbacks=()):
    """The ``TimedGRPOTrainer`` of ``cfg`` plus its parts (policy, dataset, engines, reward function)."""
    from accelerate import PartialState

    from mmsearch_r1.agent.env import EnvConfig, policy_env_factory
    from mmsearch_r1.agent.generation import vision_ids
    from mmsearch_r1.rl.data import load_rows, make_train_engines, to_trl_dataset
    from mmsearch_r1.rl.rewards import RewardConfig, make_reward_func
    from mmsearch_r1.rl.run_logging import GracefulStop, MetricsLogger, TimedGRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is used on purpose
    policy = policy or build_policy(cfg)
    args = to_grpo_config(
        cfg, suppress_tokens=vision_ids(policy.processor) if cfg.suppress_vision_tokens else None
    )
    with PartialState().main_process_first():  # one process builds indexes / world caches
        if rows is None:
            rows = load_rows(cfg.dataset, cfg.dataset_split, max_rows=cfg.max_train_samples, seed=cfg.seed)
        if engines is None:
            engines = make_train_engines(cfg)
    if len(rows) < cfg.prompts_per_step:
        raise ValueError(
            f"The dataset has {len(rows)} rows but a step needs prompts_per_step={cfg.prompts_per_step} "
            "different questions; lower prompts_per_step or use more rows."
        )
    dataset = to_trl_dataset(rows)
    env_factory = policy_env_factory(engines, cfg, policy.processor)
    budgets = EnvConfig.from_settings(cfg).budgets
    reward = make_reward_func(
        policy.processor,
        RewardConfig(
            penalty=cfg.penalty,
            format_weight=cfg.format_weight,
            penalty_mode=cfg.penalty_mode,
            grammar=cfg.grammar,
            match=cfg.match,
            budgets=budgets,
        ),
    )
    logger = MetricsLogger(cfg.run_dir, log_samples=cfg.log_samples)
    trainer = TimedGRPOTrainer(
        model=policy.model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=policy.processor,
        environment_factory=env_factory,
        callbacks=[logger, GracefulStop(), *callbacks],
        policy_token_head=cfg.policy_token_head,
        generation_copy=cfg.generation_copy,
    )
    logger.trainer = trainer
    return trainer, {"policy": policy, "dataset": dataset, "engines": engines, "reward": reward}


def summarize(metrics: list[dict]) -> dict:
    """Steps, seconds per step, peak memory and first/last reward, accuracy, search ratio."""
    if not metrics:
        return {"steps": 0}
    secs = [m["step_seconds"] for m in metrics if m.get("step_seconds") is not None]
    first, last = metrics[0], metrics[-1]
    keys = ("reward", "accuracy", "search_ratio", "image_calls", "text_calls", "completion_tokens")
    return {
        "steps": last["step"],
        "seconds_per_step_mean": statistics.fmean(secs) if secs else None,
        "seconds_per_step_median": statistics.median(secs) if secs else None,
        "peak_memory_mb": max((m.get("peak_memory_mb") or 0) for m in metrics),
        "first": {"step": first["step"], **{k: first.get(k) for k in keys}},
        "last": {"step": last["step"], **{k: last.get(k) for k in keys}},
    }


def train(
    config: TrainConfig | dict | str | None = None,
    *,
    policy=None,
    rows=None,
    engines=None,
    callbacks=(),
    source: str | None = None,
    overrides: Any = None,
    **changes,
) -> TrainResult:
    """Run GRPO for ``config`` (a TrainConfig, dict, preset name or file; ``changes`` override fields).

    ``policy`` / ``rows`` / ``engines`` replace what the config would build (tests, notebooks).
    Resumes from the run folder's last checkpoint when ``resume="auto"``.
    """
    from mmsearch_r1.rl.run_logging import GracefulStop, read_metrics

    cfg = coerce_config(config, **changes)
    resume_from = find_resume_checkpoint(cfg)
    if resume_from:
        check_resume_compatible(cfg)
    if _is_main():
        if cfg.resume == "never" and cfg.run_dir.is_dir():
            clear_checkpoints(cfg.run_dir)
        write_run_files(cfg, source=source, overrides=overrides)
    trainer, parts = build_trainer(cfg, policy=policy, rows=rows, engines=engines, callbacks=callbacks)
    done = steps_done(resume_from)
    if resume_from and cfg.max_steps > 0 and done >= cfg.max_steps:
        # transformers' Trainer would train one more step past max_steps on such a resume
        print(f"[GRPO] {cfg.run_dir} already has its {done} steps ({resume_from}): nothing to train "
              "(resume='never' trains from the start again)")  # fmt: skip
        trainer._load_from_checkpoint(resume_from)
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    metrics = read_metrics(cfg.run_dir / "metrics.jsonl")
    summary = summarize(metrics)
    stop = next((c for c in trainer.callback_handler.callbacks if isinstance(c, GracefulStop)), None)
    summary["stopped_by_signal"] = bool(stop and stop.requested)
    if _is_main():
        if (
            cfg.save_final and not summary["stopped_by_signal"]
        ):  # final/ means finished: resumable stages skip it
            final = cfg.run_dir / "final"
            trainer.save_model(str(final))
            parts["policy"].processor.save_pretrained(str(final))
            summary["final"] = str(final)
        summary["resumed_from"] = resume_from
        summary["distributed_type"] = str(trainer.accelerator.distributed_type)
        summary["num_processes"] = trainer.accelerator.num_processes
        (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(cfg.run_dir, cfg, metrics, summary, trainer, resume_from, parts)


SMOKE_DIR = Path("runs/smoke")
"""Where smoke runs write: never read as results (``demo-sft``, notebook 05's default and `evaluation.analysis`
look elsewhere)."""


def notebook_config(
    preset_name: str = "cpu_demo",
    *,
    penalty: float = 0.1,
    model: str = "",
    engine: str = "",
    dataset: str = "",
    max_steps: int = 0,
    num_generations: int = 0,
    lora: bool = False,
    qlora: bool = False,
    seed: int = 0,
    overrides: str = "",
    name: str = "",
    output_dir: str = "",
    resume: str = "auto",
    smoke: bool = False,
) -> TrainConfig:
    """Notebook 03's parameters as a `TrainConfig`, resolved as the command line resolves them.

    ``preset_name`` starts it (``--preset``); an empty string or 0 keeps the preset's value; ``overrides`` is
    ``--set`` as one string (``"use_vllm=true max_steps=100"``) and wins. So ``-p preset paper -p model M
    -p qlora True`` equals ``python -m mmsearch_r1.rl.train --preset paper --set model=M --set qlora=true``.
    A penalty other than the preset's gets its own run folder (``<name>_p<penalty>``). ``smoke`` shrinks
    it to the tiny policy on the synthetic data in `SMOKE_DIR`.
    """
    given = {"model": model, "engine": engine, "dataset": dataset, "max_steps": max_steps, "name": name,
             "num_generations": num_generations, "output_dir": output_dir, "lora": lora, "qlora": qlora}  # fmt: skip
    sets = {"penalty": penalty, "seed": seed, "resume": resume, **{k: v for k, v in given.items() if v}}
    sets.update(parse_overrides(overrides.split()))
    cfg = load_config(preset=preset_name, overrides=sets)
    if "name" not in sets and penalty != preset(preset_name).penalty:
        cfg = cfg.replace(name=f"{cfg.name}_p{penalty:g}")
    if smoke:  # the same run, shrunk: random tiny policy, synthetic questions and index, 2 short steps
        cfg = cfg.replace(model="tiny", dataset="synthetic", engine="synthetic", max_steps=2, num_generations=4,
                          prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=64, lora=False,
                          qlora=False, use_vllm=False, output_dir=output_dir or str(SMOKE_DIR / "03_train"),
                          resume="never", save_final=False)  # fmt: skip
    return cfg


def demo_stage(**changes) -> list[TrainResult]:
    """``make demo``'s GRPO stage: the ``cpu_demo`` preset (penalty 0.1). The penalty and balance
    ablations run on the miniature (``make reproduce``, `mmsearch_r1.miniature.run`)."""
    runs = [preset("cpu_demo", **changes)]
    if "dataset" not in changes and not Path(runs[0].dataset).is_file():
        print(
            f"[GRPO] {runs[0].dataset} is missing (notebook 01 writes it): training on the world pool instead"
        )
        runs[0] = runs[0].replace(dataset="world")
    results = []
    for cfg in runs:
        result = train(cfg)
        s = result.summary
        print(
            f"[GRPO] {cfg.name}: {s.get('steps')} steps, {s.get('seconds_per_step_mean') or 0:.1f} s/step, "
            f"peak {s.get('peak_memory_mb') or 0:.0f} MiB, first {s.get('first')}, last {s.get('last')}"
        )
        results.append(result)
    return results


EXAMPLES = """examples:
  python -m mmsearch_r1.rl.train --preset tiny --set max_steps=2          # a one-minute smoke run
  python -m mmsearch_r1.rl.train --config src/mmsearch_r1/rl/configs/cpu_demo.yaml --set penalty=0.0
  python -m mmsearch_r1.rl.train --preset paper --set model=Qwen/Qwen2.5-VL-3B-Instruct --set qlora=true
  python -m mmsearch_r1.rl.train --preset paper --dry-run                 # print the resolved config
  python -m mmsearch_r1.rl.train --help-config                            # every field, with its meaning
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m mmsearch_r1.rl.train``: a user's mistake is one ``error:`` line (exit 2), see `cli.run`."""
    from mmsearch_r1.cli import run

    return run(_main, argv)


def _main(argv: list[str] | None) -> int:
    from mmsearch_r1.cli import UserError, user_errors

    parser = argparse.ArgumentParser(
        prog="python -m mmsearch_r1.rl.train",
        description="GRPO training with on-demand search (TRL GRPOTrainer).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML/JSON file of TrainConfig fields (may set 'preset')")
    parser.add_argument("--preset", help="paper | cpu_demo | tiny (default: the config file's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--help-config", action="store_true", help="list every TrainConfig field and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    if args.help_config:
        print(describe_fields())
        return 0
    if not args.config and not args.preset:
        raise UserError("say what to train: --preset paper|cpu_demo|tiny or --config FILE (see --help)")
    with user_errors():
        cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    result = train(cfg, source=args.config, overrides=args.overrides)
    if _is_main():
        print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
