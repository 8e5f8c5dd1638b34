"""Papermill smoke of notebooks/03_train.ipynb (tiny policy, synthetic world, 2 GRPO steps)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from mmsearch_r1.notebook_utils import run_notebook

NB = Path(__file__).resolve().parent.parent / "notebooks" / "03_train.ipynb"


def test_notebook_03_smoke(tmp_path):
    """Run from a folder of its own, with the default output: the smoke run writes under runs/smoke/ only,
    never where make demo's run (runs/demo_grpo, which notebook 05 reads) lives."""
    out = tmp_path / "out.ipynb"
    run_notebook(NB, out, cwd=tmp_path, smoke=True, penalty=0.0)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["smoke"]
    run_dir = tmp_path / "runs" / "smoke" / "03_train"
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    config = json.loads((run_dir / "config.json").read_text())
    assert config["penalty"] == 0.0 and config["model"] == "tiny"
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run_dir / "curves.png").is_file()
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert images  # the seaborn curves and the trajectories' images are drawn
