"""The miniature: the paper's Finding 5 (search penalty and data balance) on CPU, in ~20-40 minutes.

What it does (`reproduce_stage()`; from a shell ``python -m mmsearch_r1.miniature``), following a
published CPU recipe for on-demand search, inside this project's own stack:
1. `mmsearch_r1.miniature.data.build_data`: ``capital_of`` questions about KNOWN / UNKNOWN countries, a
   BM25 fact index, the from-scratch ~1M-parameter Qwen2.5-VL.
2. `warm_start`: a plain torch loop (assistant-token loss with the masks of `sft_examples`; AdamW, betas
   0.9/0.98, 5% warm-up then cosine to 10%, clip 1.0). Written by hand like `mmsearch_r1.policy.tiny.overfit`:
   TRL's SFTTrainer cannot take a per-token mask that hides the capital after a search.
3. GRPO runs through `mmsearch_r1.rl.train.train` (TRL ``GRPOTrainer`` + `SearchEnv` + `rl.rewards`), one
   `TrainConfig` each (`run_config`): 8 prompts x 8 rollouts per step, lr 1e-4 constant, beta 0, loss
   ``dapo``, ``scale_rewards="group"``, T=1, 2 turns (one text search, no image search), 200 steps
   (100 for the unbalanced run).
   Runs: p=0.1 and p=0 on the balanced set, p=0.1 on the unbalanced one, then the frontier penalties.
   Each writes ``runs/miniature_<name>/`` (config.json, metrics.jsonl, samples.jsonl with every rollout
   of every step, so `category_curve` gives the search ratio by category per step) and ``eval.json``.
4. `evaluate_policy`: the evaluation rollout of `mmsearch_r1.agent.rollout` (same template, parser, SearchEnv)
   on the train and held-out test questions, before and after RL: ``on_demand`` (greedy; and sampled at
   T=1), ``forced_search`` (the first turn is forced to start with the search opening, the policy writes the
   query: always search; the miniature's RAG baseline) and ``forced_answer`` (forced to start with the answer opening: never search). Search ratio
   (share of questions with >= 1 executed search) and exact-match accuracy, by category.
5. `finding5_checks` writes ``runs/miniature/summary.json`` (each target, its value, pass/fail; stage
   times) and prints a table.

What it does not: no new GRPO or rollout loop, no plots (notebook 06 may read the run folders).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mmsearch_r1.miniature.data import (
    REASON_KNOWN,
    REASON_SEARCH,
    MiniatureConfig,
    build_data,
    build_policy,
    save_policy,
    sft_examples,
)


def make_env_factory_for(cfg: MiniatureConfig, processor):
    """`SearchEnv` factory over the miniature's index, exactly as its GRPO runs build it."""
    from mmsearch_r1.agent.env import EnvConfig, policy_env_factory
    from mmsearch_r1.protocol.tags import Budgets
    from mmsearch_r1.tools.engines import EngineConfig, make_engines

    engines = make_engines(EngineConfig(index_dir=str(cfg.index_dir)))
    settings = EnvConfig(budgets=Budgets(max_turns=2, image=0, text=1), text_k=cfg.text_k, image_k=1)
    return policy_env_factory(engines, settings, processor)


# -- warm start ---------------------------------------------------------------------------------------


def _batch(examples, processor) -> dict:
    tok = processor.tokenizer
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), tok.pad_token_id)
    labels = torch.full((len(examples), width), -100)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        attn[i, :n] = 1
        labels[i, :n] = torch.where(torch.tensor(e.mask) == 1, torch.tensor(e.ids), -100)
    pixels = processor.image_processor(images=[e.image for e in examples], return_tensors="pt")
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "mm_token_type_ids": (ids == pad).long(),
            **pixels}  # fmt: skip


def _length_batches(examples, size: int, rng: random.Random, pool: int = 8):
    """Endless batches: shuffled epochs cut into pools of ``pool`` batches of similar length (less padding)."""
    order: list[int] = []
    while True:
        if len(order) < size * pool:
            order += rng.sample(range(len(examples)), len(examples))
        chunk, order = sorted(order[: size * pool], key=lambda i: len(examples[i].ids)), order[size * pool :]
        cut = [chunk[i : i + size] for i in range(0, len(chunk), size)]
        rng.shuffle(cut)
        for b in cut:
            yield [examples[i] for i in b]


def warm_start(cfg: MiniatureConfig, data, *, steps: int | None = None) -> dict:
    """Train the miniature policy from scratch on `sft_examples`; save it to ``cfg.sft_dir``; return stats."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    model, processor = build_policy(cfg)
    examples = sft_examples(data, cfg, processor, make_env_factory_for(cfg, processor))
    steps = cfg.sft_steps if steps is None else steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = _length_batches(examples, cfg.sft_batch, random.Random(cfg.seed + 3))
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="warm start")
    for step in bar:
        loss = model(**_batch(next(batches), processor)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{statistics.fmean(losses[-20:]):.3f}")
    model.eval()
    save_policy(model, processor, cfg.sft_dir)
    seconds = time.perf_counter() - t0
    stats = {"examples": len(examples), "steps": steps, "final_loss": statistics.fmean(losses[-50:]),
             "seconds": seconds, "seconds_per_step": seconds / max(1, steps),
             "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    (cfg.sft_dir / "warmstart.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# -- evaluation ---------------------------------------------------------------------------------------


class ForcedStart:
    """A generator whose FIRST assistant turn starts with fixed text (the policy writes the rest)."""

    def __init__(self, inner, processor, text: str):
        tok = processor.tokenizer
        self.inner, self.prefix = inner, tok.encode(text, add_special_tokens=False)
        self.header = tok.convert_tokens_to_ids("assistant\n")

    def __call__(self, requests):
        first = [ids.count(self.header) == 1 for ids, _ in requests]
        asked = [
            (list(ids) + self.prefix, ims) if f else (ids, ims)
            for (ids, ims), f in zip(requests, first, strict=True)
        ]
        out = self.inner(asked)
        return [self.prefix + o if f else o for o, f in zip(out, first, strict=True)]


MODES = {"on_demand": None, "forced_search": f"<reason>{REASON_SEARCH}</reason><text_search>",
         "forced_answer": f"<reason>{REASON_KNOWN}</reason><answer>"}  # fmt: skip
"""Evaluation modes: the forced start of the first turn (None: the policy decides). They are not the
rollout's ``rag`` and ``direct`` methods (a scripted image search; refused searches): the miniature's model
writes its own query after a forced search opening, and cannot search after a forced answer opening."""


def _stats(records: Sequence[dict]) -> dict:
    n = len(records)
    return {"n": n, "accuracy": sum(r["em"] for r in records) / n if n else None,
            "search_ratio": sum(r["searched"] for r in records) / n if n else None}  # fmt: skip


def summarize_records(records: Sequence[dict]) -> dict:
    """Accuracy and search ratio over all records and by category."""
    out = {"all": _stats(records)}
    for cat in ("search_free", "search_required"):
        out[cat] = _stats([r for r in records if r["category"] == cat])
    return out


def evaluate_policy(
    model, processor, rows_by_split: dict, env_factory, *, samples: int = 0, seed: int = 0
) -> dict:
    """``{mode: {split: summary}}`` for the greedy modes (and ``on_demand_t1`` with ``samples`` > 0)."""
    from mmsearch_r1.agent.rollout import HFGenerator, RolloutConfig, rollout

    out: dict = {}
    plans = [(m, 0.0, 1) for m in MODES] + ([("on_demand_t1", 1.0, samples)] if samples else [])
    for mode, temp, k in plans:
        rcfg = RolloutConfig(max_new_tokens=40, temperature=temp, batch_size=64, seed=seed, progress=False)
        gen = HFGenerator(model, processor, rcfg)
        prefix = MODES.get(mode)
        gen = ForcedStart(gen, processor, prefix) if prefix else gen
        out[mode] = {}
        for split, rows in rows_by_split.items():
            recs = rollout(list(rows), processor, gen, env_factory, rcfg, k=k)
            out[mode][split] = summarize_records(recs)
    return out


# -- GRPO ---------------------------------------------------------------------------------------------


def run_config(cfg: MiniatureConfig, name: str, penalty: float, split: str = "rl_balanced", **changes):
    """The `TrainConfig` of one miniature GRPO run (see the module docstring)."""
    from mmsearch_r1.rl.config import TrainConfig

    fields = dict(
        name=f"miniature_{name}", output_dir=str(Path(cfg.runs_dir) / f"miniature_{name}"), seed=cfg.seed,
        model=str(cfg.sft_dir), dtype="float32", dataset=str(cfg.questions_dir), dataset_split=split,
        engine="local", index_dir=str(cfg.index_dir), max_turns=2, image_budget=0, text_budget=1, image_k=1,
        text_k=cfg.text_k, penalty=penalty, num_generations=cfg.num_generations,
        prompts_per_step=cfg.prompts_per_step, steps_per_generation=1, gradient_accumulation_steps=1,
        learning_rate=cfg.grpo_lr, lr_scheduler_type="constant", weight_decay=0.0, beta=0.0, loss_type="dapo",
        scale_rewards="group", temperature=1.0, max_completion_length=cfg.max_completion_length,
        max_steps=cfg.grpo_steps, save_steps=100_000, resume="never", log_samples=cfg.prompts_per_step * cfg.num_generations,
        bf16="false", gradient_checkpointing="false",
    )  # fmt: skip
    return TrainConfig(**{**fields, **changes})


def category_curve(run_dir: str | Path, categories: dict[str, str]) -> list[dict]:
    """Per step: the training rollouts' search ratio by category (from ``samples.jsonl``)."""
    steps: dict[int, dict[str, list[int]]] = {}
    from mmsearch_r1.data.schema import read_jsonl

    for r in read_jsonl(Path(run_dir) / "samples.jsonl", append_only=True):
        searched = int(r["searched"])  # scored when logged (`rl.run_logging.rollout_text`)
        cat = categories.get(r["question"], "unknown")
        steps.setdefault(r["step"], {}).setdefault(cat, []).append(searched)
    return [
        {"step": s, **{f"sr_{c}": statistics.fmean(v) for c, v in cats.items()}}
        for s, cats in sorted(steps.items())
    ]


def grpo_run(
    cfg: MiniatureConfig, data, name: str, penalty: float, split: str, before: dict, **changes
) -> dict:
    """Train one run, evaluate its final policy, write ``eval.json``; return the run's record."""
    from mmsearch_r1.policy.load import load_policy
    from mmsearch_r1.rl.train import train

    t0 = time.perf_counter()
    result = train(run_config(cfg, name, penalty, split, **changes))
    t_train = time.perf_counter() - t0
    final = result.final_dir(
        f"[miniature] {name}", "miniature runs do not resume: run the same command again"
    )
    policy = load_policy(final, dtype="float32")
    policy.model.eval()
    rows = {
        s: data.splits[s] for s in dict.fromkeys(["train", "test", split.replace("rl_balanced", "train")])
    }
    after = evaluate_policy(policy.model, policy.processor, rows, make_env_factory_for(cfg, policy.processor),
                            samples=cfg.eval_samples, seed=cfg.seed)  # fmt: skip
    cats = {r["question"]: r["category"] for r in data.splits["train"]}
    curve = category_curve(result.run_dir, cats)
    secs = [m["step_seconds"] for m in result.metrics if m.get("step_seconds")]
    rec = {"name": name, "penalty": penalty, "split": split, "steps": len(result.metrics),
           "train_seconds": t_train, "eval_seconds": time.perf_counter() - t0 - t_train,
           "step_seconds_median": statistics.median(secs) if secs else None,
           "train_search_ratio_last10": statistics.fmean(m["search_ratio"] for m in result.metrics[-10:]),
           "train_reward_last10": statistics.fmean(m["reward"] for m in result.metrics[-10:]),
           "curve": curve, "before": before, "after": after}  # fmt: skip
    (result.run_dir / "eval.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


# -- the whole stage ----------------------------------------------------------------------------------

CORE_RUNS = (("p0.1_balanced", 0.1, "rl_balanced"), ("p0_balanced", 0.0, "rl_balanced"),
             ("p0.1_unbalanced", 0.1, "rl_unbalanced"))  # fmt: skip
"""Finding 5's runs: (name, penalty, RL split)."""


def planned_runs(cfg: MiniatureConfig) -> list[tuple[str, float, str]]:
    """The core runs, then one balanced run per extra penalty of ``cfg.penalties`` (the frontier)."""
    extra = [(f"p{p:g}_balanced", p, "rl_balanced") for p in cfg.penalties if p not in (0.1, 0.0)]
    return list(CORE_RUNS) + extra


def _od(ev: dict, split: str, cat: str = "all") -> dict:
    return ev["on_demand"][split][cat]


def finding5_checks(records: dict) -> list[dict]:
    """Issue #7's targets on the RL-trained questions (greedy on-demand after RL; RAG = same policy)."""
    checks = []

    def add(target, value, ok):
        checks.append(
            {"target": target, "value": None if value is None else round(value, 4), "pass": bool(ok)}
        )

    if (r := records.get("p0_balanced")) is not None:
        sr = _od(r["after"], "train")["search_ratio"]
        add("p=0 balanced: search ratio >= 0.95", sr, sr >= 0.95)
    if (r := records.get("p0.1_unbalanced")) is not None:
        sr = _od(r["after"], "rl_unbalanced")["search_ratio"]
        add("p=0.1 unbalanced (<= 15% search-free): search ratio >= 0.9", sr, sr >= 0.9)
    if (r := records.get("p0.1_balanced")) is not None:
        a = r["after"]
        free, req = (
            _od(a, "train", "search_free")["search_ratio"],
            _od(a, "train", "search_required")["search_ratio"],
        )
        acc, rag = _od(a, "train")["accuracy"], a["forced_search"]["train"]["all"]["accuracy"]
        fewer = 1 - _od(a, "train")["search_ratio"] / max(
            a["forced_search"]["train"]["all"]["search_ratio"], 1e-9
        )
        add("p=0.1 balanced: search ratio on search-free <= 0.15", free, free <= 0.15)
        add("p=0.1 balanced: search ratio on search-required >= 0.9", req, req >= 0.9)
        add("p=0.1 balanced: accuracy >= RAG accuracy - 0.02", acc - rag, acc >= rag - 0.02)
        add("p=0.1 balanced: >= 40% fewer searches than RAG", fewer, fewer >= 0.4)
    return checks


def print_table(records: dict, before: dict) -> None:
    """One line per policy: on-demand accuracy / search ratio (train by category, test), RAG accuracy."""
    from tabulate import tabulate

    def line(name, p, split, ev, secs=None):
        rl = "train" if split == "rl_balanced" else "rl_unbalanced"
        od = ev["on_demand"]
        return [name, p, f"{od[rl]['all']['accuracy']:.2f}", f"{ev['forced_search'][rl]['all']['accuracy']:.2f}",
                f"{od[rl]['search_free']['search_ratio']:.2f}", f"{od[rl]['search_required']['search_ratio']:.2f}",
                f"{od['test']['all']['accuracy']:.2f}", f"{od['test']['all']['search_ratio']:.2f}",
                f"{ev['forced_search']['test']['all']['accuracy']:.2f}", secs]  # fmt: skip

    rows = [line("warm start", "-", "rl_balanced", before)]
    rows += [
        line(n, r["penalty"], r["split"], r["after"], r.get("step_seconds_median"))
        for n, r in records.items()
    ]
    head = [
        "policy",
        "p",
        "acc RL",
        "RAG acc RL",
        "SR free RL",
        "SR req RL",
        "acc test",
        "SR test",
        "RAG acc test",
        "s/step",
    ]
    print(tabulate(rows, headers=head, floatfmt=".2f"))


def reproduce_stage(
    cfg: MiniatureConfig | None = None, *, fresh: bool = True, runs: list | None = None
) -> dict:
    """Everything end to end; writes ``<runs_dir>/miniature/summary.json`` and prints the table.

    ``fresh=False`` reuses a finished warm start and finished runs (their ``eval.json``) found on disk.
    """
    from mmsearch_r1.policy.load import load_policy

    cfg = cfg or MiniatureConfig()
    times: dict[str, float] = {}
    t = time.perf_counter()
    data = build_data(cfg)
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    stats_path = cfg.sft_dir / "warmstart.json"
    sft = json.loads(stats_path.read_text()) if not fresh and stats_path.is_file() else warm_start(cfg, data)
    times["warm_start"] = time.perf_counter() - t
    t = time.perf_counter()
    policy = load_policy(cfg.sft_dir, dtype="float32")
    rows = {s: data.splits[s] for s in ("train", "test", "rl_unbalanced")}
    before = evaluate_policy(policy.model, policy.processor, rows, make_env_factory_for(cfg, policy.processor),
                             samples=cfg.eval_samples, seed=cfg.seed)  # fmt: skip
    times["warm_start_eval"] = time.perf_counter() - t
    records: dict = {}
    out = Path(cfg.runs_dir) / "miniature"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    for name, penalty, split in runs or planned_runs(cfg):
        path = Path(cfg.runs_dir) / f"miniature_{name}" / "eval.json"
        t = time.perf_counter()
        if not fresh and path.is_file():
            records[name] = json.loads(path.read_text())
        else:
            steps = cfg.unbalanced_steps if split == "rl_unbalanced" else cfg.grpo_steps
            records[name] = grpo_run(cfg, data, name, penalty, split, before, max_steps=steps)
        times[f"run_{name}"] = time.perf_counter() - t
        checks = finding5_checks(records)  # rewritten after every run: a cut-short stage keeps its results
        summary = {"config": cfg.to_dict(), "warm_start": sft, "before": before, "checks": checks,
                   "all_pass": all(c["pass"] for c in checks) and len(checks) == 6,
                   "runs": {n: {k: v for k, v in r.items() if k != "before"} for n, r in records.items()},
                   "seconds": times, "total_seconds": sum(times.values())}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(records, before)
    for c in summary["checks"]:
        print(f"[{'PASS' if c['pass'] else 'FAIL'}] {c['target']}: {c['value']}")
    print(f"[miniature] total {summary['total_seconds'] / 60:.1f} min; summary in {out / 'summary.json'}")
    return summary


SMOKE = {"n_synthetic": 200, "sft_steps": 20, "grpo_steps": 2, "unbalanced_steps": 2, "penalties": (0.1, 0.0), "eval_samples": 0,
         "prompts_per_step": 4, "num_generations": 4}  # fmt: skip
"""``--smoke``: every stage on a few steps (a plumbing check, not a result)."""
