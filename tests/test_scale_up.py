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
    # 7B on 8 GPUs, model states per GPU (GiB): ZeRO-3 shards 18 B/param and gathers the largest layer (the
    # 152,064 x 3,584 embedding); LoRA keeps 2 B/param frozen + 16 B per adapter param (1%); NF4 4.127 bits
    assert r7["full, ZeRO-3 x8"] == pytest.approx(19.40, abs=0.01)
    assert r7["LoRA bf16, 1 GPU"] == pytest.approx(16.68, abs=0.01)
    assert r7["QLoRA NF4, 1 GPU"] == pytest.approx(5.22, abs=0.01)


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    check = run_cpu_ddp_smoke(tmp_path / "ddp", nproc=2, max_steps=2)
    assert check["world_size"] == 2 and check["steps"] == [1, 2] and "MULTI_CPU" in check["distributed_type"]
