"""The two data stages of `make demo`: the world and its pool, then curation with the real policy.

What it does:

* `world_stage`: builds (or loads from cache) the offline world, its search indexes and the question
  pool, and writes the splits to ``data/generated/world_{train_pool,validation,test}.parquet`` with
  `data.schema.write_pool` (what notebook 01 does with its defaults, minus the figures).
* `curation_stage`: search-balanced curation (paper §3.1) of a seeded sample of the training pool with
  the warm-started policy itself: ``k`` sampled rollouts per question without search and ``k`` with
  search (`agent.rollout.curation_rollout_fn`, the same template, parser, `SearchEnv` and budgets as
  training), label, sample to the target free/required ratio, and write the result to the file the
  ``cpu_demo`` training preset reads (``data/generated/world_train.parquet``). (The unbalanced-data
  ablation of Finding 5 runs on the miniature: ``make reproduce``.)

Both are thin: every step is a call into `data.world`, `data.questions`, `data.schema`, `tools`,
`agent.rollout` and `data.curation`. Settings live in `DataStageConfig` and are written beside the data as JSON.

* `ensure_inputs`: what a notebook calls first: builds the demo inputs a run reads and that are missing
  (warm start, world + curation, the demo GRPO run), in `make demo`'s order, with a message each; or,
  told not to build, stops with one line naming the notebook to run.

What it does not: no training (`rl.train`), no evaluation (`evaluation.evaluate`), no figures
(`evaluation.analysis`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class DataStageConfig:
    """Settings of the demo's data stages."""

    out_dir: str = "data/generated"
    """Where the parquet files go (git-ignored)."""
    seed: int = 0
    """Seeds the pool (entity split, perturbations) and the curation sample."""
    n_known: int = 75
    """Prior knowledge boundary of the pool: the n most populous countries count as known."""
    policy: str = "demo-sft"
    """Policy that curates (`policy.load.load_policy`): the warm-started CPU demo policy."""
    curation_questions: int = 16
    """Training-pool questions to curate (seeded sample). The demo's 8 GRPO steps of 2 prompts see 16;
    curation is the demo's dearest stage per question (2 x k rollouts each)."""
    k: int = 2
    """Sampled rollouts per question and mode (paper: 8; 2 keeps the demo within its budget)."""
    temperature: float = 1.0
    """Sampling temperature of the curation rollouts (the training temperature)."""
    free_ratio: float = 0.32
    """Target share of search-free questions after balancing (paper: about 32 %)."""
    max_new_tokens: int = 96
    """Tokens per assistant turn at most during curation."""
    batch_size: int = 16
    """Sequences per generate call."""

    @property
    def train_path(self) -> Path:
        from mmsearch_r1.rl.presets import DEMO_DATASET

        return Path(DEMO_DATASET)


def world_stage(config: DataStageConfig | None = None) -> dict:
    """Build the world, its indexes and the pool; write the splits. Returns sizes and timings."""
    from mmsearch_r1.data import questions
    from mmsearch_r1.data import schema as data
    from mmsearch_r1.data.world.build import WorldConfig, build_world
    from mmsearch_r1.tools.engines import world_indexes

    cfg = config or DataStageConfig()
    t0 = time.perf_counter()
    world = build_world(WorldConfig())
    world_indexes()  # built once, rebuilt only when stale
    known = questions.known_by_population(world, cfg.n_known)
    pool = questions.build_pool(world, questions.QuestionConfig(seed=cfg.seed, known=known))
    splits = {"train_pool": pool["train"], "validation": pool["validation"], "test": pool["test"]}
    written = data.write_pool(splits, cfg.out_dir, "world")
    summary = {
        "entities": len(world),
        "splits": {k: v["rows"] for k, v in written.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"[world] {summary['entities']} entities, splits {summary['splits']}, {summary['seconds']} s")
    return summary


def _curator(cfg: DataStageConfig):
    """The warm-started policy wrapped as curation's ``rollout_fn`` (same env settings as training)."""
    from mmsearch_r1.agent.env import policy_env_factory
    from mmsearch_r1.agent.generation import HFGenerator
    from mmsearch_r1.agent.rollout import RolloutConfig, curation_rollout_fn
    from mmsearch_r1.policy.load import load_policy
    from mmsearch_r1.rl.config import preset
    from mmsearch_r1.rl.data import make_train_engines

    demo = preset("cpu_demo")
    policy = load_policy(cfg.policy)
    engines = make_train_engines(demo)
    factory = policy_env_factory(engines, demo, policy.processor)
    rcfg = RolloutConfig(
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    gen = HFGenerator(policy.model, policy.processor, rcfg)
    return curation_rollout_fn(policy.processor, gen, factory, rcfg)


def curation_stage(config: DataStageConfig | None = None) -> dict:
    """Curate a sample of the training pool with the warm-started policy; write the RL training set."""
    from mmsearch_r1.data import schema as data
    from mmsearch_r1.data.curation import CurationConfig, curate

    cfg = config or DataStageConfig()
    t0 = time.perf_counter()
    pool_path = Path(cfg.out_dir) / "world_train_pool.parquet"
    if not pool_path.is_file():
        raise FileNotFoundError(f"{pool_path} is missing: run the world stage first (pipeline.world_stage)")
    pool = data.load_fvqa_parquet(pool_path)
    sample = pool.shuffle(seed=cfg.seed).select(range(min(cfg.curation_questions, len(pool))))
    result = curate(
        sample,
        _curator(cfg),
        CurationConfig(k=cfg.k, free_ratio=None, seed=cfg.seed, batch_size=len(sample)),
    )
    stats = dict(result.stats)
    labelled = result.dataset  # every answered question, labelled by the policy's own rollouts
    rows = _resample(labelled, cfg.free_ratio, cfg.seed)
    data.write_fvqa_parquet(rows, cfg.train_path, data_source="mmsearch_r1/world_train_balanced")
    free = sum(c == "search_free" for c in rows["category"])
    written = {"balanced": {"path": str(cfg.train_path), "rows": len(rows), "search_free": free}}
    summary = {"config": asdict(cfg), "curation": stats, "written": written}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    Path(cfg.out_dir, "curation.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[curation] {stats} -> {written} in {summary['seconds']} s")
    return summary


def _resample(labelled, free_ratio: float, seed: int):
    """Sample labelled rows to a free/required ratio, keeping as many rows as that ratio allows."""
    from mmsearch_r1.data.curation import balanced_sample

    labels = dict(zip(labelled["data_id"], labelled["category"], strict=True))
    try:
        keep = set(balanced_sample(labels, free_ratio, None, seed, min_keep=0.0))
    except ValueError as exc:  # a class is empty: the policy's own labels cannot meet the ratio
        print(f"[curation] keeping every labelled row: {exc}")
        keep = set(labels)
    return labelled.select([i for i, d in enumerate(labelled["data_id"]) if d in keep])


DEMO_GRPO_FINAL = "runs/demo_grpo/final"
"""The demo GRPO run's policy (notebook 03 with its defaults, and ``make demo``), which notebook 05 reads."""


def _has_policy(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def ensure_inputs(model: str = "", dataset: str = "", *, build: bool = True) -> list[str]:
    """Build the demo inputs that ``model``/``dataset`` name and that are missing; return the steps run.

    Known inputs: ``model="demo-sft"`` (the warm start, notebook 02, ~11 min on 2 cores), ``dataset`` =
    the curated demo set (world pool + curation with the warm-started policy, ~3 min) and ``model`` =
    `DEMO_GRPO_FINAL` (the demo GRPO run, ~6 min, after the two before). Anything else is left to
    `load_policy` / `load_rows`, which name what is wrong. With ``build=False`` a missing input raises
    one `UserError` naming the notebook or command that makes it.
    """
    from mmsearch_r1.cli import UserError
    from mmsearch_r1.policy.load import DEMO_SFT_DIR
    from mmsearch_r1.rl.presets import DEMO_DATASET

    cfg = DataStageConfig()
    needs = []
    if model in ("demo-sft", DEMO_GRPO_FINAL) and not _has_policy(DEMO_SFT_DIR):
        needs.append(("warm start", f"{DEMO_SFT_DIR}", "notebooks/02_warmstart.ipynb"))
    if (dataset == DEMO_DATASET or model == DEMO_GRPO_FINAL) and not Path(DEMO_DATASET).is_file():
        needs.append(("curated training set", DEMO_DATASET, "notebooks/01_data.ipynb"))
    if model == DEMO_GRPO_FINAL and not _has_policy(Path(DEMO_GRPO_FINAL)):
        needs.append(("GRPO run", DEMO_GRPO_FINAL, "notebooks/03_train.ipynb"))
    if needs and not build:
        what = "; ".join(f"{path} (the {step}) is missing: run {nb}" for step, path, nb in needs)
        raise UserError(f"{what}, or make demo, or set build_missing=True")
    done = []
    for step, path, _ in needs:
        print(f"[inputs] {path} is missing: building the {step} as make demo does", flush=True)
        if step == "warm start":
            from mmsearch_r1.sft.warmstart import demo_stage as warm_start

            warm_start()
        elif step == "curated training set":
            if not (Path(cfg.out_dir) / "world_train_pool.parquet").is_file():
                world_stage(cfg)
            curation_stage(cfg)
        else:
            from mmsearch_r1.rl.train import demo_stage as grpo

            grpo()
        done.append(step)
    return done
