"""Notebook 01 runs headless (papermill, smoke) and writes readable FVQA-format datasets."""

from __future__ import annotations

import json
from pathlib import Path

from mmsearch_r1.data.schema import load_fvqa_parquet, read_extra_info

ROOT = Path(__file__).resolve().parents[1]


# About 40 s on 2 cores (papermill kernel, smoke image index); in the default suite: the issue asks for it.
def test_notebook_01_smoke(tmp_path):
    from mmsearch_r1.notebook_utils import run_notebook

    out_dir = tmp_path / "data"
    run_notebook(
        ROOT / "notebooks/01_data.ipynb", tmp_path / "out.ipynb", cwd=ROOT, smoke=True, out_dir=str(out_dir)
    )
    summary = json.loads((out_dir / "world_summary.json").read_text())
    assert summary["sizes"]["train"] > 0 and summary["sizes"]["test"] > 0
    train = load_fvqa_parquet(out_dir / "world_train.parquet")
    test_extra = read_extra_info(out_dir / "world_test.parquet")
    train_extra = read_extra_info(out_dir / "world_train.parquet")
    assert set(train["category"]) <= {"search_free", "search_required"}
    assert not {e["entity_id"] for e in train_extra} & {e["entity_id"] for e in test_extra}
    for name, n in summary["sizes"].items():  # sizes come from write_pool, not from re-reading
        assert len(load_fvqa_parquet(summary["paths"][name])) == n
    assert summary["sizes"]["train_pool"] >= summary["sizes"]["train"]
    recall = summary["image_search_recall"]
    assert recall is None or {"all", "flag"} <= set(recall)
