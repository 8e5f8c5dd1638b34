"""The path a user walks beyond `make demo`: notebooks that connect, smoke runs that never pose as results,
resume that refuses another run's checkpoint, and command lines whose user errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mmsearch_r1.cli import UserError
from mmsearch_r1.rl.config import load_config, preset

ROOT = Path(__file__).resolve().parents[1]


def _notebook_config(**params):
    """Run notebook 03's parameters cell, papermill's injected values, then its config cell (as papermill does)."""
    nb = nbformat.read(ROOT / "notebooks" / "03_train.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    ns: dict = {}
    exec(code[0], ns)
    ns.update(params)
    exec(code[1], ns)
    return ns["cfg"]


def test_notebook_03_with_a_preset_is_the_command_lines_config():
    """The README's GPU lines: the papermill parameters and the CLI's --preset/--set resolve alike."""
    model = "Qwen/Qwen2.5-VL-3B-Instruct"
    sets = "use_vllm=true vllm_mode=colocate vllm_enable_sleep_mode=true prompts_per_step=16 gradient_accumulation_steps=16"
    nb = _notebook_config(preset="paper", model=model, qlora=True, penalty=0.1, max_steps=100, overrides=sets)
    cli = load_config(
        preset="paper", overrides=[f"model={model}", "qlora=true", *sets.split(), "max_steps=100"]
    )
    assert nb == cli
    assert (nb.dtype, nb.bf16, nb.gradient_checkpointing, nb.use_vllm) == ("auto", "auto", "auto", True)


def test_notebook_03_defaults_are_make_demos_run_and_a_penalty_gets_its_own_folder():
    assert _notebook_config() == preset("cpu_demo")  # runs/demo_grpo, which notebook 05 reads
    assert _notebook_config(penalty=0.0).run_dir == Path("runs/demo_grpo_p0")


def test_smoke_runs_write_under_runs_smoke():
    from mmsearch_r1.sft.warmstart import WarmStartConfig

    assert Path(_notebook_config(smoke=True).output_dir).parts[:2] == ("runs", "smoke")
    assert WarmStartConfig(smoke=True).shrink_for_smoke().output_dir == "runs/smoke/warmstart"
    assert WarmStartConfig(output_dir="mine").shrink_for_smoke().output_dir == "mine"


def test_missing_inputs_name_the_notebook_to_run(tmp_path, monkeypatch):
    from mmsearch_r1.pipeline import DEMO_GRPO_FINAL, ensure_inputs
    from mmsearch_r1.policy.load import PolicyLoadError, load_policy

    monkeypatch.chdir(tmp_path)  # a fresh clone: nothing under runs/ or data/generated/
    cfg = preset("cpu_demo")
    with pytest.raises(UserError, match="02_warmstart.ipynb.*01_data.ipynb.*build_missing=True"):
        ensure_inputs(cfg.model, cfg.dataset, build=False)
    with pytest.raises(UserError, match="03_train.ipynb"):
        ensure_inputs(DEMO_GRPO_FINAL, build=False)
    assert ensure_inputs("tiny", "synthetic", build=False) == []
    with pytest.raises(PolicyLoadError, match="no policy folder at runs/demo_grpo/final.*03_train.ipynb"):
        load_policy(DEMO_GRPO_FINAL)  # not taken for a hub id


def test_resume_refuses_a_checkpoint_made_from_other_policy_files(tmp_path):
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.train import train

    base = tmp_path / "base"
    build_tiny_policy(save_dir=base, seed=0)
    cfg = preset("tiny", model=str(base), output_dir=str(tmp_path / "run"), max_steps=1, save_steps=1,
                 max_completion_length=24)  # fmt: skip
    train(cfg)
    assert json.loads((cfg.run_dir / "fingerprint.json").read_text())["model"] != str(base)
    build_tiny_policy(save_dir=base, seed=1)  # the policy folder is rewritten (say, a new warm start)
    with pytest.raises(ValueError, match="model files"):
        train(cfg.replace(max_steps=2))
    assert train(cfg.replace(max_steps=2, resume="never")).summary["steps"] == 2


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--preset", "tiny", "--set", "penalti=0.2"], "did you mean 'penalty'"),
        (["--config", "no/such.yaml"], "no/such.yaml does not exist"),
        (["--preset", "papr"], "Unknown preset 'papr'"),
        (["--preset", "tiny", "--set", "penalty=abc"], "TrainConfig.penalty expects float"),
        (["--preset", "tiny", "--set", "penalty=1.5"], "must lie in [0, 1]"),
        ([], "--preset paper|cpu_demo|tiny or --config FILE"),
    ],
)
def test_train_cli_user_errors_are_one_line(argv, text, capsys):
    from mmsearch_r1.rl.train import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err


def test_train_cli_help_has_examples_and_a_closed_pipe_is_quiet():
    py = [sys.executable, "-m", "mmsearch_r1.rl.train"]
    assert "examples:" in subprocess.run([*py, "--help"], capture_output=True, text=True, check=True).stdout
    shell = f"{' '.join(py)} --help-config | true"  # the reader is gone before the first write
    done = subprocess.run(shell, shell=True, capture_output=True, text=True, cwd=ROOT)
    assert done.stderr == ""


def test_warm_start_summary_says_when_validation_was_skipped():
    from mmsearch_r1.sft.warmstart import summary_line

    line = summary_line({"total_seconds": 5, "peak_rss_gib": 1.0})
    assert "validation skipped" in line and "nan" not in line


def test_a_failing_demo_stage_fails_make_demo_with_its_name(monkeypatch, capsys):
    from mmsearch_r1 import demo

    ran = []

    def broken():
        raise ImportError("cannot import name 'x' from a stage's own code")

    stages = [
        ("first", lambda: ran.append(1), "ok"),
        ("second", broken, "breaks"),
        ("third", ran.clear, "never"),
    ]
    monkeypatch.setattr(demo, "STAGES", stages)
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "[failed] second" in err and "ImportError" in err and ran == [1]


@pytest.mark.parametrize(
    "name", ["01_data", "02_warmstart", "03_train", "04_scale_up", "05_eval", "06_analysis"]
)
def test_papermill_reads_every_parameter(name):
    """`papermill --help-notebook` and `-p` know every global of the parameters cell (a comment with quotes
    or '=' hides a parameter from papermill's parser)."""
    import ast

    import papermill

    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    declared = [n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)]
    assert declared and list(papermill.inspect_notebook(str(path))) == declared


def test_a_saved_data_sets_digest_ignores_the_cache_files_datasets_writes_beside_it(tmp_path):
    import datasets

    from mmsearch_r1.rl.resume import _path_digest

    folder = tmp_path / "pool"
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"x": list(range(50))})).save_to_disk(str(folder))
    before = _path_digest(folder)
    loaded = datasets.load_from_disk(str(folder))["train"].filter(lambda x: x % 2 == 0, input_columns="x")
    assert len(loaded) == 25 and list(folder.rglob("cache-*.arrow"))  # datasets wrote a cache file
    assert _path_digest(folder) == before
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"x": list(range(51))})).save_to_disk(
        str(tmp_path / "b")
    )
    assert _path_digest(tmp_path / "b") != before  # other data: another digest
