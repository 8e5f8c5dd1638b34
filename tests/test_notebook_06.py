"""Notebook 06 runs headless (papermill, smoke) on run folders made here and saves its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch_r1.evaluation.evaluate import score_record, summarize_groups

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("papermill")


def _runs(root: Path) -> None:
    for name, penalty, end in (("grpo_p01", 0.1, 0.4), ("grpo_p0", 0.0, 1.0)):
        d = root / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"penalty": penalty}))
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "reward": 0.5, "search_ratio": 0.5 + (end - 0.5) * s / 10}) + "\n"
                    for s in range(1, 11))
        )  # fmt: skip
        items = []
        for method, searches in (("direct", 0), ("rag", 2), ("on_demand", 1 if penalty else 2)):
            r = {"data_id": "a", "question": "q", "answer": "Lima", "aliases": [], "category": "search_required",
                 "kind": "visual_knowledge", "method": method, "prediction": "Lima", "searches": searches,
                 "image_calls": min(searches, 1), "text_calls": max(searches - 1, 0),
                 "max_search_steps": 0 if method == "direct" else 2,
                 "turns": [{"text": "<reason>r</reason><answer>Lima</answer>"}]}  # fmt: skip
            items.append(score_record(r, benchmark="world-test"))
        e = root / f"eval_{name}"
        e.mkdir()
        (e / "eval.json").write_text(json.dumps({"policy": str(d / "final"), **summarize_groups(items)}))
        (e / "eval_items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))


def test_notebook_06_smoke(tmp_path):
    from mmsearch_r1.notebook_utils import run_notebook

    _runs(tmp_path / "runs")
    figures = tmp_path / "figures"
    run_notebook(ROOT / "notebooks/06_analysis.ipynb", tmp_path / "out.ipynb", cwd=ROOT, smoke=True,
                 runs_dir=str(tmp_path / "runs"), figures_dir=str(figures))  # fmt: skip
    for png in ("training_curves.png", "frontier.png", "answer_behaviour.png"):
        assert (figures / png).read_bytes()[:4] == b"\x89PNG", png
    assert "On-demand" in (figures / "table1.md").read_text()
