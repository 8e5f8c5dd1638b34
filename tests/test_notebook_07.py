"""Notebook 07 runs headless (papermill, smoke: every stage of the comparison with the tiny policy) and
writes the comparison's JSON, figure and curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pm = pytest.importorskip("papermill")


def test_notebook_07_smoke_runs_every_stage_and_reports(tmp_path):
    root, figures = tmp_path / "study", tmp_path / "figures"
    pm.execute_notebook(str(ROOT / "notebooks/07_rl_vs_sft.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT),
                        parameters={"smoke": True, "root": str(root), "figures_dir": str(figures), "window": 1},
                        kernel_name="python3", progress_bar=False)  # fmt: skip
    result = json.loads((figures / "rl_vs_sft.json").read_text())
    assert set(result["runs"]) == {"agnostic_ws", "agnostic_grpo"}
    for run in result["runs"].values():
        assert run["n"] == 4 and run["original_templates"]["n"] == 4 and len(run["on_demand_ci"]) == 2
    assert (root / "agnostic_grpo" / "final").is_dir() and (root / "agnostic_ws" / "final").is_dir()
    assert (figures / "rl_vs_sft.png").stat().st_size > 10_000
    out = json.loads((tmp_path / "out.ipynb").read_text())
    shown = "".join(
        "".join(o.get("data", {}).get("text/html", "")) for c in out["cells"] for o in c.get("outputs", [])
    )
    assert "agnostic_grpo" in shown  # the table was displayed
