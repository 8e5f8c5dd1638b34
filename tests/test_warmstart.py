"""Warm start: the loss mask, the ideal plans, trajectories with real tool calls, and a short SFT on `tiny`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmsearch_r1.agent.env import EnvConfig
from mmsearch_r1.agent.rollout import RolloutConfig, rag_query
from mmsearch_r1.data.world.build import Entity, World
from mmsearch_r1.policy.load import load_policy
from mmsearch_r1.protocol.tags import parse_turn, render_turn
from mmsearch_r1.sft.trajectories import RAG_PLAN, build_trajectories, needs_search, plan_for
from mmsearch_r1.sft.warmstart import ProtocolCollator, WarmStartConfig, freeze_for_sft, sft
from mmsearch_r1.tools.types import Engines, ImageHit, TextHit


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny")


def _row(kind="visual_knowledge", template="flag_country", eid="country/AA", answer="Aland"):
    return {"data_id": f"x_{template}_{eid}", "image": Image.new("RGB", (56, 56), "red"), "question": "Which country?",
            "answer": answer, "aliases": [], "category": None, "kind": kind, "source": "test",
            "entity_id": eid, "template": template}  # fmt: skip


def _example(n_search: int = 1) -> dict:
    thumb = Image.new("RGB", (56, 56), "blue")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q: which country?"}]}]
    images = [Image.new("RGB", (56, 56), "red")]
    if n_search:
        msgs.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": render_turn("image_search", "unsure")}],
            }
        )
        msgs.append({"role": "tool", "name": "search", "content": [
            {"type": "text", "text": "<information>1. "}, {"type": "image"}, {"type": "text", "text": " Flag of Aland</information>"}]})  # fmt: skip
        images.append(thumb)
    msgs.append(
        {
            "role": "assistant",
            "content": [{"type": "text", "text": render_turn("answer", "It is Aland.", answer="Aland")}],
        }
    )
    return {"messages": json.dumps(msgs), "images": images}


def test_loss_mask_covers_only_assistant_tokens(tiny):
    collator = ProtocolCollator(tiny.processor)
    batch = collator([_example(1), _example(0)])
    tok = tiny.tokenizer
    labels, ids = batch["labels"], batch["input_ids"]
    trained = tok.decode(ids[0][labels[0] != -100])
    assert trained == (render_turn("image_search", "unsure") + "<|im_end|>"
                       + render_turn("answer", "It is Aland.", answer="Aland") + "<|im_end|>")  # fmt: skip
    untrained = tok.decode(ids[0][(labels[0] == -100) & (batch["attention_mask"][0] == 1)])
    assert "Flag of Aland" in untrained and "Q: which country?" in untrained
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert not ((ids == image_pad) & (labels != -100)).any()
    assert (labels[1][batch["attention_mask"][1] == 0] == -100).all()
    # the expanded ids equal the processor's own expansion
    ref = tiny.processor(text=[tiny.processor.apply_chat_template(json.loads(_example(1)["messages"]), tokenize=False)],
                         images=_example(1)["images"], return_tensors="pt")  # fmt: skip
    n = int(batch["attention_mask"][0].sum())
    assert torch.equal(ids[0, :n], ref["input_ids"][0])
    assert torch.equal(batch["image_grid_thw"][:2], ref["image_grid_thw"])


def test_collator_rejects_image_count_mismatch(tiny):
    bad = _example(1)
    bad["images"] = bad["images"][:1]
    with pytest.raises(ValueError, match="image placeholders"):
        ProtocolCollator(tiny.processor)([bad])


def test_plans_follow_the_knowledge_boundary():
    known = {"country/AA|capital": {"known": True}, "country/BB|capital": {"known": False}}
    seen = {"country/AA"}
    assert plan_for(_row(), seen, known) == ("answer",)
    assert plan_for(_row(eid="country/BB"), seen, known) == ("image_search", "answer")
    assert plan_for(_row("textual_knowledge", "flag_capital"), seen, known) == ("answer",)
    assert plan_for(_row("textual_knowledge", "flag_capital", "country/BB"), seen, known) == (
        "image_search", "text_search", "answer")  # fmt: skip
    assert plan_for(_row("textual_knowledge", "flag_capital", "country/BB"), {"country/BB"}, known) == (
        "text_search", "answer")  # fmt: skip
    assert plan_for(_row("text_only", "capital_of", "country/BB"), seen, known) == ("text_search", "answer")
    assert plan_for(_row("search_free", "flag_colour", answer="red"), set(), {}) == ("answer",)
    assert not needs_search(_row(), seen, known) and needs_search(_row(eid="country/BB"), seen, known)
    assert needs_search(_row("text_only", "capital_of", "country/BB"), seen, known)


class _Img:
    name = "fake-image"

    def search_image(self, image, *, k=5):
        return [ImageHit("Flag of Bland", "world://country/BB/flag", Image.new("RGB", (28, 28), "green")),
                ImageHit("Flag of Aland", "world://country/AA/flag", Image.new("RGB", (28, 28), "red"))][:k]  # fmt: skip


class _Txt:
    name = "fake-text"

    def search_text(self, query, *, k=5):
        return [
            TextHit("Bland (country facts)", "world://country/BB/facts", "The capital of Bland is Blandton.")
        ]


def _world(tmp_path) -> World:
    ents = [Entity(f"country/{c}", "country", n, [], {"capital": cap, "continent": "Europe"}, None, "", {})
            for c, n, cap in (("AA", "Aland", "Alton"), ("BB", "Bland", "Blandton"))]  # fmt: skip
    return World(tmp_path, ents, {})


def test_trajectories_use_real_tool_results_and_drop_wrong_searches(tmp_path):
    world, engines = _world(tmp_path), Engines(image=_Img(), text=_Txt())
    rows = [_row("textual_knowledge", "flag_capital", "country/BB", "Blandton"),
            _row("visual_knowledge", "flag_country", "country/AA", "Aland")]  # fmt: skip
    out, stats = build_trajectories(rows, world, engines, set(), {}, EnvConfig(image_k=2, text_k=1))
    assert stats["dropped: image search top hit is not the entity"] == 1  # Aland's top hit is Bland
    assert len(out) == 1 and out[0]["plan"] == "image_search -> text_search -> answer"
    msgs = json.loads(out[0]["messages"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert "Blandton" in msgs[4]["content"][0]["text"] and msgs[-1]["content"][0]["text"].endswith(
        "<answer> Blandton</answer>")  # fmt: skip
    assert len(out[0]["images"]) == 1 + 2  # question image + two thumbnails, in order
    tight, _ = build_trajectories(rows[:1], world, engines, set(), {}, EnvConfig(image_k=2, text_k=1),
                                  answer_space=False)  # fmt: skip
    last = json.loads(tight[0]["messages"])[-1]["content"][0]["text"]
    assert last.endswith("<answer>Blandton</answer>")  # the space is the only difference; both parse alike
    assert parse_turn(last).answer == parse_turn(msgs[-1]["content"][0]["text"]).answer == "Blandton"


def test_rag_shaped_trajectories_use_the_rag_workflows_scripted_turns(tmp_path):
    world, engines = _world(tmp_path), Engines(image=_Img(), text=_Txt())
    rows = [_row("text_only", "capital_of", "country/BB", "Blandton")]
    knowledge = {"country/BB|capital": {"known": False}}
    out, stats = build_trajectories(
        rows, world, engines, set(), knowledge, EnvConfig(image_k=2, text_k=1), rag=True
    )
    assert [t["plan"] for t in out] == ["text_search -> answer", RAG_PLAN]
    msgs = json.loads(out[1]["messages"])
    said = [m["content"][0]["text"] for m in msgs if m["role"] == "assistant"]
    reasons = RolloutConfig().rag_reasons
    assert said[0] == render_turn("image_search", reasons[0])  # byte for byte the rollout's scripted turns
    assert said[1] == render_turn(
        "text_search", reasons[1], query=rag_query("Flag of Bland", rows[0]["question"])
    )
    assert said[2].endswith("<answer> Blandton</answer>") and "The capital of Bland is Blandton." in said[2]
    plain, _ = build_trajectories(rows, world, engines, set(), knowledge, EnvConfig(image_k=2, text_k=1))
    assert [t["plan"] for t in plain] == ["text_search -> answer"]  # off by default


def test_agnostic_plans_ignore_knowledge_and_state_the_models_own_answer(tmp_path):
    import random

    from mmsearch_r1.sft.trajectories import AGNOSTIC_RATES, agnostic_plan, agnostic_weights

    # the draw depends on the kind and the random stream only: known and unknown facts are searched alike
    rng_a, rng_b = random.Random(5), random.Random(5)
    for _ in range(200):
        row = _row("text_only", "capital_of", "country/AA")
        assert agnostic_plan(row, AGNOSTIC_RATES, rng_a, "Alton") == agnostic_plan(
            row, AGNOSTIC_RATES, rng_b, "Wrongville"
        )
    rng = random.Random(0)
    plans = [
        agnostic_plan(_row("text_only", "capital_of"), {"text_only": 0.75}, rng, "Alton") for _ in range(2000)
    ]
    assert abs(plans.count(("text_search", "answer")) / 2000 - 0.75) < 0.03
    assert agnostic_plan(_row("text_only", "capital_of"), {"text_only": 0.0}, rng, "") == (
        "text_search",
        "answer",
    )
    assert agnostic_plan(_row(), {}, rng, None) == ("image_search", "answer")  # naming needs an image search
    assert agnostic_plan(_row("textual_knowledge", "flag_capital"), {"textual_knowledge": 0.0}, rng, "Alton") == (
        "image_search", "answer")  # fmt: skip

    # a direct answer states what the base model said, right or wrong; a search copies the result
    world, engines = _world(tmp_path), Engines(image=_Img(), text=_Txt())
    rows = [_row("text_only", "capital_of", "country/BB", "Blandton"),
            _row("textual_knowledge", "flag_capital", "country/BB", "Blandton"),
            _row("search_free", "flag_colour", "country/BB", "green")]  # fmt: skip
    wrong = {"country/BB|capital": {"known": False, "greedy": "Wrongville"}}
    never = {"text_only": 0.0, "textual_knowledge": 0.0, "search_free": 1.0}
    out, _ = build_trajectories(rows, world, engines, set(), wrong, EnvConfig(image_k=2, text_k=1),
                                decision="agnostic", rates=never, rag=True)  # fmt: skip
    # a RAG-shaped copy for the row whose plan searched, none for the colour question (no fact to look up)
    assert [t["plan"] for t in out] == [
        "answer",
        "image_search -> answer",
        RAG_PLAN,
        "image_search -> answer",
    ]
    finals = [json.loads(t["messages"])[-1]["content"][0]["text"] for t in out]
    assert finals.pop(2).endswith("<answer> Blandton</answer>")
    assert finals[0].endswith("<answer> Wrongville</answer>") and finals[1].endswith(
        "<answer> Wrongville</answer>"
    )
    assert "The capital of Bland is Wrongville." in finals[0] and "Blandton" not in finals[0] + finals[1]
    assert finals[2].endswith("<answer> green</answer>") and "The flag is mostly green." in finals[2]
    always = {"text_only": 1.0, "textual_knowledge": 1.0}
    out, _ = build_trajectories(rows[:1], world, engines, set(), wrong, EnvConfig(image_k=2, text_k=1),
                                decision="agnostic", rates=always)  # fmt: skip
    assert json.loads(out[0]["messages"])[-1]["content"][0]["text"].endswith("<answer> Blandton</answer>")
    with pytest.raises(ValueError, match="decision must be"):
        build_trajectories(rows, world, engines, set(), wrong, decision="oracle")
    w = agnostic_weights([{"plan": "answer"}] * 3 + [{"plan": "text_search -> answer"}], 0.2)
    assert w == pytest.approx({"answer": 0.6, "text_search -> answer": 0.2, RAG_PLAN: 0.2})


def test_short_warm_start_on_tiny_lowers_the_loss(tmp_path):
    policy = load_policy("tiny", seed=1)
    n = freeze_for_sft(policy.model, train_top_layers=1, train_vision=False)
    names = [k for k, p in policy.model.named_parameters() if p.requires_grad]
    assert n > 0 and all(".layers.1." in k or "language_model.norm" in k for k in names)
    freeze_for_sft(policy.model, train_top_layers=-1, train_vision=True)
    rows = [_example(i % 2) for i in range(8)]
    cfg = WarmStartConfig(model="tiny", epochs=6, batch_size=4, grad_accum=1, lr=3e-3, max_length=None)
    m = sft(policy, rows, cfg, tmp_path)
    assert m["sft_steps"] == 12
    assert m["sft_loss_last"] < 0.8 * m["sft_loss_first"]


def test_sft_rejects_an_unknown_precision(tmp_path):
    policy = load_policy("tiny", seed=1)
    with pytest.raises(ValueError, match="bf16='yes'"):
        sft(policy, [_example(0)], WarmStartConfig(model="tiny", bf16="yes"), tmp_path)


def test_balance_follows_the_weights_and_fills_gaps():
    from mmsearch_r1.sft.trajectories import balance

    traj = [{"plan": "answer", "i": i} for i in range(50)] + [
        {"plan": "text_search -> answer", "i": i} for i in range(5)
    ]
    out = balance(traj, 20, {"answer": 0.5, "text_search -> answer": 0.5}, seed=1)
    plans = [t["plan"] for t in out]
    assert len(out) == 20 and plans.count("text_search -> answer") == 5  # all 5, the rest filled with answers
    assert balance(traj, None, {}) == traj


def test_score_reads_the_one_scorer_and_counts_executed_searches_only():
    from mmsearch_r1.protocol.rewards import score_record
    from mmsearch_r1.sft.validate import score

    row = {"answer": "Lima", "aliases": [], "kind": "text_only"}

    def episode(texts, prediction, searches):
        rec = {"answer": "Lima", "aliases": [], "prediction": prediction, "searches": searches,
               "turns": [{"text": t} for t in texts]}  # fmt: skip
        return {**score_record(rec), "row": row}

    eps = [
        episode([render_turn("answer", "r", answer="Lima")], "Lima", 0),
        episode(
            [render_turn("text_search", "r", query="capital of Peru"), "<answer>Lima</answer>"], "Lima", 1
        ),
        episode([render_turn("answer", "r", answer="Cusco")], "Cusco", 0),
        # a search written in the last turn is cut by the turn limit: it was not executed, so not "searched"
        episode([render_turn("text_search", "r", query="capital of Peru")], None, 0),
    ]
    s = score(eps, needs_search=lambda r: True)
    assert s["all"]["n"] == 4
    assert s["all"]["acc"] == pytest.approx(2 / 4)
    assert s["all"]["format"] == pytest.approx(2 / 4)  # the bare <answer> turn and the unanswered one fail
    assert s["all"]["searched"] == pytest.approx(1 / 4)
    assert s["needs_search"] == s["all"]


def test_boundary_tables_search_choices_against_what_the_model_knows():
    from mmsearch_r1.sft.validate import boundary

    def ep(entity, searched, acc):
        return {"row": {"entity_id": entity}, "searched": float(searched), "acc": float(acc)}

    eps = [ep("k", False, True), ep("k", True, True), ep("u", False, False), ep("u", False, True),
           ep("u", True, True), ep("u", True, False)]  # fmt: skip
    b = boundary(eps, knows=lambda row: row["entity_id"] == "k")
    assert b["known"] == {"n": 2, "searched": 0.5, "direct_wrong": 0, "acc": 1.0}
    assert b["unknown"] == {"n": 4, "searched": 0.5, "direct_wrong": 1, "acc": 0.5}
    assert b["all"]["n"] == 6 and b["all"]["direct_wrong"] == 1
    assert b["all"]["acc"] == pytest.approx(4 / 6)


def test_eval_rollout_adapts_the_shared_rollout(tiny):
    from mmsearch_r1.sft.validate import mark_engine_ok, rollout, score

    tok = tiny.tokenizer
    answer = tok.encode(
        render_turn("answer", "r", answer="Blandton") + tok.eos_token, add_special_tokens=False
    )
    gen = lambda requests: [list(answer) for _ in requests]  # noqa: E731
    rows = [_row("textual_knowledge", "flag_capital", "country/BB", "Blandton"),
            _row("textual_knowledge", "flag_capital", "country/AA", "Alton")]  # fmt: skip
    engines = Engines(image=_Img(), text=_Txt())
    direct = rollout(tiny, rows, engines, env_config=EnvConfig(image_k=2, text_k=1), generator=gen)
    assert [len(e["turns"]) for e in direct] == [1, 1] and direct[0]["turns"][0].endswith("</answer>")
    assert [e["row"]["entity_id"] for e in direct] == ["country/BB", "country/AA"]
    assert score(direct)["all"] == {"n": 2, "acc": 0.5, "format": 1.0, "searched": 0.0}
    rag = rollout(tiny, rows, engines, env_config=EnvConfig(image_k=2, text_k=1), method="rag", generator=gen)
    assert all(e["search_sequence"] == ["image_search", "text_search"] for e in rag)
    assert rag[0]["turn_records"][0]["scripted"] and len(rag[0]["turns"]) == 3
    mark_engine_ok(rag, {"country/AA": "Aland", "country/BB": "Bland"}.get)
    assert [e["engine_ok"] for e in rag] == [True, False]  # the fake engine's top hit is always Bland
    s = score(rag)["all"]
    assert s["acc"] == 0.5 and s["searched"] == 1.0 and s["n_engine_ok"] == 1 and s["acc_engine_ok"] == 1.0


def test_length_batched_pairs_similar_lengths_in_random_order():
    from mmsearch_r1.sft.warmstart import length_batched

    rows = [{"length": n, "i": i} for i, n in enumerate([900, 100, 880, 110, 500, 520, 300, 310])]
    out = length_batched(rows, 2, seed=0)
    assert sorted(r["i"] for r in out) == list(range(8))  # nothing lost or repeated
    pairs = [out[k : k + 2] for k in range(0, 8, 2)]
    assert all(abs(a["length"] - b["length"]) <= 30 for a, b in pairs)  # similar lengths together
    firsts = [p[0]["length"] for p in pairs]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # not long-to-short
    assert length_batched(rows, 2, seed=0) == out  # seeded


def test_supervised_head_loss_equals_trls_loss_with_the_same_gradients(tmp_path):
    """The CPU speed-up scores only the supervised positions; the loss and its gradients are TRL's own."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from mmsearch_r1.sft.trainer import SupervisedHeadSFTTrainer

    policy = load_policy("tiny", seed=3)
    freeze_for_sft(policy.model, train_top_layers=1, train_vision=False)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)  # fmt: skip
    collator = ProtocolCollator(policy.processor)
    batch = collator([_example(1), _example(0), _example(1)])
    trainer = SupervisedHeadSFTTrainer(model=policy.model, args=args, train_dataset=datasets.Dataset.from_list([_example(0)]),
                                       processing_class=policy.processor, data_collator=collator)  # fmt: skip
    policy.model.train()
    assert not trainer._defer(trainer.model, return_outputs=False)  # on CPU it takes its own path
    params = [p for p in policy.model.parameters() if p.requires_grad]
    results = []
    for compute in (SupervisedHeadSFTTrainer.compute_loss, SFTTrainer.compute_loss):
        policy.model.zero_grad()
        loss = compute(trainer, trainer.model, dict(batch), num_items_in_batch=torch.tensor(7))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    (ours, our_grads), (trls, trl_grads) = results
    assert ours.item() > 0 and torch.allclose(ours, trls, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(our_grads, trl_grads, strict=True))
    assert trainer._metrics["train"]["mean_token_accuracy"] and trainer._metrics["train"]["entropy"][0] > 0
