"""The paper's tag protocol inside TRL's tool loop: chat template, response parser, install and check.

What it does:
- `TAG_CHAT_TEMPLATE` (``tag_protocol.jinja``): a ChatML (Qwen2.5-VL) chat template that renders an
  assistant tool call as the paper's tags (``<search><img></search>``, ``<text_search>q</text_search>``),
  consecutive tool results as ONE user turn wrapped in ``<information>`` (image blocks become
  ``<|vision_start|><|image_pad|><|vision_end|>``), any other tool generically (so TRL's
  ``supports_tool_calling`` sentinel check passes), with ``{% generation %}`` markers, and with the
  paper's exact join: no newline after an assistant ``<|im_end|>``, so the user-side suffix TRL computes
  is exactly ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`` (prefix-preserving).
- `TAG_RESPONSE_TEMPLATE`: the declarative ``response_template`` (transformers >= 5.13) with which
  ``tokenizer.parse_response`` (hence TRL) turns a turn that ENDS with a closed search tag into a tool call.
  A tag that is not the last thing before ``<|im_end|>``, unclosed or malformed stays plain content
  (the paper's trigger rule: ``<search><img></search>$`` and the last ``<text_search>``).
- `install_tag_protocol(processor)` / `check_tag_protocol(processor)`: set both on a processor (or a
  tokenizer) and verify at start-up that this transformers parses both tags and passes TRL's gates.
  TRL swallows every parser ``ValueError``/``TypeError`` as "no tool call", so a broken
  parser would otherwise train silently with zero searches.
- `install_native_protocol(processor)`: the secondary protocol, JSON tool calls
  (``<tool_call>{json}</tool_call>``, Qwen3-VL style) with TRL's shipped ``qwen3_vl.jinja`` and TRL's
  ``qwen3_template`` parser restricted to one tool call per turn (`native_response_template`).

Tool names (decision). A declarative template builds a tool name or argument key only from text the
model wrote or from literals in its single transform, so the tag protocol's tools are named after their
tags: ``search()`` (image search on the question image) and ``text_search(text)``. `SearchEnv` defines
exactly these methods; the same names work unchanged under the native protocol. The template still
renders ``image_search`` calls and a ``query`` argument as tags, for hand-written trajectories.

What it does not: no prompt wording (`mmsearch_r1.protocol.prompts`), no grammar or reward (`tags`,
`rewards`), no tool execution (`mmsearch_r1.agent.env`). It never patches TRL.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

IMAGE_TOOL = "search"
"""Name of the image-search tool under the tag protocol (``<search><img></search>``)."""
TEXT_TOOL = "text_search"
"""Name of the text-search tool under the tag protocol (``<text_search>q</text_search>``)."""
TEXT_ARG = "text"
"""Argument name of the text-search tool (captured from the tag itself, so it cannot be ``query``)."""

TAG_CHAT_TEMPLATE: str = (
    resources.files("mmsearch_r1.protocol").joinpath("tag_protocol.jinja").read_text(encoding="utf-8")
)
"""The tag-protocol chat template (Jinja source)."""

_END_OF_TURN = r"(?:<\|im_end\|>|<\|endoftext\|>)"
# A search action that ends the turn (closed tag, then only whitespace before the end-of-turn token).
# A text query runs from the LAST <text_search> to the final </text_search> (as protocol.parse_turn
# reads it) and must hold a non-space character.
_TEXT_BODY = r"(?:(?!<text_search>)[\s\S])*"
_TEXT_TAIL = r"</text_search>\s*" + _END_OF_TURN
_TEXT_QUERY = r"\s*(?!" + _TEXT_TAIL + r")(?!<text_search>)\S" + _TEXT_BODY + _TEXT_TAIL
_IMAGE_AT_END = r"<search><img></search>\s*" + _END_OF_TURN
_TEXT_AT_END = r"<text_search>" + _TEXT_QUERY

TAG_RESPONSE_TEMPLATE: dict = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        # An unclosed <reason> still lets a final action fire (the paper's trigger looks only at the end).
        "reasoning_content": {
            "open": "<reason>",
            "close_pattern": r"</reason>\s*|(?=" + _IMAGE_AT_END + "|" + _TEXT_AT_END + ")",
            "content": "text",
        },
        "tool_calls": {
            # Image branch consumes "<search><img>" (empty body -> no arguments). Text branch consumes
            # only "<" so that the body "text_search>QUERY" yields {"text": QUERY} through xml-inline.
            "open_pattern": (
                r"<(?P<name>search)><img>(?=</search>\s*" + _END_OF_TURN + ")"
                r"|<(?=(?P<name>text_search)>" + _TEXT_QUERY + ")"
            ),
            "close_pattern": r"</(?:search|text_search)>\s*(?=" + _END_OF_TURN + ")",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {
                "tag_pattern": r"(?P<key>text)_search>(?P<value>[\s\S]*)",
                "value_parser": {"name": "text"},
            },
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": _END_OF_TURN + r"\s*", "content": "text"},
    },
}
"""The declarative ``response_template`` of the tag protocol. It uses no ``join`` key: transformers 5.17's
``load_response_template`` rejects it (``check_protocol`` verifies that the installed version loads this)."""


def native_response_template() -> dict:
    """TRL's ``qwen3_template`` (JSON ``<tool_call>`` blocks) restricted to ONE tool call per turn.

    Only a ``<tool_call>`` block that ends the turn fires (the tag protocol's trigger rule); an earlier
    block in the same turn stays plain content. `SearchEnv` counts turns by tool calls (TRL gives a tool
    no turn boundary), so two calls in one turn would otherwise count as two turns.
    """
    from trl.chat_template_utils import qwen3_template

    template = copy.deepcopy(qwen3_template)
    tool_calls = template["fields"]["tool_calls"]
    tool_calls.pop("open", None)
    tool_calls["open_pattern"] = (
        r"<tool_call>(?=(?:(?!<tool_call>)[\s\S])*</tool_call>\s*" + _END_OF_TURN + ")"
    )
    return template


PROTOCOLS = ("tags", "native")
"""Protocols `install_protocol` knows: the paper's tags (default) and native JSON tool calls."""


class TagProtocolError(RuntimeError):
    """The installed transformers/TRL cannot render or parse the protocol; training would be silent garbage."""


def _tokenizer_of(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def install_tag_protocol(processing_class):
    """Install the tag protocol on a processor (or a bare tokenizer) in place and return it.

    Sets ``chat_template`` on the processor and its tokenizer to `TAG_CHAT_TEMPLATE` and the tokenizer's
    ``response_template`` to `TAG_RESPONSE_TEMPLATE` (TRL then skips its own schema). Call
    `check_tag_protocol` afterwards (or use `install_protocol`, which does both). Saving the processor
    saves the template; the response template is not saved by every transformers version, so re-install
    after loading (the loaders in this package do).
    """
    processing_class.chat_template = TAG_CHAT_TEMPLATE
    tokenizer = _tokenizer_of(processing_class)
    tokenizer.chat_template = TAG_CHAT_TEMPLATE
    tokenizer.response_template = TAG_RESPONSE_TEMPLATE
    return processing_class


def _trl_chat_template(name: str) -> str:
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not path.exists():
        raise TagProtocolError(
            f"TRL {trl.__version__} ships no chat template {path.name}; install trl==1.16.0."
        )
    return path.read_text(encoding="utf-8")


def install_native_protocol(processing_class):
    """Install the native JSON tool-call protocol (TRL's shipped ``qwen3_vl.jinja``) in place and return it.

    The model then calls tools as ``<tool_call>{"name": "search", "arguments": {}}</tool_call>``; results come
    back as ``<tool_response>`` blocks in a user turn. The response template is `native_response_template`
    (TRL's ``qwen3_template`` with one tool call per turn), set on the tokenizer so that TRL and the
    evaluation rollout parse alike.
    """
    template = _trl_chat_template("qwen3_vl")
    processing_class.chat_template = template
    tokenizer = _tokenizer_of(processing_class)
    tokenizer.chat_template = template
    tokenizer.response_template = native_response_template()
    return processing_class


def install_protocol(processing_class, protocol: str = "tags", *, check: bool = True):
    """Install ``protocol`` ("tags" or "native") on a processor or tokenizer; check it unless ``check=False``."""
    if protocol == "tags":
        install_tag_protocol(processing_class)
    elif protocol == "native":
        install_native_protocol(processing_class)
    else:
        raise ValueError(f"Unknown protocol {protocol!r}: choose one of {PROTOCOLS}.")
    if check:
        check_protocol(processing_class, protocol)
    return processing_class


def parse_assistant_text(processing_class, text: str, prefix: str = "<|im_start|>assistant\n") -> dict:
    """Parse one assistant turn's text (special tokens kept) exactly as TRL does; never raises.

    Returns ``{"role": "assistant", "content": str, ...}`` with ``reasoning_content`` and ``tool_calls``
    when present, falling back to plain content on a parser error (TRL's behaviour). Useful for the
    evaluation rollout, which must see the same tool calls as training.
    """
    tokenizer = _tokenizer_of(processing_class)
    try:
        parsed = tokenizer.parse_response(text, prefix=prefix)
        if not isinstance(parsed, dict):
            raise ValueError("parse_response returned no message")
    except (ValueError, TypeError):
        return {"role": "assistant", "content": text.replace(tokenizer.eos_token or "\0", "")}
    if isinstance(parsed.get("content"), str) and tokenizer.eos_token:
        parsed["content"] = parsed["content"].removesuffix(tokenizer.eos_token)
    parsed.setdefault("content", "")
    return parsed


def assistant_token_mask(input_ids, processing_class) -> list[int]:
    """1 for the assistant's own tokens (after ``<|im_start|>assistant\n``, up to and including ``<|im_end|>``).

    Works on ids AFTER image-placeholder expansion (``processor.apply_chat_template(..., tokenize=True)``),
    where transformers' ``return_assistant_tokens_mask`` is not re-aligned for images. This is the loss
    mask of supervised warm starts on protocol trajectories: tool results and prompts get 0.
    """
    tokenizer = _tokenizer_of(processing_class)
    ids = [int(i) for i in input_ids]
    start, end = (
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    mask = [0] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == start and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids):
                mask[j] = 1
                if ids[j] == end:
                    break
                j += 1
            i = j
        i += 1
    return mask


def _check_gates(processing_class, *, require_markers: bool) -> list[str]:
    from trl.chat_template_utils import (
        get_training_chat_template,
        is_chat_template_prefix_preserving,
        supports_tool_calling,
    )

    problems = []
    if not supports_tool_calling(processing_class):
        problems.append("TRL's supports_tool_calling is False (the template must render any tool call)")
    if not is_chat_template_prefix_preserving(processing_class):
        problems.append("the template is not prefix-preserving (TRL would try to patch it and fail)")
    elif require_markers:
        try:
            if get_training_chat_template(processing_class) is not None:
                problems.append("TRL wants to patch the template (missing {% generation %} markers)")
        except ValueError as err:
            problems.append(f"TRL cannot use the template for training: {err}")
    return problems


def check_protocol(processing_class, protocol: str = "tags") -> None:
    """Raise `TagProtocolError` unless TRL will render, gate and parse ``protocol`` on this processor.

    Checks: the tokenizer has a ``response_template`` this transformers loads; TRL's gates
    (``supports_tool_calling``, prefix preservation, no training-template patch needed); and that both
    tools parse from a canonical turn and a plain answer parses as no tool call.
    """
    import transformers

    tokenizer = _tokenizer_of(processing_class)
    template = getattr(tokenizer, "response_template", None)
    if template is None:
        raise TagProtocolError(
            "The tokenizer has no response_template: call install_tag_protocol(processor) first "
            "(transformers >= 5.13 is required for response templates)."
        )
    try:
        from transformers.utils.chat_parsing.response_templates import load_response_template

        load_response_template(template)
    except ImportError as err:
        raise TagProtocolError(
            f"transformers {transformers.__version__} has no response_template parser; install transformers>=5.15,<5.18."
        ) from err
    except (ValueError, TypeError, KeyError) as err:
        raise TagProtocolError(
            f"transformers {transformers.__version__} rejects the response_template ({err}); TRL would parse "
            "every turn as plain text and train with zero tool calls. Use transformers>=5.15,<5.18."
        ) from err
    problems = _check_gates(processing_class, require_markers=protocol == "tags")
    if protocol == "tags":
        cases = {
            "<reason>r</reason><search><img></search><|im_end|>": (IMAGE_TOOL, {}),
            "<reason>r</reason><text_search>eiffel tower height</text_search><|im_end|>": (
                TEXT_TOOL,
                {TEXT_ARG: "eiffel tower height"},
            ),
            "<reason>r</reason><answer>Paris</answer><|im_end|>": None,
        }
    else:
        cases = {
            '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call><|im_end|>': (IMAGE_TOOL, {}),
            '<tool_call>\n{"name": "text_search", "arguments": {"text": "q"}}\n</tool_call><|im_end|>': (
                TEXT_TOOL,
                {TEXT_ARG: "q"},
            ),
            "<answer>Paris</answer><|im_end|>": None,
            # one call per turn: only the block that ends the turn fires
            '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>\n'
            '<tool_call>\n{"name": "text_search", "arguments": {"text": "q"}}\n</tool_call><|im_end|>': (
                TEXT_TOOL,
                {TEXT_ARG: "q"},
            ),
        }
    for text, expected in cases.items():
        parsed = parse_assistant_text(processing_class, text)
        calls = parsed.get("tool_calls") or []
        got = [(c["function"]["name"], c["function"]["arguments"]) for c in calls if "function" in c]
        want = [expected] if expected else []
        if got != want:
            problems.append(f"parsing {text!r} gave tool calls {got}, expected {want}")
    if problems:
        raise TagProtocolError(
            f"The {protocol!r} protocol does not work with transformers {transformers.__version__}: "
            + "; ".join(problems)
            + ". Install the pinned versions (transformers>=5.15,<5.18, trl==1.16.0) and re-run install_protocol."
        )


def check_tag_protocol(processing_class) -> None:
    """`check_protocol` for the tag protocol (call at start-up; raises `TagProtocolError` on failure)."""
    check_protocol(processing_class, "tags")
