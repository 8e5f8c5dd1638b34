"""Reward functions for TRL's ``GRPOTrainer`` built on `mmsearch_r1.protocol.rewards` and `SearchEnv` counters.

What it does: `make_reward_func(processing_class, config)` returns ``reward(prompts, completions,
completion_ids, answer, aliases, environments, log_metric, **kwargs) -> list[float]`` with TRL's reward
contract. For each rollout it
- recovers the assistant turns' exact texts by decoding ``completion_ids`` (special tokens kept) and
  cutting out the user-side turns TRL inserted (`split_turns`); without ids it rebuilds them from the
  conversational ``completions`` (`message_to_tag_text`);
- reads the gold answer and its aliases from the row's ``answer`` and ``aliases`` columns
  (`mmsearch_r1.protocol.rewards.golds_of`);
- scores it with `mmsearch_r1.protocol.rewards.reward_parts` (accuracy, strict/flexible format, penalty).
  The searches the penalty counts (``searches_from="env"``, the default): the searches the environment
  actually executed, i.e. the engine was called, whether it answered or failed (``SearchEnv``'s
  ``image_calls``/``text_calls``, including searches whose result TRL later dropped for length);
  calls refused by a budget or the grammar are not searches. When no environment is available (or
  ``searches_from="text"``): the non-final turns of the text that fire a search
  (``protocol.tags.count_searches``);
- logs the batch means of the parts through ``log_metric`` (``mmsearch/accuracy``, ``mmsearch/format``,
  ``mmsearch/search_ratio``, ``mmsearch/image_calls``, ``mmsearch/text_calls``, ``mmsearch/tool_failures``,
  ``mmsearch/tool_refused``, ``mmsearch/cut_after_search``, ...), and warns once when a rollout was cut
  after a search because TRL dropped its result for length (`cut_after_search`).

What it does not: no reward arithmetic of its own (`mmsearch_r1.protocol.rewards` owns the formula), no LLM judge, no
generation.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mmsearch_r1.protocol.chat_template import IMAGE_TOOL, TAG_RESPONSE_TEMPLATE, TEXT_ARG, TEXT_TOOL
from mmsearch_r1.protocol.rewards import MATCHERS, golds_of, reward_parts
from mmsearch_r1.protocol.tags import (
    IMAGE_SEARCH_TAG,
    REASON_CLOSE,
    REASON_OPEN,
    TEXT_SEARCH_CLOSE,
    TEXT_SEARCH_OPEN,
    Budgets,
    parse_turn,
)

_USER_SIDE_RE = re.compile(r"<\|im_start\|>user\n.*?<\|im_end\|>\n<\|im_start\|>assistant\n", re.DOTALL)
_TRAILING_PAD_RE = re.compile(r"(?:<\|endoftext\|>)+$")


@dataclass
class RewardConfig:
    """The paper's reward and where its inputs come from."""

    penalty: float = 0.1
    """Search penalty p: a correct answer after any search earns (1 - p) of the accuracy part."""
    format_weight: float = 0.1
    """f in reward = (1 - f) * acc * penalty_factor + f * format."""
    penalty_mode: str = "once"
    """"once" (paper) or "per_call" ((1 - p) per search)."""
    grammar: str = "strict"
    """Format reward grammar: "strict" (the paper's four sequences) or "flexible"."""
    tool_costs: dict[str, float] | None = None
    """Optional per-tool cost multipliers of the penalty ({"image_search": 2.0, ...})."""
    match: str = "exact"
    """Answer matcher: "exact" (EM after normalisation) or "subem"."""
    budgets: Budgets = field(default_factory=Budgets)
    """Turn and search budgets used by the flexible grammar check."""
    searches_from: str = "env"
    """Count searches for the penalty from the environment counters ("env") or the turns' text ("text")."""
    turns_from: str = "auto"
    """Read turns from the decoded completion ids ("ids": exact, tag protocol) or rebuild them from the
    parsed messages ("messages": needed for the native JSON protocol, whose tool calls become tags);
    "auto" picks "ids" when the processor carries the tag protocol's parser, else "messages"."""

    def __post_init__(self):
        choices = {
            "turns_from": ("auto", "ids", "messages"),
            "searches_from": ("env", "text"),
            "penalty_mode": ("once", "per_call"),
            "grammar": ("strict", "flexible"),
            "match": tuple(sorted(MATCHERS)),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"RewardConfig.{name} must be one of {allowed}, got {value!r}.")
        for name in ("penalty", "format_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"RewardConfig.{name} must be a number in [0, 1], got {value!r}.")
        costs = self.tool_costs or {}
        unknown = set(costs) - {"image_search", "text_search"}
        if unknown or any(c < 0 or self.penalty * c > 1.0 for c in costs.values()):
            raise ValueError(
                f"RewardConfig.tool_costs must map image_search/text_search to costs >= 0 with "
                f"penalty * cost <= 1, got {self.tool_costs!r} with penalty={self.penalty}."
            )


def split_turns(decoded: str) -> list[str]:
    """Cut a decoded multi-turn completion (special tokens kept) into its assistant turns' texts.

    TRL builds a completion as ``turn <|im_end|>`` + ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``
    + ``turn`` ...; the user-side parts are removed. Tool results cannot contain ``<|im_end|>`` because
    `SearchEnv` strips special tokens from engine text.
    """
    text = _TRAILING_PAD_RE.sub("", decoded)
    return _USER_SIDE_RE.split(text)


def message_to_tag_text(message: dict) -> str:
    """Rebuild an assistant turn's tag text from a parsed message (reasoning, content, tool calls).

    Approximate (whitespace around tags is lost); used only when completion ids are not available.
    """
    parts = []
    if message.get("reasoning_content") is not None:
        parts.append(f"{REASON_OPEN}{message['reasoning_content']}{REASON_CLOSE}")
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    parts.append(content)
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        args = fn.get("arguments") or {}
        if fn.get("name") in (IMAGE_TOOL, "image_search"):
            parts.append(IMAGE_SEARCH_TAG)
        elif fn.get("name") == TEXT_TOOL:
            query = args.get(TEXT_ARG, args.get("query", "")) if isinstance(args, dict) else str(args)
            parts.append(f"{TEXT_SEARCH_OPEN}{query}{TEXT_SEARCH_CLOSE}")
    return "".join(parts)


def completion_turns(completion, completion_ids: Sequence[int] | None = None, tokenizer=None) -> list[str]:
    """The assistant turns' texts of one rollout, from its ids (exact) or its messages (approximate)."""
    if completion_ids is not None and tokenizer is not None:
        return split_turns(tokenizer.decode(list(completion_ids), skip_special_tokens=False))
    if isinstance(completion, str):
        return [completion]
    return [message_to_tag_text(m) for m in completion if m.get("role") == "assistant"]


def cut_after_search(turns: Sequence[str], budgets: Budgets) -> bool:
    """True when a rollout stopped on a search turn with turns left in its budget.

    A search in the last allowed turn is never run (the policy's own mistake); one earlier that still
    ends the rollout means the loop stopped there: TRL drops a tool result that would push model + tool
    tokens past ``max_completion_length`` and ends the sample silently (its ``clipped_ratio`` does not
    count it, because the turn itself ended with an end-of-turn token).
    """
    return bool(turns) and len(turns) < budgets.max_turns and parse_turn(turns[-1]).is_search


def make_reward_func(processing_class=None, config: RewardConfig | None = None) -> Callable[..., list[float]]:
    """The MMSearch-R1 reward as a TRL reward function (named ``mmsearch`` in TRL's logs).

    ``processing_class`` (processor or tokenizer) decodes ``completion_ids`` exactly; without it the turns
    are rebuilt from the conversational completions. The dataset must keep the ``answer`` and
    ``aliases`` columns; ``environments`` (TRL passes them with ``environment_factory``) provide the
    search counters.
    """
    config = config or RewardConfig()
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    use_ids = config.turns_from == "ids" or (
        config.turns_from == "auto" and getattr(tokenizer, "response_template", None) == TAG_RESPONSE_TEMPLATE
    )

    def mmsearch(
        prompts, completions, completion_ids=None, answer=None, aliases=None, **kwargs
    ) -> list[float]:
        if answer is None:
            raise ValueError(
                "The mmsearch reward needs the dataset's 'answer' column (and 'aliases'); keep them in the "
                "training dataset and set GRPOConfig(remove_unused_columns=False)."
            )
        environments = kwargs.get("environments")
        log_metric = kwargs.get("log_metric")
        n = len(completions)
        aliases = aliases if aliases is not None else [None] * n
        rewards, rows = [], []
        for i in range(n):
            ids = completion_ids[i] if completion_ids is not None and use_ids else None
            turns = completion_turns(completions[i], ids, tokenizer)
            env = environments[i] if environments else None
            counters = env.counters if env is not None and hasattr(env, "counters") else None
            searches = None
            if config.searches_from == "env" and counters is not None:
                searches = {"image_search": counters["image_calls"], "text_search": counters["text_calls"]}
            parts = reward_parts(
                turns,
                golds_of(answer[i], aliases[i]),
                penalty=config.penalty,
                format_weight=config.format_weight,
                penalty_mode=config.penalty_mode,
                grammar=config.grammar,
                tool_costs=config.tool_costs,
                match=config.match,
                budgets=config.budgets,
                searches=searches,
            )
            rewards.append(float(parts.reward))
            rows.append(
                {
                    "accuracy": parts.accuracy,
                    "format": parts.format,
                    "penalty_factor": parts.penalty_factor,
                    "searched": float(parts.searches > 0),
                    "image_calls": parts.image_searches,
                    "text_calls": parts.text_searches,
                    "turns": len(turns),
                    "tool_failures": counters["failures"] if counters else 0,
                    "tool_refused": counters["refused"] if counters else 0,
                    "cut_after_search": float(cut_after_search(turns, config.budgets)),
                }
            )
        if log_metric is not None and rows:
            for key, name in (
                ("accuracy", "accuracy"),
                ("format", "format"),
                ("penalty_factor", "penalty_factor"),
                ("searched", "search_ratio"),
                ("image_calls", "image_calls"),
                ("text_calls", "text_calls"),
                ("turns", "turns"),
                ("tool_failures", "tool_failures"),
                ("tool_refused", "tool_refused"),
                ("cut_after_search", "cut_after_search"),
            ):
                log_metric(f"mmsearch/{name}", sum(r[key] for r in rows) / len(rows))
        cut = sum(r["cut_after_search"] for r in rows)
        if cut and not mmsearch.warned_cut:
            mmsearch.warned_cut = True
            warnings.warn(
                f"{cut:.0f} of {len(rows)} rollouts ended right after a search, before the turn budget: "
                "TRL dropped the search result because model + tool tokens would pass max_completion_length. "
                "They score as format failures, so GRPO learns to avoid that search. Raise "
                "max_completion_length above the longest full trajectory (metrics: cut_after_search).",
                stacklevel=2,
            )
        mmsearch.last_parts = rows  # the latest batch's parts, for tests and notebooks
        return rewards

    mmsearch.last_parts = []
    mmsearch.warned_cut = False
    return mmsearch
