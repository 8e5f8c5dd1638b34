"""Evaluation metrics over per-item records, and the harness end to end (tiny policy, scripted outputs)."""

from __future__ import annotations

import json

import pytest
import torch
from search_fakes import ScriptedTurns

from mmsearch_r1.evaluation.evaluate import (
    EvalConfig,
    apply_judge,
    behaviour,
    evaluate,
    load_eval,
    results_table,
    score_record,
    summarize,
    summarize_groups,
)
from mmsearch_r1.evaluation.judge import Verdict

ANS = "<reason>r</reason><answer>{}</answer><|im_end|>"
IMG = "<reason>r</reason><search><img></search><|im_end|>"
TXT = "<reason>r</reason><text_search>q</text_search><|im_end|>"
ALWAYS_SEARCH = [IMG, TXT, ANS.format("Corla")]
"""Scripted turns: image search, text search, then the answer 'Corla'."""


def rec(
    method,
    pred,
    searches=(),
    *,
    answer="Lima",
    category="search_required",
    kind="textual_knowledge",
    bench="b1",
):
    turns = [{"text": IMG if s == "image_search" else TXT} for s in searches] + [{"text": ANS.format(pred)}]
    r = {
        "data_id": f"{pred}-{len(searches)}",
        "question": "Capital?",
        "answer": answer,
        "aliases": ["Lima city"],
        "category": category,
        "kind": kind,
        "method": method,
        "turns": turns,
        "prediction": pred,
        "image_calls": list(searches).count("image_search"),
        "text_calls": list(searches).count("text_search"),
        "searches": len(searches),
        "tool_failures": 0,
        "tool_refused": 0,
        "max_search_steps": 0 if method == "direct" else 2,
        "completion_tokens": 10,
        "prompt_tokens": 100,
        "tool_tokens": 50 * len(searches),
        "turn_count": len(turns),
    }
    return score_record(r, benchmark=bench)


def test_score_record_em_subem_format():
    r = rec("on_demand", "It is Lima city, Peru")
    assert not r["em"] and r["subem"] and r["format_ok"]
    r = rec("on_demand", "the Lima!")
    assert r["em"] and r["subem"]
    bad = rec("on_demand", "Lima")
    bad["turns"] = [{"text": "<answer>Lima</answer>"}]
    assert not score_record(bad)["format_ok"]


def test_two_search_ratios_and_calls():
    recs = [
        rec("on_demand", "Lima", ("image_search", "text_search")),  # 2 calls
        rec("on_demand", "Lima", ("image_search",)),  # 1 call
        rec("on_demand", "Cusco"),  # 0 calls
        rec("on_demand", "Lima"),  # 0 calls
    ]
    s = summarize(recs, image_call_cost=0.01, text_call_cost=0.02)
    assert s["n"] == 4 and s["em"] == 0.75
    assert s["sr_any"] == 0.5  # half of the answers searched (paper §4.1)
    assert s["sr_calls"] == pytest.approx(3 / 8)  # 3 calls of 4 x 2 allowed (Tab. 1 caption)
    assert s["image_calls_per_q"] == 0.5 and s["text_calls_per_q"] == 0.25
    assert s["est_cost_usd"] == pytest.approx(2 * 0.01 + 1 * 0.02)
    assert s["acc"] == s["em"] and s["acc_metric"] == "em" and s["judge_acc"] is None
    rag = summarize([rec("rag", "Lima", ("image_search", "text_search"))] * 3)
    direct = summarize([rec("direct", "Lima")] * 3)
    assert rag["sr_calls"] == 1.0 and rag["sr_any"] == 1.0
    assert direct["sr_calls"] == 0.0 and direct["sr_any"] == 0.0
    assert summarize([]) == {"n": 0}


def test_groups_by_benchmark_category_kind_and_average():
    recs = [
        rec("on_demand", "Lima", ("image_search",), bench="b1"),
        rec("on_demand", "Paris", answer="Paris", category="search_free", kind="search_free", bench="b1"),
        rec("on_demand", "Cusco", bench="b2"),
        rec("rag", "Lima", ("image_search", "text_search"), bench="b2"),
    ]
    g = summarize_groups(recs)
    b1 = g["benchmarks"]["b1"]["on_demand"]
    assert b1["all"]["n"] == 2 and set(b1["by_category"]) == {"search_free", "search_required"}
    assert b1["by_category"]["search_free"]["sr_any"] == 0.0
    assert b1["by_kind"]["textual_knowledge"]["sr_any"] == 1.0
    assert b1["behaviour"] == {"correct with search": 1, "correct without search": 1}
    assert g["avg"]["on_demand"]["acc"] == pytest.approx((1.0 + 0.0) / 2)  # mean over benchmarks
    assert g["avg"]["on_demand"]["benchmarks"] == 2 and g["avg"]["rag"]["benchmarks"] == 1
    assert behaviour(rec("direct", "Cusco")) == "wrong without search"


class StubJudge:
    def judge_many(self, items, progress=False):
        return [Verdict("lima" in (i.response or "").lower(), "stub", "judge") for i in items]


def test_judge_accuracy_replaces_em_when_complete():
    recs = [rec("on_demand", "It is Lima, Peru"), rec("on_demand", "Cusco")]
    apply_judge(recs, StubJudge())
    s = summarize(recs)
    assert s["em"] == 0.0 and s["judge_acc"] == 0.5 and s["acc"] == 0.5 and s["acc_metric"] == "judge"
    recs[1]["judge"] = None  # a failed verdict: fall back to EM for "acc", keep judge_acc over the judged
    s = summarize(recs)
    assert s["judge_missing"] == 1 and s["acc_metric"] == "em"


def test_evaluate_end_to_end_writes_run_folder(tmp_path):
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.data import synthetic_rows

    model, processor = build_tiny_policy()
    cfg = EvalConfig(name="t", engine="synthetic", out_dir=str(tmp_path), progress=False, policy="tiny")
    rows = synthetic_rows(4)
    result = evaluate(
        cfg,
        policy=(model, processor),
        datasets={"synthetic": rows},
        generator=ScriptedTurns(processor, ALWAYS_SEARCH),
    )
    assert (tmp_path / "t" / "eval.json").is_file()
    saved, items = load_eval(tmp_path / "t")
    assert saved["n_items"] == 12 == len(items) and saved == json.loads(json.dumps(result, default=str))
    by = saved["benchmarks"]["synthetic"]
    assert by["direct"]["all"]["sr_any"] == 0.0 and by["direct"]["all"]["refused_per_q"] == 2.0
    assert by["rag"]["all"]["sr_calls"] == 1.0
    assert by["on_demand"]["all"]["sr_any"] == 1.0 and by["on_demand"]["all"]["image_calls_per_q"] == 1.0
    assert all(len(r["turns"]) == 3 and r["observations"] for r in items if r["method"] == "on_demand")
    assert {r["method"] for r in results_table(saved)} == {"Direct", "RAG", "On-demand"}
    # The synthetic index answers the textual question: on-demand searched but answered 'Corla' everywhere.
    assert by["on_demand"]["all"]["em"] == pytest.approx(sum(r["answer"] == "Corla" for r in rows) / 4)


def test_bad_backend_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        evaluate(EvalConfig(backend="onnx", out_dir=str(tmp_path)), policy=(None, None), datasets={})


def test_a_stopped_evaluation_resumes_at_the_method_it_was_on(tmp_path, monkeypatch):
    from dataclasses import replace

    import mmsearch_r1.agent.rollout as rollout_module
    from mmsearch_r1.rl.data import synthetic_rows

    ran = []

    def scripted(model, processor, rcfg):
        ran.append(rcfg.method)
        return ScriptedTurns(processor, ALWAYS_SEARCH)

    monkeypatch.setattr(rollout_module, "HFGenerator", scripted)
    rows = {"s": synthetic_rows(3)}
    cfg = EvalConfig(name="r", policy="tiny", engine="synthetic", out_dir=str(tmp_path), progress=False,
                     methods=["direct", "rag"])  # fmt: skip
    evaluate(cfg, datasets=rows)
    assert ran == ["direct", "rag"]
    items = tmp_path / "r" / "eval_items.jsonl"
    items.write_text("\n".join(items.read_text().splitlines()[:-1]) + "\n")  # killed inside "rag"
    ran.clear()
    result = evaluate(replace(cfg, methods=["direct", "rag", "on_demand"]), datasets=rows)
    assert ran == ["rag", "on_demand"] and result["n_items"] == 9 == len(load_eval(tmp_path / "r")[1])
    ran.clear()
    evaluate(replace(cfg, max_new_tokens=20), datasets=rows)  # other settings: nothing is kept
    assert ran == ["direct", "rag"]
    ran.clear()
    evaluate(replace(cfg, max_new_tokens=20, resume=False), datasets=rows)
    assert ran == ["direct", "rag"]


def test_bf16_evaluation_generates_with_the_bf16_policy(tmp_path):
    from mmsearch_r1.policy.bf16 import ATTENTION
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.data import synthetic_rows

    model, processor = build_tiny_policy()
    cfg = EvalConfig(name="b", engine="synthetic", out_dir=str(tmp_path), progress=False, policy="tiny",
                     methods=["direct"], bf16=True, max_new_tokens=8)  # fmt: skip
    result = evaluate(cfg, policy=(model, processor), datasets={"s": synthetic_rows(2)})
    assert result["n_items"] == 2 and result["config"]["bf16"]
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == ATTENTION


def test_search_settings_follow_the_training_run(tmp_path):
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.data import synthetic_rows

    run = tmp_path / "runs" / "grpo"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"image_k": 2, "text_k": 1, "max_turns": 3, "penalty": 0.1}))
    model, processor = build_tiny_policy()
    cfg = EvalConfig(name="e", policy=str(run / "final"), engine="synthetic", methods=["on_demand"],
                     out_dir=str(tmp_path / "runs"), progress=False)  # fmt: skip
    result = evaluate(
        cfg,
        policy=(model, processor),
        datasets={"s": synthetic_rows(1)},
        generator=ScriptedTurns(processor, ALWAYS_SEARCH),
    )
    assert result["env_from_training"] == {"image_k": 2, "text_k": 1, "max_turns": 3}
    _, items = load_eval(tmp_path / "runs" / "e")
    image_obs, text_obs = items[0]["observations"]
    assert image_obs["images"] == 2 and len(text_obs["hits"]) <= 1


def test_training_env_reads_grpo_and_warmstart_configs(tmp_path):
    from mmsearch_r1.evaluation.evaluate import _training_env

    grpo, ws = tmp_path / "grpo", tmp_path / "ws"
    for d in (grpo, ws):
        (d / "final").mkdir(parents=True)
    (grpo / "config.json").write_text(json.dumps({"image_k": 3, "text_k": 3, "penalty": 0.1}))
    env = {"budgets": {"max_turns": 3, "image": 1, "text": 2}, "grammar": "strict", "image_k": 2, "text_k": 4}
    (ws / "config.json").write_text(json.dumps({"env": env}))
    assert _training_env(EvalConfig(policy=str(grpo / "final"))) == {"image_k": 3, "text_k": 3}
    assert _training_env(EvalConfig(policy=str(ws / "final")))["text_k"] == 4
    assert _training_env(EvalConfig(policy="demo")) is None
