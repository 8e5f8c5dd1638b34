"""The inference rollout: same turns and tool observations as TRL's tool loop, methods, curation adapter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mmsearch_r1.agent.env import make_env_factory
from mmsearch_r1.agent.rollout import (
    HFGenerator,
    RolloutConfig,
    curation_rollout_fn,
    first_prompt,
    max_search_steps,
    rollout,
    rollout_batch,
)
from mmsearch_r1.policy.tiny import build_tiny_policy, vision_token_ids
from mmsearch_r1.tools.types import Engines, ImageHit, SearchError, TextHit


class FakeImageEngine:
    name = "fake-image"

    def search_image(self, image, *, k=5):
        colour = image.getpixel((0, 0))
        return [
            ImageHit(
                title=f"Flag {colour[0]} page {i}",
                url=f"u{i}",
                thumbnail=Image.new("RGB", (40 + 8 * i, 30), colour),
            )
            for i in range(2)
        ]


class FakeTextEngine:
    name = "fake-text"

    def search_text(self, query, *, k=5):
        if "boom" in query:
            raise SearchError("engine down", engine="fake-text")
        return [TextHit(title="Peru", url="p", summary=f"About {query}: Lima is the capital of Peru.")]


def _engines():
    return Engines(FakeImageEngine(), FakeTextEngine())


ANS = "<reason>I know it.</reason><answer>{}</answer><|im_end|>"
IMG = "<reason>Unknown flag.</reason><search><img></search><|im_end|>"
TXT = "<reason>Need a fact.</reason><text_search>{}</text_search><|im_end|>"

SCRIPTS = {
    "Which capital is this, A?": [IMG, TXT.format("capital of Peru"), ANS.format("Lima")],
    "Which capital is this, B?": [TXT.format("flag colours red"), IMG, ANS.format("Quito")],
    "Which capital is this, C?": [ANS.format("Paris")],
    "Which capital is this, D?": [TXT.format("boom query"), "<reason>r</reason>no action here<|im_end|>"],
    "Which capital is this, E?": [IMG, IMG, TXT.format("never runs")],
}


def _rows(scripts=SCRIPTS):
    colours = [(200, 0, 0), (0, 150, 0), (0, 0, 220), (90, 90, 0), (10, 120, 120)]
    return [
        {
            "data_id": f"q{i}",
            "image": Image.new("RGB", (64, 56), colours[i]),
            "question": q,
            "answer": "Lima",
            "aliases": ["Lima city"],
            "category": "search_required",
            "kind": "textual_knowledge",
            "source": "test",
        }
        for i, q in enumerate(scripts)
    ]


class ScriptedModel:
    """A fake ``generate``: returns fixed token ids per (question, turn index)."""

    def __init__(self, processor, scripts=SCRIPTS):
        self.tok = processor.tokenizer
        self.scripts = scripts
        self.calls: list[list[list[int]]] = []

    def next_ids(self, ids: list[int]) -> list[int]:
        text = self.tok.decode(ids, skip_special_tokens=False)
        question = next(q for q in self.scripts if f"Question: {q}" in text)
        turn = text.count("<|im_start|>assistant") - 1
        script = self.scripts[question]
        return self.tok.encode(script[min(turn, len(script) - 1)], add_special_tokens=False)

    def __call__(self, requests):
        self.calls.append([list(ids) for ids, _ in requests])
        return [self.next_ids(ids) for ids, _ in requests]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_policy()


def _trl_shell(model, processor, envs, max_turns: int, scripts=SCRIPTS):
    """A GRPOTrainer without __init__, carrying only what its tool loop reads (TRL 1.16)."""
    from trl import GRPOTrainer

    scripted = ScriptedModel(processor, scripts)
    shell = object.__new__(GRPOTrainer)
    shell.processing_class = processor
    shell._tokenizer = processor.tokenizer
    shell._is_vlm = True
    shell.chat_template = None
    shell.chat_template_kwargs = {}
    shell.tools = [envs[0].search, envs[0].text_search]
    shell.environment_factories = {"env": None}
    shell._batch_environments = ["env"] * len(envs)
    shell._env_tools = {"env": shell.tools}
    shell._sync_tool_dicts = [{"search": e.search, "text_search": e.text_search} for e in envs]
    shell._async_tool_dicts = [{} for _ in envs]
    shell.max_tool_calling_iterations = max_turns - 1
    shell.use_vllm = False
    shell.max_completion_length = 100_000
    shell.model = model
    shell.args = SimpleNamespace(device=torch.device("cpu"))
    shell.is_deepspeed_enabled = False
    seen_images = []

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kw):
        seen_images.append(images)
        return [scripted.next_ids(ids) for ids in prompt_ids], None

    shell._generate_single_turn = generate_single_turn
    return shell, seen_images


def _trl_first_turn(shell, processor, rows):
    """TRL's own first turn: tokenize the prompts, generate one turn, parse it (its code, unchanged)."""
    from trl.chat_template_utils import parse_response

    prompts_ = [first_prompt(r) for r in rows]
    p_ids, images, mm_fields = shell._tokenize_prompts(prompts_)
    c_ids, _ = shell._generate_single_turn(p_ids, images, mm_fields, 1)
    completions = [
        [parse_response(processor.tokenizer, ids, prefix=p_ids[i], tools=shell.tools)]
        for i, ids in enumerate(c_ids)
    ]
    return prompts_, p_ids, images, mm_fields, c_ids, completions


def _content_view(content):
    if isinstance(content, str):
        return content
    return [b["text"] if b["type"] == "text" else ("image", b["image"].size) for b in content]


def test_same_turns_and_observations_as_trl_tool_loop(tiny):
    """TRL's own _tool_call_loop and our rollout, fed the same scripted model outputs, agree exactly."""

    model, processor = tiny
    rows = _rows()
    factory = make_env_factory(_engines())
    cfg = RolloutConfig(progress=False)
    max_turns = 3

    # TRL: tokenize prompts, first turn, parse, tool loop (its code, unchanged).
    envs = [factory() for _ in rows]
    for env, row in zip(envs, rows, strict=True):
        env.reset(**row)
    shell, seen_images = _trl_shell(model, processor, envs, max_turns)
    prompts_, p_ids, images, mm_fields, c_ids, completions = _trl_first_turn(shell, processor, rows)
    tool_mask, completions, c_ids, _, n_calls, n_fail, tool_images = shell._tool_call_loop(
        prompts_, p_ids, c_ids, completions, None, images, mm_fields
    )

    assert n_calls == 7 and n_fail == 0 and len(tool_images[0]) == 2 and len(seen_images) == 3
    # Ours.
    trajs = rollout_batch(rows, processor, ScriptedModel(processor), factory, cfg)

    for i, t in enumerate(trajs):
        assert t.ids[: t.prompt_len] == p_ids[i]
        assert t.completion_ids == c_ids[i], f"row {i}: token ids differ from TRL's"
        assert t.tool_mask == tool_mask[i]
        assert [m["role"] for m in t.messages] == [m["role"] for m in completions[i]]
        for ours, theirs in zip(t.messages, completions[i], strict=True):
            assert ours.get("tool_calls") == theirs.get("tool_calls")
            assert ours.get("name") == theirs.get("name")
            assert _content_view(ours["content"]) == _content_view(theirs["content"])
        assert [im.size for im in t.images[1:]] == [im.size for im in tool_images[i]]
        assert t.env.counters == envs[i].counters
    # Row A ran image then text search; E's third turn asked for a search that never ran.
    recs = [t.record("on_demand") for t in trajs]
    assert recs[0]["search_sequence"] == ["image_search", "text_search"] and recs[0]["prediction"] == "Lima"
    assert recs[0]["em"] and recs[0]["tool_tokens"] > 0 and recs[0]["observations"][0]["images"] == 2
    assert (
        recs[1]["tool_refused"] == 1 and recs[1]["prediction"] == "Quito"
    )  # image search after text: refused
    assert recs[2]["searches"] == 0 and recs[2]["turn_count"] == 1 and recs[2]["stop"] == "answer"
    assert recs[3]["tool_failures"] == 1 and recs[3]["prediction"] is None and recs[3]["stop"] == "no_action"
    assert recs[4]["stop"] == "max_turns" and recs[4]["text_calls"] == 0
    assert n_calls == sum(len(r["observations"]) for r in recs)


def test_direct_runs_no_search_and_rag_always_searches(tiny):
    _, processor = tiny
    factory = make_env_factory(_engines())
    rows = _rows()
    direct = rollout(
        rows, processor, ScriptedModel(processor), factory, RolloutConfig(method="direct", progress=False)
    )
    assert all(r["searches"] == 0 for r in direct)
    assert direct[0]["tool_refused"] == 2 and direct[0]["prediction"] == "Lima"  # answered after two refusals
    assert "switched off" in direct[0]["observations"][0]["text"]
    assert direct[0]["max_search_steps"] == 0
    rag = rollout(
        rows, processor, ScriptedModel(processor), factory, RolloutConfig(method="rag", progress=False)
    )
    for r in rag:
        assert r["search_sequence"] == ["image_search", "text_search"], r["data_id"]
        assert r["turns"][0]["scripted"] and r["max_search_steps"] == 2
    # A's scripted second turn is its own text search (turn index 1 of its script); C's was replaced.
    assert rag[0]["queries"] == ["capital of Peru"]
    assert rag[2]["turns"][1]["scripted"] and "replaced_turn" in rag[2]["turns"][1]
    assert rag[2]["queries"][0].startswith("Flag 0 page 0")


def test_curation_adapter(tiny):
    from mmsearch_r1.data.curation import Outcome

    _, processor = tiny
    fn = curation_rollout_fn(
        processor, ScriptedModel(processor), make_env_factory(_engines()), RolloutConfig()
    )
    rows = _rows()[:3]
    with_search = fn(rows, allow_search=True, k=2)
    no_search = fn(rows, allow_search=False, k=2)
    assert with_search[0] == [Outcome(True, ("image", "text"))] * 2
    assert with_search[2] == [Outcome(False, ())] * 2
    assert all(o.searches == () for outs in no_search for o in outs)


def test_hf_generator_batched_with_tiny_policy(tiny):
    model, processor = tiny
    cfg = RolloutConfig(method="rag", max_new_tokens=8, batch_size=3, progress=False)
    gen = HFGenerator(model, processor, cfg, suppress_tokens=vision_token_ids(processor))
    recs = rollout(_rows()[:2], processor, gen, make_env_factory(_engines()), cfg, k=2)
    assert len(recs) == 4 and [r["sample"] for r in recs] == [0, 1, 0, 1]
    for r in recs:
        assert r["searches"] == 2 and r["turn_count"] == 3
        assert r["completion_tokens"] <= 8 + sum(t["tokens"] for t in r["turns"][:2])
    # Greedy decoding: the two samples of a row are identical.
    assert recs[0]["turns"][-1]["text"] == recs[1]["turns"][-1]["text"]


def test_config_errors_and_denominator():
    with pytest.raises(ValueError, match="method"):
        RolloutConfig(method="sometimes")
    from mmsearch_r1.agent.env import EnvConfig

    assert max_search_steps(EnvConfig()) == 2


def test_unknown_tool_becomes_an_error_result_like_trl():
    from mmsearch_r1.agent.rollout import _run_tool

    env = make_env_factory(_engines())()
    env.reset(**_rows()[0])
    name, result = _run_tool(env, {"type": "function", "function": {"name": "browse", "arguments": {}}})
    assert (name, result) == ("browse", {"error": "Tool browse not found."})
    name, result = _run_tool(env, {"type": "function", "function": {"name": "text_search", "arguments": {}}})
    assert "error" in result and env.log[-1]["status"] == "error" and env.text_calls == 0


NATIVE_IMG = '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call><|im_end|>'
NATIVE_TXT = (
    '<tool_call>\n{"name": "text_search", "arguments": {"text": "capital of Peru"}}\n</tool_call><|im_end|>'
)
NATIVE = {
    "Which capital is this, A?": [NATIVE_IMG, NATIVE_TXT, "<answer>Lima</answer><|im_end|>"],
    "Which capital is this, B?": ["<answer>Quito</answer><|im_end|>"],
}


def test_native_protocol_matches_trl_too():
    """The JSON tool-call protocol (tools listed by the template) also gives TRL's exact tokens and calls."""

    model, processor = build_tiny_policy(protocol="native")
    rows, factory = _rows(NATIVE), make_env_factory(_engines())
    envs = [factory() for _ in rows]
    for env, row in zip(envs, rows, strict=True):
        env.reset(**row)
    shell, _ = _trl_shell(model, processor, envs, 3, NATIVE)
    prompts_, p_ids, images, mm_fields, c_ids, completions = _trl_first_turn(shell, processor, rows)
    tool_mask, completions, c_ids, *_ = shell._tool_call_loop(
        prompts_, p_ids, c_ids, completions, None, images, mm_fields
    )
    trajs = rollout_batch(
        rows, processor, ScriptedModel(processor, NATIVE), factory, RolloutConfig(progress=False)
    )
    assert "text_search" in processor.tokenizer.decode(p_ids[0])  # the template lists the tools
    for i, t in enumerate(trajs):
        assert (
            t.ids[: t.prompt_len] == p_ids[i] and t.completion_ids == c_ids[i] and t.tool_mask == tool_mask[i]
        )
        assert [m.get("tool_calls") for m in t.messages] == [m.get("tool_calls") for m in completions[i]]
    rec = trajs[0].record("on_demand")
    assert rec["search_sequence"] == ["image_search", "text_search"] and rec["queries"] == ["capital of Peru"]
    assert rec["prediction"] == "Lima" and rec["turns"][-1]["kind"] == "invalid"  # answer fires; no <reason>


class HonestModel(ScriptedModel):
    """Answers 'unknown' once it has been told that search is off (so direct runs differ)."""

    def next_ids(self, ids):
        if "switched off" in self.tok.decode(ids, skip_special_tokens=False):
            return self.tok.encode(ANS.format("unknown"), add_special_tokens=False)
        return super().next_ids(ids)


def test_curation_adapter_plugs_into_curate(tiny):
    import datasets

    from mmsearch_r1.data.curation import CurationConfig, curate

    _, processor = tiny
    rows = _rows()[:3]  # A: searches, then Lima; B: text search, then Quito; C: Paris directly
    for r, gold in zip(rows, ["Lima", "Lima", "Paris"], strict=True):
        r["answer"] = gold
    ds = datasets.Dataset.from_list(rows)
    fn = curation_rollout_fn(processor, HonestModel(processor), make_env_factory(_engines()), RolloutConfig())
    result = curate(ds, fn, CurationConfig(k=1, free_ratio=None, batch_size=2))
    assert result.labels == {"q0": "search_required", "q1": "dropped", "q2": "search_free"}
    assert result.search_type["q0"] == "mixed"
