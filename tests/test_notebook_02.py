"""Papermill smoke of notebooks/02_warmstart.ipynb (tiny policy, small world sample, a few SFT steps)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from mmsearch_r1.notebook_utils import run_notebook

NB = Path(__file__).resolve().parent.parent / "notebooks" / "02_warmstart.ipynb"


def test_notebook_02_smoke(tmp_path):
    run_dir = tmp_path / "warm"
    out = tmp_path / "out.ipynb"
    run_notebook(NB, out, smoke=True, output_dir=str(run_dir))
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "tiny" and metrics["sft_steps"] >= 1
    assert {"eval_greedy", "eval_rag_on_unknown"} <= set(metrics)
    assert (run_dir / "final" / "config.json").is_file()


def test_notebook_02_defaults_are_the_library_defaults():
    """`papermill notebooks/02_warmstart.ipynb out.ipynb` (defaults) must train the demo policy that
    `make demo` trains: every parameter that is a `WarmStartConfig` field has the field's default."""
    from dataclasses import fields

    from mmsearch_r1.sft.warmstart import WarmStartConfig

    nb = nbformat.read(NB, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params: dict = {}
    exec(cell.source, {}, params)
    defaults = WarmStartConfig()
    shared = [f.name for f in fields(WarmStartConfig) if f.name in params]
    assert len(shared) >= 8
    assert {k: params[k] for k in shared} == {k: getattr(defaults, k) for k in shared}
