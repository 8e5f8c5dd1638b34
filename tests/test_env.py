"""SearchEnv: budgets, grammar, failures as observations, counters (fake engines, no model)."""

from __future__ import annotations

import inspect

import pytest
from search_fakes import ROW, THUMBNAILS, FakeImageEngine, FakeTextEngine
from transformers.utils import get_json_schema

from mmsearch_r1.agent.env import EnvConfig, SearchEnv, make_env_factory
from mmsearch_r1.policy.processor import ImageSizes
from mmsearch_r1.protocol.tags import Budgets
from mmsearch_r1.tools.types import Engines, SearchError

IMAGE = ROW["image"]


def make_env(image_fail=None, text_fail=None, **config):
    engines = Engines(image=FakeImageEngine(image_fail), text=FakeTextEngine(text_fail))
    env = make_env_factory(engines, **config)()
    env.reset(**ROW)
    return env


def texts(blocks):
    return "".join(b["text"] for b in blocks if b["type"] == "text")


def test_tools_trl_sees_are_exactly_search_and_text_search():
    env = make_env()
    public = [
        n for n, _ in inspect.getmembers(type(env), predicate=inspect.isfunction) if not n.startswith("_")
    ]
    assert sorted(public) == ["reset", "search", "text_search"]
    # TRL renders every tool's JSON schema: Google-style docstrings are required
    assert get_json_schema(env.search)["function"]["parameters"]["properties"] == {}
    assert get_json_schema(env.text_search)["function"]["parameters"]["properties"] == {
        "text": {
            "type": "string",
            "description": "The query, a few words naming the entity and the fact you need.",
        }
    }


def test_image_search_returns_thumbnails_and_titles_on_the_question_image():
    env = make_env(sizes=ImageSizes(28 * 28 * 4, 28 * 28 * 16, thumbnail_max_pixels=28 * 28 * 4))
    blocks = env.search()
    assert env.engines.image.images == [IMAGE]
    images = [b["image"] for b in blocks if b["type"] == "image"]
    assert len(images) == 2 and all(img.size == (56, 56) for img in images)
    assert images[0].getpixel((0, 0)) == THUMBNAILS[0].getpixel((0, 0))
    text = texts(blocks)
    assert text.startswith("<information>") and "Flag of Redland" in text and ROW["question"] in text
    assert "<|im_end|>" not in text  # special tokens from engines are stripped
    assert env.counters == {
        "image_calls": 1,
        "text_calls": 0,
        "searches": 1,
        "failures": 0,
        "refused": 0,
        "queries": [],
    }


def test_text_search_counts_queries_and_collapses_whitespace():
    env = make_env()
    out = env.text_search("  Redland\n capital ")
    assert "Rubytown" in out and out.startswith("<information>")
    assert env.engines.text.queries == ["Redland capital"]
    assert env.queries == ["Redland capital"] and env.text_calls == 1


def test_thumbnails_are_shrunk_to_the_cap():
    env = make_env(sizes=ImageSizes(28 * 28, 28 * 28 * 16, thumbnail_max_pixels=28 * 28))
    images = [b["image"] for b in env.search() if b["type"] == "image"]
    assert all(img.size == (28, 28) for img in images)


def test_thumbnail_cap_comes_from_the_policy_processor():
    """One source of truth: the processor's ImageSizes (as the demo policy's DEMO_SIZES) reach the env."""
    from mmsearch_r1.policy.processor import build_processor, image_sizes_of
    from mmsearch_r1.policy.tiny import build_tiny_tokenizer

    sizes = ImageSizes(28 * 28, 28 * 28 * 16, thumbnail_max_pixels=28 * 28)
    processor = build_processor(build_tiny_tokenizer(), sizes)
    assert image_sizes_of(processor) == sizes
    env = make_env(sizes=image_sizes_of(processor))
    assert {b["image"].size for b in env.search() if b["type"] == "image"} == {(28, 28)}
    default = make_env()  # no sizes: ImageSizes() (56x56 thumbnails fit its 16-token cap unchanged)
    assert {b["image"].size for b in default.search() if b["type"] == "image"} == {(56, 56)}
    with pytest.raises(TypeError, match="image_sizes_of"):
        EnvConfig(sizes=28 * 28)


def test_one_native_turn_with_two_tool_calls_runs_one_search_and_counts_one_turn():
    """TRL runs every parsed call of a turn; the native parser yields only the call that ends the turn."""
    from mmsearch_r1.policy.tiny import build_tiny_tokenizer
    from mmsearch_r1.protocol.chat_template import install_protocol, parse_assistant_text

    tokenizer = install_protocol(build_tiny_tokenizer(), "native")
    turn = (
        '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "text_search", "arguments": {"text": "Redland capital"}}\n</tool_call><|im_end|>'
    )
    env = make_env(grammar="flexible")
    for call in parse_assistant_text(tokenizer, turn)["tool_calls"]:  # as TRL's _tool_call_loop does
        getattr(env, call["function"]["name"])(**call["function"]["arguments"])
    assert env.kinds == ["text_search"] and env.counters["searches"] == 1
    # the next turn is the second of three: a search is still allowed
    assert isinstance(env.text_search("Redland"), str) and env.refused == 0


@pytest.mark.parametrize(
    "fail",
    [SearchError("SerpAPI returned 429", engine="serpapi"), TimeoutError("timed out"), RuntimeError("boom")],
)
def test_engine_failures_become_observations_and_are_counted(fail):
    env = make_env(image_fail=fail, text_fail=fail)
    out = env.search()
    assert isinstance(out, str) and "failed" in out and ROW["question"] in out
    out = env.text_search("q")
    assert isinstance(out, str) and type(fail).__name__ in out
    assert env.failures == 2 and env.image_calls == 1 and env.text_calls == 1
    assert [e["status"] for e in env.log] == ["failed", "failed"]


def test_missing_engines_and_missing_image_are_failures_not_crashes():
    env = SearchEnv(Engines())
    env.reset(**{**ROW, "image": None})
    assert "no image search engine" in env.search()
    env = SearchEnv(Engines(image=FakeImageEngine()))
    env.reset(**{**ROW, "image": None})
    assert "no image" in env.search()
    assert env.failures == 1


def test_budgets_refuse_over_budget_calls_flexible_grammar():
    env = make_env(grammar="flexible", budgets=Budgets(max_turns=4, image=1, text=2))
    assert isinstance(env.search(), list)
    refused = env.search()  # second image search
    assert isinstance(refused, str) and "budget" in refused
    assert env.image_calls == 1 and env.refused == 1
    env = make_env(grammar="flexible", budgets=Budgets(max_turns=4, image=1, text=2))
    env.text_search("a")
    env.text_search("b")
    assert "budget" in env.text_search("c")
    assert env.text_calls == 2 and env.refused == 1 and env.queries == ["a", "b"]


def test_strict_grammar_image_search_only_first_and_no_search_in_last_turn():
    env = make_env()  # strict, 3 turns
    env.text_search("Redland")
    out = env.search()
    assert "only allowed as the first action" in out and env.image_calls == 0 and env.refused == 1
    env = make_env()
    env.search()
    env.text_search("Redland capital")
    out = env.text_search("again")  # a third turn may only answer
    assert "last of 3 turns" in out and env.text_calls == 1


def test_strict_grammar_can_be_relaxed_to_per_tool_limits():
    env = make_env(enforce_grammar=False, budgets=Budgets(max_turns=4))
    env.text_search("a")
    assert isinstance(env.search(), list)
    assert env.image_calls == 1 and env.text_calls == 1


def test_next_step_line_lists_only_allowed_actions():
    env = make_env()
    first = texts(env.search())
    assert "<text_search>" in first.split("</information>")[1]
    second = env.text_search("Redland capital")
    assert "<text_search>" not in second.split("</information>")[1]


def test_empty_or_runaway_query_is_refused():
    env = make_env()
    assert "empty" in env.text_search("   ")
    env = make_env(max_query_chars=10)
    assert "longer than 10" in env.text_search("x" * 11)
    assert env.text_calls == 0 and env.refused == 1


def test_reset_clears_state_for_pooled_reuse():
    env = make_env()
    env.search()
    env.text_search("q")
    env.reset(**{**ROW, "question": "Another?"})
    assert env.counters["searches"] == 0 and env.log == [] and env.question == "Another?"


def test_reset_requires_question():
    env = SearchEnv()
    with pytest.raises(ValueError, match="question"):
        env.reset(image=IMAGE)


def test_factory_is_zero_arg_and_validates_overrides():
    factory = make_env_factory(Engines(), budgets=Budgets(image=2))
    a, b = factory(), factory()
    assert a is not b and a.config.budgets.image == 2
    with pytest.raises(TypeError, match="unknown EnvConfig"):
        make_env_factory(Engines(), nonsense=1)
    with pytest.raises(ValueError, match="grammar"):
        EnvConfig(grammar="loose")


def test_every_stage_builds_its_environment_from_one_settings_type():
    """Training's and evaluation's flat search fields become the same `EnvConfig`; the factory fits
    thumbnails to the policy's own processor; a generator suppresses the vision tokens by default."""
    from mmsearch_r1.agent.env import policy_env_factory
    from mmsearch_r1.agent.generation import HFGenerator, vision_ids
    from mmsearch_r1.evaluation.evaluate import EvalConfig
    from mmsearch_r1.policy.processor import image_sizes_of
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.config import preset

    train = preset("cpu_demo", max_turns=2, image_budget=1, text_budget=1, grammar="flexible")
    evaluation = EvalConfig(max_turns=2, image_budget=1, text_budget=1, grammar="flexible",
                            image_k=train.image_k, text_k=train.text_k)  # fmt: skip
    assert EnvConfig.from_settings(train) == EnvConfig.from_settings(evaluation)
    assert EnvConfig.from_settings(train).budgets == Budgets(max_turns=2, image=1, text=1)
    model, processor = build_tiny_policy(seed=0)
    env = policy_env_factory(Engines(FakeImageEngine(), FakeTextEngine()), train, processor)()
    assert env.config.sizes == image_sizes_of(processor) and env.config.image_k == train.image_k
    assert HFGenerator(model, processor).suppress_tokens == vision_ids(processor)
    assert HFGenerator(model, processor, suppress_tokens=()).suppress_tokens == []
