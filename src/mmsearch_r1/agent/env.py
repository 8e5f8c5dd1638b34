"""`SearchEnv`: one rollout's search tools for TRL's ``GRPOTrainer(environment_factory=...)``.

What it does: TRL makes one instance per rollout (pooled, then ``reset(**row)`` with the whole dataset
row), and exposes every public method except ``reset`` as a tool. The tools are named after the tag
protocol (`mmsearch_r1.protocol.chat_template`): ``search()`` runs an image search on the row's question image,
``text_search(text)`` a text search. Each call:
- is checked against the budgets (1 image, 2 text searches, 3 assistant turns by default) and, under the
  strict grammar with ``enforce_grammar``, against the paper's four sequences (so an image search only
  in the first turn, one text search); a refused call returns an error observation;
- runs the configured engine (`mmsearch_r1.tools.types` protocols); an engine failure of any kind
  becomes an error observation too: a tool here never raises, so TRL never counts a crash;
- returns the observation built by `mmsearch_r1.protocol.prompts` (thumbnails as real image blocks, fitted with
  `fit_image` to the policy's `ImageSizes`, ``EnvConfig.sizes``; the original question and the next
  allowed actions after ``</information>``), with any chat special token (``<|...|>``) removed from
  engine text so a web page cannot forge a turn boundary;
- is counted: executed searches by type, engine failures, refusals, queries, and a call log.
Turns are counted as tool calls: TRL gives a tool no turn boundary, so the parsers of both protocols
(`mmsearch_r1.protocol.chat_template`) fire at most one tool call per assistant turn, the one that ends it; a
second call written in the same turn is never executed.
The counters are read by the reward functions (`mmsearch_r1.rl.rewards`) through TRL's
``environments`` argument; the same class serves the evaluation rollout.

What it does not: no generation, no parsing, no reward, no caching or retries (engines and the cache
wrapper do that), no prompt wording.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mmsearch_r1.policy.processor import ImageSizes, fit_image, image_sizes_of
from mmsearch_r1.protocol import prompts
from mmsearch_r1.protocol.tags import STRICT_SEQUENCES, Budgets
from mmsearch_r1.tools.types import Engines, ImageHit, TextHit

_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass
class EnvConfig:
    """How a rollout may search."""

    budgets: Budgets = field(default_factory=Budgets)
    """Assistant turns and searches per type allowed in one rollout (paper: 3 turns, 1 image, 2 text)."""
    grammar: str = "strict"
    """"strict" (the paper's four sequences) or "flexible" (any order within the budgets)."""
    enforce_grammar: bool = True
    """Under "strict", refuse calls that cannot lead to one of the four sequences (image search only in
    the first turn, at most one text search). The paper's rollout only enforced per-tool limits and let
    the format reward punish the rest; set False for that behaviour."""
    image_k: int = 5
    """Image-search hits shown to the policy (paper: 5)."""
    text_k: int = 5
    """Text-search pages shown to the policy (paper: 5)."""
    sizes: ImageSizes = field(default_factory=ImageSizes)
    """The policy's image budgets: thumbnails are fitted to [min_pixels, thumbnail_max_pixels] before the
    processor sees them. Pass the policy's own: ``sizes=image_sizes_of(processor)`` (one source of truth)."""
    max_query_chars: int = 300
    """Longer text-search queries are refused (a runaway generation is not a query)."""

    @classmethod
    def from_settings(cls, cfg) -> EnvConfig:
        """The search settings of a stage's config: an `EnvConfig` as it is, or any config with the flat
        fields ``max_turns``, ``image_budget``, ``text_budget``, ``grammar``, ``image_k``, ``text_k``
        (`TrainConfig`, `EvalConfig`), so that every stage searches under the same rules."""
        if isinstance(cfg, EnvConfig):
            return cfg
        budgets = Budgets(max_turns=cfg.max_turns, image=cfg.image_budget, text=cfg.text_budget)
        return cls(budgets=budgets, grammar=cfg.grammar, image_k=cfg.image_k, text_k=cfg.text_k)

    def __post_init__(self):
        if self.grammar not in ("strict", "flexible"):
            raise ValueError(f"EnvConfig.grammar must be 'strict' or 'flexible', got {self.grammar!r}.")
        if not isinstance(self.sizes, ImageSizes):
            raise TypeError(
                f"EnvConfig.sizes must be an ImageSizes, got {type(self.sizes).__name__}; pass "
                "image_sizes_of(processor)."
            )


def _clean(text: str) -> str:
    return _SPECIAL_TOKEN_RE.sub("", text)


def _is_strict_prefix(kinds: tuple[str, ...]) -> bool:
    return any(seq[: len(kinds)] == kinds for seq in STRICT_SEQUENCES)


class SearchEnv:
    """One rollout's environment. Public methods other than ``reset`` are the policy's tools.

    Counters (read them after the rollout): ``image_calls`` / ``text_calls`` (searches that reached the
    engine, failed or not), ``failures`` (engine errors), ``refused`` (calls refused by budget or
    grammar), ``queries`` (text queries run), ``log`` (one dict per tool call, in order), and the
    ``counters`` property that gathers them. The row is kept as ``row`` (``image``, ``question``,
    ``answer``, ``aliases``, ...).
    """

    def __init__(self, engines: Engines | None = None, config: EnvConfig | None = None):
        self.engines = engines or Engines()
        self.config = config or EnvConfig()
        self._clear()

    def _clear(self) -> None:
        self.row: dict[str, Any] = {}
        self.image: Image.Image | None = None
        self.question: str = ""
        self.image_calls = 0
        self.text_calls = 0
        self.failures = 0
        self.refused = 0
        self.queries: list[str] = []
        self.log: list[dict] = []
        self.kinds: list[str] = []

    def reset(self, **row) -> None:
        """Start a rollout on ``row`` (a dataset row: ``image``, ``question``, ``answer``, ``aliases``, ...)."""
        self._clear()
        self.row = dict(row)
        self.image = row.get("image")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                "SearchEnv.reset needs the row's 'question' column (a non-empty string); keep it in the "
                "dataset next to 'prompt' (remove_unused_columns=False)."
            )
        self.question = question
        return None

    @property
    def counters(self) -> dict:
        """The rollout's counters as a plain dict (for rewards and logs)."""
        return {
            "image_calls": self.image_calls,
            "text_calls": self.text_calls,
            "searches": self.image_calls + self.text_calls,
            "failures": self.failures,
            "refused": self.refused,
            "queries": list(self.queries),
        }

    # -- rules -------------------------------------------------------------------------------------

    def _allowed_next(self) -> list[str]:
        """Actions the policy may take in its next turn (for the observation's last line)."""
        b, kinds = self.config.budgets, tuple(self.kinds)
        if len(kinds) + 1 >= b.max_turns:
            return ["answer"]
        allowed = ["answer"]
        for tool, left in (
            ("text_search", b.text - self.text_calls),
            ("image_search", b.image - self.image_calls),
        ):
            if left > 0 and self._grammar_allows(kinds + (tool,)):
                allowed.append(tool)
        return allowed

    def _grammar_allows(self, kinds: tuple[str, ...]) -> bool:
        if self.config.grammar != "strict" or not self.config.enforce_grammar:
            return True
        return _is_strict_prefix(kinds)

    def _refusal(self, tool: str) -> str | None:
        b, kinds = self.config.budgets, tuple(self.kinds)
        if len(kinds) + 1 >= b.max_turns:
            return f"no search is allowed in the last of {b.max_turns} turns"
        if tool == "image_search" and self.image_calls >= b.image:
            return f"the image search budget ({b.image}) is used up"
        if tool == "text_search" and self.text_calls >= b.text:
            return f"the text search budget ({b.text}) is used up"
        if not self._grammar_allows(kinds + (tool,)):
            if tool == "image_search":
                return "an image search is only allowed as the first action"
            return "no further text search is allowed here"
        return None

    def _fail(self, tool: str, reason: str, status: str, **extra) -> str:
        self.log.append({"tool": tool, "status": status, "reason": reason, **extra})
        return _clean(prompts.failed_search_text(tool, reason, self.question, allowed=self._allowed_next()))

    # -- tools ---------------------------------------------------------------------------------------

    def search(self) -> list | str:
        """Search the web with the question image and see the top matching pages (thumbnail and title).

        Use it when you cannot tell what the image shows. It takes no arguments: the question image is
        searched.

        Returns:
            The matching pages, each as its thumbnail image and page title.
        """
        tool = "image_search"
        refusal = self._refusal(tool)
        if refusal:
            self.refused += 1
            self.kinds.append(tool)
            return self._fail(tool, refusal, "refused")
        self.image_calls += 1
        self.kinds.append(tool)
        engine = self.engines.image
        if engine is None:
            self.failures += 1
            return self._fail(tool, "no image search engine is configured", "failed")
        if self.image is None:
            self.failures += 1
            return self._fail(tool, "this question has no image to search with", "failed")
        try:
            hits: list[ImageHit] = list(engine.search_image(self.image, k=self.config.image_k))[
                : self.config.image_k
            ]
        except Exception as err:  # noqa: BLE001 - any engine failure becomes an observation
            self.failures += 1
            return self._fail(tool, _error_text(err), "failed")
        shown = [
            ImageHit(
                title=_clean(h.title),
                url=h.url,
                thumbnail=None
                if h.thumbnail is None
                else fit_image(
                    h.thumbnail, self.config.sizes.thumbnail_max_pixels, self.config.sizes.min_pixels
                ),
                snippet=h.snippet,
                score=h.score,
            )
            for h in hits
        ]
        self.log.append({"tool": tool, "status": "ok", "hits": [h.title for h in shown]})
        blocks = prompts.image_results_blocks(shown, self.question, allowed=self._allowed_next())
        return [{**b, "text": _clean(b["text"])} if b.get("type") == "text" else b for b in blocks]

    def text_search(self, text: str) -> str:
        """Search the web for a short text query and read summaries of the top pages.

        Use it to look up a fact once you know what the image shows.

        Args:
            text: The query, a few words naming the entity and the fact you need.

        Returns:
            The top pages' titles with short summaries.
        """
        tool = "text_search"
        query = " ".join(str(text).split())
        refusal = self._refusal(tool)
        if refusal is None and not query:
            refusal = "the query is empty"
        if refusal is None and len(query) > self.config.max_query_chars:
            refusal = f"the query is longer than {self.config.max_query_chars} characters"
        if refusal:
            self.refused += 1
            self.kinds.append(tool)
            return self._fail(tool, refusal, "refused", query=query)
        self.text_calls += 1
        self.kinds.append(tool)
        self.queries.append(query)
        engine = self.engines.text
        if engine is None:
            self.failures += 1
            return self._fail(tool, "no text search engine is configured", "failed", query=query)
        try:
            hits: list[TextHit] = list(engine.search_text(query, k=self.config.text_k))[: self.config.text_k]
        except Exception as err:  # noqa: BLE001 - any engine failure becomes an observation
            self.failures += 1
            return self._fail(tool, _error_text(err), "failed", query=query)
        self.log.append({"tool": tool, "status": "ok", "query": query, "hits": [h.title for h in hits]})
        return _clean(prompts.text_results_text(hits, query, self.question, allowed=self._allowed_next()))


def _error_text(err: Exception) -> str:
    message = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def policy_env_factory(engines: Engines, settings, processor) -> Callable[[], SearchEnv]:
    """The environments of a stage: the search settings of ``settings`` (`EnvConfig.from_settings`) with
    thumbnails fitted to ``processor``'s own image bounds. Training, evaluation, the warm start's
    validation, curation and the miniature all build their environments here."""
    return make_env_factory(
        engines, config=EnvConfig.from_settings(settings), sizes=image_sizes_of(processor)
    )


def make_env_factory(
    engines: Engines | None = None,
    budgets: Budgets | None = None,
    *,
    config: EnvConfig | None = None,
    sizes: ImageSizes | None = None,
    **overrides,
) -> Callable[[], SearchEnv]:
    """A zero-argument callable for ``GRPOTrainer(environment_factory=...)`` building `SearchEnv` instances.

    ``budgets``, ``sizes`` and keyword ``overrides`` (any `EnvConfig` field) replace those of ``config``.
    A stage with a policy uses `policy_env_factory`, which fits thumbnails to the policy's image bounds.
    """
    config = config or EnvConfig()
    changes = dict(overrides)
    if budgets is not None:
        changes["budgets"] = budgets
    if sizes is not None:
        changes["sizes"] = sizes
    if changes:
        unknown = set(changes) - set(EnvConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"make_env_factory got unknown EnvConfig fields {sorted(unknown)}.")
        config = EnvConfig(**{**config.__dict__, **changes})
    return functools.partial(SearchEnv, engines=engines or Engines(), config=config)
