"""Every text the policy reads from us, in one place, in the project's own words.

What it does: the first user turn (instructions + the question), the user turn that carries image
search results (thumbnails as real image blocks between titles), the one that carries text search
results, and the one after a failed or refused search. The question is always passed in as data
(``row["question"]``): it is never recovered from decoded text, so a question containing the word
"assistant" (which broke the paper's released rollout) is safe.

Tool results are wrapped in ``<information>…</information>`` and followed by the original question
and one line that says which actions are still allowed, so the policy always sees its options.

What it does not: no chat-template rendering or tokenisation (``mmsearch_r1.protocol.chat_template``), no
search (``mmsearch_r1.tools``), no budget bookkeeping (``mmsearch_r1.agent.env`` decides what is allowed).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsearch_r1.protocol.tags import INFO_CLOSE, INFO_OPEN
from mmsearch_r1.tools.types import ImageHit, TextHit

FIRST_TURN = """\
Answer the question about the image. First decide whether you already know enough.
Write your thinking inside <reason> and </reason>, then end your reply with exactly one action:
<answer>a few words</answer> if you are sure of the answer;
<search><img></search> to look the image up on the web, if you cannot tell what it shows;
<text_search>a short query</text_search> to look up a fact, if you know what the image shows.
Search results come back inside <information> and </information>. Search only when you need to.
Question: {question}"""

_ACTION_HELP = {
    "answer": "answer with <answer>a few words</answer>",
    "text_search": "look up a missing fact with <text_search>a short query</text_search>",
    "image_search": "look the image up with <search><img></search>",
}


def first_user_text(question: str) -> str:
    """The text of the first user turn; the caller puts the question image block before it."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the row has an empty question: every row needs a non-empty 'question'")
    return FIRST_TURN.format(question=question.strip())


def first_user_content(question: str) -> list[dict]:
    """Content blocks of the first user turn: the question image, then the text."""
    return [{"type": "image"}, {"type": "text", "text": first_user_text(question)}]


def next_step_text(allowed: Sequence[str]) -> str:
    """One line that tells the policy which actions it still has."""
    allowed = [a for a in ("answer", "text_search", "image_search") if a in allowed]
    if not allowed:
        raise ValueError("at least one action must be allowed")
    options = "; or ".join(_ACTION_HELP[a] for a in allowed)
    return f"Next: reason inside <reason> and </reason>, then {options}."


def _tail(question: str, allowed: Sequence[str]) -> str:
    return f"\nQuestion: {question.strip()}\n{next_step_text(allowed)}"


def image_results_blocks(
    hits: Sequence[ImageHit], question: str, *, allowed: Sequence[str] = ("answer", "text_search")
) -> list[dict]:
    """Content blocks of the user turn after an image search: thumbnails between their titles.

    A hit without a thumbnail is listed by title only.
    """
    blocks: list[dict] = [{"type": "text", "text": f"{INFO_OPEN}[Image search results]\n"}]
    if not hits:
        blocks[0]["text"] += "No matching pages were found.\n"
    for i, hit in enumerate(hits, 1):
        if hit.thumbnail is not None:
            blocks.append({"type": "text", "text": f"{i}. "})
            blocks.append({"type": "image", "image": hit.thumbnail})
            blocks.append({"type": "text", "text": f" {hit.title}\n"})
        else:
            blocks.append({"type": "text", "text": f"{i}. {hit.title}\n"})
    blocks.append({"type": "text", "text": INFO_CLOSE + _tail(question, allowed)})
    return _merge_text_blocks(blocks)


def text_results_text(
    hits: Sequence[TextHit], query: str, question: str, *, allowed: Sequence[str] = ("answer",)
) -> str:
    """The user turn after a text search: numbered page titles with their summaries."""
    lines = [f"{INFO_OPEN}[Text search results for: {query.strip()}]"]
    if not hits:
        lines.append("No matching pages were found.")
    for i, hit in enumerate(hits, 1):
        summary = " ".join(hit.summary.split())
        lines.append(f"{i}. {hit.title}: {summary}" if summary else f"{i}. {hit.title}")
    return "\n".join(lines) + "\n" + INFO_CLOSE + _tail(question, allowed)


def failed_search_text(tool: str, reason: str, question: str, *, allowed: Sequence[str] = ("answer",)) -> str:
    """The user turn after a search that failed or was refused (budget, engine error, ...)."""
    label = {"image_search": "Image search", "text_search": "Text search"}.get(tool, tool)
    reason = " ".join(str(reason).split()) or "unknown error"
    return f"{INFO_OPEN}[{label} failed] {reason}. Continue with what you know.{INFO_CLOSE}" + _tail(
        question, allowed
    )


def _merge_text_blocks(blocks: list[dict]) -> list[dict]:
    """Join consecutive text blocks (fewer, longer blocks render the same and tokenize the same)."""
    merged: list[dict] = []
    for block in blocks:
        if block["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + block["text"]}
        else:
            merged.append(dict(block))
    return merged
