"""Metrics of the evaluation, as pure functions over per-item rollout records (JSON dicts).

What it does: `score_record` scores one record with the project's one scorer
(`mmsearch_r1.protocol.rewards.score_record`: exact match, SubEM, strict format, searched) and adds the judge slot; `summarize` turns records into accuracy (EM, SubEM, the judge's when every item was judged),
the search ratio by both of the paper's definitions (``sr_any``: share of answers that ran at least one
search, §4.1; ``sr_calls``: search calls over the maximum the method allows, Tab. 1 caption), calls per
question by type, failures and refusals, format rate, tokens (prompt, model, tool) and an estimated
search cost; `summarize_groups` does it per benchmark, method, question category and kind, with the
mean over benchmarks (``avg``) as in the paper's Table 1; `behaviour` names a record's answer-behaviour
bucket (paper Fig. 4b).

What it does not: no rollouts, no judge calls, no files (`mmsearch_r1.evaluation.evaluate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from mmsearch_r1.protocol.rewards import score_record as _score


def score_record(rec: dict, *, benchmark: str | None = None) -> dict:
    """`mmsearch_r1.protocol.rewards.score_record` (the one scorer) plus the evaluation's ``judge`` slot and
    ``benchmark`` label (in place; returns it)."""
    _score(rec)
    rec.setdefault("judge", None)
    if benchmark is not None:
        rec["benchmark"] = benchmark
    return rec


METHOD_LABELS = {"direct": "Direct", "rag": "RAG", "on_demand": "On-demand"}
"""Display names of the methods (the paper's Table 1 wording)."""


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def summarize(
    records: Sequence[dict], *, image_call_cost: float = 0.015, text_call_cost: float = 0.0185
) -> dict:
    """The metrics of a set of scored records (see the module docstring). Empty input gives ``n = 0``."""
    n = len(records)
    if n == 0:
        return {"n": 0}
    judged = [r["judge"] for r in records if r.get("judge") is not None]
    img = sum(r.get("image_calls", 0) for r in records)
    txt = sum(r.get("text_calls", 0) for r in records)
    steps = sum(r.get("max_search_steps", 0) for r in records)
    em = _mean(float(r["em"]) for r in records)
    out = {
        "n": n,
        "em": em,
        "subem": _mean(float(r["subem"]) for r in records),
        "judge_acc": _mean(float(j) for j in judged),
        "judged": len(judged),
        "judge_missing": n - len(judged),
        "sr_any": _mean(float(r["searched"]) for r in records),
        "sr_calls": (img + txt) / steps if steps else 0.0,
        "image_calls_per_q": img / n,
        "text_calls_per_q": txt / n,
        "searches_per_q": (img + txt) / n,
        "tool_failures_per_q": sum(r.get("tool_failures", 0) for r in records) / n,
        "refused_per_q": sum(r.get("tool_refused", 0) for r in records) / n,
        "format_ok": _mean(float(r.get("format_ok", False)) for r in records),
        "answered": _mean(float(r.get("prediction") is not None) for r in records),
        "turns_per_q": _mean(r.get("turn_count", 0) for r in records),
        "prompt_tokens_per_q": _mean(r.get("prompt_tokens", 0) for r in records),
        "model_tokens_per_q": _mean(r.get("completion_tokens", 0) for r in records),
        "tool_tokens_per_q": _mean(r.get("tool_tokens", 0) for r in records),
        "est_cost_usd": img * image_call_cost + txt * text_call_cost,
    }
    out["est_cost_per_q"] = out["est_cost_usd"] / n
    use_judge = out["judge_acc"] is not None and not out["judge_missing"]
    out["acc"] = out["judge_acc"] if use_judge else em
    out["acc_metric"] = "judge" if use_judge else "em"
    return out


def behaviour(rec: dict, *, metric: str = "em") -> str:
    """The answer-behaviour bucket of one record (paper Fig. 4b)."""
    right = bool(rec.get("judge") if metric == "judge" and rec.get("judge") is not None else rec.get(metric))
    searched = rec["searched"]
    return f"{'correct' if right else 'wrong'} {'with' if searched else 'without'} search"


def summarize_groups(records: Sequence[dict], **cost) -> dict:
    """``{benchmark: {method: {"all", "by_category", "by_kind", "behaviour"}}}`` plus ``avg`` per method."""
    tree: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        tree[r.get("benchmark") or "data"][r["method"]].append(r)
    out: dict[str, Any] = {}
    for bench, by_method in tree.items():
        out[bench] = {}
        for method, recs in by_method.items():
            cats, kinds, beh = defaultdict(list), defaultdict(list), defaultdict(int)
            for r in recs:
                cats[r.get("category") or "unlabelled"].append(r)
                kinds[r.get("kind") or "unlabelled"].append(r)
                beh[behaviour(r)] += 1
            out[bench][method] = {
                "all": summarize(recs, **cost),
                "by_category": {c: summarize(v, **cost) for c, v in sorted(cats.items())},
                "by_kind": {k: summarize(v, **cost) for k, v in sorted(kinds.items())},
                "behaviour": dict(sorted(beh.items())),
            }
    methods = sorted({m for b in out.values() for m in b})
    avg = {}
    for m in methods:
        alls = [b[m]["all"] for b in out.values() if m in b]
        avg[m] = {
            k: _mean(a[k] for a in alls if a.get(k) is not None)
            for k in ("acc", "em", "subem", "sr_any", "sr_calls")
        }
        avg[m]["benchmarks"] = len(alls)
    return {"benchmarks": out, "avg": avg}
