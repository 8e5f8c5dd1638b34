"""The CUDA path: bf16 forward and generation with images, GRPO with LoRA and QLoRA through `train()` with
real image-returning tools and gradient checkpointing, the warm-start SFT, the evaluation rollout with
`HFGenerator`, and resuming a killed run, each on the GPU.

Marked ``gpu``: ``make test`` deselects them; ``make gpu-check`` (benchmarks/gpu_check.py) runs them on a
CUDA machine. ``MMSEARCH_GPU_REHEARSAL=1`` runs the same code on the CPU (fp32; bitsandbytes' CPU 4-bit), to
rehearse a change before GPU time is spent; it proves nothing about CUDA.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import TrainerCallback

from mmsearch_r1.agent.env import make_env_factory
from mmsearch_r1.policy.load import load_policy
from mmsearch_r1.policy.tiny import build_tiny_policy, vision_token_ids
from mmsearch_r1.rl.config import preset
from mmsearch_r1.rl.data import synthetic_engines, synthetic_rows

pytestmark = pytest.mark.gpu

REHEARSAL = os.environ.get("MMSEARCH_GPU_REHEARSAL") == "1"
DEVICE = "cpu" if REHEARSAL else "cuda"
DTYPE = "float32" if REHEARSAL else "bfloat16"


@pytest.fixture(autouse=True)
def _cuda():
    if not REHEARSAL and not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA GPU: run `make gpu-check` on a GPU machine")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return synthetic_engines(tmp_path_factory.mktemp("index"))


def _image_search_policy(engines, save_dir):
    """A tiny policy taught 'image search, then answer' on one synthetic row, saved to ``save_dir``."""
    from search_fakes import image_search_policy

    model, processor, rows, loss = image_search_policy(engines, steps=200, stop_below=0.02)
    assert loss < 0.05
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return rows


def _cfg(tmp_path, **kw):
    return preset("tiny", **{"output_dir": str(tmp_path / "run"), "dtype": DTYPE, "bf16": "false" if REHEARSAL else "true",
                             "gradient_checkpointing": "false" if REHEARSAL else "true", **kw})  # fmt: skip


def test_forward_and_generate_in_bf16_with_images():
    from mmsearch_r1.agent.generation import HFGenerator
    from mmsearch_r1.agent.rollout import RolloutConfig

    model, processor = build_tiny_policy(seed=0)
    model = model.to(DEVICE, getattr(torch, DTYPE))
    row = synthetic_rows(seed=0)[0]
    msgs = [{"role": "user", "content": [{"type": "image", "image": row["image"]}, {"type": "text", "text": row["question"]}]}]  # fmt: skip
    enc = processor.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
    ).to(DEVICE)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.device.type == DEVICE and logits.dtype == getattr(torch, DTYPE)
    assert torch.isfinite(logits).all()
    gen = HFGenerator(model, processor, RolloutConfig(max_new_tokens=12, temperature=1.0),
                      suppress_tokens=vision_token_ids(processor))  # fmt: skip
    ids = enc["input_ids"][0].tolist()
    out = gen([(ids, [row["image"]]), (ids[:-3] + ids[-3:], [row["image"]])])
    assert len(out) == 2 and all(1 <= len(o) <= 12 for o in out)
    assert not set(vision_token_ids(processor)) & {t for o in out for t in o}


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_grpo_steps_with_image_search_tools(tmp_path, engines, mode):
    from mmsearch_r1.rl.run_logging import rollout_images
    from mmsearch_r1.rl.train import train

    base = tmp_path / "base"
    rows = _image_search_policy(engines, base)
    cfg = _cfg(tmp_path, model=str(base), lora=True, qlora=mode == "qlora", lora_r=8, max_steps=1,
               prompts_per_step=1, temperature=0.3, max_completion_length=400, save_steps=1)  # fmt: skip
    result = train(cfg, rows=rows, engines=engines)
    model = result.trainer.model
    assert next(p for p in model.parameters() if p.requires_grad).device.type == DEVICE
    if mode == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert result.trainer.args.gradient_checkpointing is (not REHEARSAL)
    (m,) = result.metrics
    assert m["image_calls"] > 0 and m["search_ratio"] > 0 and m["loss"] is not None
    searched = [
        r for r in result.trainer.last_rollouts if any(x.get("role") == "tool" for x in r["completion"])
    ]
    assert searched and len(rollout_images(searched[0])) > 1  # question image + thumbnails went through
    assert (cfg.run_dir / "checkpoint-1" / "adapter_config.json").is_file()
    if not REHEARSAL:
        assert m["peak_memory_mb"] > 0 and torch.cuda.max_memory_allocated() > 0


def test_warm_start_sft_on_the_gpu(tmp_path):
    from test_warmstart import _example

    from mmsearch_r1.sft.warmstart import WarmStartConfig, sft

    policy = load_policy("tiny", seed=1)
    rows = [_example(i % 2) for i in range(8)]
    cfg = WarmStartConfig(model="tiny", epochs=6, batch_size=4, grad_accum=1, lr=3e-3, max_length=None,
                          bf16="false" if REHEARSAL else "true")  # fmt: skip
    m = sft(policy, rows, cfg, tmp_path)
    assert m["sft_steps"] == 12 and m["sft_loss_last"] < 0.8 * m["sft_loss_first"]
    assert next(policy.model.parameters()).device.type == DEVICE


def test_evaluation_rollout_with_hf_generator(engines):
    from mmsearch_r1.agent.generation import HFGenerator
    from mmsearch_r1.agent.rollout import RolloutConfig, rollout

    model, processor = build_tiny_policy(seed=0)
    model = model.to(DEVICE, getattr(torch, DTYPE))
    cfg = RolloutConfig(method="rag", max_new_tokens=8, batch_size=4, progress=False)
    gen = HFGenerator(model, processor, cfg, suppress_tokens=vision_token_ids(processor))
    rows = list(synthetic_rows(4, seed=0))
    recs = rollout(rows, processor, gen, make_env_factory(engines), cfg, k=2)
    assert len(recs) == 8
    for r in recs:
        assert r["searches"] == 2 and r["turn_count"] == 3 and r["image_calls"] == 1
        assert r["observations"] and r["tool_failures"] == 0
    assert recs[0]["turns"][-1]["text"] == recs[1]["turns"][-1]["text"]  # greedy: both samples agree


class _KillAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step and logs and "reward" in logs:
            raise KeyboardInterrupt("simulated kill")


def test_killed_lora_run_resumes_from_its_checkpoint(tmp_path):
    from mmsearch_r1.rl.run_logging import read_metrics
    from mmsearch_r1.rl.train import train

    base = tmp_path / "base"
    build_tiny_policy(save_dir=base, seed=0)
    cfg = _cfg(
        tmp_path, model=str(base), lora=True, lora_r=4, max_steps=3, save_steps=1, max_completion_length=48
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_KillAfter(2)])
    assert (cfg.run_dir / "checkpoint-1" / "trainer_state.json").is_file()
    result = train(cfg)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-1")
    assert [m["step"] for m in read_metrics(cfg.run_dir / "metrics.jsonl")] == [1, 2, 3]
    state = json.loads((cfg.run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert next(p for p in result.trainer.model.parameters() if p.requires_grad).device.type == DEVICE


def test_paper_preset_from_the_command_line_with_qlora(tmp_path, capsys):
    """The researcher's command: ``python -m mmsearch_r1.rl.train --preset paper --set qlora=true ...``, whose
    ``auto`` settings resolve on the GPU to bf16 weights, bf16 compute and gradient checkpointing, with the
    KL term's reference model being the base under the disabled adapter (beta 0.001)."""
    from mmsearch_r1.rl.config import load_config
    from mmsearch_r1.rl.grpo_args import fast_bf16, to_grpo_config
    from mmsearch_r1.rl.run_logging import read_metrics
    from mmsearch_r1.rl.train import main

    base = tmp_path / "base"
    build_tiny_policy(save_dir=base, seed=0)
    sets = [f"model={base}", "qlora=true", "dataset=synthetic", "engine=synthetic", "prompts_per_step=2",
            "num_generations=4", "gradient_accumulation_steps=1", "steps_per_generation=1", "max_steps=1",
            "max_completion_length=64", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    cfg = load_config(preset="paper", overrides=sets)
    assert (cfg.dtype, cfg.bf16, cfg.gradient_checkpointing, cfg.beta) == ("auto", "auto", "auto", 0.001)
    args = to_grpo_config(cfg)
    assert args.bf16 is (fast_bf16() or not REHEARSAL) and args.gradient_checkpointing is not REHEARSAL
    assert main(["--preset", "paper", *[x for s in sets for x in ("--set", s)]]) == 0
    (m,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert m["kl"] is not None and m["loss"] is not None
    assert '"steps": 1' in capsys.readouterr().out
    final = load_policy(tmp_path / "run" / "final", qlora=True)  # the saved adapter on a 4-bit base
    names = [n for n, _ in final.model.named_parameters() if "lora_" in n]
    assert final.qlora and names and not any("base_model.model.base_model" in n for n in names)
