"""Search-balanced curation (MMSearch-R1 paper, section 3.1) behind a plain rollout callable.

What it does: given rows and a policy wrapped as ``rollout_fn(rows, *, allow_search, k)`` returning,
per row, ``k`` ``Outcome`` records (correct or not, which searches ran), it runs ``k`` rollouts with
search disabled and ``k`` with search enabled, drops questions no rollout answered, labels the rest
``search_free`` (some rollout was right without searching) or ``search_required`` with the search type
that helped ("image", "text" or "mixed"), and samples to a target free/required ratio. Any policy plugs
in: the project's inference rollout (evaluation), a remote model, or a simulated policy such as
``simulated_rollout_fn`` (a seeded stand-in built from a known set; used by tests and notebook 01).

What it does not: no generation, no search, no reward computation of its own (the rollout callable
decides correctness, e.g. with ``mmsearch_r1.protocol.rewards.exact_match``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import datasets
import numpy as np

from mmsearch_r1.helpers import seeded_rng

SEARCH_TYPES = ("image", "text", "mixed")


@dataclass(frozen=True)
class Outcome:
    """One rollout's result."""

    correct: bool
    """Whether the final answer matched the gold answer or an alias."""
    searches: tuple[str, ...] = ()
    """Tools called, in order: "image" and/or "text" (empty when the rollout answered directly)."""

    @property
    def search_type(self) -> str | None:
        """None (no search), "image", "text" or "mixed"."""
        kinds = set(self.searches)
        if not kinds:
            return None
        return "mixed" if kinds >= {"image", "text"} else next(iter(kinds))


class RolloutFn(Protocol):
    """A policy seen from curation: ``k`` outcomes per row, with search allowed or not."""

    def __call__(
        self, rows: Sequence[dict[str, Any]], *, allow_search: bool, k: int
    ) -> list[list[Outcome]]: ...


@dataclass
class CurationConfig:
    """Search-balanced curation settings (paper: k=8, ratio about 32/68)."""

    k: int = 8
    """Rollouts per question in each mode (search disabled, search enabled)."""
    free_ratio: float | None = 0.32
    """Target share of search_free rows after sampling; None keeps every labelled row."""
    min_keep: float = 0.5
    """Fail (ValueError) when sampling to ``free_ratio`` would keep less than this share of the
    labelled rows (or a needed class is empty); 0 accepts any shrinkage."""
    n_target: int | None = None
    """Rows to keep; None = as many as the ratio allows."""
    seed: int = 0
    """Seed for the balanced sampling."""
    batch_size: int = 64
    """Rows passed to ``rollout_fn`` per call."""


@dataclass
class CurationResult:
    """Labelled and balanced rows plus what happened to each question."""

    dataset: datasets.Dataset
    """The curated rows (category set; columns ``search_type``, ``acc_no_search``, ``acc_search`` added)."""
    labels: dict[str, str]
    """data_id -> "search_free" | "search_required" | "dropped" (never answered) for every input row."""
    search_type: dict[str, str | None]
    """data_id -> search type that helped (search_required rows only)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Counts before and after sampling."""


def label_outcomes(no_search: Sequence[Outcome], with_search: Sequence[Outcome]) -> tuple[str, str | None]:
    """Paper rule: "dropped" if nothing was right; "search_free" if a rollout was right without searching
    (in either mode); else "search_required" with the most frequent search type among correct rollouts."""
    if not any(o.correct for o in [*no_search, *with_search]):
        return "dropped", None
    if any(o.correct and not o.searches for o in [*no_search, *with_search]):
        return "search_free", None
    types = Counter(o.search_type for o in with_search if o.correct and o.searches)
    best = max(types.items(), key=lambda kv: (kv[1], -SEARCH_TYPES.index(kv[0])))[0]
    return "search_required", best


def balanced_sample(
    labels: dict[str, str],
    free_ratio: float | None,
    n_target: int | None = None,
    seed: int = 0,
    *,
    min_keep: float = 0.5,
) -> list[str]:
    """Ids sampled so that ``free_ratio`` of them are search_free (as close as the counts allow).

    Raises ValueError (naming the counts and the fix) when the ratio cannot be met without throwing
    most rows away: a class the ratio needs is empty, or fewer than ``min_keep`` of the labelled rows
    would be kept (``n_target`` aside). Lower/raise ``free_ratio`` towards the labelled share, or pass
    None to keep every labelled row; ``min_keep=0`` turns the check off.
    """
    free = sorted(i for i, lab in labels.items() if lab == "search_free")
    req = sorted(i for i, lab in labels.items() if lab == "search_required")
    rng = np.random.default_rng(seed)
    if free_ratio is None:
        keep = free + req
        if n_target is not None:
            keep = list(rng.permutation(keep)[:n_target])
        return sorted(keep)
    if not 0 <= free_ratio <= 1:
        raise ValueError(f"free_ratio must be in [0, 1], got {free_ratio}")
    if free_ratio == 0:
        n = len(req)
    elif free_ratio == 1:
        n = len(free)
    else:
        n = int(min(len(free) / free_ratio, len(req) / (1 - free_ratio)))
    if n_target is not None:
        n = min(n, n_target)
    labelled = len(free) + len(req)
    need_free, need_req = free_ratio > 0, free_ratio < 1
    empty = (need_free and not free) or (need_req and not req)
    if labelled and (empty or n < min_keep * min(labelled, n_target or labelled)):
        raise ValueError(
            f"free_ratio={free_ratio} keeps {n} of {labelled} labelled rows ({len(free)} search_free, "
            f"{len(req)} search_required; labelled share {len(free) / labelled:.2f}): choose a free_ratio "
            "nearer that share, or free_ratio=None to keep every labelled row (min_keep=0 allows it)"
        )
    n_free = int(round(n * free_ratio))
    n_req = n - n_free
    pick = list(rng.permutation(free)[:n_free]) + list(rng.permutation(req)[:n_req]) if n else []
    return sorted(str(i) for i in pick)


def curate(
    ds: datasets.Dataset, rollout_fn: RolloutFn, config: CurationConfig | None = None
) -> CurationResult:
    """Run the rollouts, label, and sample to the target ratio (see module docstring)."""
    cfg = config or CurationConfig()
    rows = list(ds)
    no_s: list[list[Outcome]] = []
    with_s: list[list[Outcome]] = []
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start : start + cfg.batch_size]
        for allow, sink in ((False, no_s), (True, with_s)):
            outs = rollout_fn(batch, allow_search=allow, k=cfg.k)
            if len(outs) != len(batch) or any(len(o) != cfg.k for o in outs):
                raise ValueError(
                    f"rollout_fn must return {len(batch)} lists of {cfg.k} Outcome (allow_search={allow})"
                )
            if not allow and any(o.searches for r in outs for o in r):
                raise ValueError("rollout_fn ran searches with allow_search=False; it must disable the tools")
            sink.extend(outs)
    labels, stype, acc0, acc1 = {}, {}, {}, {}
    for row, o0, o1 in zip(rows, no_s, with_s, strict=True):
        lab, st = label_outcomes(o0, o1)
        labels[row["data_id"]], stype[row["data_id"]] = lab, st
        acc0[row["data_id"]] = sum(o.correct for o in o0) / cfg.k
        acc1[row["data_id"]] = sum(o.correct for o in o1) / cfg.k
    keep = set(balanced_sample(labels, cfg.free_ratio, cfg.n_target, cfg.seed, min_keep=cfg.min_keep))
    idx = [i for i, r in enumerate(rows) if r["data_id"] in keep]
    out = ds.select(idx)
    ids = out["data_id"]
    out = out.map(
        lambda r: {"category": labels[r["data_id"]]},
        features=out.features,
    ) if len(out) else out  # fmt: skip
    out = out.add_column("search_type", [stype[i] or "" for i in ids])
    out = out.add_column("acc_no_search", [acc0[i] for i in ids])
    out = out.add_column("acc_search", [acc1[i] for i in ids])
    before = Counter(labels.values())
    stats = {
        "n_in": len(rows),
        "dropped": before["dropped"],
        "search_free": before["search_free"],
        "search_required": before["search_required"],
        "search_type": dict(Counter(v for v in stype.values() if v)),
        "n_out": len(out),
        "out_search_free": sum(labels[i] == "search_free" for i in ids),
        "out_search_required": sum(labels[i] == "search_required" for i in ids),
    }
    return CurationResult(out, labels, stype, stats)


def simulated_rollout_fn(
    known: frozenset[str] | set[str],
    *,
    p_known: float = 0.9,
    p_unknown: float = 0.05,
    p_search: float = 0.9,
    seed: int = 0,
) -> Callable[..., list[list[Outcome]]]:
    """A seeded stand-in policy over world rows (needs ``entity_id`` and ``kind`` columns).

    Without search: right with probability ``p_known`` on a known entity (or a search-free kind), else
    ``p_unknown``. With search: it answers known/search-free rows directly as above, and otherwise
    searches (image for visual questions, image then text for textual ones, text for text-only) and is
    right with ``p_search``. Deterministic for a given seed, row and rollout index.
    """
    plan = {"visual_knowledge": ("image",), "textual_knowledge": ("image", "text"), "text_only": ("text",)}

    def fn(rows: Sequence[dict[str, Any]], *, allow_search: bool, k: int) -> list[list[Outcome]]:
        out = []
        for row in rows:
            rng = seeded_rng(seed, row["data_id"], allow_search)
            easy = row.get("kind") == "search_free" or row.get("entity_id") in known
            outs = []
            for _ in range(k):
                if easy or not allow_search:
                    outs.append(Outcome(bool(rng.random() < (p_known if easy else p_unknown))))
                else:
                    outs.append(Outcome(bool(rng.random() < p_search), plan.get(row.get("kind"), ("text",))))
            out.append(outs)
        return out

    return fn
