"""The TRL reward function: turn splitting, golds from the row, searches from the environment counters."""

from __future__ import annotations

import warnings

import pytest

from mmsearch_r1.policy.tiny import build_tiny_tokenizer
from mmsearch_r1.protocol.chat_template import install_protocol
from mmsearch_r1.protocol.tags import render_turn
from mmsearch_r1.rl.rewards import RewardConfig, make_reward_func, message_to_tag_text, split_turns

IMG = render_turn("image_search", "unknown flag")
TXT = render_turn("text_search", "need a fact", query="Redland capital")
ANS = render_turn("answer", "found", answer="Rubytown")
USER = "<|im_start|>user\n<information>x <|image_pad|></information>\nQuestion: q<|im_end|>\n<|im_start|>assistant\n"


class FakeEnv:
    def __init__(self, image_calls=0, text_calls=0, failures=0, refused=0):
        self.counters = {
            "image_calls": image_calls,
            "text_calls": text_calls,
            "searches": image_calls + text_calls,
            "failures": failures,
            "refused": refused,
            "queries": [],
        }


@pytest.fixture(scope="module")
def tokenizer():
    return install_protocol(build_tiny_tokenizer(), "tags")


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_split_turns_removes_user_side_turns_and_padding():
    decoded = f"{IMG}<|im_end|>{USER}{TXT}<|im_end|>{USER}{ANS}<|im_end|><|endoftext|><|endoftext|>"
    assert split_turns(decoded) == [f"{IMG}<|im_end|>", f"{TXT}<|im_end|>", f"{ANS}<|im_end|>"]


def test_reward_paper_values_from_ids_with_env_counters(tokenizer):
    reward = make_reward_func(tokenizer)
    completions_text = [
        f"{ANS}<|im_end|>",  # direct, correct
        f"{IMG}<|im_end|>{USER}{TXT}<|im_end|>{USER}{ANS}<|im_end|>",  # searched, correct
        f"{IMG}<|im_end|>{USER}{render_turn('answer', 'guess', answer='Paris')}<|im_end|>",  # wrong
        "<answer>Rubytown</answer><|im_end|>",  # correct but no <reason>: format 0
    ]
    envs = [FakeEnv(), FakeEnv(1, 1), FakeEnv(1), FakeEnv()]
    logged = {}
    out = reward(
        prompts=[None] * 4,
        completions=[[{"role": "assistant", "content": ""}]] * 4,
        completion_ids=[ids_of(tokenizer, t) for t in completions_text],
        answer=["Rubytown"] * 4,
        aliases=[["Ruby Town"]] * 4,
        environments=envs,
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert out == pytest.approx([1.0, 0.91, 0.1, 0.9])
    assert logged["mmsearch/accuracy"] == pytest.approx(0.75)
    assert logged["mmsearch/search_ratio"] == pytest.approx(0.5)
    assert logged["mmsearch/image_calls"] == pytest.approx(0.5)


def test_penalty_counts_searches_that_ran_not_the_text(tokenizer):
    """A search whose result TRL dropped for length still ran: the environment says so."""
    text = f"{ANS}<|im_end|>"
    kwargs = dict(prompts=[None], completions=[[]], completion_ids=[ids_of(tokenizer, text)])
    kwargs |= dict(answer=["Rubytown"], aliases=[[]], environments=[FakeEnv(text_calls=1)])
    assert make_reward_func(tokenizer)(**kwargs) == [pytest.approx(0.91)]
    from_text = make_reward_func(tokenizer, RewardConfig(searches_from="text"))
    assert from_text(**kwargs) == [pytest.approx(1.0)]


def test_refused_calls_are_not_searches_and_text_counts_without_env(tokenizer):
    """The penalty counts executed searches (env): a refused call is not one; no env: the text's turns."""
    text = f"{IMG}<|im_end|>{USER}{ANS}<|im_end|>"
    kwargs = dict(prompts=[None], completions=[[]], completion_ids=[ids_of(tokenizer, text)])
    kwargs |= dict(answer=["Rubytown"], aliases=[[]])
    reward = make_reward_func(tokenizer, RewardConfig(penalty_mode="per_call"))
    assert reward(**kwargs, environments=[FakeEnv(refused=1)]) == [pytest.approx(1.0)]
    assert reward.last_parts[0]["image_calls"] == 0 and reward.last_parts[0]["tool_refused"] == 1
    assert reward(**kwargs, environments=[FakeEnv(image_calls=1, failures=1)]) == [pytest.approx(0.91)]
    assert reward(**kwargs) == [pytest.approx(0.91)]  # no environment: the image-search turn counts
    assert reward.last_parts[0]["image_calls"] == 1


def test_rollout_cut_after_a_search_is_counted_and_warned_once(tokenizer):
    """TRL ends a sample silently when a tool result would pass max_completion_length: the rollout stops
    on its search turn, scores as a format failure (0, below a wrong answer's 0.1), and GRPO learns to
    avoid that search. The reward flags it; a search in the last allowed turn is the policy's own fault."""
    cut = f"{IMG}<|im_end|>{USER}{TXT}<|im_end|>"  # 2 of 3 turns, result dropped: no answer
    third = f"{IMG}<|im_end|>{USER}{TXT}<|im_end|>{USER}{TXT}<|im_end|>"  # budget spent: not a cut
    full = f"{IMG}<|im_end|>{USER}{TXT}<|im_end|>{USER}{ANS}<|im_end|>"
    texts = [cut, third, full, cut]
    kwargs = dict(prompts=[None] * 4, completions=[[]] * 4, answer=["Rubytown"] * 4, aliases=[[]] * 4)
    kwargs["completion_ids"] = [ids_of(tokenizer, t) for t in texts]
    reward, logged = make_reward_func(tokenizer), {}
    with pytest.warns(UserWarning, match="max_completion_length"):
        out = reward(**kwargs, environments=[FakeEnv(1, 1)] * 4, log_metric=logged.__setitem__)
    assert out == pytest.approx([0.0, 0.0, 0.91, 0.0])
    assert [p["cut_after_search"] for p in reward.last_parts] == [1.0, 0.0, 0.0, 1.0]
    assert logged["mmsearch/cut_after_search"] == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per reward function, not every step
        reward(**kwargs, environments=[FakeEnv(1, 1)] * 4)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("penalty_mode", "twice", "penalty_mode"),
        ("grammar", "loose", "grammar"),
        ("match", "fuzzy", "match"),
        ("penalty", 1.5, "penalty"),
        ("penalty", -0.1, "penalty"),
        ("format_weight", 2.0, "format_weight"),
        ("format_weight", "0.1", "format_weight"),
        ("tool_costs", {"video_search": 1.0}, "tool_costs"),
        ("tool_costs", {"image_search": 20.0}, "tool_costs"),
        ("turns_from", "tokens", "turns_from"),
    ],
)
def test_reward_config_rejects_bad_values_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**{field: value})


def test_aliases_count_as_gold(tokenizer):
    text = render_turn("answer", "r", answer="ruby town") + "<|im_end|>"
    out = make_reward_func(tokenizer)(
        prompts=[None],
        completions=[[]],
        completion_ids=[ids_of(tokenizer, text)],
        answer=["Rubytown"],
        aliases=[["Ruby Town"]],
    )
    assert out == [pytest.approx(1.0)]


def test_without_ids_turns_are_rebuilt_from_messages():
    messages = [
        {
            "role": "assistant",
            "reasoning_content": "a",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {}}}],
        },
        {
            "role": "tool",
            "name": "search",
            "content": [{"type": "text", "text": "<information>x</information>"}],
        },
        {"role": "assistant", "reasoning_content": "b", "content": "<answer>Rubytown</answer>"},
    ]
    assert message_to_tag_text(messages[0]) == "<reason>a</reason><search><img></search>"
    out = make_reward_func()(
        prompts=[None], completions=[messages], answer=["Rubytown"], environments=[FakeEnv(1)]
    )
    assert out == [pytest.approx(0.91)]


def test_missing_answer_column_is_a_clear_error():
    with pytest.raises(ValueError, match="answer"):
        make_reward_func()(prompts=[None], completions=[[]])
    with pytest.raises(ValueError, match="searches_from"):
        RewardConfig(searches_from="both")


def test_native_protocol_turns_rebuilt_from_messages(tokenizer):
    """Under the JSON tool-call protocol the raw text has <tool_call>; the parsed messages give the tags."""
    messages = [
        {
            "role": "assistant",
            "content": "<reason>a</reason>",
            "tool_calls": [
                {"type": "function", "function": {"name": "text_search", "arguments": {"text": "q"}}}
            ],
        },
        {"role": "tool", "name": "text_search", "content": "<information>x</information>"},
        {"role": "assistant", "content": "<reason>b</reason><answer>Rubytown</answer>"},
    ]
    raw = '<reason>a</reason><tool_call>\n{"name": "text_search", "arguments": {"text": "q"}}\n</tool_call><|im_end|>'
    kwargs = dict(prompts=[None], completions=[messages], completion_ids=[ids_of(tokenizer, raw)])
    kwargs |= dict(answer=["Rubytown"], environments=[FakeEnv(text_calls=1)])
    assert make_reward_func(tokenizer, RewardConfig(turns_from="messages"))(**kwargs) == [pytest.approx(0.91)]
    assert make_reward_func(tokenizer, RewardConfig(turns_from="ids"))(**kwargs) == [pytest.approx(0.0)]
    native = build_tiny_tokenizer()
    install_protocol(native, "native")
    assert make_reward_func(native)(**kwargs) == [pytest.approx(0.91)]  # "auto" reads the messages
