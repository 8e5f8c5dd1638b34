"""The miniature (Finding 5 on CPU): questions and splits, index, tokenizer, warm-start masks, a 2-step run."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from mmsearch_r1.miniature.data import (
    QUESTION,
    MiniatureConfig,
    Trigram,
    build_data,
    build_policy,
    sft_examples,
    synthetic_pairs,
)
from mmsearch_r1.miniature.run import ForcedStart, finding5_checks, make_env_factory_for, summarize_records

NAMES = ["Aland", "Borovia", "Cantria", "Delmar", "Estova", "Fenwick", "Galdor", "Horvia", "Istra", "Jorvik",
         "Kelmar", "Lorvia", "Mandor", "Nestria", "Orvala", "Pelnor", "Quenta", "Rostov", "Selvia", "Tarmin"]  # fmt: skip
CAPITALS = ["Amsk", "Bexa", "Colm", "Dravo", "Elin", "Fosk", "Gart", "Hulm", "Ivro", "Jask", "Kolt", "Lumo",
            "Mirk", "Nolo", "Ostr", "Parv", "Qilo", "Rusk", "Savo", "Tulo"]  # fmt: skip


def _pairs():
    rng = random.Random(0)
    return [
        {"id": f"country/{i}", "name": n, "capital": c, "aliases": [],
         "flag": Image.new("RGB", (60, 40), tuple(rng.randrange(256) for _ in range(3)))}
        for i, (n, c) in enumerate(zip(NAMES, CAPITALS, strict=True))
    ]  # fmt: skip


def _cfg(tmp_path, **kw):
    base = dict(root=str(tmp_path / "mini"), runs_dir=str(tmp_path / "runs"), n_synthetic=30, unbalanced_known=1,
                known_direct=2, known_search=1, unknown_search=1, unknown_wrong=1)  # fmt: skip
    return MiniatureConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("m"))
    data = build_data(cfg, pairs=_pairs())
    model, processor = build_policy(cfg)
    return cfg, data, model, processor


def test_splits_categories_and_balance(built):
    cfg, data, _, _ = built
    s = data.splits
    assert len(s["train"]) == 12 and len(s["test"]) == 8  # 10 known / 10 unknown, 60% of each to RL
    assert set(s["train"]["entity"]).isdisjoint(s["test"]["entity"])
    for split in s.values():
        for r in split:
            assert r["category"] == ("search_free" if r["known"] else "search_required")
            assert r["question"] == QUESTION.format(name=r["entity"]) and r["image"].size == (28, 28)
    bal, unbal = s["rl_balanced"]["known"], s["rl_unbalanced"]["known"]
    assert sum(bal) == len(bal) - sum(bal) == 6
    assert sum(unbal) / len(unbal) <= 0.15  # 1 known of 7
    assert len(data.known) == len(data.unknown) == 10


def test_index_finds_each_fact(built):
    cfg, data, _, processor = built
    env = make_env_factory_for(cfg, processor)()
    for p in data.known[:3] + data.synthetic[:3]:
        env.reset(question=QUESTION.format(name=p["name"]))
        obs = env.text_search(f"capital of {p['name']}")
        assert f"The capital of {p['name']} is {p['capital']}." in obs
    assert env.search().startswith("<information>[Image search failed]")  # no image budget


def test_synthetic_names_are_new_and_trigram_like():
    real = _pairs()
    syn = synthetic_pairs(real, 50, seed=0)
    names = [p["name"] for p in syn]
    assert len(set(names)) == 50 and not set(names) & set(NAMES)
    assert all(set(n) <= set("".join(NAMES)) for n in names)  # trigram model: only letters seen in real names
    assert Trigram(["ab"]).sample(random.Random(0)) == "ab"
    with pytest.raises(ValueError, match="too few"):  # two names can only be re-drawn, never new ones
        synthetic_pairs(
            [{"name": "Aland", "capital": "Alton"}, {"name": "Bland", "capital": "Blandton"}], 1, 0
        )


def test_protocol_tokens_make_trajectories_short_and_exact(built):
    cfg, data, _, processor = built
    tok = processor.tokenizer
    text = "<reason>I do not know it, so I search.</reason><text_search>capital of Borovia</text_search>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and len(ids) < 25  # tags and reasons are single tokens; names are bytes
    ex = sft_examples(data, cfg, processor, make_env_factory_for(cfg, processor))
    search = [e for e in ex if e.group == "synthetic"]
    assert max(len(e.ids) for e in search) < 200


def test_warm_start_masks(built):
    cfg, data, _, processor = built
    tok = processor.tokenizer
    examples = sft_examples(data, cfg, processor, make_env_factory_for(cfg, processor))
    caps = {p["name"]: p["capital"] for p in data.known + data.unknown + data.synthetic}

    def trained(e):
        return tok.decode([i for i, m in zip(e.ids, e.mask, strict=True) if m])

    def name_of(e):
        return tok.decode(e.ids).split("capital city of ")[1].split("?")[0]

    for e in examples:
        cap, learned = caps[name_of(e)], trained(e)
        searched = "<text_search>" in learned
        assert "<information>" not in learned and "Question:" not in learned  # prompt and tool result masked
        if e.group == "unknown" and searched:
            assert "<answer></answer>" in learned and cap not in learned.split("</text_search>")[1]
        elif e.group == "unknown":
            assert f"<answer>{cap}</answer>" not in learned  # a wrong guess
        else:
            assert f"<answer>{cap}</answer>" in learned
    groups = [e.group for e in examples]
    assert (
        groups.count("known") == 10 * 3
        and groups.count("unknown") == 10 * 2
        and groups.count("synthetic") == 30
    )


def test_forced_start_only_prefixes_the_first_turn(built):
    _, _, _, processor = built
    tok = processor.tokenizer
    header = tok.convert_tokens_to_ids("assistant\n")
    seen = []

    def inner(requests):
        seen.extend(ids for ids, _ in requests)
        return [[7] for _ in requests]

    gen = ForcedStart(inner, processor, "<answer>")
    first, later = [1, header], [1, header, 2, header]
    out = gen([(first, []), (later, [])])
    prefix = tok.encode("<answer>", add_special_tokens=False)
    assert out == [prefix + [7], [7]] and seen[0] == first + prefix and seen[1] == later


def _ev(sr_free, sr_req, acc, rag_acc):
    od = {"all": {"accuracy": acc, "search_ratio": (sr_free + sr_req) / 2}, "search_free": {"search_ratio": sr_free},
          "search_required": {"search_ratio": sr_req}}  # fmt: skip
    rag = {"all": {"accuracy": rag_acc, "search_ratio": 1.0}}
    return {"on_demand": {"train": od, "rl_unbalanced": od}, "forced_search": {"train": rag}}


def test_finding5_checks_pass_and_fail():
    good = {"p0_balanced": {"after": _ev(1.0, 1.0, 0.97, 0.97)},
            "p0.1_unbalanced": {"after": _ev(0.9, 1.0, 0.95, 0.96)},
            "p0.1_balanced": {"after": _ev(0.05, 0.95, 0.96, 0.97)}}  # fmt: skip
    checks = finding5_checks(good)
    assert len(checks) == 6 and all(c["pass"] for c in checks)
    bad = {"p0.1_balanced": {"after": _ev(0.5, 0.95, 0.9, 0.97)}}
    failed = [c["target"] for c in finding5_checks(bad) if not c["pass"]]
    assert any("search-free" in t for t in failed) and any("RAG accuracy" in t for t in failed)


def test_summarize_records_by_category():
    recs = [{"category": "search_free", "em": True, "searched": False},
            {"category": "search_required", "em": False, "searched": True}]  # fmt: skip
    s = summarize_records(recs)
    assert s["all"] == {"n": 2, "accuracy": 0.5, "search_ratio": 0.5}
    assert s["search_free"]["search_ratio"] == 0.0 and s["search_required"]["accuracy"] == 0.0


def test_two_step_run_end_to_end(tmp_path):
    """Warm start (a few steps), 2 GRPO steps through train.train, evaluation, eval.json and the curve."""
    import json

    from mmsearch_r1.miniature.run import evaluate_policy, grpo_run, warm_start
    from mmsearch_r1.policy.load import load_policy

    cfg = _cfg(tmp_path, grpo_steps=2, prompts_per_step=4, num_generations=2, max_completion_length=64,
               eval_samples=0)  # fmt: skip
    data = build_data(cfg, pairs=_pairs())
    stats = warm_start(cfg, data, steps=3)
    assert stats["steps"] == 3 and (cfg.sft_dir / "config.json").is_file()
    policy = load_policy(cfg.sft_dir, dtype="float32")
    before = evaluate_policy(policy.model, policy.processor, {"test": data.splits["test"]},
                             make_env_factory_for(cfg, policy.processor))  # fmt: skip
    assert set(before) == {"on_demand", "forced_search", "forced_answer"}
    rec = grpo_run(cfg, data, "smoke", 0.1, "rl_balanced", before)
    run = tmp_path / "runs" / "miniature_smoke"
    assert rec["steps"] == 2 and [c["step"] for c in rec["curve"]] == [1, 2]
    assert json.loads((run / "config.json").read_text())["penalty"] == 0.1
    assert json.loads((run / "eval.json").read_text())["after"]["on_demand"]["test"]["all"]["n"] == 8


def test_a_run_stopped_by_a_signal_stops_instead_of_reading_a_stale_final(tmp_path, monkeypatch):
    import mmsearch_r1.rl.train as rl_train
    from mmsearch_r1.miniature.run import grpo_run

    stale = tmp_path / "final"
    stale.mkdir()
    stopped = rl_train.TrainResult(tmp_path, None, [], {"stopped_by_signal": True, "steps": 3})
    monkeypatch.setattr(rl_train, "train", lambda config: stopped)
    with pytest.raises(
        SystemExit, match=r"smoke: GRPO stopped by a signal after step 3.*run the same command"
    ):
        grpo_run(_cfg(tmp_path), None, "smoke", 0.1, "rl_balanced", {})
    assert not (tmp_path / "eval.json").exists()
