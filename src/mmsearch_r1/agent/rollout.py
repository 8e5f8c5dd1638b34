"""The multi-turn inference rollout outside training (evaluation and curation).

What it does: `rollout(rows, generator, env_factory, config)` (``config``: a `RolloutConfig`, defined in
`mmsearch_r1.agent.rollout_config` and importable from here) runs the policy on a batch of questions
with exactly the machinery TRL's ``GRPOTrainer`` uses during training, so a trained policy meets the
same conversation at test time:
- the first prompt is the question image + ``protocol.prompts.first_user_text``, rendered by the processor's chat
  template (the tag protocol of `mmsearch_r1.protocol.chat_template`);
- each assistant turn is parsed with TRL's ``parse_response`` (the tokenizer's ``response_template``),
  tools are the `SearchEnv` methods (``search()``, ``text_search(text)``), run concurrently across the
  batch in a thread pool; an exception becomes ``{"error": ...}`` as in TRL;
- the tool results are appended as token ids: prompt + model ids + the suffix the chat template renders
  for the tool messages (TRL's ``_get_tool_suffix_ids`` recipe), thumbnails are appended to the images;
- at most ``budgets.max_turns`` assistant turns (TRL's ``max_tool_calling_iterations = max_turns - 1``):
  a search in the last turn is not run.
Generation is batched across questions (left padding) with HF ``generate`` (`HFGenerator`, CPU or
GPU) or vLLM (`VLLMGenerator`, imported only when used), both in `mmsearch_r1.agent.generation`; any callable
with the `Generator` signature works (tests script the model outputs with one).

Methods: ``on_demand`` (the policy decides), ``direct`` (every search is refused with an observation
that says search is off, so the policy answers from what it knows; zero searches run), ``rag`` (the
paper's RAG workflow: an image search is run first, then a text search, then the policy answers; the
first turn is scripted; if the policy's second turn is not a text search, a scripted one with the top
image title and the question replaces it, marked ``forced``).

Returns one JSON-ready record per (row, sample): every turn (text, parse, tokens), every tool
observation (text with ``<image>`` placeholders, image count, tokens, the environment's log entry),
the prediction with its score (`protocol.rewards.score_record`: ``em``, ``subem``, ``format_ok``,
``searched``), search counts, failures and token counts. `curation_rollout_fn` adapts all this to
``data.curation``'s ``rollout_fn(rows, *, allow_search, k)`` interface.

What it does not: no aggregate metrics (`mmsearch_r1.evaluation.evaluate`), no training, no prompt wording (`mmsearch_r1.protocol.prompts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from mmsearch_r1.agent.conversation import (  # noqa: F401 - re-exported
    content_text,
    first_prompt,
    parse_ids,
    prompt_ids,
    tool_suffix_ids,
)
from mmsearch_r1.agent.env import EnvConfig, SearchEnv
from mmsearch_r1.agent.generation import Generator, HFGenerator, Request, VLLMGenerator  # noqa: F401 - re-exported
from mmsearch_r1.agent.rollout_config import METHODS, RolloutConfig  # noqa: F401 - re-exported
from mmsearch_r1.helpers import jpeg_b64
from mmsearch_r1.protocol import prompts
from mmsearch_r1.protocol.rewards import score_record
from mmsearch_r1.protocol.tags import parse_turn, render_turn

TOOL_KIND = {"search": "image_search", "image_search": "image_search", "text_search": "text_search"}
RECORD_IMAGE_SIDE = 96
"""Longest side (px) of the images an evaluation record keeps for the viewer (`mmsearch_r1.evaluation.viewer`);
read at call time, so ``rollout.RECORD_IMAGE_SIDE = 0`` keeps none (records as before, no growth)."""
RECORD_MAX_IMAGES = 12
"""At most this many images per record: the question image, then thumbnails in order (the rest dropped)."""


# -- one trajectory -----------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """The state of one rollout (a row and a sample index)."""

    row: dict
    sample: int
    env: SearchEnv
    ids: list[int]
    images: list
    prompt_len: int
    completion_ids: list[int] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    """TRL-style completion messages: parsed assistant turns and tool messages."""
    turns: list[dict] = field(default_factory=list)
    observations: list[dict] = field(default_factory=list)
    done: bool = False
    stop: str = ""
    seconds: float = 0.0

    def add_turn(
        self, processor, new_ids: list[int], *, scripted: bool = False, forced_from: str | None = None
    ):
        tok = getattr(processor, "tokenizer", processor)
        parsed = parse_ids(processor, new_ids, self.ids, [self.env.search, self.env.text_search])
        text = tok.decode(new_ids, skip_special_tokens=False)
        turn = parse_turn(text)
        self.ids = self.ids + list(new_ids)
        self.completion_ids += list(new_ids)
        self.tool_mask += [1] * len(new_ids)
        if parsed:
            self.messages.append(parsed)
        rec = {
            "text": text,
            "kind": turn.kind,
            "action": turn.action,
            "reason": turn.reason,
            "answer": turn.answer,
            "query": turn.query,
            "why": turn.why,
            "tokens": len(new_ids),
            "tool_calls": [
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in (parsed.get("tool_calls") or [])
                if isinstance(c, dict) and "function" in c
            ],
            "scripted": scripted,
        }
        if forced_from is not None:
            rec["replaced_turn"] = forced_from
        self.turns.append(rec)
        return parsed

    def add_tools(self, processor, tool_messages: list[dict], max_completion_length: int | None) -> bool:
        suffix = tool_suffix_ids(processor, tool_messages)
        if (
            max_completion_length is not None
            and len(self.completion_ids) + len(suffix) > max_completion_length
        ):
            self.done, self.stop = True, "length"
            return False
        self.messages.extend(tool_messages)
        self.ids = self.ids + suffix
        self.completion_ids += suffix
        self.tool_mask += [0] * len(suffix)
        for msg in tool_messages:
            text, images = content_text(msg["content"])
            self.images.extend(images)
            self.observations.append(
                {"tool": TOOL_KIND.get(msg["name"], msg["name"]), "text": text, "images": len(images)}
            )
        self.observations[-1]["tokens"] = len(suffix)
        return True

    def record(self, method: str, *, images: bool = True) -> dict:
        """The JSON-ready record of the rollout; with ``images`` (and ``RECORD_IMAGE_SIDE`` > 0) also
        ``images``: the question image and each observation's thumbnails as small JPEGs (`images_field`)."""
        final = self.turns[-1] if self.turns else {}
        pred = final.get("answer") if final.get("action") == "answer" else None
        counters = self.env.counters
        statuses = [e for e in self.env.log]
        for obs, entry in zip(self.observations, statuses, strict=False):
            obs["status"] = entry.get("status")
            obs["hits"] = entry.get("hits", [])
            if entry.get("reason"):
                obs["reason"] = entry["reason"]
        row = self.row
        rec = {
            "data_id": row.get("data_id"),
            "question": row.get("question"),
            "answer": row.get("answer"),
            "aliases": list(row.get("aliases") or []),
            "category": row.get("category"),
            "kind": row.get("kind"),
            "source": row.get("source"),
            "method": method,
            "sample": self.sample,
            "turns": self.turns,
            "observations": self.observations,
            "prediction": pred,
            "image_calls": counters["image_calls"],
            "text_calls": counters["text_calls"],
            "searches": counters["searches"],
            "search_sequence": [
                TOOL_KIND.get(e["tool"], e["tool"])
                for e in self.env.log
                if e.get("status") in ("ok", "failed")
            ],
            "tool_failures": counters["failures"],
            "tool_refused": counters["refused"],
            "queries": counters["queries"],
            "max_search_steps": 0 if method == "direct" else max_search_steps(self.env.config),
            "prompt_tokens": self.prompt_len,
            "completion_tokens": sum(self.tool_mask),
            "tool_tokens": len(self.tool_mask) - sum(self.tool_mask),
            "turn_count": len(self.turns),
            "stop": self.stop or ("answer" if pred is not None else "no_answer"),
            "seconds": round(self.seconds, 3),
        }
        score_record(rec)
        if images and RECORD_IMAGE_SIDE:
            rec["images"] = self.images_field()
        return rec

    def images_field(self, side: int | None = None, max_images: int | None = None) -> dict:
        """``{"question": b64, "tools": [[b64, ...] per observation]}``: base64 JPEGs at most ``side`` px,
        at most ``max_images`` in all. ``self.images`` is the question image then every observation's
        thumbnails in order (``add_tools``), so each observation takes the next ``obs["images"]`` of them."""
        side, max_images = side or RECORD_IMAGE_SIDE, max_images or RECORD_MAX_IMAGES
        thumbs, left = iter(self.images[1:]), max_images - 1
        tools = []
        for obs in self.observations:
            shown = [next(thumbs, None) for _ in range(obs.get("images", 0))]
            tools.append([jpeg_b64(im, side) for im in shown[: max(left, 0)]])
            left -= len(shown)
        question = jpeg_b64(self.images[0], side) if self.images else None
        return {"question": question, "tools": tools}


def max_search_steps(env_config: EnvConfig) -> int:
    """Search calls one rollout can make: the paper's denominator for the calls-based search ratio."""
    b = env_config.budgets
    steps = min(b.max_turns - 1, b.image + b.text)
    return min(steps, 2) if env_config.grammar == "strict" and env_config.enforce_grammar else steps


# -- the loop ---------------------------------------------------------------------------------------


def _run_tool(env: SearchEnv, call: dict) -> tuple[str, Any]:
    """Execute one parsed tool call on ``env`` as TRL does (exceptions become ``{"error": ...}``)."""
    fn = call.get("function", {})
    name = fn.get("name", "unknown")
    try:
        if call.get("type", "function") != "function":
            raise ValueError(f"Unsupported tool call type: {call.get('type')}")
        if name not in ("search", "text_search"):
            raise ValueError(f"Tool {name} not found.")
        return name, getattr(env, name)(**fn.get("arguments", {}))
    except Exception as err:  # noqa: BLE001 - TRL's behaviour
        env.log.append({"tool": TOOL_KIND.get(name, name), "status": "error", "reason": str(err)[:300]})
        return name, {"error": str(err)}


def _run_calls(t: Trajectory, tool_calls: list, cfg: RolloutConfig) -> list[dict]:
    """The tool messages of one round: run the calls, or (``direct``) refuse every one of them."""
    if cfg.method != "direct":
        return [_tool_message(*_run_tool(t.env, c)) for c in tool_calls]
    out = []
    for c in tool_calls:
        name = c.get("function", {}).get("name", "unknown")
        tool = TOOL_KIND.get(name, name)
        text = prompts.failed_search_text(tool, cfg.direct_reason, t.row["question"], allowed=("answer",))
        t.env.refused += 1
        t.env.log.append({"tool": tool, "status": "refused", "reason": cfg.direct_reason})
        out.append(_tool_message(name, text))
    return out


def _tool_message(name: str, result) -> dict:
    return {"role": "tool", "name": name, "content": result if isinstance(result, list) else str(result)}


def _scripted_ids(processor, text: str) -> list[int]:
    tok = getattr(processor, "tokenizer", processor)
    return tok.encode(text + tok.eos_token, add_special_tokens=False)


def rag_query(top_title: str | None, question: str, max_chars: int = 300) -> str:
    """The RAG workflow's scripted text query: the image search's top title, then the question."""
    q = " ".join(question.split())
    return (f"{top_title} {q}" if top_title else q)[:max_chars]


def _rag_query(traj: Trajectory) -> str:
    hits = next((e.get("hits") for e in traj.env.log if e["tool"] == "image_search" and e.get("hits")), None)
    return rag_query(hits[0] if hits else None, traj.row["question"], traj.env.config.max_query_chars)


def length_groups(trajs: Sequence[Trajectory], pad_ratio: float = 1.5) -> list[list[Trajectory]]:
    """Split trajectories into generate calls of similar length (sorted; a new group when a sequence is
    more than ``pad_ratio`` times the group's shortest)."""
    groups: list[list[Trajectory]] = []
    for t in sorted(trajs, key=lambda t: len(t.ids)):
        if groups and len(t.ids) <= pad_ratio * len(groups[-1][0].ids):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def rollout_batch(
    rows: Sequence[dict],
    processor,
    generator: Generator,
    env_factory: Callable[[], SearchEnv],
    config: RolloutConfig | None = None,
    *,
    samples: Sequence[int] | None = None,
) -> list[Trajectory]:
    """Run one batch of rows to the end; returns the trajectories (see `Trajectory.record`)."""
    cfg = config or RolloutConfig()
    trajs = []
    for i, row in enumerate(rows):
        env = env_factory()
        env.reset(**row)
        ids = prompt_ids(processor, row, [env.search, env.text_search])
        trajs.append(Trajectory(dict(row), samples[i] if samples else 0, env, ids, [row["image"]], len(ids)))
    if not trajs:
        return []
    budgets = trajs[0].env.config.budgets  # the environment's budgets rule, as in training
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, cfg.tool_workers)) as pool:
        for turn in range(budgets.max_turns):
            active = [t for t in trajs if not t.done]
            if not active:
                break
            scripted = [t for t in active if cfg.method == "rag" and turn == 0]
            to_generate = [t for t in active if t not in scripted]
            for t in scripted:
                t.add_turn(
                    processor,
                    _scripted_ids(processor, render_turn("image_search", cfg.rag_reasons[0])),
                    scripted=True,
                )
            for group in length_groups(to_generate, cfg.pad_ratio):
                for t, new in zip(group, generator([(t.ids, t.images) for t in group]), strict=True):
                    t.add_turn(processor, new)
            # RAG: the second turn must be a text search.
            if cfg.method == "rag" and turn == 1:
                for t in active:
                    made = t.turns[-1]["tool_calls"]
                    if not (made and made[0]["name"] == "text_search"):
                        replaced = t.turns.pop()
                        _undo_last_turn(t, replaced["tokens"])
                        text = render_turn("text_search", cfg.rag_reasons[1], query=_rag_query(t))
                        t.add_turn(
                            processor,
                            _scripted_ids(processor, text),
                            scripted=True,
                            forced_from=replaced["text"],
                        )
            pending: list[tuple[Trajectory, list]] = []
            for t in active:
                msg = t.messages[-1] if t.messages and t.messages[-1].get("role") == "assistant" else {}
                tc = msg.get("tool_calls") if t.turns[-1]["tokens"] else None
                if not tc or turn == budgets.max_turns - 1:
                    t.done = True
                    last = t.turns[-1]["action"]
                    t.stop = "answer" if last == "answer" else ("max_turns" if tc else "no_action")
                    continue
                pending.append((t, tc))
            results = pool.map(lambda job: _run_calls(job[0], job[1], cfg), pending)
            for (t, _), msgs in zip(pending, results, strict=True):
                t.add_tools(processor, msgs, cfg.max_completion_length)
    elapsed = (time.perf_counter() - t0) / max(1, len(trajs))
    for t in trajs:
        t.seconds = elapsed
    return trajs


def _undo_last_turn(t: Trajectory, n: int) -> None:
    """Remove the last assistant turn (``n`` ids) and its message: the RAG workflow replaces it."""
    t.ids = t.ids[: len(t.ids) - n]
    t.completion_ids = t.completion_ids[: len(t.completion_ids) - n]
    t.tool_mask = t.tool_mask[: len(t.tool_mask) - n]
    if t.messages and t.messages[-1].get("role") == "assistant":
        t.messages.pop()


def rollout(
    rows: Sequence[dict],
    processor,
    generator: Generator,
    env_factory: Callable[[], SearchEnv],
    config: RolloutConfig | None = None,
    *,
    k: int = 1,
    desc: str | None = None,
) -> list[dict]:
    """Run ``k`` rollouts of every row with ``config.method``; returns one record per (row, sample).

    Rows are dataset rows in the row schema (``image``, ``question``, ``answer``, ``aliases``, ...).
    Records come back in row order, samples of a row together.
    """
    cfg = config or RolloutConfig()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if cfg.temperature > 0:
        torch.manual_seed(cfg.seed)
    jobs = [(row, s) for row in rows for s in range(k)]
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    if cfg.progress and batches:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc or f"rollout {cfg.method}", leave=False)
    records = []
    for batch in batches:
        trajs = rollout_batch(
            [r for r, _ in batch], processor, generator, env_factory, cfg, samples=[s for _, s in batch]
        )
        records.extend(t.record(cfg.method) for t in trajs)
    return records


def curation_rollout_fn(
    processor,
    generator: Generator,
    env_factory: Callable[[], SearchEnv],
    config: RolloutConfig | None = None,
):
    """Adapt the rollout to ``data.curation.curate``'s ``rollout_fn(rows, *, allow_search, k)``.

    ``allow_search=True`` runs ``on_demand``, ``False`` runs ``direct`` (no search ever runs); each
    result is a ``data.curation.Outcome`` (exact match against the answer and aliases, searches in order).
    Use ``temperature > 0`` in ``config`` so that the ``k`` rollouts differ, and build ``env_factory`` as
    training does (`mmsearch_r1.agent.env.policy_env_factory`).
    """
    from mmsearch_r1.data.curation import Outcome

    base = config or RolloutConfig(temperature=1.0)

    def fn(rows: Sequence[dict], *, allow_search: bool, k: int) -> list[list[Any]]:
        cfg = RolloutConfig(
            **{**base.__dict__, "method": "on_demand" if allow_search else "direct", "progress": False}
        )
        records = rollout(rows, processor, generator, env_factory, cfg, k=k)
        out = []
        for i in range(len(rows)):
            outs = []
            for rec in records[i * k : (i + 1) * k]:
                seq = tuple("image" if s == "image_search" else "text" for s in rec["search_sequence"])
                outs.append(Outcome(correct=rec["em"], searches=seq))
            out.append(outs)
        return out

    return fn
