"""Notebook 05 runs headless (papermill, smoke: tiny policy, synthetic miniature) and writes eval files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("papermill")


def test_notebook_05_smoke(tmp_path):
    from mmsearch_r1.notebook_utils import run_notebook

    run_notebook(ROOT / "notebooks/05_eval.ipynb", tmp_path / "out.ipynb", cwd=ROOT, smoke=True,
                 out_dir=str(tmp_path / "runs"), name="nb05")  # fmt: skip
    result = json.loads((tmp_path / "runs/nb05/eval.json").read_text())
    assert set(result["benchmarks"]["synthetic"]) == {"direct", "rag", "on_demand"}
    assert result["n_items"] == 12
    assert result["benchmarks"]["synthetic"]["rag"]["all"]["sr_calls"] == 1.0
    lines = (tmp_path / "runs/nb05/eval_items.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(x)["turns"] for x in lines)
