"""GRPO through TRL's own tool loop with the tag protocol, SearchEnv and the mmsearch reward (tiny policy).

The tiny policy is first overfit (`mmsearch_r1.policy.tiny.overfit`, a few seconds) on two scripted trajectories rendered by
the chat template with SearchEnv's real observations: question A -> image search -> text search ->
answer, and question B -> text search -> answer. Then two GRPO steps run (one per question, in order):
step 1 exercises image results (thumbnails), step 2 a first tool round with no image at all (the
numpy-vs-tensor trap of TRL 1.16 on CPU).
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from datasets import Dataset
from PIL import Image
from search_fakes import ROW, THUMBNAILS, FakeImageEngine, FakeTextEngine

from mmsearch_r1.agent.env import SearchEnv, make_env_factory
from mmsearch_r1.policy.processor import fit_image, image_sizes_of
from mmsearch_r1.policy.tiny import build_tiny_policy, overfit, vision_token_ids
from mmsearch_r1.protocol import prompts
from mmsearch_r1.protocol.tags import render_turn
from mmsearch_r1.rl.rewards import make_reward_func
from mmsearch_r1.tools.types import Engines

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROW_A = {**ROW, "data_id": "a"}
ROW_B = {
    **ROW_A,
    "data_id": "b",
    "image": Image.new("RGB", (112, 112), (30, 200, 30)),
    "question": "Name the capital of Redland.",
}
OVERFIT_STEPS, OVERFIT_LOSS = 120, 0.05  # stops early (about 40 steps) once both losses are below 0.05
USER_TURN_RE = re.compile(r"<\|im_start\|>user\n.*<\|im_end\|>\n<\|im_start\|>assistant\n", re.DOTALL)


def engines():
    return Engines(image=FakeImageEngine(), text=FakeTextEngine())


def prompt_of(row):
    return [{"role": "user", "content": prompts.first_user_content(row["question"])}]


def scripted(row, plan):
    """Messages of a scripted trajectory, with the observations SearchEnv really returns."""
    env = SearchEnv(engines())
    env.reset(**row)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": row["image"]}, prompt_of(row)[0]["content"][1]],
        }
    ]
    for kind, reason, arg in plan:
        if kind == "image_search":
            msgs += [{"role": "assistant", "content": render_turn(kind, reason)}]
            msgs += [{"role": "tool", "name": "search", "content": env.search()}]
        elif kind == "text_search":
            msgs += [{"role": "assistant", "content": render_turn(kind, reason, query=arg)}]
            msgs += [{"role": "tool", "name": "text_search", "content": env.text_search(arg)}]
        else:
            msgs += [{"role": "assistant", "content": render_turn(kind, reason, answer=arg)}]
    return msgs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Overfit, then run two GRPO steps and record what TRL did."""
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-grpo")
    model, processor = build_tiny_policy(path, seed=0)
    plan_a = [
        ("image_search", "I do not know this flag.", None),
        ("text_search", "It is Redland.", "Redland capital"),
        ("answer", "The page says Rubytown.", "Rubytown"),
    ]
    plan_b = [("text_search", "I need the capital.", "Redland capital"), ("answer", "Found it.", "Rubytown")]
    conversations = [scripted(ROW_A, plan_a), scripted(ROW_B, plan_b)]
    final_loss = overfit(model, processor, conversations, steps=OVERFIT_STEPS, stop_below=OVERFIT_LOSS)

    vision_calls = []

    def hook(module, args, kwargs):
        pixels = kwargs.get("hidden_states", args[0] if args else None)
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        vision_calls.append(
            {"grid": grid.tolist(), "grad": torch.is_grad_enabled(), "pixels": pixels.detach()}
        )

    model.model.visual.register_forward_pre_hook(hook, with_kwargs=True)
    reward = make_reward_func(processor)
    args = GRPOConfig(
        output_dir=str(path / "out"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=2,
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        gradient_checkpointing=False,
        learning_rate=1e-5,
        max_tool_calling_iterations=2,
        max_completion_length=512,
        temperature=0.5,
        save_strategy="no",
        seed=0,
        generation_kwargs={"suppress_tokens": vision_token_ids(processor)},
        remove_unused_columns=False,
    )
    dataset = Dataset.from_list([{**row, "prompt": prompt_of(row)} for row in (ROW_A, ROW_B)])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        environment_factory=make_env_factory(engines(), sizes=image_sizes_of(processor)),
    )
    steps = []
    generate_and_score = trainer._generate_and_score_completions

    def spy(inputs):  # record each step's batch, environment counters and reward parts
        out = generate_and_score(inputs)
        steps.append(
            {
                "out": out,
                "questions": [x["question"] for x in inputs],
                "counters": [env.counters for env in trainer.environments],
                "parts": list(reward.last_parts),
                "vision_calls": len(vision_calls),
            }
        )
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()
    return {
        "trainer": trainer,
        "processor": processor,
        "steps": steps,
        "vision": vision_calls,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
        "overfit_loss": final_loss,
    }


def spans(mask, ids):
    """(mask value, token ids) runs of a rollout's tool_mask (padding excluded by the caller)."""
    out = []
    for m, t in zip(mask, ids, strict=True):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


def test_template_used_unchanged_and_two_steps_ran(run):
    assert run["overfit_loss"] < 0.1
    assert run["trainer"].chat_template is None  # prefix-preserving: TRL did not patch it
    assert [s["questions"][0] for s in run["steps"]] == [ROW_A["question"], ROW_B["question"]]
    assert len(run["logs"]) == 2


def test_policy_calls_both_tools_and_tool_tokens_are_masked(run):
    tokenizer = run["processor"].tokenizer
    step = run["steps"][0]
    out, counters = step["out"], step["counters"]
    assert any(c["image_calls"] == 1 and c["text_calls"] == 1 for c in counters)
    assert run["logs"][0]["tools/call_frequency"] > 0
    for b, c in enumerate(counters):
        n = int(out["completion_mask"][b].sum())
        ids = out["completion_ids"][b][:n].tolist()
        mask = out["tool_mask"][b][:n].tolist()
        runs = spans(mask, ids)
        tool_runs = [tokenizer.decode(t) for m, t in runs if m == 0]
        model_runs = [tokenizer.decode(t) for m, t in runs if m == 1]
        assert len(tool_runs) == c["image_calls"] + c["text_calls"] + c["refused"]
        for text in tool_runs:  # exactly the user-side turn, nothing of the model's
            assert USER_TURN_RE.fullmatch(text), text
        for text in model_runs:
            assert "<|im_start|>" not in text and "<information>" not in text
        assert runs[0][0] == 1  # the model speaks first
        for (m, t), (m_next, _) in zip(
            runs, runs[1:], strict=False
        ):  # paper join: no newline after <|im_end|>
            if m == 1 and m_next == 0:
                assert tokenizer.decode(t).endswith("<|im_end|>")


def test_thumbnails_reach_the_vision_tower_in_generation_and_training(run):
    processor = run["processor"]
    sizes = image_sizes_of(processor)
    thumbs = [fit_image(t, sizes.thumbnail_max_pixels, sizes.min_pixels) for t in THUMBNAILS]
    thumb_pixels = processor.image_processor(images=thumbs)["pixel_values"]
    n_step1 = run["steps"][0]["vision_calls"]
    step1 = run["vision"][:n_step1]
    generation = [c for c in step1 if not c["grad"]]
    assert generation[0]["grid"] == [[1, 8, 8], [1, 8, 8]]  # first turn: the question images only
    assert any([1, 4, 4] in c["grid"] for c in generation[1:])  # next turns also see the thumbnails
    training = [c for c in run["vision"][n_step1:] if c["grad"]] + [c for c in step1 if c["grad"]]
    with_thumbs = [c for c in training if c["grid"].count([1, 4, 4]) >= 2]
    assert with_thumbs, "no training forward saw the image-search thumbnails"
    pixels = with_thumbs[0]["pixels"]
    rows = {tuple(r.tolist()) for r in pixels}
    assert all(tuple(r.tolist()) in rows for r in thumb_pixels)  # the exact thumbnail patches


def test_counters_feed_the_reward(run):
    step = run["steps"][0]
    for c, parts in zip(step["counters"], step["parts"], strict=True):
        assert parts["image_calls"] == c["image_calls"] and parts["text_calls"] == c["text_calls"]
    both = [p for c, p in zip(step["counters"], step["parts"], strict=True) if c["searches"] == 2]
    correct = [p for p in both if p["accuracy"] == 1.0 and p["format"] == 1.0]
    assert correct and all(p["penalty_factor"] == pytest.approx(0.9) for p in correct)
    logged = run["logs"][0]
    assert logged["mmsearch/image_calls"] == pytest.approx(
        sum(c["image_calls"] for c in step["counters"]) / 2
    )
    assert "rewards/mmsearch/mean" in logged


def test_text_only_first_tool_round_does_not_crash(run):
    """TRL 1.16 + numpy pixel values crashed here (split_pixel_values_by_grid); tensors fix it."""
    step = run["steps"][1]
    assert any(c["text_calls"] == 1 and c["image_calls"] == 0 for c in step["counters"])
    assert run["logs"][1]["tools/call_frequency"] > 0
