"""The RL-against-warm-start comparison (`rl_vs_sft`, `evaluation.comparison`): data split, run settings, numbers, report."""

from __future__ import annotations

import json
import os
import shutil
import time

import datasets
import pytest

from mmsearch_r1 import rl_vs_sft
from mmsearch_r1.data.world.build import WorldConfig, build_world
from mmsearch_r1.evaluation.comparison import (
    bootstrap_ci,
    boundary_curve,
    choice_payoffs,
    fact_rollouts,
    summarize_run,
)
from mmsearch_r1.rl_vs_sft import RUNS, StudyConfig, train_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    world = build_world(WorldConfig(root=root / "world", flags="flagpy"))
    cfg = StudyConfig(root=str(root / "run"), figures_dir=str(root / "figures"),
                      records_dir=str(root / "records"), bootstrap=200)  # fmt: skip
    rl_vs_sft.data_stage(cfg, world=world)
    return cfg, datasets.load_from_disk(str(cfg.data_dir / "pool"))


def test_rl_never_sees_a_warm_start_entity_nor_a_held_out_wording(study):
    from mmsearch_r1.data.wordings import split_wordings

    cfg, pool = study
    sft, rl = set(pool["sft_train"]["entity_id"]), set(pool["rl_train"]["entity_id"])
    test = set(pool["test_template"]["entity_id"])
    assert sft and rl and not sft & rl and not (sft | rl) & test
    assert abs(len(rl) - len(sft)) <= 1  # rl_entity_share 0.5
    held = split_wordings(0)
    for split in ("sft_train", "rl_train"):
        assert all(
            w in held[t]["train"]
            for t, w in zip(pool[split]["template"], pool[split]["wording"], strict=True)
        )
    assert all(
        w in held[t]["heldout"]
        for t, w in zip(pool["test_heldout"]["template"], pool["test_heldout"]["wording"], strict=True)
    )
    assert set(pool["test_template"]["wording"]) == {0}
    assert len(pool["test_heldout"]) == len(pool["test_template"])
    counts = json.loads((cfg.data_dir / "counts.json").read_text())
    assert counts["rl_train"] == len(pool["rl_train"]) and counts["rl_entities"] == len(rl)
    before = (cfg.data_dir / "pool" / "dataset_dict.json").stat().st_mtime
    rl_vs_sft.data_stage(cfg)  # done: not rebuilt
    assert (cfg.data_dir / "pool" / "dataset_dict.json").stat().st_mtime == before


def test_each_grpo_run_starts_from_its_warm_start_with_its_penalty_and_seed(tmp_path):
    cfg = StudyConfig(root=str(tmp_path), penalty=0.3, temperature=0.7, max_steps=12)
    runs = {label: train_config(cfg, label) for label, run in RUNS.items() if "penalty" in run}
    assert set(runs) == {"agnostic_grpo", "agnostic_grpo_seed1", "agnostic_grpo_p0", "labelled_grpo"}
    assert [runs[k].penalty for k in sorted(runs)] == [0.3, 0.0, 0.3, 0.3]
    assert {r.penalty_mode for r in runs.values()} == {
        "per_call"
    }  # a text search after the image search costs
    assert runs["agnostic_grpo_seed1"].seed == 1 and runs["agnostic_grpo"].seed == 0
    assert runs["labelled_grpo"].model.endswith("labelled_ws/final") and runs[
        "agnostic_grpo_p0"
    ].model.endswith("agnostic_ws/final")
    for c in runs.values():
        assert (c.dataset_split, c.temperature, c.max_steps) == ("rl_train", 0.7, 12)
        assert (
            c.run_dir.parent == tmp_path
            and c.run_dir.name == c.name
            and c.prompts_per_step * c.num_generations == 8
        )


def test_a_grpo_run_stopped_by_a_signal_stops_the_study(tmp_path, monkeypatch):
    # SIGTERM checkpoints and ends `train` early; the next stage (eval) must not start it again
    import mmsearch_r1.rl.train as rl_train

    cfg = StudyConfig(root=str(tmp_path), records_dir=str(tmp_path / "records"))
    stopped = rl_train.TrainResult(tmp_path, None, [], {"stopped_by_signal": True, "steps": 7})
    monkeypatch.setattr(rl_vs_sft, "warmstart_stage", lambda cfg, which: tmp_path)
    monkeypatch.setattr(rl_train, "train", lambda config: stopped)
    with pytest.raises(SystemExit, match=r"agnostic_grpo: GRPO stopped by a signal after step 7.*resume"):
        rl_vs_sft.run(cfg, ["grpo", "eval"], ["agnostic_grpo"])
    assert not (tmp_path / "eval").exists()


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    small, large = [1.0, 0.0] * 10, [1.0, 0.0] * 500
    lo, hi = bootstrap_ci(small, 500, seed=0)
    assert lo < 50 < hi and bootstrap_ci(small, 500, seed=0) == [lo, hi]
    lo2, hi2 = bootstrap_ci(large, 500, seed=0)
    assert lo < lo2 < 50 < hi2 < hi
    assert bootstrap_ci([1.0] * 30, 100, seed=0) == [100.0, 100.0]


def _rec(data_id, method, em, image=0, text=0):
    return {"data_id": data_id, "method": method, "em": em, "image_calls": image, "text_calls": text,
            "searched": image + text > 0}  # fmt: skip


def test_summarize_run_reads_accuracy_calls_and_the_knowledge_boundary():
    rows = {
        "a": {"kind": "text_only", "entity_id": "x", "template": "capital_of"},  # known
        "b": {"kind": "text_only", "entity_id": "y", "template": "capital_of"},  # unknown
        "c": {"kind": "text_only", "entity_id": "z", "template": "capital_of"},  # unknown
        "d": {"kind": "visual_knowledge", "entity_id": "x", "template": "flag_country"},
        "e": {"kind": "textual_knowledge", "entity_id": "x", "template": "flag_capital"},  # known
        "f": {"kind": "textual_knowledge", "entity_id": "y", "template": "flag_capital"},  # unknown
    }
    knows = lambda row: None if row["template"] == "flag_country" else row["entity_id"] == "x"  # noqa: E731
    recs = [_rec("a", "on_demand", True), _rec("b", "on_demand", True, text=1), _rec("c", "on_demand", False),
            _rec("d", "on_demand", True, image=1), _rec("e", "on_demand", True, image=1),
            _rec("f", "on_demand", True, image=1, text=1),
            *[_rec(k, "rag", True, image=1, text=1) for k in "abcdef"], *[_rec(k, "direct", k == "a") for k in "abcdef"]]  # fmt: skip
    s = summarize_run(recs, rows, knows, n_boot=100, seed=0)
    assert (s["n"], s["on_demand_acc"], s["rag_acc"], s["direct_acc"]) == (6, 83.33, 100.0, 16.67)
    assert (s["calls_per_q"], s["rag_calls_per_q"], s["searched"]) == (0.833, 2.0, 0.667)
    assert (s["image_fact_known_text_search_rate"], s["image_fact_unknown_text_search_rate"]) == (0.0, 1.0)
    assert (s["known_search_rate"], s["unknown_search_rate"], s["n_known"], s["n_unknown"]) == (
        0.0,
        0.5,
        1,
        2,
    )
    assert s["on_demand_ci"][0] <= 83.33 <= s["on_demand_ci"][1]


def test_report_writes_the_issue_shape_from_the_evaluations_that_exist(study, monkeypatch):
    cfg, pool = study
    rows = pool["test_heldout"].select_columns(["data_id", "kind", "template", "entity_id"])
    for label in ("agnostic_ws", "agnostic_grpo"):
        folder = rl_vs_sft.Path(cfg.root) / "eval" / f"{label}_heldout"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"policy": f"runs/{label}/final"}))
        with (folder / "eval_items.jsonl").open("w") as f:
            for i, r in enumerate(rows):
                for m in rl_vs_sft.METHODS:
                    searched = m == "rag" or (m == "on_demand" and (label == "agnostic_ws" or i % 2 == 0))
                    f.write(json.dumps(_rec(r["data_id"], m, m != "direct", image=int(searched))) + "\n")
    knows = lambda row: row["kind"] == "text_only" and len(row["entity_id"]) % 2 == 0  # noqa: E731
    monkeypatch.setattr(rl_vs_sft, "_knowledge", lambda cfg: knows)
    out = rl_vs_sft.report(cfg)
    assert set(out["runs"]) == {"agnostic_ws", "agnostic_grpo"}  # the others have no evaluation yet
    keys = {"policy", "seed", "n", "on_demand_acc", "on_demand_ci", "rag_acc", "direct_acc", "calls_per_q",
            "rag_calls_per_q", "searched", "known_search_rate", "unknown_search_rate"}  # fmt: skip
    for run in out["runs"].values():
        assert keys <= set(run) and run["n"] == len(rows) and run["original_templates"] is None
    assert (
        out["runs"]["agnostic_ws"]["calls_per_q"] == 1.0 and out["runs"]["agnostic_grpo"]["calls_per_q"] < 1.0
    )
    written = json.loads((rl_vs_sft.Path(cfg.figures_dir) / "rl_vs_sft.json").read_text())
    assert written["runs"] == json.loads(json.dumps(out["runs"])) and written["commands"]
    assert (rl_vs_sft.Path(cfg.figures_dir) / "rl_vs_sft.png").stat().st_size > 10_000
    saved = sorted(p.name for p in (rl_vs_sft.Path(cfg.records_dir) / "evals").iterdir())
    assert saved == ["agnostic_grpo_heldout.jsonl", "agnostic_ws_heldout.jsonl"]
    redone = rl_vs_sft.Path(cfg.root) / "eval" / "agnostic_ws_heldout"  # evaluated again: records replaced
    with (redone / "eval_items.jsonl").open("w") as f:
        f.writelines(json.dumps(_rec(r["data_id"], m, False)) + "\n" for r in rows for m in rl_vs_sft.METHODS)
    os.utime(redone / "eval.json", (time.time() + 5, time.time() + 5))
    assert rl_vs_sft.report(cfg)["runs"]["agnostic_ws"]["on_demand_acc"] == 0.0
    out = rl_vs_sft.report(cfg)
    shutil.rmtree(rl_vs_sft.Path(cfg.root) / "eval")  # the machine that evaluated is gone; its records remain
    monkeypatch.setattr(rl_vs_sft, "_knowledge", None)  # and no probe is needed to report them again
    assert rl_vs_sft.report(cfg)["runs"] == out["runs"]


def test_cli_names_a_wrong_stage_in_one_line(capsys):
    assert rl_vs_sft.main(["--stages", "data,train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown stage or run ['train']") and err.count("\n") == 1


def test_boundary_curve_follows_text_searches_on_known_and_unknown_facts_over_steps(tmp_path):
    rows = {
        "k": {"known": True, "kind": "text_only"},
        "u": {"known": False, "kind": "text_only"},
        "v": {"known": None, "kind": "visual"},
    }  # v: a question with no fact
    look_up = [{"role": "assistant"}, {"role": "tool", "name": "text_search"}, {"role": "assistant"}]
    image_only = [{"role": "assistant"}, {"role": "tool", "name": "search"}, {"role": "assistant"}]
    lines = []
    for step in range(1, 5):  # known facts: looked up less and less; unknown: always
        lines += [
            {"step": step, "data_id": "k", "messages": look_up if i < 4 - step else image_only}
            for i in range(4)
        ]
        lines += [{"step": step, "data_id": "u", "messages": look_up} for _ in range(4)]
        lines += [{"step": step, "data_id": "v", "messages": look_up}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    seen = fact_rollouts(tmp_path, rows, lambda r: r["known"])
    curve = boundary_curve(seen, window=1)
    known = curve[curve.facts == "known"].search_rate.tolist()
    assert known == [0.75, 0.5, 0.25, 0.0] and set(curve[curve.facts == "unknown"].search_rate) == {1.0}
    assert set(curve.rollouts) == {
        4
    }  # the question without a fact is left out; an image search is not a look-up
    smooth = boundary_curve(seen, window=2)
    assert smooth[smooth.facts == "known"].search_rate.tolist() == [0.75, 0.625, 0.375, 0.125]
    assert set(curve.kind) == {"text-only"}


def test_boundary_curve_keeps_text_only_and_image_then_fact_questions_apart(tmp_path):
    rows = {"t": {"known": True, "kind": "text_only"}, "i": {"known": True, "kind": "textual_knowledge"}}
    look_up = [{"role": "tool", "name": "search"}, {"role": "tool", "name": "text_search"}]
    answer = [{"role": "tool", "name": "search"}, {"role": "assistant"}]
    lines = [
        {"step": 1, "data_id": "t", "messages": look_up},
        {"step": 1, "data_id": "i", "messages": answer},
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curve = boundary_curve(fact_rollouts(tmp_path, rows, lambda r: r["known"]), window=1).set_index("kind")
    assert (
        curve.loc["text-only", "search_rate"] == 1.0 and curve.loc["image, then fact", "search_rate"] == 0.0
    )


def test_choice_payoffs_say_what_looking_up_and_answering_earned_per_fact(tmp_path):
    rows = {"k": {"known": True, "kind": "text_only"}, "u": {"known": False, "kind": "text_only"}}
    look_up = [{"role": "tool", "name": "text_search"}]
    lines = [
        {"step": 1, "data_id": "k", "messages": look_up, "em": True, "reward": 0.55},
        {"step": 1, "data_id": "k", "messages": [], "em": True, "reward": 1.0},
        {"step": 2, "data_id": "k", "messages": [], "em": False, "reward": 0.1},
        {"step": 2, "data_id": "u", "messages": look_up, "em": False, "reward": 0.1},
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    seen = fact_rollouts(tmp_path, rows, lambda r: r["known"])
    t = choice_payoffs(seen).set_index(["facts", "choice"])
    assert t.loc[("known", "answered"), ["rollouts", "accuracy", "mean_reward"]].tolist() == [2, 0.5, 0.55]
    assert (
        t.loc[("known", "looked up"), "mean_reward"] == 0.55
        and t.loc[("unknown", "looked up"), "rollouts"] == 1
    )
    assert choice_payoffs(seen, steps=(2, 2)).rollouts.sum() == 2


def test_training_choices_are_saved_to_the_records_and_read_from_there(study, monkeypatch):
    cfg, pool = study
    rows = pool["rl_train"].select(range(4))
    monkeypatch.setattr(rl_vs_sft, "_knowledge", lambda cfg: lambda row: row["kind"] == "text_only")
    run = rl_vs_sft.Path(cfg.root) / "agnostic_grpo_p0"
    run.mkdir(parents=True)
    lines = [{"step": 1, "data_id": r["data_id"], "messages": [], "em": True, "reward": 1.0} for r in rows]
    (run / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    first = rl_vs_sft.training_rollouts(cfg)
    assert list(first) == ["agnostic_grpo_p0"] and len(first["agnostic_grpo_p0"]) == 4
    assert (rl_vs_sft.Path(cfg.records_dir) / "rollouts" / "agnostic_grpo_p0.jsonl").is_file()
    shutil.rmtree(run)  # the run's folder is gone; its training choices remain
    assert rl_vs_sft.training_rollouts(cfg) == first
