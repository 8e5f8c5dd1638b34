"""The training layer: TrainConfig (presets, files, overrides), GRPO runs with the tiny policy, resume."""

from __future__ import annotations

import json
import os
import signal
import warnings

import pytest
import torch
from transformers import TrainerCallback

from mmsearch_r1.rl.config import PRESETS, TrainConfig, load_config, parse_overrides, preset
from mmsearch_r1.rl.data import synthetic_rows, to_trl_dataset
from mmsearch_r1.rl.grpo_args import per_device_batch, to_grpo_config
from mmsearch_r1.rl.run_logging import read_metrics, truncate_metrics

# -- config ------------------------------------------------------------------------------------------


def test_paper_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.num_generations, cfg.learning_rate, cfg.beta, cfg.epsilon) == (8, 2e-6, 0.001, 0.2)
    assert (cfg.penalty, cfg.format_weight, cfg.max_tool_calling_iterations) == (0.1, 0.1, 2)
    assert cfg.scale_rewards == "group" and cfg.loss_type in ("bnpo", "dapo", "grpo")
    assert (cfg.image_budget, cfg.text_budget, cfg.max_turns) == (1, 2, 3)


def test_every_preset_builds_with_its_own_settings():
    for name in PRESETS:
        assert preset(name).preset == name
    assert preset("cpu_demo", name="run_x").name == "run_x"  # `name` is a field, not the preset
    demo = preset("cpu_demo")
    assert (demo.model, demo.dataset, demo.engine, demo.name) == (
        "demo-sft",
        "data/generated/world_train.parquet",
        "local",
        "demo_grpo",
    )
    assert (demo.num_generations, demo.prompts_per_step, demo.max_steps, demo.max_completion_length) == (
        4,
        2,
        8,
        512,
    )
    assert (demo.learning_rate, demo.beta, demo.train_top_layers, demo.image_k, demo.text_k) == (
        1e-5,
        0.0,
        8,
        1,
        2,
    )
    assert demo.scale_rewards == "group" and demo.penalty == 0.1
    tiny = preset("tiny")
    assert (tiny.model, tiny.dataset, tiny.engine, tiny.report_to) == (
        "tiny",
        "synthetic",
        "synthetic",
        "none",
    )


def test_file_round_trip_and_override_precedence(tmp_path):
    cfg = preset("cpu_demo", penalty=0.0, grpo_overrides={"top_k": 5})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text("preset: tiny\npenalty: 0.3\nlora: false\n")
    got = load_config(yaml_path, overrides=["penalty=0.2", "lora=true", "lr_scheduler_type=cosine"])
    assert got.preset == "tiny" and got.model == "tiny"  # preset from the file
    assert got.penalty == 0.2 and got.lora is True and got.lr_scheduler_type == "cosine"  # --set wins
    assert load_config(yaml_path).penalty == 0.3  # the file wins over the preset


def test_overrides_are_typed():
    assert parse_overrides(["a=1e-5", "b=true", "c={x: 1}", "d=none"]) == {
        "a": 1e-5,
        "b": True,
        "c": {"x": 1},
        "d": "none",
    }
    cfg = load_config(overrides=["learning_rate=1", "bf16=true", "save_total_limit=null"])
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.bf16 == "true" and cfg.save_total_limit is None


def test_cpu_demo_uses_bf16_autocast_where_the_cpu_has_native_bf16():
    from mmsearch_r1.rl.grpo_args import fast_bf16

    demo = preset("cpu_demo")
    assert demo.bf16 == "auto" and demo.dtype == "float32"  # fp32 weights, bf16 matmuls
    assert to_grpo_config(demo).bf16 is fast_bf16()
    assert to_grpo_config(preset("tiny")).bf16 is False  # tests stay in fp32


@pytest.mark.parametrize(
    "overrides, error, text",
    [
        (["penaltyy=0.1"], KeyError, "did you mean 'penalty'"),
        (["scale_rewards=std"], ValueError, "scale_rewards"),
        (["num_generations=1"], ValueError, "num_generations"),
        (["lora=maybe"], TypeError, "TrainConfig.lora"),
        (["penalty"], ValueError, "key=value"),
    ],
)
def test_bad_config_fails_with_the_key(overrides, error, text):
    with pytest.raises(error, match=text):
        load_config(overrides=overrides)


def test_grpo_config_mapping():
    cfg = preset("tiny", num_generations=4, prompts_per_step=2, beta=0.04, loss_type="bnpo", seed=3)
    args = to_grpo_config(cfg, suppress_tokens=[7])
    assert args.per_device_train_batch_size == 8 and args.num_generations == 4
    assert args.max_tool_calling_iterations == 2 and args.scale_rewards == "group"
    assert (args.beta, args.loss_type, args.seed, args.logging_steps) == (0.04, "bnpo", 3, 1)
    assert args.remove_unused_columns is False and args.log_completions is False
    assert args.generation_kwargs == {"suppress_tokens": [7]}
    with pytest.raises(ValueError, match="do not split"):
        per_device_batch(preset("tiny", prompts_per_step=3, num_generations=3), processes=2)


def test_trl_prompt_format():
    ds = to_trl_dataset(synthetic_rows(n=2))
    row = ds[0]
    assert row["prompt"][0]["role"] == "user"
    content = row["prompt"][0]["content"]
    assert content[0]["type"] == "image" and content[1]["type"] == "text"
    assert row["question"] in content[1]["text"]
    assert {"image", "answer", "aliases", "question"} <= set(ds.column_names)


def test_truncate_metrics_dedups_and_drops_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "r": 0}, {"step": 2, "r": 0}, {"step": 2, "r": 1}, {"step": 3, "r": 0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "r"')
    assert truncate_metrics(path, 2) == 2
    assert read_metrics(path) == [{"step": 1, "r": 0}, {"step": 2, "r": 1}]


# -- GRPO runs with the tiny policy ------------------------------------------------------------------


class CrashAt(TrainerCallback):
    """Simulate a kill right after step ``step`` was logged (and before any later checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step and logs and "reward" in logs:
            raise KeyboardInterrupt("simulated kill")


class WeightsAtStart(TrainerCallback):
    """The trainable weights as training (re)starts, after any checkpoint was loaded."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class SigtermAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:  # a signal arriving while step `step` runs
            os.kill(os.getpid(), signal.SIGTERM)


FIELDS = (
    "reward",
    "accuracy",
    "search_ratio",
    "image_calls",
    "text_calls",
    "tool_failures",
    "completion_tokens",
    "step_seconds",
    "generation_seconds",
    "peak_memory_mb",
)


def _tiny(tmp_path, **kw):
    return preset("tiny", **{"output_dir": str(tmp_path / "run"), "max_completion_length": 48, **kw})


def test_grpo_run_writes_metrics_checkpoints_and_resumes(tmp_path):
    from mmsearch_r1.rl.train import train

    cfg = _tiny(tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[CrashAt(3)])
    run = cfg.run_dir
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    assert (run / "checkpoint-2" / "trainer_state.json").is_file() and not (run / "checkpoint-3").exists()
    before = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in before] == [1, 2, 3]
    for m in before:
        for f in FIELDS:
            assert m[f] is not None, f
        assert 0.0 <= m["search_ratio"] <= 1.0 and m["step_seconds"] > 0

    start = WeightsAtStart()
    result = train(cfg, callbacks=[start])  # resume="auto"
    assert result.resumed_from.endswith("checkpoint-2")
    # the checkpoint's weights, not the initial ones, although save_pretrained renamed them on disk
    saved = type(result.trainer.model).from_pretrained(run / "checkpoint-2").state_dict()
    assert start.weights and all(torch.equal(w, saved[n]) for n, w in start.weights.items())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]  # each completed step exactly once
    assert lines[:2] == before[:2]  # steps covered by the checkpoint are kept, not re-run
    assert (run / "checkpoint-4").is_dir() and result.summary["steps"] == 4

    again = train(cfg)  # the run has its 4 steps: it trains none (transformers' Trainer would train a 5th)
    assert again.resumed_from.endswith("checkpoint-4") and not (run / "checkpoint-5").exists()
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]
    saved = type(again.trainer.model).from_pretrained(run / "checkpoint-4").state_dict()
    assert all(torch.equal(p, saved[n]) for n, p in again.trainer.model.named_parameters() if p.requires_grad)


def test_sigterm_checkpoints_the_current_step_and_stops(tmp_path):
    from mmsearch_r1.rl.train import train

    cfg = _tiny(tmp_path, max_steps=5, save_steps=100, save_final=True)
    result = train(cfg, callbacks=[SigtermAt(1)])
    assert [m["step"] for m in result.metrics] == [1]
    assert (cfg.run_dir / "checkpoint-1").is_dir()
    # final/ means finished (resumable stages skip a run that has one): a stopped run writes none
    assert result.summary["stopped_by_signal"] and not (cfg.run_dir / "final").exists()


def test_tool_calls_reach_metrics_samples_and_rollout_images(tmp_path):
    """A tiny policy overfit to 'image search, then answer' trains through train(): the metrics see it."""

    from search_fakes import image_search_policy

    from mmsearch_r1.policy.load import Policy
    from mmsearch_r1.rl.data import synthetic_engines
    from mmsearch_r1.rl.run_logging import rollout_images
    from mmsearch_r1.rl.train import train

    engines = synthetic_engines(tmp_path / "index")
    model, processor, rows, _ = image_search_policy(engines)
    cfg = _tiny(
        tmp_path, max_steps=1, prompts_per_step=1, temperature=0.3, max_completion_length=400, save_steps=10
    )
    result = train(cfg, policy=Policy(model, processor, "tiny", "tiny"), rows=rows, engines=engines)
    (m,) = result.metrics
    assert m["image_calls"] > 0 and m["search_ratio"] > 0 and m["tool_call_frequency"] > 0
    assert m["tool_seconds"] > 0 and m["generation_seconds"] > 0
    samples = [json.loads(x) for x in (cfg.run_dir / "samples.jsonl").read_text().splitlines()]
    roles = [msg["role"] for s in samples for msg in s["messages"]]
    assert "tool" in roles and any("<image>" in msg["content"] for s in samples for msg in s["messages"])
    searched = [
        r for r in result.trainer.last_rollouts if any(x.get("role") == "tool" for x in r["completion"])
    ]
    assert searched and len(rollout_images(searched[0])) > 1  # question image + thumbnails


def test_train_top_layers_freezes_the_rest():
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.train import freeze_lower_layers

    model, _ = build_tiny_policy(seed=0, layers=2)
    n = freeze_lower_layers(model, 1)
    lm = model.model.language_model
    expected = sum(p.numel() for m in (lm.layers[1], lm.norm) for p in m.parameters())
    assert n == expected
    assert not any(p.requires_grad for p in lm.layers[0].parameters())
    assert not any(p.requires_grad for p in model.model.visual.parameters())


def test_shipped_config_files_load():
    from pathlib import Path

    import mmsearch_r1

    folder = Path(mmsearch_r1.__file__).parent / "rl" / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        cfg = load_config(path)
        assert cfg.preset in PRESETS and cfg.scale_rewards == "group"


def test_demo_stage_runs_the_cpu_demo_preset(tmp_path, capsys):
    from mmsearch_r1.rl.train import demo_stage

    small = dict(model="tiny", dataset="synthetic", engine="synthetic", output_dir=str(tmp_path / "demo"),
                 max_steps=1, num_generations=2, gradient_accumulation_steps=1, max_completion_length=32,
                 save_final=False)  # fmt: skip
    (result,) = demo_stage(**small)
    assert result.config.preset == "cpu_demo" and result.config.penalty == 0.1
    assert result.summary["steps"] == 1 and "[GRPO]" in capsys.readouterr().out


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    from mmsearch_r1.rl.train import train

    old = _tiny(tmp_path)
    (old.run_dir / "checkpoint-1").mkdir(parents=True)
    (old.run_dir / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (old.run_dir / "config.json").write_text(json.dumps(old.to_dict()))
    with pytest.raises(ValueError, match="penalty: 0.1 -> 0.0"):
        train(old.replace(penalty=0.0))


def test_resume_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    """A full disk or a kill while saving leaves a checkpoint without trainer_state.json (written last)."""
    from mmsearch_r1.rl.resume import find_resume_checkpoint

    cfg = _tiny(tmp_path)
    for step, complete in ((2, True), (4, True), (6, False), (10, False)):
        (cfg.run_dir / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (cfg.run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_resume_checkpoint(cfg) == str(cfg.run_dir / "checkpoint-4")
    assert [str(w.message).split("/")[-1].split(" ")[0] for w in caught] == ["checkpoint-10", "checkpoint-6"]
    assert find_resume_checkpoint(cfg.replace(resume="never")) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "native"},
        {"lora": True, "lora_r": 4},
        {"beta": 0.04},
        {"loss_type": "grpo", "scale_rewards": "none"},
    ],
    ids=["native-protocol", "lora", "kl-reference-model", "grpo-loss"],
)
def test_training_variants_run_one_step(tmp_path, changes):
    from mmsearch_r1.rl.train import train

    result = train(_tiny(tmp_path, max_steps=1, save_steps=10, **changes))
    assert [m["step"] for m in result.metrics] == [1]
    if changes.get("beta"):
        assert result.metrics[0]["kl"] is not None  # the reference model ran
    if changes.get("lora"):
        assert (result.run_dir / "checkpoint-1" / "adapter_config.json").is_file()


def test_report_to_reaches_the_trainer_and_tensorboard_gets_the_steps(tmp_path):
    from mmsearch_r1.rl.train import train

    assert to_grpo_config(preset("tiny", report_to="tensorboard")).report_to == ["tensorboard"]
    assert to_grpo_config(preset("tiny", report_to="none")).report_to == []
    with pytest.raises(ValueError, match="not_a_logger is not installed"):
        to_grpo_config(preset("tiny", report_to="tensorboard,not_a_logger"))
    result = train(_tiny(tmp_path, max_steps=1, save_steps=10, report_to="tensorboard"))
    assert list(result.run_dir.glob("runs/*/events.out.tfevents.*"))
    assert [m["step"] for m in read_metrics(result.run_dir / "metrics.jsonl")] == [1]  # the jsonl stays
