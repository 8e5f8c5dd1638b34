"""The paper's reward: answer accuracy, a format bonus, and a penalty for searching.

What it does::

    reward = (1 - f) * acc * penalty_factor + f * format

* ``acc``: the last ``<answer>`` of the final assistant turn matches the gold answer or an alias
  after SQuAD-style normalisation (exact match by default; SubEM or any callable as options);
* ``format``: 1 when the whole trajectory is well formed under the chosen grammar
  (``mmsearch_r1.protocol.tags.validate_trajectory``), else 0;
* ``penalty_factor``: ``1 - p`` when the answer is correct and at least one search ran
  (``penalty_mode="once"``, the paper's default), ``(1 - p) ** n`` for ``n`` searches
  (``"per_call"``); with ``tool_costs`` each tool's penalty is scaled by its weight. Wrong answers
  are never penalised (they already score 0 accuracy).

With the defaults (``p = f = 0.1``) the reward takes exactly the paper's six values:
1.0 (correct, no search, good format), 0.91 (correct with search), 0.9 (correct, no search, bad
format), 0.81 (correct with search, bad format), 0.1 (wrong, good format), 0.0 (wrong, bad format).

`score_record` is the project's one scorer of a finished episode (evaluation, the warm start's validation,
curation and the miniature all read its fields): ``em`` / ``subem`` of the final answer, the strict-format
check, and ``searched`` (at least one search was executed by the environment; a refused search or one
cut by the turn limit does not count).

What it does not: no LLM judge call (pass a judge as ``match=`` callable; see the evaluation
module), no TRL plumbing (``mmsearch_r1.rl.rewards`` adapts these functions to TRL's contract).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from mmsearch_r1.protocol.tags import Budgets, Turn, as_turns, count_searches, validate_trajectory

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)

Matcher = Callable[[str, Sequence[str]], bool]


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation, drop a/an/the, collapse whitespace."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    if isinstance(golds, str):
        golds = [golds]
    if golds is None or not isinstance(golds, Iterable):
        raise TypeError(f"golds must be a string or a list of strings, got {type(golds).__name__}")
    return [g for g in golds if isinstance(g, str) and normalize_answer(g)]


def golds_of(answer: str | None, aliases: Iterable[str] | str | None = None) -> list[str]:
    """The gold answer followed by its aliases, as one de-duplicated list (the row schema's two fields).

    ``aliases`` may be a list, a single string, or None; non-strings and empty strings are dropped.
    """
    if isinstance(aliases, str):
        aliases = [aliases]
    items = [answer, *(aliases or [])]
    return list(dict.fromkeys(a for a in items if isinstance(a, str) and a.strip()))


def exact_match(pred: str | None, golds: str | Iterable[str]) -> bool:
    """True when the normalised prediction equals some normalised gold (empty golds never match)."""
    if not pred:
        return False
    p = normalize_answer(pred)
    return bool(p) and any(p == normalize_answer(g) for g in _golds(golds))


def sub_exact_match(pred: str | None, golds: str | Iterable[str]) -> bool:
    """True when some normalised gold occurs in the normalised prediction (SubEM)."""
    if not pred:
        return False
    p = f" {normalize_answer(pred)} "
    return any(f" {normalize_answer(g)} " in p for g in _golds(golds))


MATCHERS: dict[str, Matcher] = {"exact": exact_match, "subem": sub_exact_match}


@dataclass(frozen=True)
class RewardParts:
    """The reward and the parts it is made of, for logging."""

    reward: float
    accuracy: float
    format: float
    searches: int
    image_searches: int
    text_searches: int
    penalty_factor: float

    def as_dict(self) -> dict:
        return asdict(self)


def penalty_factor(
    correct: bool,
    searches: dict[str, int],
    *,
    penalty: float = 0.1,
    penalty_mode: str = "once",
    tool_costs: dict[str, float] | None = None,
) -> float:
    """The multiplier on a correct answer's accuracy for the searches that ran (1.0 if none)."""
    if penalty_mode not in ("once", "per_call"):
        raise ValueError(f"unknown penalty_mode {penalty_mode!r}: use 'once' or 'per_call'")
    if not 0.0 <= penalty <= 1.0:
        raise ValueError(f"penalty must be in [0, 1], got {penalty}")
    if not correct or sum(searches.values()) == 0:
        return 1.0
    costs = {"image_search": 1.0, "text_search": 1.0, **(tool_costs or {})}
    unknown = set(costs) - {"image_search", "text_search"}
    if unknown:
        raise ValueError(f"tool_costs has unknown tools {sorted(unknown)}: use image_search, text_search")
    if any(c < 0 for c in costs.values()) or penalty * max(costs.values()) > 1.0:
        raise ValueError(f"tool_costs must be >= 0 and penalty * cost <= 1, got {costs} with p={penalty}")
    if penalty_mode == "once":
        return 1.0 - penalty * max(costs[t] for t, n in searches.items() if n > 0)
    factor = 1.0
    for tool, n in searches.items():
        factor *= (1.0 - penalty * costs[tool]) ** n
    return factor


def reward_parts(
    turns: Sequence[str | Turn],
    golds: str | Iterable[str],
    *,
    penalty: float = 0.1,
    format_weight: float = 0.1,
    penalty_mode: str = "once",
    grammar: str = "strict",
    tool_costs: dict[str, float] | None = None,
    match: str | Matcher = "exact",
    budgets: Budgets | None = None,
    searches: dict[str, int] | None = None,
) -> RewardParts:
    """Compute the reward of one trajectory and return it with its parts.

    ``turns`` are the assistant turns' texts in order. The searches the penalty counts are, by
    default, the non-final turns that fire a search (``tags.count_searches``). A caller that
    ran the searches passes ``searches={"image_search": n, "text_search": m}``: the searches the
    environment actually executed (engine called, whether it answered or failed; refused calls are
    not searches). Training and evaluation both pass their environment's counts.
    """
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    matcher = MATCHERS.get(match) if isinstance(match, str) else match
    if matcher is None:
        raise ValueError(f"unknown match {match!r}: use one of {sorted(MATCHERS)} or a callable")
    parsed = as_turns(turns)
    ok, _ = validate_trajectory(parsed, grammar=grammar, budgets=budgets)
    final_answer = parsed[-1].answer if parsed and parsed[-1].action == "answer" else None
    correct = bool(matcher(final_answer, list(_golds(golds)))) if final_answer else False
    if searches is None:
        searches = count_searches(parsed)
    else:
        unknown = set(searches) - {"image_search", "text_search"}
        if unknown or any(int(v) < 0 for v in searches.values()):
            raise ValueError(f"searches must map image_search/text_search to counts >= 0, got {searches}")
        searches = {
            "image_search": int(searches.get("image_search", 0)),
            "text_search": int(searches.get("text_search", 0)),
        }
    factor = penalty_factor(
        correct, searches, penalty=penalty, penalty_mode=penalty_mode, tool_costs=tool_costs
    )
    acc = 1.0 if correct else 0.0
    fmt = 1.0 if ok else 0.0
    reward = round((1.0 - format_weight) * acc * factor + format_weight * fmt, 10)
    return RewardParts(
        reward=reward,
        accuracy=acc,
        format=fmt,
        searches=sum(searches.values()),
        image_searches=searches["image_search"],
        text_searches=searches["text_search"],
        penalty_factor=factor,
    )


def mmsearch_reward(
    turns: Sequence[str | Turn],
    golds: str | Iterable[str],
    *,
    penalty: float = 0.1,
    format_weight: float = 0.1,
    penalty_mode: str = "once",
    grammar: str = "strict",
    tool_costs: dict[str, float] | None = None,
    match: str | Matcher = "exact",
    budgets: Budgets | None = None,
    searches: dict[str, int] | None = None,
) -> float:
    """The paper's reward of one trajectory (see the module docstring)."""
    return reward_parts(
        turns,
        golds,
        penalty=penalty,
        format_weight=format_weight,
        penalty_mode=penalty_mode,
        grammar=grammar,
        tool_costs=tool_costs,
        match=match,
        budgets=budgets,
        searches=searches,
    ).reward


def score_record(rec: dict) -> dict:
    """Score one finished episode (in place; returns it): ``em``, ``subem`` (the final ``prediction``
    against ``answer`` + ``aliases``), ``format_ok`` / ``format_why`` (strict grammar over every assistant
    turn's text in ``turns``), ``model_turns`` (turns the policy wrote, not scripted ones) and ``searched``
    (``searches``, the environment's count of executed searches, is above 0)."""
    golds = golds_of(rec.get("answer"), rec.get("aliases"))
    pred = rec.get("prediction")
    rec["em"] = bool(exact_match(pred, golds))
    rec["subem"] = bool(sub_exact_match(pred, golds))
    turns = [t for t in rec.get("turns") or [] if isinstance(t, dict)]
    ok, why = validate_trajectory([t.get("text", "") for t in turns] or [""], grammar="strict")
    rec["format_ok"], rec["format_why"] = ok, why
    rec["model_turns"] = sum(not t.get("scripted") for t in turns)
    rec["searched"] = rec.get("searches", 0) > 0
    return rec
