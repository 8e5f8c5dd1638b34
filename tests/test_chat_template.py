"""The tag protocol's chat template and response parser, as TRL 1.16 uses them (no model needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from search_fakes import PROTOCOL_FRAGMENTS
from trl.chat_template_utils import (
    get_training_chat_template,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    supports_tool_calling,
)

from mmsearch_r1.policy.processor import ImageSizes, build_processor
from mmsearch_r1.policy.tiny import build_tiny_tokenizer
from mmsearch_r1.protocol.chat_template import (
    IMAGE_TOOL,
    TEXT_TOOL,
    TagProtocolError,
    assistant_token_mask,
    check_protocol,
    check_tag_protocol,
    install_protocol,
    parse_assistant_text,
)
from mmsearch_r1.protocol.tags import parse_turn, render_turn

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tiny_tokenizer(), ImageSizes(28 * 28 * 4, 28 * 28 * 16, 28 * 28 * 4))


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def render(processor, messages, **kwargs):
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def user(text="q"):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


# -- rendering -----------------------------------------------------------------------------------------


def test_default_system_prompt_user_image_and_generation_prompt(processor):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What flag?"}]}]
    assert render(processor, msgs, add_generation_prompt=True) == (
        SYSTEM + f"<|im_start|>user\n{VISION}What flag?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_own_system_prompt_replaces_default(processor):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (
        render(processor, msgs) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )


def test_image_search_call_renders_paper_tag(processor):
    for name in (IMAGE_TOOL, "image_search"):
        msgs = [
            user(),
            {"role": "assistant", "content": "", "reasoning_content": "r", "tool_calls": [call(name)]},
        ]
        assert render(processor, msgs).endswith(
            "<|im_start|>assistant\n<reason>r</reason><search><img></search><|im_end|>"
        )


@pytest.mark.parametrize("args", [{"text": "capital of Peru"}, {"query": "capital of Peru"}])
def test_text_search_call_renders_paper_tag(processor, args):
    msgs = [user(), {"role": "assistant", "content": "", "tool_calls": [call(TEXT_TOOL, **args)]}]
    assert render(processor, msgs).endswith(
        "<|im_start|>assistant\n<text_search>capital of Peru</text_search><|im_end|>"
    )


def test_unknown_tool_renders_generically(processor):
    msgs = [user(), {"role": "assistant", "content": "", "tool_calls": [call("calc", a=1)]}]
    assert render(processor, msgs).endswith('<calc>{"a": 1}</calc><|im_end|>')


def test_answer_turn_and_plain_content_tags_render_verbatim(processor):
    text = render_turn("answer", "I know it.", answer="Lima")
    rendered = render(processor, [user(), {"role": "assistant", "content": text}])
    assert rendered.endswith(f"<|im_start|>assistant\n{text}<|im_end|>")


def test_tool_results_one_user_turn_with_exact_paper_join(processor):
    thumb = Image.new("RGB", (28, 28))
    msgs = [
        user("Q"),
        {"role": "assistant", "content": "", "reasoning_content": "a", "tool_calls": [call(IMAGE_TOOL)]},
        {
            "role": "tool",
            "name": IMAGE_TOOL,
            "content": [
                {"type": "text", "text": "<information>1. "},
                {"type": "image", "image": thumb},
                {"type": "text", "text": " Flag</information>\nQuestion: Q"},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "b",
            "tool_calls": [call(TEXT_TOOL, text="x")],
        },
        {"role": "tool", "name": TEXT_TOOL, "content": "plain result"},
        {"role": "assistant", "content": "<answer>y</answer>", "reasoning_content": "c"},
    ]
    assert render(processor, msgs) == (
        SYSTEM + "<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\n<reason>a</reason><search><img></search><|im_end|>"
        f"<|im_start|>user\n<information>1. {VISION} Flag</information>\nQuestion: Q<|im_end|>\n"
        "<|im_start|>assistant\n<reason>b</reason><text_search>x</text_search><|im_end|>"
        "<|im_start|>user\n<information>plain result</information><|im_end|>\n"
        "<|im_start|>assistant\n<reason>c</reason><answer>y</answer><|im_end|>"
    )


def test_consecutive_tool_messages_share_one_user_turn(processor):
    msgs = [
        user(),
        {"role": "assistant", "content": "", "tool_calls": [call(IMAGE_TOOL), call(TEXT_TOOL, text="x")]},
        {"role": "tool", "name": IMAGE_TOOL, "content": "r1"},
        {"role": "tool", "name": TEXT_TOOL, "content": "r2"},
    ]
    out = render(processor, msgs, add_generation_prompt=True)
    assert out.endswith(
        "<|im_end|><|im_start|>user\n<information>r1</information>\n<information>r2</information>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert out.count("<|im_start|>user") == 2


def test_newline_goes_before_a_user_turn_that_follows_an_assistant(processor):
    msgs = [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    assert render(processor, msgs).endswith(
        "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
    )


def test_generation_markers_cover_assistant_turn_and_its_end_token(processor, tokenizer):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<answer>z</answer>"}]
    out = tokenizer.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(ids) == "<answer>z</answer><|im_end|>"
    assert is_chat_template_stop_token_trained(processor)


# -- TRL's gates ---------------------------------------------------------------------------------------


def test_trl_gates_pass_without_patching(processor):
    assert supports_tool_calling(processor)
    assert is_chat_template_prefix_preserving(processor)
    assert get_training_chat_template(processor) is None
    check_tag_protocol(processor)


def test_check_raises_when_parser_missing_or_broken():
    tok = build_tiny_tokenizer()
    with pytest.raises(TagProtocolError, match="install_tag_protocol"):
        check_tag_protocol(tok)
    install_protocol(tok, "tags")
    tok.response_template = {**tok.response_template, "join": "x"}  # a key this parser does not know
    with pytest.raises(TagProtocolError):
        check_tag_protocol(tok)


def test_native_protocol_option_parses_json_tool_calls():
    proc = build_processor(build_tiny_tokenizer(), protocol="native")
    check_protocol(proc, "native")
    parsed = parse_assistant_text(
        proc, '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call><|im_end|>'
    )
    assert parsed["tool_calls"][0]["function"] == {"name": "search", "arguments": {}}


def test_native_protocol_fires_one_tool_call_per_turn_the_one_ending_it():
    """SearchEnv counts turns by calls, so a native turn may not hold two calls (TRL would run both)."""
    proc = build_processor(build_tiny_tokenizer(), protocol="native")
    first = '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>'
    second = '<tool_call>\n{"name": "text_search", "arguments": {"text": "q"}}\n</tool_call>'
    parsed = parse_assistant_text(proc, f"{first}\n{second}<|im_end|>")
    assert [c["function"]["name"] for c in parsed["tool_calls"]] == [TEXT_TOOL]
    assert "tool_calls" not in parse_assistant_text(proc, f"{first} and then more<|im_end|>")


# -- parsing -------------------------------------------------------------------------------------------


def parse_ids(tokenizer, text):
    prefix = tokenizer("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return parse_response(tokenizer, ids, prefix=prefix["input_ids"])


def tool_calls(parsed):
    return [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.get("tool_calls") or []]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<reason>r</reason><search><img></search><|im_end|>", [(IMAGE_TOOL, {})]),
        ("<reason>r</reason><text_search>a b</text_search><|im_end|>", [(TEXT_TOOL, {"text": "a b"})]),
        ("<reason>r</reason><text_search>a</text_search> \n<|endoftext|>", [(TEXT_TOOL, {"text": "a"})]),
        ("<reason>r<search><img></search><|im_end|>", [(IMAGE_TOOL, {})]),  # unclosed reason: fires
        ("<text_search>a</text_search><search><img></search><|im_end|>", [(IMAGE_TOOL, {})]),  # last wins
        ("<text_search>a<text_search>b</text_search><|im_end|>", [(TEXT_TOOL, {"text": "b"})]),
        ("<reason>r</reason><answer>x</answer><|im_end|>", []),
        ("<reason>r</reason><search><img></search>", []),  # truncated: no end of turn
        ("<reason>r</reason><search><img></search> then<|im_end|>", []),  # not last
        ("<reason>r</reason><search>cat</search><|im_end|>", []),
        ("<reason>r</reason><text_search>q<|im_end|>", []),
        ("<reason>r</reason><text_search> </text_search><|im_end|>", []),  # empty query
        ("<|im_end|>", []),
    ],
)
def test_parse_tags_like_trl(tokenizer, text, expected):
    assert tool_calls(parse_ids(tokenizer, text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        render_turn("image_search", "I do not know this flag."),
        render_turn("text_search", "It is Peru.", query="capital of Peru"),
        render_turn("answer", "I know it.", answer="Lima"),
    ],
)
def test_round_trip_render_of_parse(processor, tokenizer, text):
    parsed = parse_ids(tokenizer, text + "<|im_end|>")
    rendered = render(processor, [user(), parsed])
    assert rendered.endswith(f"<|im_start|>assistant\n{text}<|im_end|>")


FRAGMENTS = [f for f in PROTOCOL_FRAGMENTS if f != "<|im_end|>"]  # the end token is drawn separately


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=12).map("".join),
    end=st.sampled_from(["<|im_end|>", "<|endoftext|>", ""]),
)
def test_fuzz_parser_never_raises_and_agrees_with_protocol(tokenizer, body, end):
    text = body + end
    cut = min((i for i in (text.find("<|im_end|>"), text.find("<|endoftext|>")) if i >= 0), default=-1)
    if cut >= 0:  # generation stops at the first end-of-turn token
        text = text[: cut + len("<|im_end|>" if text.startswith("<|im_end|>", cut) else "<|endoftext|>")]
    if not tokenizer(text, add_special_tokens=False)["input_ids"]:
        return
    parsed = parse_ids(tokenizer, text)  # TRL's wrapper; must not raise
    calls = tool_calls(parsed)
    assert len(calls) <= 1
    got = None
    if calls:
        name, args = calls[0]
        assert (name, sorted(args)) in [(IMAGE_TOOL, []), (TEXT_TOOL, ["text"])]
        got = (
            ("image_search", None) if name == IMAGE_TOOL else ("text_search", " ".join(args["text"].split()))
        )
    turn = parse_turn(text)
    fires = cut >= 0 and turn.action in ("image_search", "text_search")
    assert got == ((turn.action, turn.query) if fires else None)


def test_assistant_token_mask_after_image_expansion(processor):
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (56, 56))},
                {"type": "text", "text": "q"},
            ],
        },
        {"role": "assistant", "content": "<reason>r</reason><search><img></search>"},
        {
            "role": "tool",
            "name": IMAGE_TOOL,
            "content": [{"type": "image", "image": Image.new("RGB", (56, 56))}],
        },
        {"role": "assistant", "content": "<reason>s</reason><answer>x</answer>"},
    ]
    ids = processor.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"][0]
    mask = assistant_token_mask(ids, processor)
    kept = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert (
        kept
        == "<reason>r</reason><search><img></search><|im_end|><reason>s</reason><answer>x</answer><|im_end|>"
    )
