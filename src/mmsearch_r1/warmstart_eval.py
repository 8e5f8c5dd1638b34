"""Measure a warm-started policy: batched multi-turn rollouts with the real engines, and their scores.

What it does: `rollout` plays the tag protocol for a batch of question rows with HF ``generate``
(left-padded batches, the processor's chat template, `SearchEnv` for the tools, the same budgets and
observations as RL), optionally with a forced first turn (``force="search"`` makes the policy search the
way the ideal plan would for an entity it does not know: the RAG check). `score` turns the episodes into
accuracy (exact match), strict-format validity, search ratio, and the same split by whether the ideal
plan needs a search.

This is a small stand-in written for the warm start's own numbers; the evaluation harness of
notebook 05 is the project's full rollout (vLLM on GPU, concurrency, every metric).

What it does not: no training, no LLM judge, no concurrency.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from mmsearch_r1 import prompts
from mmsearch_r1.env import EnvConfig, SearchEnv
from mmsearch_r1.protocol import count_searches, parse_turn, render_turn, validate_trajectory
from mmsearch_r1.rewards import exact_match
from mmsearch_r1.warmstart_data import image_search_reason

_SEARCH_FIRST = {
    "text_only": lambda row: render_turn(
        "text_search", "The question asks for a fact I do not know, so I look it up.", query=_plain_query(row)
    ),
}


def _plain_query(row: dict) -> str:
    q = row["question"].rstrip("?")
    for head in ("What is the capital city of ", "On which continent is "):
        if q.startswith(head):
            name = q[len(head) :]
            return f"capital of {name}" if "capital" in head else f"{name} continent"
    return q


def forced_search_turn(row: dict) -> str | None:
    """The first turn of a policy that does not know the answer (None for search-free questions)."""
    if row["kind"] == "search_free":
        return None
    if row["kind"] == "text_only":
        return _SEARCH_FIRST["text_only"](row)
    return render_turn("image_search", image_search_reason(row))


def _vision_ids(tokenizer) -> list[int]:
    toks = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]
    unk = tokenizer.unk_token_id
    return [i for i in tokenizer.convert_tokens_to_ids(toks) if i is not None and i != unk]


@torch.no_grad()
def rollout(policy, rows: list[dict], engines, *, env_config: EnvConfig | None = None, force: str | None = None,
            max_new_tokens: int = 64, temperature: float = 0.0, batch_size: int = 8, seed: int = 0) -> list[dict]:  # fmt: skip
    """Play each row to its end; returns one episode dict per row (turns, counters, images used)."""
    env_config = env_config or EnvConfig()
    model, processor = policy.model, policy.processor
    tok = getattr(processor, "tokenizer", processor)
    model.eval()
    side, tok.padding_side = tok.padding_side, "left"
    torch.manual_seed(seed)
    episodes = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="rollouts"):
            episodes += _play(model, processor, tok, rows[start : start + batch_size], engines, env_config, force,
                              max_new_tokens, temperature)  # fmt: skip
    finally:
        tok.padding_side = side
    return episodes


def _play(model, processor, tok, rows, engines, env_config, force, max_new_tokens, temperature):
    eps = []
    for row in rows:
        env = SearchEnv(engines, env_config)
        env.reset(**row)
        msgs = [{"role": "user", "content": prompts.first_user_content(row["question"])}]
        eps.append(
            {"row": row, "env": env, "messages": msgs, "images": [row["image"]], "turns": [], "done": False}
        )
    max_turns = env_config.budgets.max_turns
    for turn_idx in range(max_turns):
        active = [e for e in eps if not e["done"]]
        if not active:
            break
        texts: dict[int, str] = {}
        if turn_idx == 0 and force == "search":
            for i, e in enumerate(active):
                forced = forced_search_turn(e["row"])
                if forced is not None:
                    texts[i] = forced
        todo = [i for i in range(len(active)) if i not in texts]
        if todo:
            prompts_ = [processor.apply_chat_template(active[i]["messages"], add_generation_prompt=True, tokenize=False)
                        for i in todo]  # fmt: skip
            images = [im for i in todo for im in active[i]["images"]]
            batch = processor(text=prompts_, images=images, padding=True, return_tensors="pt")
            kw = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"do_sample": False}
            )
            out = model.generate(**batch, max_new_tokens=max_new_tokens, suppress_tokens=_vision_ids(tok),
                                 eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, **kw)  # fmt: skip
            n = batch["input_ids"].shape[1]
            for j, i in enumerate(todo):
                texts[i] = tok.decode(out[j, n:], skip_special_tokens=True).strip()
        for i, e in enumerate(active):
            text = texts[i]
            e["turns"].append(text)
            e["messages"].append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            turn = parse_turn(text)
            last = turn_idx == max_turns - 1
            if turn.action == "image_search" and not last:
                obs = e["env"].search()
                blocks = obs if isinstance(obs, list) else [{"type": "text", "text": obs}]
                e["images"] += [b["image"] for b in blocks if b.get("type") == "image"]
                e["messages"].append({"role": "tool", "name": "search", "content": blocks})
            elif turn.action == "text_search" and not last:
                obs = e["env"].text_search(turn.query)
                e["messages"].append(
                    {"role": "tool", "name": "text_search", "content": [{"type": "text", "text": obs}]}
                )
            else:
                e["done"] = True
    return [
        {"row": e["row"], "turns": e["turns"], "counters": e["env"].counters, "log": e["env"].log}
        for e in eps
    ]


def score(episodes: list[dict], needs_search=None) -> dict:
    """Accuracy, strict-format validity, search ratio (share of episodes with an executed search), overall,
    by question kind, and by ``needs_search(row)`` ("search_needed" / "known") when given."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for ep in episodes:
        row, turns = ep["row"], ep["turns"]
        final = parse_turn(turns[-1]) if turns else None
        golds = [row["answer"], *(row.get("aliases") or [])]
        rec = {
            "acc": float(
                final is not None and exact_match(final.answer, golds)
            ),  # as the reward: format apart
            "engine_ok": float(ep.get("engine_ok", True)),
            "format": float(validate_trajectory(turns, "strict")[0]),
            "searched": float(sum(count_searches(turns).values()) > 0),
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
        hits = [e.get("hits") for e in ep.get("log", []) if e.get("tool") == "image_search" and e.get("hits")]
        name = name_of(ep["row"]["entity_id"])
        ep["engine_ok"] = not hits or hits[0][0] in (f"Flag of {name}", f"Outline map of {name}")
