"""Papermill smoke of notebooks/04_scale_up.ipynb: GPU commands printed, a real two-process torchrun on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from mmsearch_r1.notebook_utils import run_notebook

NB = Path(__file__).resolve().parent.parent / "notebooks" / "04_scale_up.ipynb"


def test_notebook_04_smoke(tmp_path):
    run_dir = tmp_path / "ddp"
    out = tmp_path / "out.ipynb"
    run_notebook(NB, out, smoke=True, output_dir=str(run_dir))
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "accelerate launch --config_file" in text and "zero3.yaml" in text
    assert "trl vllm-serve" in text and "vllm_mode=server" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    assert json.loads((run_dir / "launch.json").read_text())["world_size"] == 2
