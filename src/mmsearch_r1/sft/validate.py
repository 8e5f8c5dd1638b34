"""Measure a warm-started policy: multi-turn rollouts with the real engines, and their scores.

What it does: `rollout` is a thin adapter over the project's inference rollout
(`mmsearch_r1.agent.rollout.rollout`: the same prompt, tool loop, budgets and observations as RL, with
`agent.generation.HFGenerator`) that returns one episode per row in the shape `score` reads; ``method="rag"``
is the RAG check (the rollout's ``rag`` workflow: a scripted image search, then a text search, then the
policy answers). `score` turns the episodes into accuracy (exact match), strict-format validity, search
ratio, and the same split by whether the ideal plan needs a search; `mark_engine_ok` flags RAG episodes
whose image search's top hit was the right entity. `boundary` tables how the policy's choice to search
follows its language model's knowledge; `boundary_check` (``python -m mmsearch_r1.sft.validate``) runs
it on every text-only validation question of the world. `validate` is the warm start's own validation
(greedy accuracy, format, search ratio, the RAG check); `validate_check` (``... --validate``) runs it
on a saved policy.

What it does not: no training, no LLM judge, no metrics beyond the warm start's own (`mmsearch_r1.evaluation`).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from mmsearch_r1.agent.env import EnvConfig, policy_env_factory
from mmsearch_r1.agent.generation import HFGenerator
from mmsearch_r1.agent.rollout import RolloutConfig
from mmsearch_r1.agent.rollout import rollout as shared_rollout
from mmsearch_r1.data.questions import QuestionConfig, build_pool
from mmsearch_r1.data.world.build import build_world
from mmsearch_r1.policy.demo import cache_root
from mmsearch_r1.policy.load import load_policy
from mmsearch_r1.protocol.tags import END_OF_TURN_TOKENS
from mmsearch_r1.sft.config import WarmStartConfig, sample_rows
from mmsearch_r1.sft.trajectories import needs_search, probe_knowledge
from mmsearch_r1.tools.engines import make_engines, world_indexes


def rollout(policy, rows: list[dict], engines, *, env_config: EnvConfig | None = None, method: str = "on_demand",
            max_new_tokens: int = 64, temperature: float = 0.0, batch_size: int = 8, seed: int = 0,
            generator=None) -> list[dict]:  # fmt: skip
    """Play each row to its end with `mmsearch_r1.agent.rollout.rollout`; returns one episode per row: the
    rollout's record plus ``row`` and ``turns`` (the assistant turn texts; the record's turn dicts are kept
    as ``turn_records``). ``generator`` replaces the policy's `HFGenerator` (tests)."""
    env_config = env_config or EnvConfig()
    processor = policy.processor
    factory = policy_env_factory(engines, env_config, processor)
    cfg = RolloutConfig(method=method, max_new_tokens=max_new_tokens, temperature=temperature,
                        batch_size=batch_size, seed=seed)  # fmt: skip
    if generator is None:
        policy.model.eval()
        generator = HFGenerator(policy.model, processor, cfg)
    records = shared_rollout(rows, processor, generator, factory, cfg, desc=f"warm-start eval {method}")
    return [
        {**rec, "row": row, "turns": [_clean(t["text"]) for t in rec["turns"]], "turn_records": rec["turns"]}
        for row, rec in zip(rows, records, strict=True)
    ]


def _clean(text: str) -> str:
    for token in END_OF_TURN_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def score(episodes: list[dict], needs_search=None) -> dict:
    """Accuracy (exact match), strict-format validity and search ratio (share of episodes with an executed
    search) of `rollout`'s episodes, as `protocol.rewards.score_record` scored them: overall, by question
    kind, and by ``needs_search(row)`` ("search_needed" / "known") when given. Sets ``acc``, ``format``,
    ``searched`` and ``engine_ok`` on each episode."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for ep in episodes:
        row = ep["row"]
        rec = {  # the rollout's record is scored by `protocol.rewards.score_record`, as everywhere
            "acc": float(ep["em"]),
            "engine_ok": float(ep.get("engine_ok", True)),
            "format": float(ep["format_ok"]),
            "searched": float(ep["searched"]),
        }
        ep.update(rec)
        groups["all"].append(rec)
        groups[f"kind={row['kind']}"].append(rec)
        if needs_search is not None:
            groups["needs_search" if needs_search(row) else "known"].append(rec)
    out = {}
    for g, r in groups.items():
        out[g] = {"n": len(r), **{k: sum(x[k] for x in r) / len(r) for k in ("acc", "format", "searched")}}
        ok = [x for x in r if x["engine_ok"]]
        if len(ok) < len(r):  # accuracy where the image engine's top hit was the right entity (copy skill)
            out[g].update(n_engine_ok=len(ok), acc_engine_ok=sum(x["acc"] for x in ok) / max(len(ok), 1))
    return out


def mark_engine_ok(episodes: list[dict], name_of) -> None:
    """Set ``engine_ok``: no image search ran, or its top hit names the row's entity (``name_of(entity_id)``)."""
    for ep in episodes:
        hits = [
            o["hits"] for o in ep.get("observations", []) if o.get("tool") == "image_search" and o.get("hits")
        ]
        name = name_of(ep["row"]["entity_id"])
        ep["engine_ok"] = not hits or hits[0][0] in (f"Flag of {name}", f"Outline map of {name}")


def boundary(episodes: list[dict], knows) -> dict:
    """How the choice to search follows the knowledge boundary, from scored episodes (`score` sets ``acc``
    and ``searched``): for the rows whose fact the base language model knows (``knows(row)``) and those it
    does not, ``n``, the share ``searched``, ``direct_wrong`` (answered without a search, wrongly: the
    failure search exists for) and ``acc``."""
    counts: Counter = Counter()
    for ep in episodes:
        side = "known" if knows(ep["row"]) else "unknown"
        counts[side, bool(ep["searched"]), bool(ep["acc"])] += 1

    def summary(sides: tuple[str, ...]) -> dict:
        c = {k: v for k, v in counts.items() if k[0] in sides}
        n = sum(c.values())
        return {"n": n, "searched": sum(v for k, v in c.items() if k[1]) / max(n, 1),
                "direct_wrong": sum(v for k, v in c.items() if not k[1] and not k[2]),
                "acc": sum(v for k, v in c.items() if k[2]) / max(n, 1)}  # fmt: skip

    out = {
        "known": summary(("known",)),
        "unknown": summary(("unknown",)),
        "all": summary(("known", "unknown")),
    }
    return out


def validate(policy, rows: list[dict], engines, cfg, needs, name_of, examples: Path | None = None) -> dict:
    """The warm start's validation (`WarmStartConfig` ``cfg``) of ``rows``.

    Greedy on-demand rollouts scored overall and by ``needs(row)`` ("eval_greedy"); the RAG check on the
    rows that need a search ("eval_rag_on_unknown", `mark_engine_ok` through ``name_of(entity_id)``), its
    misses with their turns ("eval_rag_misses"); optionally the same at T = 1 ("eval_t1"); and
    "eval_seconds". The first 40 greedy episodes go to ``examples`` (JSON) when given.
    """
    t0 = time.perf_counter()
    kw = {"env_config": cfg.env, "batch_size": cfg.eval_batch_size, "max_new_tokens": cfg.eval_max_new_tokens}
    eps = rollout(policy, rows, engines, seed=cfg.seed, **kw)
    m = {"eval_greedy": score(eps, needs)}
    rag = rollout(policy, [r for r in rows if needs(r)], engines, method="rag", **kw)
    mark_engine_ok(rag, name_of)
    m["eval_rag_on_unknown"] = score(rag)["all"]
    m["eval_rag_misses"] = [{"question": e["row"]["question"], "answer": e["row"]["answer"], "turns": e["turns"]}
                            for e in rag if not e["acc"]]  # fmt: skip
    if cfg.eval_sampled:
        m["eval_t1"] = score(rollout(policy, rows, engines, temperature=1.0, seed=cfg.seed, **kw), needs)
    m["eval_seconds"] = time.perf_counter() - t0
    if examples is not None:
        Path(examples).write_text(json.dumps(
            [{"question": e["row"]["question"], "answer": e["row"]["answer"], "turns": e["turns"],
              "acc": e["acc"], "format": e["format"]} for e in eps[:40]], indent=1))  # fmt: skip
    return m


def validate_check(policy: str = "runs/warmstart/final", base: str = "demo", all_rows: bool = False) -> dict:
    """`validate` of a saved warm-started ``policy`` with `WarmStartConfig`'s defaults: the same
    validation questions, knowledge boundary (``base``'s probe, cached) and engines as the warm start's own
    evaluation (its ``eval_rows`` of them; ``all_rows``: every validation question), so that a saved policy
    can be measured again (or one trained with ``eval_rows=0``)."""
    cfg = WarmStartConfig()
    world, pool, knowledge, engines = _world_and_knowledge(base, cfg)
    needs = lambda row: needs_search(row, set(), knowledge)  # noqa: E731
    sample = sample_rows(pool["validation"], None if all_rows else cfg.eval_rows, cfg.seed)
    return validate(load_policy(policy), sample, engines, cfg, needs, lambda eid: world.entity(eid).name)


def _world_and_knowledge(base: str, cfg, wordings: str = "template"):
    """The world, its question pool (in ``wordings``, `data.questions.QuestionConfig`), ``base``'s probed
    knowledge (cached) and the local engines."""
    world = build_world()
    pool = build_pool(world, QuestionConfig(seed=cfg.seed, wordings=wordings))
    lm = load_policy(base)
    knowledge = probe_knowledge(lm.model, lm.tokenizer, world, cfg.probe, cache_dir=cache_root())
    del lm
    world_indexes()
    return world, pool, knowledge, make_engines()


def boundary_check(policy: str = "runs/warmstart/final", base: str = "demo", split: str = "validation",
                   kind: str = "text_only", wordings: str = "template") -> dict:  # fmt: skip
    """`boundary` of ``policy`` (greedy, on-demand) on every ``kind`` question of the world's ``split``
    asked in ``wordings`` (``template``, ``train``: one training wording per question, ``heldout``),
    against the knowledge of ``base``'s language model (`sft.trajectories.probe_knowledge` with the warm
    start's probe settings; cached). Validation by default: the test split is for the headline only."""
    cfg = WarmStartConfig()
    world, pool, knowledge, engines = _world_and_knowledge(base, cfg, wordings)
    rows = [r for r in pool[split] if r["kind"] == kind]
    eps = rollout(load_policy(policy), rows, engines, env_config=cfg.env, batch_size=16,
                  max_new_tokens=cfg.eval_max_new_tokens)  # fmt: skip
    score(eps)
    return boundary(eps, lambda row: not needs_search(row, set(), knowledge))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mmsearch_r1.sft.validate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "policy", nargs="?", default="runs/warmstart/final", help="a saved policy folder or name"
    )
    parser.add_argument(
        "--validate", action="store_true", help="the warm start's validation, not the boundary"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="with --validate: every validation question, not the warm start's sample",
    )
    parser.add_argument(
        "--wordings",
        default="template",
        choices=("template", "train", "heldout"),
        help="how the boundary check's questions are worded (data/wordings.py)",
    )
    args = parser.parse_args()
    if args.validate:
        print(json.dumps(validate_check(args.policy, all_rows=args.all), indent=1))
    else:
        print(json.dumps(boundary_check(args.policy, wordings=args.wordings), indent=1))
