"""The miniature's figures are drawn from its run folders alone."""

import json

from mmsearch_r1.miniature import figures as mf


def _split(acc, sr, sr_free, sr_req):
    return {"all": {"n": 4, "accuracy": acc, "search_ratio": sr},
            "search_free": {"n": 2, "accuracy": 1.0, "search_ratio": sr_free},
            "search_required": {"n": 2, "accuracy": acc, "search_ratio": sr_req}}  # fmt: skip


def _run(root, name, penalty, split, sr):
    run = root / f"miniature_{name}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"penalty": penalty}))
    steps = [{"step": i, "reward": 0.8, "search_ratio": sr} for i in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in steps) + "\n")
    after = {"on_demand": {"train": _split(0.95, sr, sr / 2, sr), "test": _split(0.9, sr, sr, sr)},
             "forced_search": {"train": _split(0.97, 1.0, 1.0, 1.0), "test": _split(0.96, 1.0, 1.0, 1.0)}}  # fmt: skip
    before = {"forced_search": after["forced_search"], "forced_answer": {"train": _split(0.5, 0.0, 0.0, 0.0)}}
    curve = [{"step": i, "sr_search_free": sr / 2, "sr_search_required": sr} for i in (1, 2, 3)]
    ev = {"name": name, "penalty": penalty, "split": split, "steps": 3, "train_search_ratio_last10": sr,
          "curve": curve, "before": before, "after": after}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(ev))


def test_figures_and_table_from_run_folders(tmp_path):
    _run(tmp_path, "p0.1_balanced", 0.1, "rl_balanced", 0.5)
    _run(tmp_path, "p0_balanced", 0.0, "rl_balanced", 1.0)
    _run(tmp_path, "p0.1_unbalanced", 0.1, "rl_unbalanced", 0.95)
    (tmp_path / "demo_grpo").mkdir()  # another kind of run is ignored
    runs = mf.load_runs(tmp_path)
    assert sorted(runs) == ["p0.1_balanced", "p0.1_unbalanced", "p0_balanced"]
    c = mf.curves(runs)
    assert set(c["metric"]) == {"reward", "search_ratio", "sr_search_free", "sr_search_required"}
    fr = mf.frontier(runs)
    assert set(fr["policy"]) == {
        "RL p=0.1",
        "RL p=0",
        "forced search (warm start)",
        "forced answer (warm start)",
    }
    tab = mf.table(runs).set_index("run")
    assert (
        tab.loc["p0.1_balanced", "train SR free"] == 0.25
        and tab.loc["p0_balanced", "test forced-search acc"] == 0.96
    )
    written = mf.demo_stage(runs_dir=tmp_path, figures_dir=tmp_path / "fig")
    assert all((tmp_path / "fig" / f).is_file() for f in
               ("miniature_curves.png", "miniature_frontier.png", "miniature_table.md"))  # fmt: skip
    assert set(written) == {"curves", "frontier", "table"}


def test_no_runs_draws_nothing(tmp_path):
    assert mf.demo_stage(runs_dir=tmp_path, figures_dir=tmp_path / "fig") == {}
