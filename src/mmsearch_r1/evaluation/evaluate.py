"""Evaluation harness: any policy, any dataset in the row schema, three methods, the paper's metrics.

What it does:
- `evaluate(config)` loads the policy and the datasets, runs each method (``direct``, ``rag``,
  ``on_demand``; `mmsearch_r1.agent.rollout`) on each dataset with the configured search engines, scores every
  item (EM, SubEM, and the LLM judge of `mmsearch_r1.evaluation.judge` when configured), and writes
  ``runs/<name>/eval.json`` (config, summaries) and ``runs/<name>/eval_items.jsonl`` (one record per
  item with every turn and tool observation).
- The metrics (EM, SubEM, judge accuracy, both of the paper's search ratios, calls per question by
  type, failures, format, tokens, estimated search cost; per benchmark, method, question category and
  kind, and the mean over benchmarks as in the paper's Table 1) are pure functions over the per-item
  records in `mmsearch_r1.evaluation.metrics`, re-exported here.
- `demo_stage()` evaluates the CPU demo policy on the offline world's test split (``make demo``).

What it does not: no plotting or run comparison (`mmsearch_r1.evaluation.analysis`), no training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmsearch_r1.evaluation.judge import JudgeConfig, JudgeItem, LLMJudge
from mmsearch_r1.evaluation.metrics import (  # noqa: F401 - re-exported: the metrics are part of this API
    METHOD_LABELS,
    behaviour,
    score_record,
    summarize,
    summarize_groups,
)


@dataclass
class EvalConfig:
    """One evaluation run."""

    name: str = "eval"
    """Run folder name: results go to ``<out_dir>/<name>/``."""
    policy: str = "runs/demo_grpo/final"
    """What `policy.load.load_policy` loads: ``tiny``, ``demo``, ``demo-sft``, a run's ``final/`` folder, a hub id."""
    datasets: list[str] = field(default_factory=lambda: ["world:test"])
    """Datasets: ``world:<split>``, ``synthetic``, a ``.parquet`` / ``save_to_disk`` path, or
    ``bench:<name>[@<path>]`` (``data.benchmarks.load_benchmark``: fvqa_test, infoseek, mmsearch, simplevqa, livevqa)."""
    methods: list[str] = field(default_factory=lambda: ["direct", "rag", "on_demand"])
    """Methods to run (see `mmsearch_r1.agent.rollout`)."""
    engine: str = "local"
    """Search engines: ``local`` (offline world index), ``synthetic``, ``web``, ``fvqa-cache``, ``none``."""
    index_dir: str = ""
    """Local index folder (empty: the tools' default)."""
    cache_mode: str = "off"
    """Search cache mode: ``off``, ``read-write``, ``replay-only``."""
    cache_path: str = "data/cache/search.sqlite"
    """Search cache file."""
    max_items: int | None = None
    """Evaluate at most this many items per dataset (seeded subsample); None: all."""
    seed: int = 0
    """Seed for subsampling and sampling."""
    max_turns: int = 3
    """Assistant turns per rollout (paper: 3). Budgets and grammar should match the policy's training."""
    image_budget: int = 1
    """Image searches per rollout at most (paper: 1)."""
    text_budget: int = 2
    """Text searches per rollout at most (paper: 2)."""
    grammar: str = "strict"
    """``strict`` (the paper's four sequences, enforced by `SearchEnv`) or ``flexible``."""
    image_k: int = 5
    """Image-search hits shown to the policy (paper: 5; the CPU demo trains with 3)."""
    text_k: int = 5
    """Text-search pages shown to the policy (paper: 5; the CPU demo trains with 3)."""
    env_from_training: bool = True
    """When the policy is a training run's ``final/`` folder, take the budgets, grammar and hit counts
    from the run's ``config.json`` so that the policy meets the observations it was trained on."""
    max_new_tokens: int = 160
    """Tokens per assistant turn at most."""
    temperature: float = 0.0
    """0: greedy (the paper's evaluation)."""
    batch_size: int = 8
    """Sequences per generate call."""
    bf16: bool = False
    """Generate with the weights in bf16 and the attention in fp32 (`mmsearch_r1.policy.bf16`): about twice
    as fast on a CPU with native bf16 matmuls; a GPU user sets the dtype when loading instead."""
    backend: str = "hf"
    """Generation: ``hf`` (transformers ``generate``, CPU or GPU) or ``vllm`` (GPU; the policy must be a
    full checkpoint folder or hub id that vLLM can load)."""
    judge: bool = False
    """Score with the LLM judge too (needs an endpoint: `JudgeConfig` / env ``MMSEARCH_JUDGE_BASE_URL``)."""
    judge_config: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge's endpoint, model and cache."""
    image_call_cost: float = 0.015
    """Estimated dollars per image search on the web engines (one SerpAPI Google Lens request)."""
    text_call_cost: float = 0.0185
    """Estimated dollars per text search (SerpAPI search + 5 Jina reads + 5 LLM summaries)."""
    out_dir: str = "runs"
    """Parent folder of run folders."""
    progress: bool = True
    """Show progress bars."""
    resume: bool = True
    """Keep what an earlier, stopped run of the same settings and policy finished: every (dataset, method)
    whose records are all in ``eval_items.jsonl`` is not run again. False: start over."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def apply_judge(
    records: list[dict], judge: LLMJudge, images: dict | None = None, *, progress: bool = False
) -> None:
    """Judge every record's prediction (in place: ``judge``, ``judge_source``, ``judge_reason``)."""
    items = [
        JudgeItem(r["question"], r.get("answer") or "", r.get("prediction"), list(r.get("aliases") or []),
                  (images or {}).get(r.get("data_id")))
        for r in records
    ]  # fmt: skip
    for r, v in zip(records, judge.judge_many(items, progress=progress), strict=True):
        r["judge"], r["judge_source"], r["judge_reason"] = v.correct, v.source, v.reason


# -- the harness ----------------------------------------------------------------------------------------


ENV_FIELDS = ("max_turns", "image_budget", "text_budget", "grammar", "image_k", "text_k")


def _training_env(cfg: EvalConfig) -> dict | None:
    """The search settings of the training run whose ``final/`` folder is the policy (None if not a run)."""
    path = Path(str(cfg.policy))
    if str(cfg.policy) == "demo-sft":
        from mmsearch_r1.policy.load import DEMO_SFT_DIR

        path = Path(DEMO_SFT_DIR)
    run_cfg = path.parent / "config.json"
    if path.name != "final" or not run_cfg.is_file():
        return None
    data = json.loads(run_cfg.read_text())
    env = data.get("env") if isinstance(data.get("env"), dict) else None
    if env is not None:  # a warm-start run: its EnvConfig, nested
        budgets = env.get("budgets") or {}
        data = {"max_turns": budgets.get("max_turns"), "image_budget": budgets.get("image"),
                "text_budget": budgets.get("text"), **{k: env.get(k) for k in ("grammar", "image_k", "text_k")}}  # fmt: skip
    return {k: data[k] for k in ENV_FIELDS if data.get(k) is not None} or None


def load_dataset_spec(spec: str, *, max_items: int | None = None, seed: int = 0):
    """Rows in the row schema for one `EvalConfig.datasets` entry; returns ``(label, dataset)``."""
    from mmsearch_r1.rl.data import load_rows

    if spec.startswith("bench:"):
        from mmsearch_r1.data.benchmarks import load_benchmark

        rest = spec[len("bench:") :]
        name, _, path = rest.partition("@" if "@" in rest else "=")
        ds = load_benchmark(name, path or None)
        if max_items is not None and max_items < len(ds):
            ds = ds.shuffle(seed=seed).select(range(max_items))
        return name, ds
    base, _, split = spec.partition(":")
    label = spec.replace(":", "-") if base == "world" else Path(spec).stem or spec
    return label, load_rows(base, split or "test", max_rows=max_items, seed=seed)


def make_eval_engines(config: EvalConfig):
    """The search engines of an evaluation (the same builder as training)."""
    from mmsearch_r1.rl.data import make_train_engines

    ns = SimpleNamespace(engine=config.engine, index_dir=config.index_dir, cache_mode=config.cache_mode,
                         cache_path=config.cache_path, run_dir=config.run_dir)  # fmt: skip
    return make_train_engines(ns, run_dir=config.run_dir)


def _append(path: Path, records: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_key(cfg: EvalConfig) -> str:
    """What an item record must have been made with to be kept by `EvalConfig.resume`: the settings that
    change an answer, and the policy folder's ``config.json`` time (a retrained policy runs again)."""
    import hashlib

    skip = {"name", "out_dir", "progress", "resume", "methods", "datasets", "max_items", "judge_config"}
    key = {k: v for k, v in asdict(cfg).items() if k not in skip}
    conf = Path(str(cfg.policy)) / "config.json"
    key["policy_time"] = conf.stat().st_mtime if conf.is_file() else None
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(items_path: Path, key: str) -> dict[tuple[str, str], list[dict]]:
    """The records of ``items_path`` made with ``key``, grouped by (benchmark, method)."""
    from mmsearch_r1.data.schema import read_jsonl

    groups: dict[tuple[str, str], list[dict]] = {}
    if items_path.is_file():
        for r in read_jsonl(items_path, append_only=True):
            if r.get("run_key") == key:
                groups.setdefault((r.get("benchmark"), r.get("method")), []).append(r)
    return groups


def evaluate(
    config: EvalConfig | None = None,
    *,
    policy=None,
    datasets: dict | None = None,
    engines=None,
    generator=None,
) -> dict:
    """Run the evaluation and write ``eval.json`` / ``eval_items.jsonl``; returns the eval.json dict.

    ``policy`` (a `policy.load.Policy` or a ``(model, processor)`` pair), ``datasets`` (``{label: rows}``),
    ``engines`` and ``generator`` replace what the config would load (tests, notebooks).
    """
    from mmsearch_r1.agent.env import policy_env_factory
    from mmsearch_r1.agent.rollout import HFGenerator, RolloutConfig, rollout

    cfg = config or EvalConfig()
    t0 = time.perf_counter()
    if cfg.backend not in ("hf", "vllm"):
        raise ValueError(f"EvalConfig.backend must be 'hf' or 'vllm', got {cfg.backend!r}.")
    named = policy is None and generator is None  # the policy is cfg.policy's: `EvalConfig.resume` may apply
    if policy is None and cfg.backend == "vllm" and generator is None:
        from mmsearch_r1.agent.rollout import RolloutConfig, VLLMGenerator
        from mmsearch_r1.policy.processor import load_processor

        policy = (None, load_processor(cfg.policy))
        sampling = RolloutConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed
        )
        generator = VLLMGenerator(cfg.policy, sampling)
    if policy is None:
        from mmsearch_r1.policy.load import load_policy

        policy = load_policy(cfg.policy)
    if cfg.bf16:
        from mmsearch_r1.policy.bf16 import to_bf16_generation

        to_bf16_generation(policy.model if hasattr(policy, "model") else policy[0])
    model, processor = (policy.model, policy.processor) if hasattr(policy, "processor") else policy
    if datasets is None:
        datasets = dict(load_dataset_spec(s, max_items=cfg.max_items, seed=cfg.seed) for s in cfg.datasets)
    engines = engines if engines is not None else make_eval_engines(cfg)
    env_from = _training_env(cfg) if cfg.env_from_training else None
    if env_from:
        cfg = EvalConfig(**{**cfg.__dict__, **env_from})
    factory = policy_env_factory(engines, cfg, processor)  # the same rules and thumbnails as training
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    items_path = run_dir / "eval_items.jsonl"
    key = run_key(cfg)
    earlier = _finished(items_path, key) if cfg.resume and named else {}
    items_path.write_text("", encoding="utf-8")
    judge = LLMJudge(cfg.judge_config) if cfg.judge else None
    cost = {"image_call_cost": cfg.image_call_cost, "text_call_cost": cfg.text_call_cost}
    all_records: list[dict] = []
    for label, ds in datasets.items():
        rows = [dict(r) for r in ds]
        for method in cfg.methods:
            kept = earlier.get((label, method), [])
            if kept and sorted(str(r.get("data_id")) for r in kept) == sorted(
                str(r.get("data_id")) for r in rows
            ):
                _append(items_path, kept)  # finished by an earlier run of the same settings
                all_records.extend(kept)
                continue
            rcfg = RolloutConfig(method=method, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed,
                                 progress=cfg.progress)  # fmt: skip
            gen = generator or HFGenerator(model, processor, rcfg)
            recs = rollout(rows, processor, gen, factory, rcfg, desc=f"{label} {method}")
            recs = [score_record(r, benchmark=label) for r in recs]
            if judge is not None:
                apply_judge(recs, judge, {r["data_id"]: r["image"] for r in rows}, progress=cfg.progress)
            recs = [{**r, "policy": cfg.policy, "run_key": key} for r in recs]
            _append(items_path, recs)
            all_records.extend(recs)
    try:
        from mmsearch_r1.tools.engines import engine_stats

        stats = engine_stats(engines)
    except Exception:  # noqa: BLE001 - stats are informative only
        stats = {}
    cfg_dict = asdict(cfg)
    result = {
        "name": cfg.name,
        "policy": cfg.policy,
        "config": cfg_dict,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env_from_training": env_from,
        "n_items": len(all_records),
        **summarize_groups(all_records, **cost),
        "engine_stats": stats,
        "judge_stats": None if judge is None else {"calls": judge.calls, "failures": judge.failures},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_json(run_dir / "eval.json", result)
    return result


def load_eval(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """``(eval.json, eval_items records)`` of a run folder (records empty if the jsonl is missing).

    ``eval_items.jsonl`` is appended to as the evaluation goes: a last line cut by a kill is skipped with
    a warning (`mmsearch_r1.data.schema.read_jsonl`, append-only mode).
    """
    from mmsearch_r1.data.schema import read_jsonl

    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run mmsearch_r1.evaluation.evaluate.evaluate (notebook 05) first."
        )
    return json.loads(path.read_text()), read_jsonl(run_dir / "eval_items.jsonl", append_only=True)


def results_table(result: dict) -> list[dict]:
    """Flat rows (benchmark, method, metrics) of an eval.json dict, for display."""
    rows = []
    for bench, by_method in result["benchmarks"].items():
        for method, s in by_method.items():
            a = s["all"]
            rows.append({"benchmark": bench, "method": METHOD_LABELS.get(method, method), "n": a["n"],
                         "acc": a["acc"], "em": a["em"], "subem": a["subem"], "judge": a["judge_acc"],
                         "sr_any": a["sr_any"], "sr_calls": a["sr_calls"], "img/q": a["image_calls_per_q"],
                         "txt/q": a["text_calls_per_q"], "tokens/q": a["model_tokens_per_q"],
                         "cost/q $": a["est_cost_per_q"]})  # fmt: skip
    return rows


DEMO_EVAL_ITEMS = 16
"""Test questions per method in ``make demo`` (the 135M demo policy needs seconds per rollout on 2 cores)."""


def _print_rows(result: dict) -> None:
    for row in results_table(result):
        print(f"[eval] {result['name']:<18} {row['benchmark']:<12} {row['method']:<10} n={row['n']:<4} "
              f"acc={row['acc']:.3f} SR(any)={row['sr_any']:.2f} SR(calls)={row['sr_calls']:.2f} "
              f"img/q={row['img/q']:.2f} txt/q={row['txt/q']:.2f}")  # fmt: skip


def demo_stage(**changes) -> list[dict]:
    """``make demo``'s evaluation: direct, RAG and on-demand on the world test split with the GRPO policy.

    ``changes`` override `EvalConfig` fields (e.g. ``max_items``). The base and warm-start policies'
    answer-behaviour breakdown needs their own evaluations (notebook 05 with ``policy="demo"`` /
    ``"demo-sft"``); the penalty ablations are the miniature's (``make reproduce``).
    """
    from mmsearch_r1.rl.config import preset

    demo = preset("cpu_demo")
    changes.setdefault("max_items", DEMO_EVAL_ITEMS)
    for key in ENV_FIELDS:  # the demo policies were trained with the cpu_demo preset's search settings
        changes.setdefault(key, getattr(demo, key))
    policy = changes.pop("policy", None)
    if policy is None:
        from mmsearch_r1.policy.load import DEMO_SFT_DIR

        candidates = [("runs/demo_grpo/final", Path("runs/demo_grpo/final")), ("demo-sft", DEMO_SFT_DIR)]
        policy = next((name for name, path in candidates if path.is_dir()), "demo")
        if policy == "demo":
            print("[eval] no trained or warm-started policy under runs/: evaluating the base demo policy")
    result = evaluate(EvalConfig(**{"name": "demo_eval", "policy": policy, **changes}))
    _print_rows(result)
    return [result]


def format_trajectory(rec: dict, *, width: int = 300) -> str:
    """A readable transcript of one item record: question, each turn, each observation, the verdicts."""
    lines = [
        f"[{rec.get('method')}] {rec.get('data_id')}: {rec.get('question')}  (gold: {rec.get('answer')})"
    ]
    obs = iter(rec.get("observations", []))
    for i, turn in enumerate(rec.get("turns", []), 1):
        tag = " (scripted)" if turn.get("scripted") else ""
        lines.append(f"  assistant {i}{tag}: {turn['text'][:width]}")
        if turn.get("tool_calls") and i < len(rec.get("turns", [])):
            o = next(obs, None)
            if o is not None:
                lines.append(f"  tool [{o['tool']}, {o.get('status')}]: {o['text'][:width]}")
    lines.append(f"  prediction: {rec.get('prediction')!r}  EM={rec.get('em')}  judge={rec.get('judge')}")
    return "\n".join(lines)
