"""Figures and tables of the miniature's Finding 5 ablation, from its run folders only (no recomputation).

What it does: reads ``runs/miniature_<name>/`` (``config.json``, ``metrics.jsonl``, ``eval.json`` as
`mmsearch_r1.miniature.run` writes them) and draws, with seaborn,
- `plot_curves`: reward and search ratio per GRPO step (10-step rolling mean), and the search ratio on
  search-free and search-required training prompts, for every run: penalty 0.1 vs 0 and balanced vs
  unbalanced data (the layout of the paper's Figure 5b);
- `plot_frontier`: accuracy against search ratio after RL, one point per penalty (on-demand, greedy),
  with the warm start forced to search (always) and forced to answer (never) as reference points, on the
  questions RL trained on and on the held-out test questions;
- `table`: one row per run: final training search ratio, and after RL on the training and test
  questions: accuracy and search ratio (all, search-free, search-required) against the forced search.
`demo_stage` writes ``figures/miniature_curves.png``, ``figures/miniature_frontier.png`` and
``figures/miniature_table.md``.

What it does not: no training or evaluation (`mmsearch_r1.miniature.run`), no figures of the CPU demo
policy's runs (`mmsearch_r1.evaluation.analysis`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmsearch_r1.data.schema import read_jsonl
from mmsearch_r1.evaluation.analysis import save_figure

PREFIX = "miniature_"
"""Run folders of the miniature start with this."""


def load_runs(runs_dir: str | Path = "runs") -> dict[str, dict]:
    """``{name: {"config", "metrics", "eval"}}`` for every finished miniature run (one with eval.json)."""
    out = {}
    for path in sorted(Path(runs_dir).glob(f"{PREFIX}*/eval.json")):
        run = path.parent
        metrics = read_jsonl(run / "metrics.jsonl", append_only=True)
        out[run.name[len(PREFIX) :]] = {
            "config": json.loads((run / "config.json").read_text()),
            "metrics": metrics,
            "eval": json.loads(path.read_text()),
        }
    return out


def curves(runs: dict[str, dict], window: int = 10) -> pd.DataFrame:
    """Long frame (run, step, metric, value) of the per-step training metrics, rolling mean over ``window``."""
    frames = []
    for name, run in runs.items():
        m = pd.DataFrame(run["metrics"]).set_index("step")[["reward", "search_ratio"]]
        c = pd.DataFrame(run["eval"].get("curve", []))
        if len(c):
            m = m.join(c.set_index("step")[["sr_search_free", "sr_search_required"]], how="left")
        m = m.rolling(window, min_periods=1).mean().reset_index()
        long = m.melt(id_vars="step", var_name="metric", value_name="value")
        long["run"] = name
        frames.append(long)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _label(metric: str) -> str:
    return {"reward": "reward", "search_ratio": "search ratio (all)",
            "sr_search_free": "search ratio, search-free prompts",
            "sr_search_required": "search ratio, search-required prompts"}[metric]  # fmt: skip


def plot_curves(df: pd.DataFrame, path: str | Path) -> Path:
    """Reward and search ratios per step, one line per run (the paper's Figure 5b layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    df = df.assign(metric=df["metric"].map(_label))
    g = sns.relplot(data=df, x="step", y="value", hue="run", col="metric", kind="line", col_wrap=2,
                    height=3.0, aspect=1.4, facet_kws={"sharey": False})  # fmt: skip
    g.set_titles("{col_name}")
    g.figure.suptitle("Miniature GRPO runs (10-step rolling mean of the training rollouts)", y=1.02)
    return save_figure(g.figure, path)


def _point(ev: dict, method: str, split: str) -> dict | None:
    s = (ev.get(method) or {}).get(split, {}).get("all")
    return {"accuracy": s["accuracy"], "search_ratio": s["search_ratio"]} if s else None


def frontier(runs: dict[str, dict]) -> pd.DataFrame:
    """Accuracy and search ratio after RL (on-demand, greedy) per balanced run, on train and test, with
    the warm start's forced-search and forced-answer points (from any run's ``before``)."""
    rows = []
    for run in runs.values():
        ev = run["eval"]
        for split in ("train", "test"):
            if ev.get("split") == "rl_balanced" and (p := _point(ev.get("after", {}), "on_demand", split)):
                rows.append(
                    {"policy": f"RL p={ev['penalty']:g}", "penalty": ev["penalty"], "split": split, **p}
                )
    before = next((r["eval"].get("before") for r in runs.values() if r["eval"].get("before")), None)
    for method, label in (("forced_search", "forced search (warm start)"), ("forced_answer", "forced answer (warm start)"),
                          ("on_demand", "on-demand (warm start)")):  # fmt: skip
        for split in ("train", "test"):
            if before and (p := _point(before, method, split)):
                rows.append({"policy": label, "penalty": None, "split": split, **p})
    return pd.DataFrame(rows)


def plot_frontier(df: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy vs search ratio, one panel per split (questions RL trained on; held-out test)."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    g = sns.relplot(data=df, x="search_ratio", y="accuracy", hue="policy", col="split", s=80, height=3.4)
    for ax in g.axes.flat:
        ax.set_xlim(-0.05, 1.05)
    g.set_titles("{col_name} questions")
    g.figure.suptitle("Miniature: accuracy vs search ratio after RL (greedy)", y=1.03)
    return save_figure(g.figure, path)


def table(runs: dict[str, dict]) -> pd.DataFrame:
    """One row per run: final training search ratio; after RL, accuracy and search ratios vs RAG."""
    rows = []
    for name, run in runs.items():
        ev = run["eval"]
        row = {"run": name, "penalty": ev["penalty"], "data": ev["split"], "steps": ev["steps"],
               "train SR (last 10 steps)": ev.get("train_search_ratio_last10")}  # fmt: skip
        for split in ("train", "test"):
            od = ev.get("after", {}).get("on_demand", {}).get(split, {})
            rag = ev.get("after", {}).get("forced_search", {}).get(split, {}).get("all", {})
            if not od:
                continue
            row[f"{split} acc"] = od["all"]["accuracy"]
            row[f"{split} forced-search acc"] = rag.get("accuracy")
            row[f"{split} SR"] = od["all"]["search_ratio"]
            row[f"{split} SR free"] = od.get("search_free", {}).get("search_ratio")
            row[f"{split} SR required"] = od.get("search_required", {}).get("search_ratio")
        rows.append(row)
    return pd.DataFrame(rows)


def demo_stage(runs_dir: str | Path = "runs", figures_dir: str | Path = "figures") -> dict:
    """Draw the miniature's figures and table if its runs exist; returns the paths written."""
    runs = load_runs(runs_dir)
    if not runs:
        print(f"[miniature figures] no {PREFIX}*/eval.json under {runs_dir}/: nothing to draw")
        return {}
    figures_dir = Path(figures_dir)
    written = {"curves": str(plot_curves(curves(runs), figures_dir / "miniature_curves.png"))}
    fr = frontier(runs)
    if len(fr):
        written["frontier"] = str(plot_frontier(fr, figures_dir / "miniature_frontier.png"))
    tab = table(runs).round(3)
    figures_dir.mkdir(parents=True, exist_ok=True)
    (figures_dir / "miniature_table.md").write_text(tab.to_markdown(index=False) + "\n")
    written["table"] = str(figures_dir / "miniature_table.md")
    print(tab.to_string(index=False))
    return written
