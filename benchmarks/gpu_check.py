"""The GPU check: the ``gpu`` tests, then a timed GRPO profile, written to ``benchmarks/results/gpu.json``.

On a CUDA machine (``make gpu-check``):
1. runs ``pytest -m gpu`` (tests/test_gpu.py: bf16 forward and generation with images, GRPO with LoRA and
   QLoRA through `train()` with the synthetic offline engines and gradient checkpointing, the warm-start
   SFT, the evaluation rollout with `HFGenerator`, resume from a checkpoint) and records passed/failed;
2. profiles a few GRPO steps of randomly initialised Qwen2.5-VL policies (`mmsearch_r1.policy.tiny.SHAPES`):
   ``lora`` and ``qlora`` with the ``qwen-0.5b`` shape in bf16 with gradient checkpointing, and ``small``
   (the tests' tiny shape) for a like-for-like ratio with the CPU. Each profile runs in its own process
   (a clean peak-memory count) and records seconds per step split as ``bench_train`` does (generation,
   tools, the rest), generated tokens per second and peak GPU memory. A random policy rarely emits a
   tool call or an end-of-turn token, so its rollouts run to ``max_completion_length``: the numbers are
   the cost per generated token and per trained token, not of the search loop.

``--device cpu`` runs the ``small`` profile on this machine's CPU (fp32, no checkpointing) and merges it
into the same file as ``profiles.cpu``; the GPU run keeps an existing ``cpu`` entry.

    python benchmarks/gpu_check.py [--steps 3] [--skip-tests] [--profiles lora,qlora,small]
    python benchmarks/gpu_check.py --device cpu

What it does not: no vLLM and no multi-GPU run (see the README's GPU section).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

PROFILES = {
    # name: (model shape, adapter)
    "lora": ("qwen-0.5b", "lora"),
    "qlora": ("qwen-0.5b", "qlora"),
    "small": ("tiny", "lora"),
}
"""The GPU profiles; ``cpu`` is ``small`` on the CPU."""


def _versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def run_tests(out_dir: Path) -> dict:
    """``pytest -m gpu`` in a child process; counts and per-test outcomes from its JUnit XML."""
    xml = out_dir / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider",
           "--timeout=150", f"--junitxml={xml}"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    sys.stdout.write(proc.stdout[-6000:] + proc.stderr[-3000:])
    if not xml.is_file():
        return {"passed": 0, "failed": 0, "error": f"pytest wrote no report (exit {proc.returncode})",
                "output_tail": (proc.stdout + proc.stderr)[-3000:]}  # fmt: skip
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "")[:500]
                break
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      **({"message": message} if outcome != "passed" else {})})  # fmt: skip
    count = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"passed": count["passed"], "failed": count["failed"] + count["error"], "skipped": count["skipped"],
            "seconds": round(seconds, 1), "exit_status": proc.returncode, "cases": cases}  # fmt: skip


def profile(name: str, device: str, steps: int) -> dict:
    """GRPO steps of profile ``name`` in this process; the per-step split and its medians."""
    import torch
    from bench_train import median_of, step_profile

    from mmsearch_r1.policy.processor import ImageSizes
    from mmsearch_r1.policy.tiny import SHAPES, build_tiny_policy
    from mmsearch_r1.rl.config import preset
    from mmsearch_r1.rl.train import train

    shape_name, adapter = PROFILES["small" if name == "cpu" else name]
    gpu = device == "cuda"
    sizes = ImageSizes(min_pixels=28 * 28 * 64, max_pixels=28 * 28 * 256, thumbnail_max_pixels=28 * 28 * 64)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        model, _ = build_tiny_policy(save_dir=base, seed=0, shape=shape_name, sizes=sizes)
        total = sum(p.numel() for p in model.parameters())
        del model
        cfg = preset("tiny", model=str(base), lora=True, qlora=adapter == "qlora", lora_r=16,
                     dtype="bfloat16" if gpu else "float32", bf16="true" if gpu else "false",
                     gradient_checkpointing="true" if gpu else "false", num_generations=8, prompts_per_step=4,
                     gradient_accumulation_steps=2, max_completion_length=256, temperature=1.0,
                     max_steps=steps, save_steps=10**6, save_final=False, log_samples=0, resume="never",
                     output_dir=str(Path(tmp) / "run"))  # fmt: skip
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
        trainable = sum(p.numel() for p in result.trainer.model.parameters() if p.requires_grad)
    rollouts = cfg.prompts_per_step * cfg.num_generations
    per_step = step_profile(result.metrics, rollouts)
    later = per_step[1:] or per_step  # the first step pays one-off warm-up costs (kernels, caches)
    shape = SHAPES[shape_name]
    return {
        "device": device,
        "model_shape": {"name": shape_name, **shape.__dict__, "parameters": total, "trainable": trainable},
        "adapter": adapter,
        "dtype": cfg.dtype,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "rollouts_per_step": rollouts,
        "max_completion_length": cfg.max_completion_length,
        "steps": len(per_step),
        "step_seconds": median_of(later, "seconds"),
        "generation_seconds": median_of(later, "generation_s"),
        "tool_seconds": median_of(later, "tools_s"),
        "rest_seconds": median_of(later, "rest_s"),
        "tokens_per_second": median_of(later, "generated_tokens_per_s"),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() if gpu else 0) / 2**20 or result.summary.get("peak_memory_mb"),
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if gpu else None,
        "wall_seconds_including_setup": round(wall, 1),
        "per_step": per_step,
    }  # fmt: skip


def _child_profile(name: str, device: str, steps: int, timeout: int) -> dict:
    """`profile` in a fresh process (its own peak memory); a failure is recorded, not raised."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--one-profile", name, "--device", device, "--steps", str(steps),
           "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        tail = (proc.stdout + proc.stderr)[-3000:]
        code = proc.returncode
    except subprocess.TimeoutExpired as err:
        tail, code = f"timed out after {timeout} s: {str(err.stdout or '')[-2000:]}", "timeout"
    if code == 0 and out.is_file() and out.stat().st_size:
        result = json.loads(out.read_text())
    else:
        result = {"error": f"profile {name} failed (exit {code})", "output_tail": tail}
    out.unlink(missing_ok=True)
    result["process_seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"[gpu-check] profile {name}: "
        + json.dumps({k: v for k, v in result.items() if k != "per_step"})[:1500]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--profiles", default="lora,qlora,small", help="comma-separated: " + ",".join(PROFILES)
    )
    parser.add_argument("--timeout", type=int, default=150, help="seconds per profile process")
    parser.add_argument("--output", default=str(RESULTS / "gpu.json"))
    parser.add_argument("--one-profile", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))

    if args.one_profile:
        Path(args.out).write_text(json.dumps(profile(args.one_profile, args.device, args.steps), indent=2))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here; run `python benchmarks/gpu_check.py --device cpu` for the CPU profile"
        )
        return 2
    path = Path(args.output)
    report = json.loads(path.read_text()) if path.is_file() else {}
    if args.device == "cpu":
        report.setdefault("profiles", {})["cpu"] = {
            **_child_profile("cpu", "cpu", args.steps, args.timeout * 4),
            "machine": _device_name("cpu"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    else:
        names = [n for n in args.profiles.split(",") if n]
        unknown = set(names) - set(PROFILES)
        if unknown:
            print(f"error: unknown profiles {sorted(unknown)}; choose from {list(PROFILES)}")
            return 2
        started = time.perf_counter()
        report.update({"device": _device_name("cuda"), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "versions": _versions(), "date": time.strftime("%Y-%m-%d"),
                       })  # fmt: skip
        command = " ".join(["python benchmarks/gpu_check.py", *(argv or sys.argv[1:])])
        report["commands"] = [*report.get("commands", []), f"{report['date']}: {command}"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        if not args.skip_tests:
            report["tests"] = run_tests(path.parent)
            print(
                f"[gpu-check] tests: {report['tests']['passed']} passed, {report['tests']['failed']} failed"
            )
        # profiles not run now (and the CPU's) keep their earlier numbers
        report.setdefault("profiles", {}).update(
            {n: _child_profile(n, "cuda", args.steps, args.timeout) for n in names}
        )
        report["seconds"] = round(time.perf_counter() - started, 1)
    small, cpu = report.get("profiles", {}).get("small", {}), report.get("profiles", {}).get("cpu", {})
    if small.get("step_seconds") and cpu.get("step_seconds"):
        report["cpu_over_gpu_small"] = {
            "step_seconds": cpu["step_seconds"] / small["step_seconds"],
            "tokens_per_second": small["tokens_per_second"] / cpu["tokens_per_second"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gpu-check] wrote {path}")
    failed = report.get("tests", {}).get("failed", 0) or any(
        "error" in p for p in report.get("profiles", {}).values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
