"""The paper's tag protocol: parse one assistant turn, validate a whole trajectory.

What it does: an assistant turn is ``<reason>…</reason>`` followed by exactly one action at the very
end of the turn: ``<answer>…</answer>``, ``<search><img></search>`` (image search on the question
image) or ``<text_search>query</text_search>``. ``parse_turn`` reads one turn and never raises: a
malformed turn becomes a ``Turn`` of kind ``"invalid"`` whose ``why`` names the problem.
``validate_trajectory`` checks a whole sequence of turns under the ``strict`` grammar (the paper's
four sequences) or the ``flexible`` grammar (any order within the budgets). Parsing takes time linear
in the turn's length (``str.find`` scans and regexes that never retry from later positions), so a
runaway generation of repeated tags or whitespace cannot stall the reward; a non-``str`` turn (even
one whose ``str()`` raises) is an invalid turn, not an exception.

Two separate questions are answered for every turn, and kept apart on purpose:

* ``action``: what the runtime does with the turn (which tool fires, or whether it is a final
  answer). The trigger rule mirrors the paper's rollout and the tokenizer's ``response_template``
  (``mmsearch_r1.protocol.chat_template``): an action fires only when its closed tag is the last thing in the
  turn. A turn can fire a search and still be badly formatted (no ``<reason>``, say).
* ``kind``: ``action`` when the turn is also well formed, else ``"invalid"``. Only well-formed turns
  earn the format reward.

Decisions for the edge cases (each is tested in ``tests/test_protocol.py``):

* End-of-turn tokens (``<|im_end|>``, ``<|endoftext|>``) and surrounding whitespace are ignored.
* Text before ``<reason>`` is invalid (the paper's checker anchors the turn at ``<reason>``); text
  between ``</reason>`` and the action is allowed (the paper's checker uses ``.*`` there).
* Text after the action is invalid, and the action does not fire (it is not last).
* Multi-line text queries are accepted (the tokenizer parser accepts them) and their whitespace is
  collapsed to single spaces. The paper's regex silently ignored them; we choose to accept them
  because a query broken over two lines is still a query.
* Action tags inside ``<reason>`` make the turn invalid (the paper counts tags over the whole turn);
  the action at the end, if any, still fires.
* Repeated tags (two ``<reason>`` or two ``<answer>`` blocks, two actions) are invalid; ``answer``
  holds the last ``<answer>`` block, as the paper's answer extraction does.
* Unclosed tags are invalid and fire nothing. Empty answers and empty queries are invalid; an empty
  query fires nothing (the paper ends the trajectory there).
* ``<search>anything-else</search>`` is not an image search: only ``<search><img></search>`` is.

What it does not: no tokenisation, no chat template (``mmsearch_r1.protocol.chat_template``), no reward
arithmetic (``mmsearch_r1.protocol.rewards``), no tool execution (``mmsearch_r1.agent.env``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

REASON_OPEN, REASON_CLOSE = "<reason>", "</reason>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
IMAGE_SEARCH_TAG = "<search><img></search>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
TEXT_SEARCH_OPEN, TEXT_SEARCH_CLOSE = "<text_search>", "</text_search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")

Kind = Literal["answer", "image_search", "text_search", "invalid"]
Action = Literal["answer", "image_search", "text_search"]
SEARCH_ACTIONS: tuple[str, ...] = ("image_search", "text_search")

# End-of-turn tokens and whitespace at the end of a turn, matched on the *reversed* turn: anchored at
# the start of the reversed text, the regex never retries from later positions (a ``$``-anchored
# search on the turn itself rescans every whitespace run from each of its characters: quadratic).
_END_TOKENS_REVERSED_RE = re.compile(
    r"\s*(?:(?:" + "|".join(re.escape(t[::-1]) for t in END_OF_TURN_TOKENS) + r")\s*)*"
)
_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Turn:
    """One parsed assistant turn."""

    kind: Kind
    """``answer`` / ``image_search`` / ``text_search`` for a well-formed turn, else ``invalid``."""
    reason: str | None = None
    """Text inside the first ``<reason>`` block (stripped), or None."""
    answer: str | None = None
    """Text of the last closed ``<answer>`` block (stripped), even in an invalid turn; else None."""
    query: str | None = None
    """The text-search query (whitespace collapsed), when the turn ends with a text search."""
    why: str | None = None
    """Why the turn is invalid (None for a well-formed turn)."""
    action: Action | None = None
    """What the runtime does with the turn, whatever its format: the tag that closes the turn."""
    text: str = ""
    """The turn as given (end-of-turn tokens included)."""

    @property
    def is_search(self) -> bool:
        """True when this turn fires a search (image or text)."""
        return self.action in SEARCH_ACTIONS


@dataclass(frozen=True)
class Budgets:
    """Limits of one rollout (paper: 3 assistant turns, 1 image search, 2 text searches)."""

    max_turns: int = 3
    """Assistant turns at most; the last one must answer (a search there is never run)."""
    image: int = 1
    """Image searches at most."""
    text: int = 2
    """Text searches at most."""


# The paper's four allowed sequences (strict grammar).
STRICT_SEQUENCES: tuple[tuple[str, ...], ...] = (
    ("answer",),
    ("image_search", "answer"),
    ("text_search", "answer"),
    ("image_search", "text_search", "answer"),
)


def _strip_end(text: str) -> str:
    """``text`` without its trailing end-of-turn tokens and without surrounding whitespace."""
    cut = _END_TOKENS_REVERSED_RE.match(text[::-1]).end()
    return text[: len(text) - cut].strip()


def _first_block(text: str, open_tag: str, close_tag: str) -> tuple[str, int] | None:
    """(inner text, end index) of the first closed ``open_tag…close_tag`` block, or None.

    The leftmost-opening block with the nearest close after it, like a lazy-regex search, but in two
    ``str.find`` scans: when the first opening tag has no close after it, no later one has either.
    """
    start = text.find(open_tag)
    if start == -1:
        return None
    inner = start + len(open_tag)
    close = text.find(close_tag, inner)
    if close == -1:
        return None
    return text[inner:close], close + len(close_tag)


def _last_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """Inner text of the last of the non-overlapping closed blocks read left to right, or None.

    Each character is scanned once: the loop stops at the first opening tag that has no close after
    it (no later block can close either).
    """
    pos, last = 0, None
    while (start := text.find(open_tag, pos)) != -1:
        close = text.find(close_tag, start + len(open_tag))
        if close == -1:
            break
        last, pos = (start + len(open_tag), close), close + len(close_tag)
    return None if last is None else text[last[0] : last[1]]


def _action_at_end(body: str) -> tuple[Action | None, str | None, int]:
    """The action whose closed tag ends ``body``: (action, query, start index of the action)."""
    if body.endswith(IMAGE_SEARCH_TAG):
        return "image_search", None, len(body) - len(IMAGE_SEARCH_TAG)
    if body.endswith(TEXT_SEARCH_CLOSE):
        start = body.rfind(TEXT_SEARCH_OPEN)
        if start == -1:
            return None, None, -1
        query = _WS_RE.sub(" ", body[start + len(TEXT_SEARCH_OPEN) : -len(TEXT_SEARCH_CLOSE)]).strip()
        return ("text_search" if query else None), query, start
    if body.endswith(ANSWER_CLOSE) and ANSWER_OPEN in body:
        return "answer", None, body.rfind(ANSWER_OPEN)
    return None, None, -1


def _count(text: str, tag: str) -> int:
    return text.count(tag)


def parse_turn(text: str) -> Turn:
    """Parse one assistant turn. Never raises; malformed text gives ``kind == "invalid"``."""
    if not isinstance(text, str):
        try:
            shown = str(text)
        except Exception:  # noqa: BLE001 - any object may reach here; its str() must not break parsing
            shown = f"<unprintable {type(text).__name__}>"
        return Turn(kind="invalid", why=f"turn is {type(text).__name__}, not str", text=shown)
    body = _strip_end(text)
    last_answer = _last_block(body, ANSWER_OPEN, ANSWER_CLOSE)
    answer = last_answer.strip() if last_answer is not None else None
    reason_block = _first_block(body, REASON_OPEN, REASON_CLOSE)
    reason = reason_block[0].strip() if reason_block else None
    action, query, action_start = _action_at_end(body)

    def invalid(why: str) -> Turn:
        return Turn("invalid", reason, answer, query, why, action, text)

    if not body:
        return invalid("empty turn")
    # Problems that make the whole turn unreadable come first.
    if _count(body, REASON_OPEN) != _count(body, REASON_CLOSE):
        return invalid("unclosed <reason> tag")
    if _count(body, ANSWER_OPEN) != _count(body, ANSWER_CLOSE):
        return invalid("unclosed <answer> tag")
    if _count(body, TEXT_SEARCH_OPEN) != _count(body, TEXT_SEARCH_CLOSE):
        return invalid("unclosed <text_search> tag")
    if _count(body, SEARCH_OPEN) != _count(body, SEARCH_CLOSE):
        return invalid("unclosed <search> tag")
    if action is None:
        if body.endswith(TEXT_SEARCH_CLOSE):
            return invalid("empty text-search query")
        if body.endswith(SEARCH_CLOSE):
            return invalid("malformed image search: write exactly <search><img></search>")
        if any(tag in body for tag in (ANSWER_CLOSE, IMAGE_SEARCH_TAG, TEXT_SEARCH_CLOSE)):
            return invalid("text after the action: the action must end the turn")
        return invalid("no action: end the turn with <answer>, <search><img></search> or <text_search>")
    if reason_block is None:
        return invalid("missing <reason>…</reason> before the action")
    if not body.startswith(REASON_OPEN):
        return invalid("text before <reason>: the turn must start with <reason>")
    if _count(body, REASON_OPEN) > 1:
        return invalid("more than one <reason> block")
    inside, reason_end = reason_block
    if reason_end > action_start:
        return invalid("the action must come after </reason>")
    if any(tag in inside for tag in (ANSWER_OPEN, SEARCH_OPEN, TEXT_SEARCH_OPEN, INFO_OPEN)):
        return invalid("action tag inside <reason>")
    n_actions = _count(body, ANSWER_OPEN) + _count(body, IMAGE_SEARCH_TAG) + _count(body, TEXT_SEARCH_OPEN)
    if n_actions != 1 or _count(body, SEARCH_OPEN) != _count(body, IMAGE_SEARCH_TAG):
        return invalid("more than one action in the turn")
    if action == "answer" and not answer:
        return invalid("empty answer")
    return Turn(action, reason, answer, query, None, action, text)


def render_turn(kind: str, reason: str, *, answer: str | None = None, query: str | None = None) -> str:
    """The canonical text of a well-formed assistant turn (no end-of-turn token).

    >>> render_turn("text_search", "I need the capital.", query="capital of Peru")
    '<reason>I need the capital.</reason><text_search>capital of Peru</text_search>'
    """
    head = f"{REASON_OPEN}{reason}{REASON_CLOSE}"
    if kind == "answer":
        if not answer:
            raise ValueError("render_turn('answer', ...) needs a non-empty answer=")
        return f"{head}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
    if kind == "image_search":
        return f"{head}{IMAGE_SEARCH_TAG}"
    if kind == "text_search":
        if not query:
            raise ValueError("render_turn('text_search', ...) needs a non-empty query=")
        return f"{head}{TEXT_SEARCH_OPEN}{query}{TEXT_SEARCH_CLOSE}"
    raise ValueError(f"unknown turn kind {kind!r}: use 'answer', 'image_search' or 'text_search'")


def as_turns(turns: Iterable[Turn | str]) -> list[Turn]:
    """Parse the strings of a list of turns (``Turn`` objects pass through)."""
    return [t if isinstance(t, Turn) else parse_turn(t) for t in turns]


def count_searches(turns: Sequence[Turn | str]) -> dict[str, int]:
    """Searches that ran: the non-final turns whose action is a search, by type.

    The final turn's search (if any) is never executed: the paper's rollout stops at its last round.
    """
    parsed = as_turns(turns)
    counts = {"image_search": 0, "text_search": 0}
    for turn in parsed[:-1]:
        if turn.action in counts:
            counts[turn.action] += 1
    return counts


def validate_trajectory(
    turns: Sequence[Turn | str], grammar: str = "strict", budgets: Budgets | None = None
) -> tuple[bool, str | None]:
    """Is this sequence of assistant turns well formed? Returns ``(ok, why)``.

    ``strict``: every turn well formed and the kinds one of the paper's four sequences (answer;
    image → answer; text → answer; image → text → answer). ``flexible``: every turn well formed,
    searches in any order within the budgets, and exactly one answer, in the last turn.
    """
    if grammar not in ("strict", "flexible"):
        raise ValueError(f"unknown grammar {grammar!r}: use 'strict' or 'flexible'")
    budgets = budgets or Budgets()
    parsed = as_turns(turns)
    if not parsed:
        return False, "no assistant turn"
    for i, turn in enumerate(parsed):
        if turn.kind == "invalid":
            return False, f"turn {i + 1}: {turn.why}"
    kinds = tuple(t.kind for t in parsed)
    if len(kinds) > budgets.max_turns:
        return False, f"{len(kinds)} turns, more than the budget of {budgets.max_turns}"
    if kinds[-1] != "answer":
        return False, "the last turn does not answer"
    if "answer" in kinds[:-1]:
        return False, "an answer before the last turn"
    if grammar == "strict" and kinds not in STRICT_SEQUENCES:
        return False, f"sequence {' → '.join(kinds)} is not one of the paper's four"
    # Budgets apply under both grammars (strict: e.g. Budgets(image=0) forbids image → answer).
    n_img, n_txt = kinds.count("image_search"), kinds.count("text_search")
    if n_img > budgets.image:
        return False, f"{n_img} image searches, budget {budgets.image}"
    if n_txt > budgets.text:
        return False, f"{n_txt} text searches, budget {budgets.text}"
    return True, None
