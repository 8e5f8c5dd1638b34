"""What reinforcement learning adds to the warm start, on entities and wordings it never trained on.

What it does (``python -m mmsearch_r1.rl_vs_sft``, ``make reproduce-demo``), each stage skipped when its
output exists, so a killed or timed-out run resumes where it stopped (GRPO from its last checkpoint):

1. `data_stage`: the world's question pool with every template in many wordings (`data.wordings`). The
   train split's entities are split again, with a seed, into warm-start entities and RL entities, so that
   RL never sees an entity whose answers SFT trained on (it would learn per-entity shortcuts otherwise);
   both ask in training wordings only. The test split is asked twice: in the templates' own words and in
   held-out wordings (same entities, same query images). Saved with ``save_to_disk`` under
   ``<root>/data`` (rows keep ``entity_id``, ``template`` and ``wording``).
2. `warmstart_stage`: two warm starts of the CPU demo policy on the warm-start entities: ``agnostic``
   (the choice to search drawn at random per question kind, direct answers state the base model's own
   probe answer: `sft.trajectories.agnostic_plan`) and ``labelled`` (trajectories written from the probe's
   knowledge boundary, the demo's default).
3. `grpo_stage`: GRPO runs from them on the RL entities (`RUNS`: penalty and seed per label), with the
   settings of `StudyConfig`.
4. `eval_stage`: every policy, greedy, on every test question: on demand, the RAG workflow and direct
   answers, in both wordings (`evaluation.evaluate`, one run folder per policy and wording).
   Each finished evaluation and GRPO run's training choices are also saved small in ``records_dir``
   (committed): checkpoints stay on the machine that trained them, results travel with the repository.
5. `report` (from those records only): ``figures/rl_vs_sft.json`` and ``figures/rl_vs_sft.png``: per policy accuracy on demand with a
   95% bootstrap interval, RAG and direct accuracy, calls and share searched, and the search rate on text
   facts the base model knows against those it does not (the probe's knowledge boundary). `table` and
   `curves` (the text-search rate on known and unknown facts over GRPO steps) and `payoffs` (what looking a
   fact up or answering it earned in training), both from `training_rollouts`, serve notebook 07;
   ``StudyConfig(smoke=True)`` runs every stage with the tiny policy in about half a minute.

What it does not: no new training or evaluation code (it calls `sft.warmstart`, `rl.train` and
`evaluation.evaluate`); it never selects anything on the test split.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mmsearch_r1.data.schema import read_jsonl, write_jsonl
from mmsearch_r1.evaluation.comparison import METHODS, plot, summarize_run

RUNS: dict[str, dict] = {
    "agnostic_ws": {"warmstart": "agnostic"},
    "agnostic_grpo": {"warmstart": "agnostic", "penalty": None, "seed": 0},
    "agnostic_grpo_seed1": {"warmstart": "agnostic", "penalty": None, "seed": 1},
    "agnostic_grpo_p0": {"warmstart": "agnostic", "penalty": 0.0, "seed": 0},
    "labelled_ws": {"warmstart": "labelled"},
    "labelled_grpo": {"warmstart": "labelled", "penalty": None, "seed": 0},
}
"""The compared policies: a warm start alone, or GRPO from it (``penalty`` None: `StudyConfig.penalty`)."""
WORDINGS = ("heldout", "template")
"""The two wordings of the test questions: held-out wordings (the headline) and the templates' own."""


@dataclass
class StudyConfig:
    """Settings of the comparison (defaults: the CPU demo policy on 2 cores)."""

    root: str = "runs/rl_vs_sft"
    """Where every stage writes (data, warm starts, GRPO runs, evaluations)."""
    figures_dir: str = "figures"
    """Where ``rl_vs_sft.json`` and ``rl_vs_sft.png`` go."""
    records_dir: str = "figures/rl_vs_sft_records"
    """Where each finished evaluation and GRPO run leaves its results small enough to commit: per question
    and method the score and calls (``evals/<label>_<wording>.jsonl``), per training rollout on a fact the
    choice and reward (``rollouts/<label>.jsonl``). The report and notebook 07 read only these, so a lost
    machine loses checkpoints (``root``), not results."""
    seed: int = 0
    """Seed of the pool, the entity split between warm start and RL, and the bootstrap."""
    rl_entity_share: float = 0.5
    """Share of the train split's entities kept for RL (the rest are the warm start's)."""
    train_wordings_per_row: int = 2
    """Training wordings per (entity, template) in the warm-start and RL rows."""
    penalty: float = 0.7
    """The search penalty of the GRPO runs with one. With reward ``0.9 * acc * (1 - p)**calls + 0.1 * format``
    a direct answer pays when it is right more often than (1 - p) times a search is. The warm-started 135M
    policy names a fact its language model knows only 0.25-0.50 of the times it answers directly (against
    0.69-0.87 looked up, in GRPO's own rollouts at 0.5): at 0.5 answering and looking up earned the same and
    GRPO learned no boundary; at 0.7 a direct answer pays above 30% of a look-up's accuracy, so known facts
    pay to answer and unknown ones (right about one time in ten) still pay to look up (docs/results.md)."""
    penalty_mode: str = "per_call"
    """How the penalty counts searches (`protocol.rewards.penalty_factor`): ``per_call``, (1 - p) per search.
    With the paper's ``once`` a text search after the image search that names the entity costs nothing more,
    so the choice to look up a fact the model knows is never penalised on image-then-fact questions."""
    temperature: float = 0.7
    """Sampling temperature of GRPO's rollouts: at 1.0 the 135M model's recall of facts it knows falls
    to about half, so direct answers never pay; 0.7 keeps its knowledge usable while still exploring."""
    max_steps: int = 150
    """GRPO steps per run (8 rollouts a step; a step takes about half a minute on one of the 2 cores, so two
    runs go side by side: times in docs/results.md)."""
    prompts_per_step: int = 2
    """Questions per GRPO step."""
    num_generations: int = 4
    """Rollouts per question."""
    save_steps: int = 10
    """Checkpoint every this many steps (a stopped run resumes from the last)."""
    eval_items: int | None = 300
    """Test questions per wording (a seeded sample: the same questions in both wordings); None: all 472.
    Each policy answers every question three ways (on demand, RAG, direct) in two wordings: 300 questions
    take about half an hour per wording on one core."""
    eval_batch_size: int = 16
    """Sequences per generate call in the evaluation."""
    bootstrap: int = 1000
    """Bootstrap resamples of the test questions for the 95% intervals."""
    smoke: bool = False
    """Tiny sizes (the tiny policy, 24 entities, 2 GRPO steps, 4 test questions) under ``runs/smoke/``, for
    tests: it checks that the stages run, not what they find."""

    def __post_init__(self):
        if self.smoke:  # under runs/smoke/ unless chosen; tiny sizes
            if self.root == StudyConfig.root:
                self.root = "runs/smoke/rl_vs_sft"
            if self.figures_dir == StudyConfig.figures_dir:
                self.figures_dir = str(Path(self.root) / "figures")
            if self.records_dir == StudyConfig.records_dir:
                self.records_dir = str(Path(self.root) / "records")
            self.max_steps, self.eval_items, self.bootstrap = 2, 4, 100

    @property
    def data_dir(self) -> Path:
        return Path(self.root) / "data"


def _done(path: Path) -> bool:
    return path.exists()


def data_stage(cfg: StudyConfig, world=None) -> Path:
    """Write the study's question pool (see the module docstring) and return its folder (``world``:
    the offline world by default)."""
    import datasets

    from mmsearch_r1.data.questions import QuestionConfig, build_pool
    from mmsearch_r1.data.world.build import build_world

    out = cfg.data_dir / "pool"
    if _done(out / "dataset_dict.json"):
        return out
    world = world or build_world()
    few = {"max_entities": 24} if cfg.smoke else {}
    train = build_pool(world, QuestionConfig(seed=cfg.seed, wordings="train",
                                             wordings_per_row=cfg.train_wordings_per_row, **few))  # fmt: skip
    entities = sorted(set(train["train"]["entity_id"]))
    rl = set(random.Random(cfg.seed).sample(entities, round(cfg.rl_entity_share * len(entities))))
    splits = {
        "sft_train": train["train"].filter(lambda e: e not in rl, input_columns="entity_id"),
        "rl_train": train["train"].filter(lambda e: e in rl, input_columns="entity_id"),
        "validation": train["validation"],
        "test_template": build_pool(world, QuestionConfig(seed=cfg.seed, **few))["test"],
        "test_heldout": build_pool(world, QuestionConfig(seed=cfg.seed, wordings="heldout", **few))["test"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    counts = {k: len(v) for k, v in splits.items()} | {
        "rl_entities": len(rl),
        "sft_entities": len(entities) - len(rl),
    }
    (cfg.data_dir / "counts.json").write_text(json.dumps(counts, indent=1))
    return out


def warmstart_stage(cfg: StudyConfig, decision: str) -> Path:
    """The ``agnostic`` or ``labelled`` warm start on the warm-start entities; returns its policy folder."""
    import datasets

    from mmsearch_r1.sft.config import WarmStartConfig
    from mmsearch_r1.sft.warmstart import run_warmstart

    out = Path(cfg.root) / f"{decision}_ws"
    if _done(out / "final" / "config.json"):
        return out / "final"
    pool = datasets.load_from_disk(str(data_stage(cfg)))
    ws = WarmStartConfig(output_dir=str(out), seed=cfg.seed, smoke=cfg.smoke,
                         decision="agnostic" if decision == "agnostic" else "knowledge")  # fmt: skip
    run_warmstart(ws, pool=datasets.DatasetDict(train=pool["sft_train"], validation=pool["validation"]))
    return out / "final"


def train_config(cfg: StudyConfig, label: str):
    """The `TrainConfig` of GRPO run ``label`` (the ``cpu_demo`` preset with the study's settings)."""
    from mmsearch_r1.rl.config import preset

    run = RUNS[label]
    penalty = cfg.penalty if run["penalty"] is None else run["penalty"]
    smoke = {"engine": "local", "max_completion_length": 256} if cfg.smoke else {}
    return preset("tiny" if cfg.smoke else "cpu_demo", **smoke, name=label, output_dir=str(Path(cfg.root) / label), seed=run["seed"], penalty=penalty, penalty_mode=cfg.penalty_mode,
                  model=str(Path(cfg.root) / f"{run['warmstart']}_ws" / "final"),
                  dataset=str(cfg.data_dir / "pool"), dataset_split="rl_train", temperature=cfg.temperature,
                  max_steps=cfg.max_steps, prompts_per_step=cfg.prompts_per_step,
                  num_generations=cfg.num_generations, gradient_accumulation_steps=2,
                  save_steps=cfg.save_steps, save_final=True, log_samples=cfg.prompts_per_step * cfg.num_generations,
                  report_to="none")  # fmt: skip


def grpo_stage(cfg: StudyConfig, label: str) -> Path:
    """GRPO run ``label`` (resumes from its last checkpoint); returns its ``final`` folder."""
    from mmsearch_r1.rl.train import train

    final = Path(cfg.root) / label / "final"
    if not _done(final / "config.json"):
        warmstart_stage(cfg, RUNS[label]["warmstart"])
        train(train_config(cfg, label)).final_dir(label)  # a signal stops the study too, not only this run
    save_rollout_records(cfg)
    return final


def eval_stage(cfg: StudyConfig, label: str, wording: str) -> Path:
    """Greedy on-demand, RAG and direct evaluation of ``label`` on the test questions in ``wording``."""
    from mmsearch_r1.evaluation.evaluate import ENV_FIELDS, EvalConfig, evaluate
    from mmsearch_r1.rl.config import preset

    out = Path(cfg.root) / "eval" / f"{label}_{wording}"
    if _done(out / "eval.json"):
        save_eval_records(cfg, label, wording)
        return out
    policy = (
        grpo_stage(cfg, label) if "penalty" in RUNS[label] else warmstart_stage(cfg, RUNS[label]["warmstart"])
    )
    demo = preset("cpu_demo")
    evaluate(EvalConfig(name=out.name, out_dir=str(out.parent), policy=str(policy), methods=list(METHODS),
                        datasets=[f"{cfg.data_dir / 'pool'}:test_{wording}"], max_items=cfg.eval_items,
                        seed=cfg.seed, batch_size=cfg.eval_batch_size, max_new_tokens=48, bf16=True,
                        **{k: getattr(demo, k) for k in ENV_FIELDS}))  # fmt: skip
    save_eval_records(cfg, label, wording)
    return out


def _stale(source: Path, record: Path) -> bool:
    """A record to (re)write: ``source`` exists and ``record`` is missing or older (a re-run replaces it)."""
    return source.is_file() and (not record.is_file() or record.stat().st_mtime < source.stat().st_mtime)


def save_eval_records(cfg: StudyConfig, label: str, wording: str) -> Path:
    """`evaluation.comparison.compact_records` of a finished evaluation into ``records_dir`` when they are
    missing or older than its ``eval.json``; returns the records' path (absent while nothing finished)."""
    import datasets

    from mmsearch_r1.evaluation.comparison import compact_records
    from mmsearch_r1.evaluation.evaluate import load_eval

    folder = Path(cfg.root) / "eval" / f"{label}_{wording}"
    path = Path(cfg.records_dir) / "evals" / f"{label}_{wording}.jsonl"
    if not _stale(folder / "eval.json", path):
        return path
    test = datasets.load_from_disk(str(cfg.data_dir / "pool"))[f"test_{wording}"]
    rows = {r["data_id"]: r for r in test.select_columns(["data_id", "entity_id", "template", "kind"])}
    write_jsonl(path, compact_records(load_eval(folder)[1], rows, _knowledge(cfg)))
    return path


# -- the report -----------------------------------------------------------------------------------------


def _knowledge(cfg: StudyConfig):
    """The base demo policy's probed knowledge, as ``knows(row)``: True, False or None (probed once per
    process: the report and the training curves read the same verdicts)."""
    return _probed(cfg.smoke)


@functools.cache
def _probed(smoke: bool):
    from mmsearch_r1.data.world.build import build_world
    from mmsearch_r1.policy.demo import cache_root
    from mmsearch_r1.policy.load import load_policy
    from mmsearch_r1.sft.config import WarmStartConfig
    from mmsearch_r1.sft.trajectories import FACT_OF_TEMPLATE, probe_knowledge

    base = load_policy("tiny" if smoke else "demo")
    probe = WarmStartConfig(smoke=smoke).shrink_for_smoke().probe if smoke else WarmStartConfig().probe
    knowledge = probe_knowledge(base.model, base.tokenizer, build_world(), probe,
                                cache_dir=None if smoke else cache_root())  # fmt: skip
    del base

    def knows(row: dict) -> bool | None:
        fact = FACT_OF_TEMPLATE.get(row["template"])
        entry = knowledge.get(f"{row['entity_id']}|{fact}") if fact else None
        return None if entry is None else bool(entry["known"])

    return knows


COMMANDS = ["python -m mmsearch_r1.rl_vs_sft   # = make reproduce-demo; resumes where it stopped"]


def report(cfg: StudyConfig, labels: list[str] | None = None) -> dict:
    """Write ``figures/rl_vs_sft.json`` (and the figure) from the evaluation records in ``records_dir``
    (saving those of finished evaluations under ``root`` first)."""
    runs: dict[str, dict] = {}
    for label in labels or list(RUNS):
        found = {}
        for wording in WORDINGS:
            path = save_eval_records(cfg, label, wording)
            if path.is_file():
                records = read_jsonl(path)
                rows = {r["data_id"]: r for r in records}
                found[wording] = summarize_run(records, rows, lambda row: row["known"],
                                               n_boot=cfg.bootstrap, seed=cfg.seed)  # fmt: skip
                folder = label if "penalty" in RUNS[label] else f"{RUNS[label]['warmstart']}_ws"
                found[wording]["policy"] = str(Path(cfg.root) / folder / "final")
        if "heldout" in found:
            run = RUNS[label]
            runs[label] = {**found["heldout"], "seed": run.get("seed", cfg.seed), "wording": "held-out",
                           "penalty": None if "penalty" not in run else (cfg.penalty if run["penalty"] is None else run["penalty"]),
                           "penalty_mode": cfg.penalty_mode if "penalty" in run else None,
                           "original_templates": found.get("template")}  # fmt: skip
    out = {
        "what": "test entities never trained on, asked in held-out wordings (original_templates: the "
        "templates' own words); greedy; accuracies in percent (exact match), 95% bootstrap intervals",
        "commands": COMMANDS,
        "settings": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    figures = Path(cfg.figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    (figures / "rl_vs_sft.json").write_text(json.dumps(out, indent=1) + "\n")
    if runs:
        plot(out, figures / "rl_vs_sft.png")
    return out


def save_rollout_records(cfg: StudyConfig) -> dict[str, Path]:
    """`evaluation.comparison.fact_rollouts` of every GRPO run whose ``samples.jsonl`` under ``root`` is newer
    than its records (the RL rows and the probe read once for all) into ``records_dir/rollouts``; returns
    every GRPO run's records path, by label."""
    import datasets

    from mmsearch_r1.evaluation.comparison import fact_rollouts

    saved = {k: Path(cfg.records_dir) / "rollouts" / f"{k}.jsonl" for k, r in RUNS.items() if "penalty" in r}
    stale = [k for k in saved if _stale(Path(cfg.root) / k / "samples.jsonl", saved[k])]
    if stale:
        cols = ["data_id", "entity_id", "template", "kind"]
        pool = datasets.load_from_disk(str(cfg.data_dir / "pool"))
        rows = {r["data_id"]: r for r in pool["rl_train"].select_columns(cols)}
        for k in stale:
            write_jsonl(saved[k], fact_rollouts(Path(cfg.root) / k, rows, _knowledge(cfg)))
    return saved


def training_rollouts(cfg: StudyConfig) -> dict[str, list[dict]]:
    """The saved training choices of every GRPO run (`save_rollout_records` first), by label: the input of
    `curves` and `payoffs`."""
    return {k: read_jsonl(p) for k, p in save_rollout_records(cfg).items() if p.is_file()}


def curves(rollouts: dict[str, list[dict]], window: int = 10):
    """`evaluation.comparison.boundary_curve` of every run in ``rollouts`` (`training_rollouts`), with a
    ``run`` column (an empty DataFrame when there is none)."""
    import pandas as pd

    from mmsearch_r1.evaluation.comparison import boundary_curve

    parts = [boundary_curve(seen, window).assign(run=k) for k, seen in rollouts.items()]
    empty = pd.DataFrame(columns=["run", "step", "kind", "facts", "search_rate", "rollouts"])
    return pd.concat(parts, ignore_index=True) if parts else empty


def payoffs(rollouts: dict[str, list[dict]], steps: tuple[int, int] | None = None):
    """`evaluation.comparison.choice_payoffs` of every run in ``rollouts`` (what looking a fact up or
    answering it earned), with a ``run`` column."""
    import pandas as pd

    from mmsearch_r1.evaluation.comparison import choice_payoffs

    cols = ["run", "kind", "facts", "choice", "rollouts", "accuracy", "mean_reward"]
    parts = [choice_payoffs(seen, steps).assign(run=k) for k, seen in rollouts.items()]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def table(result: dict):
    """The report's runs as a DataFrame, one row per policy and wording."""
    import pandas as pd

    rows = []
    for label, r in result["runs"].items():
        for wording, x in (("held-out", r), ("templates", r.get("original_templates"))):
            if x:
                rows.append({"policy": label, "wording": wording, **{k: v for k, v in x.items()
                             if k not in ("original_templates", "policy", "wording")}})  # fmt: skip
    return pd.DataFrame(rows)


def run(cfg: StudyConfig, stages: list[str], labels: list[str]) -> None:
    """The stages in order for ``labels`` (each skipped when its output exists)."""
    if "data" in stages:
        data_stage(cfg)
    for label in labels:
        run_ = RUNS[label]
        if "warmstart" in stages:
            warmstart_stage(cfg, run_["warmstart"])
        if "grpo" in stages and "penalty" in run_:
            grpo_stage(cfg, label)
        if "eval" in stages:
            for wording in WORDINGS:
                eval_stage(cfg, label, wording)
    if "report" in stages:
        print(json.dumps(report(cfg, labels)["runs"], indent=1))


def main(argv: list[str] | None = None) -> int:
    from mmsearch_r1.cli import UserError
    from mmsearch_r1.cli import run as run_cli

    def _main(argv: list[str] | None) -> int:
        stages = ("data", "warmstart", "grpo", "eval", "report")
        parser = argparse.ArgumentParser(
            prog="python -m mmsearch_r1.rl_vs_sft", description=__doc__.splitlines()[0]
        )
        parser.add_argument("--stages", default=",".join(stages), help=f"comma-separated, from {stages}")
        parser.add_argument(
            "--runs", default=",".join(RUNS), help=f"comma-separated labels, from {list(RUNS)}"
        )
        parser.add_argument("--max-steps", type=int, default=StudyConfig.max_steps)
        parser.add_argument("--eval-items", type=int, default=StudyConfig.eval_items,
                            help="test questions per wording (0: all)")  # fmt: skip
        parser.add_argument("--root", default=StudyConfig.root)
        parser.add_argument(
            "--smoke", action="store_true", help="tiny sizes under runs/smoke/ (a check that it runs)"
        )
        args = parser.parse_args(argv)
        chosen, labels = args.stages.split(","), args.runs.split(",")
        bad = [s for s in chosen if s not in stages] + [r for r in labels if r not in RUNS]
        if bad:
            raise UserError(f"unknown stage or run {bad}; stages: {list(stages)}, runs: {list(RUNS)}")
        cfg = StudyConfig(
            root=args.root, max_steps=args.max_steps, eval_items=args.eval_items or None, smoke=args.smoke
        )
        run(cfg, chosen, labels)
        return 0

    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
