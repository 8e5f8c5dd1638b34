"""The conversation of one rollout as TRL 1.16 builds it, in token ids (shared by every rollout here).

What it does: `first_prompt` / `prompt_ids` render the first user turn (question image, then
``protocol.prompts.first_user_text``) with the processor's chat template and the environment's tools, exactly as
``GRPOTrainer._tokenize_prompts`` does; `tool_suffix_ids` renders the user-side turn after a tool call the
way ``GRPOTrainer._get_tool_suffix_ids`` does (a dummy conversation with and without the tool messages,
the difference after the last end-of-turn token); `parse_ids` parses an assistant turn with TRL's
``parse_response`` (the tokenizer's ``response_template``); `content_text` flattens a tool message.

What it does not: no generation, no tools, no loop (`mmsearch_r1.agent.rollout`).
"""

from __future__ import annotations

from mmsearch_r1.protocol import prompts


def first_prompt(row: dict) -> list[dict]:
    """The conversation of the first turn: the question image, then the instructions and question."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": row["image"]},
                {"type": "text", "text": prompts.first_user_text(row["question"])},
            ],
        }
    ]


def prompt_ids(processor, row: dict, tools: list | None = None) -> list[int]:
    """Token ids of the first prompt, rendered exactly as TRL renders a conversational prompt.

    ``tools`` are the environment's tool methods, passed to the chat template as TRL does (the tag
    template ignores them; the native JSON template lists them in the system prompt).
    """
    out = processor.apply_chat_template(
        conversation=[first_prompt(row)],
        tools=tools or None,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return list(out["input_ids"][0])


def tool_suffix_ids(processor, tool_messages: list[dict]) -> list[int]:
    """Ids of the user-side turn after a tool call (TRL 1.16 ``GRPOTrainer._get_tool_suffix_ids``)."""
    from trl.data_utils import prepare_multimodal_messages

    tokenizer = getattr(processor, "tokenizer", processor)
    dummy = [
        {"role": "user", "content": "dummy"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
            ],
        },
    ]
    dummy = prepare_multimodal_messages(dummy)
    tool_messages = prepare_multimodal_messages(tool_messages)
    prefix = processor.apply_chat_template(
        dummy, add_generation_prompt=False, tokenize=True, return_dict=False
    )[0]
    full = processor.apply_chat_template(
        dummy + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )[0]
    eos = [i for i, t in enumerate(prefix) if t == tokenizer.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    if full[: len(prefix)] != prefix:
        raise ValueError(
            "The chat template is not prefix-preserving for tool turns; install the tag protocol."
        )
    return list(full[len(prefix) :])


def parse_ids(processor, ids: list[int], prefix: list[int], tools) -> dict:
    """Parse one assistant turn's ids as TRL does (``trl.chat_template_utils.parse_response``)."""
    from trl.chat_template_utils import parse_response

    if not ids:
        return {}
    return parse_response(getattr(processor, "tokenizer", processor), ids, prefix=prefix, tools=tools)


def content_text(content) -> tuple[str, list]:
    """A tool message's content as text (``<image>`` placeholders) and its images."""
    if isinstance(content, str):
        return content, []
    text, images = [], []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image":
            images.append(part.get("image"))
            text.append("<image>")
        elif isinstance(part, dict):
            text.append(str(part.get("text", "")))
    return "".join(text), images
