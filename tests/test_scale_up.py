"""Scale-up helpers: shipped accelerate configs, validated launch commands, memory budgets, CPU DDP smoke."""

from __future__ import annotations

import pytest

from mmsearch_r1.rl.scale_up import (
    SHIPPED_CONFIGS,
    accelerate_config_path,
    launch_command,
    memory_budget_rows,
    run_cpu_ddp_smoke,
    vllm_serve_command,
)


def test_trl_ships_the_accelerate_configs():
    for name in SHIPPED_CONFIGS:
        assert accelerate_config_path(name).is_file()
    with pytest.raises(FileNotFoundError, match="zero3"):
        accelerate_config_path("zero4")


def test_launch_command_is_the_training_entry_point_and_validates_the_batch():
    cmd = launch_command({"model": "m", "use_vllm": True, "vllm_mode": "server"}, num_processes=8)
    assert cmd[:2] == ["accelerate", "launch"] and cmd[cmd.index("-m") + 1] == "mmsearch_r1.rl.train"
    assert "use_vllm=true" in cmd and "vllm_mode=server" in cmd
    with pytest.raises(ValueError, match="do not split"):
        launch_command({}, num_processes=6)  # 128 prompts x 8 rollouts over 6 x 16 micro-batches
    serve = vllm_serve_command("m", data_parallel_size=2)
    assert serve[:2] == ["trl", "vllm-serve"] and "--data_parallel_size" in serve


def test_memory_budgets_follow_the_documented_formulas():
    rows = {r["model"]: r for r in memory_budget_rows(gpus=8)}
    r7 = rows["Qwen2.5-VL-7B-Instruct"]
    assert r7["QLoRA NF4, 1 GPU"] < r7["LoRA bf16, 1 GPU"] < r7["full, ZeRO-2 x8"]
    assert r7["full, ZeRO-3 x8"] == pytest.approx((4 * 152064 * 3584 + 18 * 8.29e9 / 8) / 2**30)


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    check = run_cpu_ddp_smoke(tmp_path / "ddp", nproc=2, max_steps=2)
    assert check["world_size"] == 2 and check["steps"] == [1, 2] and "MULTI_CPU" in check["distributed_type"]
