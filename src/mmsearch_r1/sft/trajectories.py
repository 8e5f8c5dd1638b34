"""Warm-start data: the language model's real knowledge boundary, and protocol trajectories from the world.

What it does:
- `probe_knowledge`: asks the base policy's language model (no image, no search) each fact the world's
  questions need (capital, continent) for every entity, greedily and with ``k`` samples, as the paper's
  curation does (k rollouts without search), and labels a fact *known* when the share of correct answers
  reaches a threshold. For the demo policy this is SmolLM2-135M's real knowledge (cached on disk).
- `build_trajectories`: for each question row, the trajectory an ideal policy with that knowledge takes
  (``decision="knowledge"``, `plan_for`): a direct answer when it recognises the entity and knows the
  fact; an image search when it does not recognise the image; a text search when it lacks the fact;
  image then text search when it lacks both. With ``decision="agnostic"`` (`agnostic_plan`) the choice
  to search is drawn at random with a fixed rate per question kind, blind to what the model knows, and
  a direct answer states the base model's own probe answer, right or wrong: the warm start then teaches
  the protocol, the tools and copying from results, but neither when to search nor any fact, which is
  left for RL to learn.
  Tool results are real: each search runs through `mmsearch_r1.agent.env.SearchEnv` and the local engines,
  so the observations are byte for byte those of RL and evaluation. Rows whose search does not return
  the answer (image search top hit wrong, answer not in the text results) are dropped and counted: the
  warm start only shows searches that pay, so that copying from results is learned right.
- Output rows: ``messages`` (JSON, image blocks as placeholders), ``images`` (question image, then
  thumbnails, in order), ``plan`` (the action sequence), and the row's ids, for ``SFTTrainer``.

What it does not: no training (``sft.warmstart``), no model of its own; reasoning texts are the project's.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmsearch_r1.agent.env import EnvConfig, SearchEnv
from mmsearch_r1.agent.rollout import RolloutConfig, rag_query
from mmsearch_r1.data.world.build import World
from mmsearch_r1.protocol import prompts
from mmsearch_r1.protocol.rewards import exact_match, normalize_answer, sub_exact_match
from mmsearch_r1.protocol.tags import render_turn

FACTS = {
    "capital": ("What is the capital city of {name}?", "The capital of {name} is"),
    "continent": ("On which continent is {name}?", "{name} is in"),
}
"""Probe question and answer cue per fact (the cue is also the reasoning text before a direct answer)."""
FACT_OF_TEMPLATE = {
    "flag_capital": "capital", "outline_capital": "capital", "capital_of": "capital",
    "flag_continent": "continent", "continent_of": "continent",
}  # fmt: skip
"""Which fact a question template asks for (templates not listed need none)."""
NOUN = {"flag": "flag", "outline": "map"}
RAG_REASONS = RolloutConfig().rag_reasons
"""The scripted reasons of the RAG workflow (`agent.rollout`), reused by the RAG-shaped trajectories."""
RAG_PLAN = "rag: image_search -> text_search -> answer"
"""Plan name of a RAG-shaped trajectory (see `trajectory`)."""


@dataclass
class ProbeConfig:
    """How the language model's knowledge is measured."""

    k: int = 2
    """Samples per fact (besides one greedy answer)."""
    temperature: float = 0.7
    """Sampling temperature of the k samples."""
    threshold: float = 0.5
    """A fact is known when at least this share of the k + 1 answers is correct."""
    max_new_tokens: int = 6
    """Tokens generated after the cue."""
    batch_size: int = 96
    """Prompts per generate call."""
    seed: int = 0
    """Sampling seed."""


def _fact_gold(world: World, entity_id: str, fact: str) -> list[str]:
    f = world.entity(entity_id).facts
    return [f[fact], *f.get(f"{fact}_aliases", [])]


def _first_phrase(text: str) -> str:
    for stop in ("<|im_end|>", "\n", ".", ","):
        text = text.split(stop)[0]
    return text.strip()


@torch.no_grad()
def probe_knowledge(model, tokenizer, world: World, cfg: ProbeConfig | None = None, facts=tuple(FACTS),
                    cache_dir: str | Path | None = None) -> dict[str, dict]:  # fmt: skip
    """``{"<entity_id>|<fact>": {"greedy", "samples", "score", "known"}}`` for every entity and fact.

    The language model answers in its own chat format (``What is the capital city of X?``, answer
    started with the cue ``The capital of X is``); an answer is correct when it matches the gold fact or
    an alias (exact match after normalisation, or the gold inside a continent answer). With
    ``cache_dir`` the result is stored under a key of the model, world and settings.
    """
    cfg = cfg or ProbeConfig()
    key_src = json.dumps([getattr(model.config, "_name_or_path", ""), str(world.build_dir), sorted(facts),
                          asdict(cfg), len(world)], sort_keys=True)  # fmt: skip
    cache = (
        Path(cache_dir) / f"knowledge-{hashlib.sha1(key_src.encode()).hexdigest()[:10]}.json"
        if cache_dir
        else None
    )
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    jobs = [(e.id, f) for e in world.entities for f in facts if e.facts.get(f)]
    prompts_ = []
    for eid, fact in jobs:
        q, cue = FACTS[fact]
        name = world.entity(eid).name
        prompts_.append(
            f"<|im_start|>user\n{q.format(name=name)}<|im_end|>\n<|im_start|>assistant\n{cue.format(name=name)}"
        )
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    answers: list[list[str]] = [[] for _ in jobs]
    torch.manual_seed(cfg.seed)
    try:
        for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="knowledge probe"):
            batch = tokenizer(prompts_[start : start + cfg.batch_size], return_tensors="pt", padding=True)
            n = batch["input_ids"].shape[1]
            for sample in range(cfg.k + 1):
                kw = {"do_sample": False} if sample == 0 else {"do_sample": True, "temperature": cfg.temperature,
                                                                 "top_k": 0, "top_p": 1.0}  # fmt: skip
                out = model.generate(
                    **batch, max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kw
                )
                for i, ids in enumerate(out[:, n:]):
                    answers[start + i].append(_first_phrase(tokenizer.decode(ids, skip_special_tokens=False)))
    finally:
        tokenizer.padding_side = side
    result = {}
    for (eid, fact), outs in zip(jobs, answers, strict=True):
        golds = _fact_gold(world, eid, fact)
        ok = [exact_match(a, golds) or (fact == "continent" and sub_exact_match(a, golds)) for a in outs]
        score = sum(ok) / len(ok)
        result[f"{eid}|{fact}"] = {
            "greedy": outs[0],
            "samples": outs[1:],
            "score": score,
            "known": score >= cfg.threshold,
        }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=1))
    return result


def knowledge_summary(knowledge: dict[str, dict]) -> dict[str, float]:
    """Counts and shares of known facts per fact type (for the notebook and the report)."""
    out: dict[str, float] = {}
    for fact in FACTS:
        vals = [v for k, v in knowledge.items() if k.endswith("|" + fact)]
        if vals:
            out[f"{fact}_known"] = sum(v["known"] for v in vals)
            out[f"{fact}_n"] = len(vals)
            out[f"{fact}_greedy_acc"] = sum(
                v["score"] > 0 and bool(v["greedy"]) and v["known"] for v in vals
            ) / len(vals)
            out[f"{fact}_mean_score"] = sum(v["score"] for v in vals) / len(vals)
    return out


# --------------------------------------------------------------------------- trajectories


def plan_for(row: dict, visual_known: set[str], knowledge: dict[str, dict]) -> tuple[str, ...]:
    """The ideal action sequence for ``row`` under the knowledge boundary (one of the strict sequences)."""
    template, eid = row["template"], row["entity_id"]
    fact = FACT_OF_TEMPLATE.get(template)
    sees = eid in visual_known
    knows = bool(fact) and knowledge.get(f"{eid}|{fact}", {}).get("known", False)
    if row["kind"] == "search_free":
        return ("answer",)
    if row["kind"] == "visual_knowledge":
        return ("answer",) if sees else ("image_search", "answer")
    if row["kind"] == "text_only":
        return ("answer",) if knows else ("text_search", "answer")
    if sees:
        return ("answer",) if knows else ("text_search", "answer")
    return ("image_search", "answer") if knows else ("image_search", "text_search", "answer")


AGNOSTIC_RATES = {"search_free": 0.75, "visual_knowledge": 1.0, "textual_knowledge": 0.75, "text_only": 0.75}
"""Default search rates per question kind of `agnostic_plan`: a colour question is searched (an image search
that does not help), a fact looked up, three times in four; naming an entity in an image always takes an
image search (no entity is recognised without one, and no own answer exists to state instead)."""


def agnostic_plan(row: dict, rates: dict[str, float], rng, believed: str | None) -> tuple[str, ...]:
    """A plan drawn blind to the model's knowledge: search with probability ``rates[row["kind"]]`` (for an
    image-fact question: the image search always, the text search with that probability). A question
    whose fact the model gave no answer to (``believed`` empty) is searched."""
    kind, search = row["kind"], rng.random() < rates.get(row["kind"], 1.0)
    if kind == "search_free":
        return ("image_search", "answer") if search else ("answer",)
    if kind == "visual_knowledge":
        return ("image_search", "answer")
    look_up = search or not believed
    if kind == "text_only":
        return ("text_search", "answer") if look_up else ("answer",)
    return ("image_search", "text_search", "answer") if look_up else ("image_search", "answer")


def needs_search(row: dict, visual_known: set[str], knowledge: dict[str, dict]) -> bool:
    """Whether the ideal plan for ``row`` (`plan_for`) searches at all."""
    return plan_for(row, visual_known, knowledge) != ("answer",)


def _fact_sentence(fact: str, name: str, value: str) -> str:
    return FACTS[fact][1].format(name=name) + f" {value}."


def _query(fact: str, name: str) -> str:
    return f"capital of {name}" if fact == "capital" else f"{name} continent"


def trajectory(row: dict, plan: tuple[str, ...], world: World, env: SearchEnv, colour: str | None = None,
               rag: bool = False, answer_space: bool = True, believed: str | None = None):  # fmt: skip
    """Run ``plan`` on ``row`` through ``env`` and write the turns. Returns (messages, images) or a drop reason.

    ``rag``: the RAG workflow's shape instead of ``plan`` (`agent.rollout`'s scripted image search, then its
    scripted text query: top image title + question), then the answer read from the results, so that
    the policy learns to answer from results however the searches were phrased.

    ``answer_space``: the answer is written ``<answer> Lisbon</answer>``, with a space, so that its tokens
    are those of the name inside a sentence (" Lisbon" is one token; "Lisbon" after ">" is "L", "is",
    "bon" in SmolLM2's vocabulary). Copying the name from the results or the reasoning is then copying
    tokens, not spelling them out; the answer parses to the same stripped text.

    ``believed``: the fact as the base language model states it (its probe answer); a plan without a text
    search then states it, right or wrong, instead of the world's fact."""
    eid, template = row["entity_id"], row["template"]
    ent = world.entity(eid)
    name, fact = ent.name, FACT_OF_TEMPLATE.get(template)
    view = "outline" if template.startswith("outline") else "flag"
    noun = NOUN[view]
    env.reset(**row)
    messages = [{"role": "user", "content": prompts.first_user_content(row["question"])}]
    images = [row["image"]]
    seen = []  # reasoning so far, carried into the next turn's reason

    def say(kind, reason, **kw):
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": render_turn(kind, reason, **kw)}]}
        )

    value = ent.facts.get(fact) if fact else None
    if believed is not None and fact and "text_search" not in plan and not rag:
        value = believed  # the model's own answer: the warm start teaches no fact

    def final_answer(reason_parts: list[str]):
        if row["kind"] == "search_free":
            reason, answer = (
                " ".join([*reason_parts, f"The {noun} is mostly {row['answer']}."]),
                row["answer"],
            )
        else:
            reason, answer = (
                " ".join(reason_parts),
                name if row["kind"] == "visual_knowledge" else value,
            )
        say("answer", reason, answer=(" " if answer_space else "") + answer)

    if row["kind"] == "search_free" and plan[0] != "image_search":
        final_answer([])
        return messages, images
    if rag:
        plan = ("image_search", "text_search", "answer")
    if row["kind"] == "search_free":
        rag = False  # a colour question has no fact to look up: at most an image search
    if row["kind"] != "text_only" or rag:
        if plan[0] == "image_search":
            say("image_search", RAG_REASONS[0] if rag else image_search_reason(row))
            obs = env.search()
            hits = env.log[-1].get("hits", []) if env.log else []
            if not hits or hits[0] not in (f"Flag of {name}", f"Outline map of {name}"):
                return "image search top hit is not the entity"
            messages.append({"role": "tool", "name": "search", "content": _strip_images(obs, images)})
            top = hits[0]
            seen.append(f"The search shows the {noun} of {name}.")
            if fact:
                seen.append(f"The question asks for its {fact}.")
        else:
            seen.append(f"This is the {noun} of {name}." if view == "flag" else f"This map shows {name}.")
    if rag or plan[-2:-1] == ("text_search",):
        if rag:
            reason, query = RAG_REASONS[1], rag_query(top, row["question"], env.config.max_query_chars)
        else:
            ask = (
                []
                if seen and seen[-1].startswith("The question")
                else [f"The question asks for the {fact} of {name}."]
            )
            reason, query = " ".join([*seen, *ask, "I do not know it, so I look it up."]), _query(fact, name)
        say("text_search", reason, query=query)
        obs = env.text_search(query)
        golds = _fact_gold(world, eid, fact) if fact else [name]
        if not any(normalize_answer(g) in normalize_answer(obs.split("</information>")[0]) for g in golds):
            return "answer not in the text search results"
        messages.append({"role": "tool", "name": "text_search", "content": [{"type": "text", "text": obs}]})
        if fact:
            seen = [f"The results say: {_fact_sentence(fact, name, ent.facts[fact])}"]
    elif fact:
        seen.append(_fact_sentence(fact, name, value))
    final_answer(seen)
    return messages, images


def image_search_reason(row: dict) -> str:
    """The reasoning of a first-turn image search: what the question asks, and that the image is unknown."""
    noun = "map" if row["template"].startswith("outline") else "flag"
    goal = FACT_OF_TEMPLATE.get(row["template"]) or "country"
    return f"The question asks for the {goal}. I do not recognise this {noun}, so I search the image."


def balance(trajectories: list[dict], n: int | None, weights: dict[str, float], seed: int = 0) -> list[dict]:
    """A seeded sample of ``n`` trajectories with about ``weights`` shares per plan (what is missing in one
    plan is filled from the others)."""
    import random

    rng = random.Random(seed)
    if n is None or n >= len(trajectories):
        return list(trajectories)
    by_plan: dict[str, list[dict]] = {}
    for t in trajectories:
        by_plan.setdefault(t["plan"], []).append(t)
    for v in by_plan.values():
        rng.shuffle(v)
    total = sum(weights.get(p, 0.0) for p in by_plan) or 1.0
    out = []
    for p, v in by_plan.items():
        out += v[: int(round(n * weights.get(p, 0.0) / total))]
    rest = [t for p, v in by_plan.items() for t in v[int(round(n * weights.get(p, 0.0) / total)) :]]
    rng.shuffle(rest)
    out = (out + rest)[:n]
    rng.shuffle(out)
    return out


def agnostic_weights(trajectories: list[dict], rag_weight: float) -> dict[str, float]:
    """`balance` weights that keep the drawn plans' own shares (`agnostic_plan`) and give the RAG-shaped
    trajectories ``rag_weight``: balancing a knowledge-blind draw must not re-weight it by plan."""
    counts = Counter(t["plan"] for t in trajectories if t["plan"] != RAG_PLAN)
    total = sum(counts.values()) or 1
    return {p: (1 - rag_weight) * c / total for p, c in counts.items()} | {RAG_PLAN: rag_weight}


def _strip_images(blocks, images: list) -> list[dict]:
    """Replace image blocks by placeholders, appending their PIL images to ``images`` (in order)."""
    out = []
    for b in blocks if isinstance(blocks, list) else [{"type": "text", "text": str(blocks)}]:
        if b.get("type") == "image":
            images.append(b["image"])
            out.append({"type": "image"})
        else:
            out.append({"type": "text", "text": b["text"]})
    return out


def build_trajectories(rows, world: World, engines, visual_known: set[str], knowledge: dict[str, dict],
                       env_config: EnvConfig | None = None, rag: bool = False, answer_space: bool = True,
                       decision: str = "knowledge", rates: dict | None = None,
                       seed: int = 0) -> tuple[list[dict], Counter]:  # fmt: skip
    """Trajectories for ``rows`` (dicts in the row schema + entity_id/template) and a Counter of outcomes;
    ``rag`` adds a RAG-shaped trajectory (plan `RAG_PLAN`) for every row whose plan searches;
    ``answer_space``: answers written with a leading space (`trajectory`); ``decision``: ``knowledge``
    (`plan_for`) or ``agnostic`` (`agnostic_plan` with ``rates``, default `AGNOSTIC_RATES`, seeded)."""
    import random

    if decision not in ("knowledge", "agnostic"):
        raise ValueError(f"decision must be 'knowledge' or 'agnostic', got {decision!r}")
    env = SearchEnv(engines, env_config or EnvConfig())
    out, stats = [], Counter()
    rng, rates = random.Random(seed), rates or AGNOSTIC_RATES
    for row in tqdm(rows, desc="trajectories"):
        believed = None
        if decision == "knowledge":
            plan = plan_for(row, visual_known, knowledge)
        else:
            fact = FACT_OF_TEMPLATE.get(row["template"])
            believed = knowledge.get(f"{row['entity_id']}|{fact}", {}).get("greedy") if fact else None
            plan = agnostic_plan(row, rates, rng, believed)
        variants = [(" -> ".join(plan), False)]
        if (
            rag and "search" in variants[0][0] and row["kind"] != "search_free"
        ):  # the RAG workflow's shape, for rows that need a search
            variants.append((RAG_PLAN, True))
        for name, is_rag in variants:
            res = trajectory(row, plan, world, env, rag=is_rag, answer_space=answer_space, believed=believed)
            if isinstance(res, str):
                stats[f"dropped{' (rag)' if is_rag else ''}: {res}"] += 1
                continue
            messages, images = res
            stats[name] += 1
            out.append({"messages": json.dumps(messages), "images": images, "plan": name,
                        "data_id": row["data_id"], "entity_id": row["entity_id"], "kind": row["kind"]})  # fmt: skip
    return out, stats
