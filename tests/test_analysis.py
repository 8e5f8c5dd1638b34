"""Tables and figures from synthetic run folders made here (no training, no evaluation)."""

from __future__ import annotations

import json

import pytest

from mmsearch_r1.evaluation.analysis import (
    PAPER_TABLE1,
    behaviour_breakdown,
    demo_stage,
    final_value,
    frontier,
    load_run,
    plot_behaviour,
    plot_frontier,
    plot_training_curves,
    table1,
    training_curves,
)
from mmsearch_r1.evaluation.evaluate import score_record, summarize_groups


def _train_run(root, name, penalty, sr_end):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": name, "penalty": penalty}))
    lines = []
    for step in range(1, 21):
        sr = 0.5 + (sr_end - 0.5) * step / 20
        lines.append(
            json.dumps({"step": step, "reward": 0.5 + 0.01 * step, "search_ratio": sr, "image_calls": sr})
        )
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _item(method, correct, searches, bench="world-test", category="search_required"):
    r = {
        "data_id": "x", "question": "q", "answer": "Lima", "aliases": [], "category": category,
        "kind": "textual_knowledge", "method": method, "prediction": "Lima" if correct else "Cusco",
        "turns": [{"text": "<reason>r</reason><answer>Lima</answer>"}], "image_calls": searches,
        "text_calls": 0, "searches": searches, "max_search_steps": 0 if method == "direct" else 2,
    }  # fmt: skip
    return score_record(r, benchmark=bench)


def _eval_run(root, name, policy, items):
    d = root / name
    d.mkdir(parents=True)
    (d / "eval.json").write_text(json.dumps({"name": name, "policy": policy, **summarize_groups(items)}))
    (d / "eval_items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    p01 = _train_run(root, "grpo_p01", 0.1, 0.3)
    p0 = _train_run(root, "grpo_p0", 0.0, 1.0)
    trained = [_item("on_demand", True, 0), _item("on_demand", True, 1), _item("on_demand", False, 1),
               _item("rag", True, 2), _item("rag", True, 2), _item("direct", False, 0)]  # fmt: skip
    e1 = _eval_run(root, "eval_p01", str(p01 / "final"), trained)
    e0 = _eval_run(root, "eval_p0", str(p0 / "final"), [_item("on_demand", True, 2)] * 3)
    base = _eval_run(
        root, "eval_base", "demo", [_item("on_demand", False, 0)] * 2 + [_item("on_demand", True, 0)]
    )
    return {"root": root, "p01": p01, "p0": p0, "e1": e1, "e0": e0, "base": base}


def test_paper_table_rows_average_correctly():
    bench = ["FVQA-test", "InfoSeek", "MMSearch", "SimpleVQA", "LiveVQA"]
    for _, row in PAPER_TABLE1.iterrows():
        assert abs(row[bench].mean() - row["Avg Acc"]) <= 0.1, row["Model"]
    r1 = PAPER_TABLE1[PAPER_TABLE1["Model"] == "MMSearch-R1-7B"].iloc[0]
    assert (r1["Avg Acc"], r1["Avg SR"]) == (54.6, 67.1)


def test_table1_puts_ours_beside_the_paper(runs):
    t = table1({"trained": runs["e1"]})
    ours = t[t["source"] == "ours"]
    assert len(t) == len(PAPER_TABLE1) + 3
    assert list(ours["Method"]) == ["Direct", "RAG", "On-demand"]
    od = ours[ours["Method"] == "On-demand"].iloc[0]
    assert od["world-test"] == pytest.approx(66.7) and od["Avg SR"] == pytest.approx(100 * 2 / 6, abs=0.1)
    assert ours[ours["Method"] == "RAG"].iloc[0]["Avg SR"] == 100.0


def test_training_curves_and_final_values(runs, tmp_path):
    df = training_curves({"p=0.1": runs["p01"], "p=0": runs["p0"]})
    assert set(df["metric"]) == {"reward", "search_ratio"} and len(df) == 80
    assert final_value(runs["p0"], last=1) == pytest.approx(1.0)
    assert final_value(load_run(runs["p01"]), last=1) == pytest.approx(0.3)
    path = plot_training_curves(df, tmp_path / "fig" / "curves.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        training_curves({"eval": runs["e1"]})


def test_frontier_and_behaviour(runs, tmp_path):
    fr = frontier({0.1: runs["e1"], 0.0: runs["e0"]})
    assert list(fr["penalty"]) == ["0.1", "0.0"]
    assert fr.iloc[0]["sr_any"] == pytest.approx(2 / 3) and fr.iloc[1]["sr_any"] == 1.0
    assert plot_frontier(fr, tmp_path / "f.png", rag=(1.0, 1.0)).is_file()
    beh = behaviour_breakdown({"base": runs["base"], "trained": runs["e1"]})
    trained = beh[beh["policy"] == "trained"].set_index("behaviour")["count"].to_dict()
    assert trained == {"correct without search": 1, "correct with search": 1, "wrong with search": 1,
                       "wrong without search": 0}  # fmt: skip
    base = beh[beh["policy"] == "base"].set_index("behaviour")["share"]
    assert base["wrong without search"] == pytest.approx(2 / 3)
    assert plot_behaviour(beh, tmp_path / "b.png").is_file()


def test_demo_stage_draws_everything_from_the_folders(runs, tmp_path, capsys):
    written = demo_stage(runs_dir=runs["root"], figures_dir=tmp_path / "figures")
    assert set(written) == {"curves", "table1", "behaviour", "frontier"}
    for key in ("curves", "behaviour", "frontier"):
        assert (
            tmp_path
            / "figures"
            / f"{ {'curves': 'training_curves', 'behaviour': 'answer_behaviour', 'frontier': 'frontier'}[key] }.png"
        ).is_file()
    out = capsys.readouterr().out
    assert "grpo_p0: penalty 0.0" in out and "final search ratio" in out
    empty = demo_stage(runs_dir=tmp_path / "nothing", figures_dir=tmp_path / "f2")
    assert empty == {}


def test_finding5_and_labels(runs):
    from mmsearch_r1.evaluation.analysis import discover, finding5, label_evals

    found = discover(runs["root"])
    labels = label_evals(found["eval"])
    assert set(labels) == {"base", "grpo_p01", "grpo_p0"}
    f5 = finding5(found["train"], found["eval"], benchmark="world-test").set_index("run")
    assert f5.loc["grpo_p0", "final_search_ratio"] == pytest.approx(
        0.5 + 0.5 * 15.5 / 20
    )  # mean of the last 10 steps
    assert f5.loc["grpo_p01", "sr_search_required"] == pytest.approx(2 / 3)
    assert f5.loc["grpo_p01", "acc_gap_vs_rag"] == pytest.approx(2 / 3 - 1)
    assert f5.loc["grpo_p01", "fewer_searches_vs_rag"] == pytest.approx(1 - (2 / 3) / 2)
