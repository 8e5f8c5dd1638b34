"""Tables and figures from run folders only (nothing is recomputed): notebook 06 and ``make demo``.

What it does:
- `table1(eval_runs)`: the layout of the paper's Table 1 (method, model, average accuracy and search
  ratio, then one column per benchmark), the paper's published rows (`PAPER_TABLE1`) beside ours. Our
  search ratio there is the paper's Table 1 definition (calls over the maximum allowed, ``sr_calls``);
  the share of answers that searched (``sr_any``) is in `eval_summary`.
- `training_curves(runs)` / `plot_training_curves`: reward and search ratio per step from each run's
  ``metrics.jsonl`` (penalty 0.1 vs 0, balanced vs unbalanced data: the paper's Figure 5b).
- `frontier(eval_runs)` / `plot_frontier`: accuracy against search ratio over penalties.
- `behaviour_breakdown(eval_runs)` / `plot_behaviour`: correct without search, correct with search, wrong
  with and without search (the paper's Figure 4b) for the base, warm-start and trained policies.
- `demo_stage()`: finds the run folders under ``runs/``, writes every figure it can to ``figures/`` (PNG,
  seaborn) and prints the table and the Finding-5 numbers.

What it does not: no evaluation or training (run `mmsearch_r1.evaluation.evaluate` / `mmsearch_r1.rl.train` first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmsearch_r1.evaluation.metrics import METHOD_LABELS, behaviour

PAPER_BENCHMARKS = ("FVQA-test", "InfoSeek", "MMSearch", "SimpleVQA", "LiveVQA")
# Paper Table 1 (arXiv 2506.20670 v1): accuracy % by the GPT-4o judge; search ratio % (Tab. 1 definition).
_PAPER_ROWS = [
    ("Direct", "GPT-4o", 36.0, 0, (41.7, 42.7, 22.2, 46.6, 26.9)),
    ("Direct", "Gemini 2.5 Pro", 36.4, 0, (37.2, 37.0, 26.9, 53.4, 27.7)),
    ("Direct", "Qwen2.5-VL-72B", 26.6, 0, (27.1, 28.0, 15.7, 42.2, 20.1)),
    ("Direct", "Qwen2.5-VL-32B", 25.0, 0, (24.7, 25.8, 15.7, 40.1, 18.7)),
    ("Direct", "Qwen2.5-VL-7B", 21.9, 0, (20.3, 20.1, 12.8, 38.4, 17.8)),
    ("RAG", "GPT-4o", 62.1, 100, (66.0, 59.1, 62.5, 63.4, 59.6)),
    ("RAG", "Gemini 2.5 Pro", 61.8, 100, (66.1, 56.7, 62.5, 65.9, 57.8)),
    ("RAG", "Qwen2.5-VL-72B", 59.6, 100, (62.2, 59.4, 59.6, 61.0, 56.0)),
    ("RAG", "Qwen2.5-VL-32B", 55.1, 100, (57.0, 56.8, 57.9, 54.5, 49.6)),
    ("RAG", "Qwen2.5-VL-7B", 51.6, 100, (52.9, 53.7, 52.2, 51.6, 48.0)),
    ("On-demand", "MMSearch-R1-7B", 54.6, 67.1, (58.4, 55.1, 53.8, 57.4, 48.4)),
]
PAPER_TABLE1 = pd.DataFrame(
    [{"source": "paper", "Method": m, "Model": model, "Avg Acc": a, "Avg SR": sr, **dict(zip(PAPER_BENCHMARKS, accs, strict=True))}
     for m, model, a, sr, accs in _PAPER_ROWS]
)  # fmt: skip
"""The paper's Table 1 (accuracy %, search ratio %)."""
PAPER_SR_MMSEARCH_R1 = dict(zip(PAPER_BENCHMARKS, (66.8, 61.6, 88.5, 42.5, 76.2), strict=True))
"""MMSearch-R1-7B's per-benchmark search ratio % (paper Table 1)."""
BEHAVIOURS = ("correct without search", "correct with search", "wrong with search", "wrong without search")


@dataclass
class Run:
    """What a run folder holds (any part may be missing)."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    eval: dict | None = None
    items: list[dict] = field(default_factory=list)


def load_run(path: str | Path, *, items: bool = True) -> Run:
    """Read ``config.json``, ``metrics.jsonl``, ``eval.json`` and ``eval_items.jsonl`` of a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"run folder {path} not found; train (notebook 03) or evaluate (notebook 05) first."
        )
    run = Run(path, path.name)
    if (path / "config.json").is_file():
        run.config = json.loads((path / "config.json").read_text())
    if (path / "metrics.jsonl").is_file():
        from mmsearch_r1.rl.run_logging import read_metrics

        run.metrics = read_metrics(path / "metrics.jsonl")
    if (path / "eval.json").is_file():
        run.eval = json.loads((path / "eval.json").read_text())
        if items and (path / "eval_items.jsonl").is_file():
            from mmsearch_r1.data.schema import read_jsonl

            run.items = read_jsonl(path / "eval_items.jsonl", append_only=True)
    return run


def _runs(runs) -> dict[str, Run]:
    if isinstance(runs, Mapping):
        return {str(k): v if isinstance(v, Run) else load_run(v) for k, v in runs.items()}
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    return {r.name: r for r in loaded}


def _pct(x) -> float | None:
    return None if x is None else round(100.0 * x, 1)


# -- Table 1 ------------------------------------------------------------------------------------------


def table1(eval_runs, *, include_paper: bool = True) -> pd.DataFrame:
    """Paper Table 1 layout; our rows (one per eval run and method) after the paper's.

    Cells are ``acc`` (%; the judge's when every item was judged, else EM) for each benchmark; ``Avg Acc``
    and ``Avg SR`` (``sr_calls`` %) are means over benchmarks, as in the paper.
    """
    rows = []
    for label, run in _runs(eval_runs).items():
        if run.eval is None:
            raise FileNotFoundError(f"{run.path} has no eval.json; evaluate it first (notebook 05).")
        for method, avg in run.eval["avg"].items():
            row = {"source": "ours", "Method": METHOD_LABELS.get(method, method), "Model": label,
                   "Avg Acc": _pct(avg["acc"]), "Avg SR": _pct(avg["sr_calls"])}  # fmt: skip
            for bench, by_method in run.eval["benchmarks"].items():
                if method in by_method:
                    row[bench] = _pct(by_method[method]["all"]["acc"])
            rows.append(row)
    order = {"Direct": 0, "RAG": 1, "On-demand": 2}
    ours = pd.DataFrame(rows)
    if len(ours):
        ours = ours.sort_values(
            ["Method", "Model"], key=lambda s: s.map(order).fillna(9) if s.name == "Method" else s
        )
    return (
        pd.concat([PAPER_TABLE1, ours], ignore_index=True) if include_paper else ours.reset_index(drop=True)
    )


def eval_summary(eval_runs, *, by: str = "all") -> pd.DataFrame:
    """Long table of every metric per run, benchmark, method (``by``: all, by_category or by_kind)."""
    rows = []
    for label, run in _runs(eval_runs).items():
        for bench, by_method in (run.eval or {}).get("benchmarks", {}).items():
            for method, s in by_method.items():
                groups = {"all": s["all"]} if by == "all" else s[by]
                for group, m in groups.items():
                    rows.append({"run": label, "benchmark": bench, "method": METHOD_LABELS.get(method, method),
                                 "group": group, **{k: v for k, v in m.items() if not isinstance(v, str)}})  # fmt: skip
    return pd.DataFrame(rows)


# -- training curves (Fig. 5b) ------------------------------------------------------------------------


def training_curves(
    runs, keys: Sequence[str] = ("reward", "search_ratio"), *, smooth: int = 1
) -> pd.DataFrame:
    """Long frame (run, step, metric, value) from each run's metrics.jsonl; ``smooth``: rolling-mean window."""
    frames = []
    for label, run in _runs(runs).items():
        if not run.metrics:
            raise FileNotFoundError(f"{run.path} has no metrics.jsonl; train it first (notebook 03).")
        df = pd.DataFrame(run.metrics)
        for key in keys:
            if key not in df:
                continue
            vals = df[key].astype(float).rolling(smooth, min_periods=1).mean()
            frames.append(pd.DataFrame({"run": label, "step": df["step"], "metric": key, "value": vals}))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run", "step", "metric", "value"])
    )


def final_value(run, key: str = "search_ratio", *, last: int = 10) -> float | None:
    """Mean of ``key`` over the last ``last`` logged steps (how a curve 'ends')."""
    run = run if isinstance(run, Run) else load_run(run, items=False)
    vals = [m[key] for m in run.metrics[-last:] if m.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (folders made), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_training_curves(df: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Reward and search ratio per step, one line per run (paper Fig. 5b); saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = list(dict.fromkeys(df["metric"])) or ["reward"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=df[df["metric"] == metric], x="step", y="value", hue="run", ax=ax)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylabel(metric)
        if metric == "search_ratio":
            ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# -- frontier over penalties -----------------------------------------------------------------------------


def frontier(eval_runs: Mapping, *, method: str = "on_demand", benchmark: str | None = None) -> pd.DataFrame:
    """Accuracy and search ratio of ``method`` per run; keys of ``eval_runs`` are the penalties (or labels)."""
    rows = []
    for key, run in _runs(eval_runs).items():
        if run.eval is None:
            continue
        for bench, by_method in run.eval["benchmarks"].items():
            if (benchmark is None or bench == benchmark) and method in by_method:
                a = by_method[method]["all"]
                rows.append({"penalty": key, "benchmark": bench, "acc": a["acc"], "sr_any": a["sr_any"],
                             "sr_calls": a["sr_calls"], "searches_per_q": a["searches_per_q"]})  # fmt: skip
    return pd.DataFrame(rows)


def plot_frontier(
    df: pd.DataFrame, path: str | Path, *, rag: tuple[float, float] | None = None, x: str = "sr_any"
) -> Path:
    """Accuracy against search ratio, one point per penalty (and the RAG workflow as a star)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5, 4))
    if len(df):
        sns.lineplot(data=df.sort_values(x), x=x, y="acc", hue="benchmark", marker="o", ax=ax, sort=False)
        for _, r in df.iterrows():
            ax.annotate(
                f"p={r['penalty']}", (r[x], r["acc"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    if rag is not None:
        ax.scatter([rag[0]], [rag[1]], marker="*", s=160, color="black", label="RAG workflow", zorder=5)
        ax.legend()
    ax.set_xlabel(
        "search ratio (share of answers that searched)" if x == "sr_any" else "search ratio (calls / max)"
    )
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.02, 1.05)
    return save_figure(fig, path)


# -- answer behaviour (Fig. 4b) ------------------------------------------------------------------------


def behaviour_breakdown(
    eval_runs: Mapping, *, method: str = "on_demand", benchmark: str | None = None, metric: str = "em"
) -> pd.DataFrame:
    """Share of each answer behaviour per policy, from the per-item records (``metric``: em, subem, judge)."""
    rows = []
    for label, run in _runs(eval_runs).items():
        recs = [
            r
            for r in run.items
            if r["method"] == method and (benchmark is None or r.get("benchmark") == benchmark)
        ]
        for b in BEHAVIOURS:
            n = sum(behaviour(r, metric=metric) == b for r in recs)
            rows.append(
                {"policy": label, "behaviour": b, "count": n, "share": n / len(recs) if recs else 0.0}
            )
    return pd.DataFrame(rows)


def plot_behaviour(df: pd.DataFrame, path: str | Path) -> Path:
    """Stacked bars of the four answer behaviours per policy."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    wide = (
        df.pivot(index="policy", columns="behaviour", values="share")
        .reindex(columns=list(BEHAVIOURS))
        .fillna(0)
    )
    wide = wide.reindex(list(dict.fromkeys(df["policy"])))
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(wide) + 1.6))
    left = pd.Series(0.0, index=wide.index)
    for colour, b in zip(sns.color_palette("RdYlGn_r", 4), BEHAVIOURS, strict=True):
        ax.barh(wide.index, wide[b], left=left, label=b, color=colour)
        left += wide[b]
    ax.set_xlabel("share of answers")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8)
    return save_figure(fig, path)


# -- make demo -------------------------------------------------------------------------------------------


def discover(runs_dir: str | Path = "runs") -> dict[str, list[Run]]:
    """Run folders under ``runs_dir``: ``train`` (with metrics.jsonl) and ``eval`` (with eval.json)."""
    out: dict[str, list[Run]] = {"train": [], "eval": []}
    for path in sorted(Path(runs_dir).glob("*/")):
        if path.name.startswith("miniature"):  # the miniature's own figures: `miniature.figures`
            continue
        if path.name.startswith("smoke"):  # smoke runs (runs/smoke/) are checks, never results
            continue
        run = load_run(path)
        if run.metrics:
            out["train"].append(run)
        if run.eval is not None:
            out["eval"].append(run)
    return out


def _policy_label(run: Run) -> str:
    policy = str(run.eval.get("policy", run.name))
    return {"demo": "base", "demo-sft": "warm start"}.get(
        policy, Path(policy).parent.name if policy.endswith("final") else policy
    )


def label_evals(runs: Sequence[Run]) -> dict[str, Run]:
    """Label eval runs by policy (base, warm start, the trained run's name); the eval name breaks ties."""
    out: dict[str, Run] = {}
    for r in runs:
        label = _policy_label(r)
        out[label if label not in out else f"{label} ({r.name})"] = r
    return out


def finding5(
    train_runs: Sequence[Run], eval_runs: Sequence[Run], *, benchmark: str = "world-train"
) -> pd.DataFrame:
    """The paper's Finding 5 in numbers: each run's final search ratio, and on the training questions
    its search ratio per category and its accuracy and searches against the RAG workflow."""
    rows = []
    evals = {Path(str(r.eval.get("policy", ""))).parent.name: r for r in eval_runs if r.eval}
    for run in train_runs:
        row = {"run": run.name, "penalty": run.config.get("penalty"), "dataset": run.config.get("dataset"),
               "final_search_ratio": final_value(run), "final_reward": final_value(run, "reward")}  # fmt: skip
        ev = evals.get(run.name)
        bench = (ev.eval["benchmarks"].get(benchmark) or {}) if ev else {}
        if "on_demand" in bench:
            od = bench["on_demand"]
            row["acc"] = od["all"]["acc"]
            for cat, s in od["by_category"].items():
                row[f"sr_{cat}"] = s["sr_any"]
            if "rag" in bench:
                rag = bench["rag"]["all"]
                row["rag_acc"] = rag["acc"]
                row["acc_gap_vs_rag"] = od["all"]["acc"] - rag["acc"]
                row["fewer_searches_vs_rag"] = 1 - od["all"]["searches_per_q"] / max(
                    rag["searches_per_q"], 1e-9
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _penalty_of(run: Run, runs_dir: Path) -> float | None:
    policy = Path(str(run.eval.get("policy", "")))
    cfg = policy.parent / "config.json"
    if not cfg.is_file():
        cfg = runs_dir / policy.parent.name / "config.json"
    return json.loads(cfg.read_text()).get("penalty") if cfg.is_file() else None


def run_pairs(spec: str, runs_dir: str | Path = "runs") -> dict[str, Path]:
    """``"p0.1:grpo_a, p0:grpo_b"`` -> ``{"p0.1": runs/grpo_a, "p0": runs/grpo_b}`` (a bare name labels itself)."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        label, _, run = part.partition(":")
        out[label] = Path(runs_dir) / (run or label)
    return out


def frontier_figure(evals: Sequence[Run], runs_dir: str | Path, path: str | Path, *, spec: str = "",
                    benchmark: str | None = None) -> tuple[pd.DataFrame, Path | None]:  # fmt: skip
    """The frontier of on-demand evaluations over penalties (from ``spec``'s ``penalty:run`` pairs, else
    the penalty in each evaluated policy's training config), with the RAG workflow as the reference
    point; ``(table, figure path or None when there is nothing to draw)``."""
    runs_dir = Path(runs_dir)
    if spec:
        pens = {float(k): load_run(v) for k, v in run_pairs(spec, runs_dir).items()}
    else:
        pens = {p: r for r in evals if (p := _penalty_of(r, runs_dir)) is not None}
    fr = frontier(pens, benchmark=benchmark) if pens else pd.DataFrame()
    if not len(fr):
        return fr, None
    rag = [b["rag"]["all"] for r in evals for b in r.eval["benchmarks"].values() if "rag" in b]
    point = (rag[0]["sr_any"], rag[0]["acc"]) if rag else None
    return fr, plot_frontier(fr, path, rag=point)


def demo_stage(runs_dir: str | Path = "runs", figures_dir: str | Path = "figures") -> dict:
    """Draw every figure the run folders allow, save them to ``figures_dir`` and print the table."""
    runs_dir, figures_dir = Path(runs_dir), Path(figures_dir)
    found = discover(runs_dir)
    written: dict[str, str] = {}
    if found["train"]:
        curves = training_curves({r.name: r for r in found["train"]}, smooth=3)
        written["curves"] = str(plot_training_curves(curves, figures_dir / "training_curves.png"))
        for r in found["train"]:
            print(f"[figures] {r.name}: penalty {r.config.get('penalty')}, {len(r.metrics)} steps, "
                  f"final search ratio {final_value(r) if final_value(r) is not None else float('nan'):.2f}, "
                  f"final reward {final_value(r, 'reward') or 0:.3f}")  # fmt: skip
    if found["eval"]:
        evals = label_evals(found["eval"])
        bench = "world-test" if any("world-test" in r.eval["benchmarks"] for r in found["eval"]) else None
        table = table1(evals, include_paper=False)
        print(table.to_string(index=False))
        written["table1"] = str(figures_dir / "table1.md")
        figures_dir.mkdir(parents=True, exist_ok=True)
        Path(written["table1"]).write_text(
            table1(evals).to_markdown(index=False) if _has_tabulate() else table1(evals).to_string()
        )
        beh = behaviour_breakdown(evals, benchmark=bench)
        if len(beh):
            written["behaviour"] = str(plot_behaviour(beh, figures_dir / "answer_behaviour.png"))
        _, frontier_path = frontier_figure(
            found["eval"], runs_dir, figures_dir / "frontier.png", benchmark=bench
        )
        if frontier_path:
            written["frontier"] = str(frontier_path)
    if found["train"]:
        f5 = finding5(found["train"], found["eval"])
        print("[figures] Finding 5 (final search ratio; on training questions: SR by category, vs RAG):")
        print(f5.round(3).to_string(index=False))
    if not written:
        print(f"[figures] no run folders with metrics.jsonl or eval.json under {runs_dir}/; nothing to draw")
    return written


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
