"""Scale-up helpers for notebook 04: launch commands, TRL's accelerate configs, memory budgets, CPU DDP smoke.

What it does:
- `accelerate_config_path(name)`: the DeepSpeed / FSDP configs that ship inside the trl wheel
  (``trl/accelerate_configs/{zero1,zero2,zero3,fsdp1,fsdp2,multi_gpu,single_gpu}.yaml``).
- `launch_command(...)`: ``accelerate launch --config_file <trl config> -m mmsearch_r1.rl.train --preset …
  --set …``: the same training entry point as notebook 03, under DeepSpeed ZeRO-3 or FSDP2, with vLLM in
  colocate or server mode; `vllm_serve_command(...)`: the matching ``trl vllm-serve``.
- `torchrun_command(...)` / `run_cpu_ddp_smoke(...)`: a two-process CPU run with ``torchrun`` (gloo)
  through the same entry point, checked afterwards (`check_distributed_run`). ``accelerate launch --cpu
  --num_processes 2`` silently runs one process (accelerate 1.15), hence torchrun.
- `memory_budget_rows(...)`: GPU memory for model states from documented formulas (DeepSpeed's own
  estimators, the QLoRA paper's bits per parameter), labelled as such; activations, KV cache and vLLM's
  reserved fraction are listed separately, not estimated.

What it does not: no distributed code of its own (accelerate / torchrun / TRL do it); it never starts a
GPU job by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mmsearch_r1.rl.config import load_config
from mmsearch_r1.rl.grpo_args import per_device_batch

SHIPPED_CONFIGS = ("single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "fsdp1", "fsdp2")
"""Accelerate configs in the trl wheel."""


def accelerate_config_path(name: str) -> Path:
    """Path of a config shipped in ``trl/accelerate_configs`` (``zero3``, ``fsdp2``, ...)."""
    import trl

    path = Path(trl.__file__).parent / "accelerate_configs" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"trl {trl.__version__} ships no accelerate config {name!r}; choose {SHIPPED_CONFIGS}."
        )
    return path


def _sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        value = json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else str(v)
        out += ["--set", f"{k}={value}"]
    return out


def launch_command(
    overrides: dict,
    *,
    accelerate_config: str = "zero3",
    num_processes: int = 8,
    preset: str = "paper",
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
) -> list[str]:
    """``accelerate launch`` of ``mmsearch_r1.rl.train`` with one of trl's configs (multi-node: set the last three).

    The overrides are validated first (a batch that does not split over the processes fails here, not on
    the cluster).
    """
    per_device_batch(load_config(preset=preset, overrides=overrides), num_processes * num_machines)
    cmd = ["accelerate", "launch", "--config_file", str(accelerate_config_path(accelerate_config))]
    cmd += ["--num_processes", str(num_processes)]
    if num_machines > 1:
        cmd += ["--num_machines", str(num_machines), "--machine_rank", str(machine_rank)]
        cmd += ["--main_process_ip", main_process_ip or "MASTER_IP"]
    return cmd + ["-m", "mmsearch_r1.rl.train", "--preset", preset, *_sets(overrides)]


def vllm_serve_command(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    port: int = 8000,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
) -> list[str]:
    """``trl vllm-serve`` for server mode (run it on GPUs the trainer does not use)."""
    cmd = ["trl", "vllm-serve", "--model", model, "--tensor_parallel_size", str(tensor_parallel_size)]
    cmd += ["--data_parallel_size", str(data_parallel_size), "--port", str(port)]
    cmd += ["--gpu_memory_utilization", str(gpu_memory_utilization)]
    return cmd + (["--max_model_len", str(max_model_len)] if max_model_len else [])


def torchrun_command(
    overrides: dict, *, nproc: int = 2, preset: str = "tiny", port: int = 29533
) -> list[str]:
    """``torchrun`` of ``mmsearch_r1.rl.train`` on this machine (CPU: gloo, ``use_cpu`` set by the config)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(port)]
    return cmd + ["-m", "mmsearch_r1.rl.train", "--preset", preset, *_sets(overrides)]


def check_distributed_run(run_dir: str | Path, nproc: int) -> dict:
    """Check a finished multi-process run: all ranks joined, every step logged once; return a summary."""
    run_dir = Path(run_dir)
    launch = json.loads((run_dir / "launch.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [m["step"] for m in lines]
    problems = []
    if launch.get("world_size") != nproc or summary.get("num_processes") != nproc:
        problems.append(f"world_size {launch.get('world_size')} / {summary.get('num_processes')} != {nproc}")
    if steps != list(range(1, len(steps) + 1)) or not steps:
        problems.append(f"steps logged {steps}")
    if problems:
        raise RuntimeError(f"distributed run in {run_dir} is not right: {'; '.join(problems)}")
    return {
        "world_size": launch["world_size"],
        "distributed_type": summary.get("distributed_type"),
        "steps": steps,
        "rollouts_per_rank": config["prompts_per_step"] * config["num_generations"] // nproc,
        "tokens_seen": lines[-1]["trl"].get("num_tokens"),
        "seconds_per_step": [round(m["step_seconds"], 2) for m in lines],
    }


def run_cpu_ddp_smoke(run_dir: str | Path, *, nproc: int = 2, max_steps: int = 2, timeout: int = 600) -> dict:
    """Train the tiny preset with ``torchrun --nproc_per_node nproc`` on CPU and check the run folder."""
    overrides = {"output_dir": str(run_dir), "max_steps": max_steps, "max_completion_length": 48}
    overrides["resume"] = "never"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        torchrun_command(overrides, nproc=nproc), env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return check_distributed_run(run_dir, nproc)


# -- memory budgets (documented formulas) --------------------------------------------------------------

GIB = 2**30
MODELS = {
    # name: (total params, params of the largest single tensor: the embedding / lm_head matrix)
    "Qwen2.5-VL-3B-Instruct": (3.75e9, 151936 * 2048),
    "Qwen2.5-VL-7B-Instruct": (8.29e9, 152064 * 3584),
}
"""Parameter counts as listed on the hub model pages; vocabulary x hidden size from their configs."""


def memory_budget_rows(gpus: int = 8, lora_fraction: float = 0.01) -> list[dict]:
    """Model-state memory per GPU (GiB) for full fine-tuning under ZeRO-2/ZeRO-3 and for LoRA / QLoRA.

    Sources (documented formulas, not measurements):
    - ZeRO-3, no offload: ``4 * largest_layer_params + 18 * params / gpus`` bytes
      (``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``);
    - ZeRO-2, no offload: ``2 * params + 18 * params / gpus`` bytes
      (``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``);
    - LoRA on one GPU: frozen bf16 weights, 2 bytes/param, plus ~16 bytes per trainable adapter param
      (bf16 weight and grad + fp32 Adam states and master copy; same accounting as ZeRO's);
    - QLoRA: NF4 with double quantization, 4.127 bits/param (Dettmers et al. 2023, section 3), plus the
      adapters as above; the vision tower and embeddings kept in bf16 are ignored here.
    Excluded: activations (set by batch, sequence length and gradient checkpointing), the reference model
    (none with PEFT: TRL disables the adapter; a bf16 copy, 2 bytes/param, for full fine-tuning with
    beta > 0 unless ZeRO-3 shards it), and vLLM's share (colocate: ``vllm_gpu_memory_utilization`` of each
    GPU, TRL's default 0.3; server mode: separate GPUs, ``trl vllm-serve`` default 0.9).
    """
    rows = []
    for name, (params, largest) in MODELS.items():
        adapters = params * lora_fraction * 16
        rows.append(
            {
                "model": name,
                "params (B)": params / 1e9,
                f"full, ZeRO-3 x{gpus}": (4 * largest + 18 * params / gpus) / GIB,
                f"full, ZeRO-2 x{gpus}": (2 * params + 18 * params / gpus) / GIB,
                "LoRA bf16, 1 GPU": (2 * params + adapters) / GIB,
                "QLoRA NF4, 1 GPU": (params * 4.127 / 8 + adapters) / GIB,
                "source": "DeepSpeed estimators / QLoRA paper (formulas, not measured)",
            }
        )
    return rows
