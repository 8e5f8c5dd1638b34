"""Numbers and figure of a comparison of policies on held-out questions (`mmsearch_r1.rl_vs_sft`).

What it does: `summarize_run` turns one policy's scored evaluation records (on demand, RAG, direct) into
accuracy with a 95% bootstrap interval (`bootstrap_ci`), calls and share of questions searched, and the
search rate on text facts the base language model knows against those it does not (its knowledge
boundary); from a GRPO run's training samples (`fact_rollouts`), `boundary_curve` follows that search
rate over steps and `choice_payoffs` says what looking a fact up or answering it earned; `plot` draws the comparison
with seaborn.

What it does not: no rollouts, no training, no files besides the figure (`mmsearch_r1.rl_vs_sft` runs
and writes the comparison).
"""

from __future__ import annotations

from pathlib import Path

METHODS = ("on_demand", "rag", "direct")
"""The evaluation methods a comparison reads (`mmsearch_r1.agent.rollout`)."""
RECORD_FIELDS = ("data_id", "method", "em", "image_calls", "text_calls", "searched")
"""The fields of an evaluation record that `summarize_run` reads."""
KIND_NAMES = {"text_only": "text-only", "textual_knowledge": "image, then fact"}
"""Readable names of the question kinds whose answer is a fact the base model may know."""


def bootstrap_ci(values: list[float], n: int, seed: int) -> list[float]:
    """The 95% percentile interval of the mean of ``values`` over ``n`` seeded resamples (in percent)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if not len(x):
        return [float("nan"), float("nan")]
    means = np.random.default_rng(seed).choice(x, size=(n, len(x)), replace=True).mean(axis=1)
    return [
        round(100 * float(np.percentile(means, 2.5)), 2),
        round(100 * float(np.percentile(means, 97.5)), 2),
    ]


def summarize_run(records: list[dict], rows: dict[str, dict], knows, *, n_boot: int, seed: int) -> dict:
    """The report's numbers of one policy in one wording from its scored evaluation records.

    ``rows`` maps ``data_id`` to the test row (entity, template); ``knows(row)`` is the probe's verdict on
    the row's fact, or None when the row asks for no fact. The knowledge boundary is read on text-only
    questions (searched or not) and, as ``image_fact_*``, on image-then-fact questions (the fact looked up
    with a text search after the image search, or not)."""
    by = {m: [r for r in records if r["method"] == m] for m in METHODS}
    od = by["on_demand"]

    def pct(rs, key="em"):
        return round(100 * sum(bool(r[key]) for r in rs) / len(rs), 2) if rs else None

    def calls(rs):
        return round(sum(r["image_calls"] + r["text_calls"] for r in rs) / len(rs), 3) if rs else None

    text = [(r, knows(rows[r["data_id"]])) for r in od if rows[r["data_id"]]["kind"] == "text_only"]
    known = [r for r, k in text if k is True]
    unknown = [r for r, k in text if k is False]
    # image-then-fact questions: the image search names the entity; is the fact then looked up?
    then = [(r, knows(rows[r["data_id"]])) for r in od if rows[r["data_id"]]["kind"] == "textual_knowledge"]

    def looked_up(rs):
        return round(sum(r["text_calls"] > 0 for r in rs) / len(rs), 3) if rs else None

    return {
        "n": len(od),
        "on_demand_acc": pct(od),
        "on_demand_ci": bootstrap_ci([float(r["em"]) for r in od], n_boot, seed),
        "rag_acc": pct(by["rag"]),
        "direct_acc": pct(by["direct"]),
        "calls_per_q": calls(od),
        "rag_calls_per_q": calls(by["rag"]),
        "searched": round(sum(r["searched"] for r in od) / len(od), 3) if od else None,
        "known_search_rate": round(sum(r["searched"] for r in known) / len(known), 3) if known else None,
        "unknown_search_rate": round(sum(r["searched"] for r in unknown) / len(unknown), 3)
        if unknown
        else None,
        "n_known": len(known),
        "n_unknown": len(unknown),
        "image_fact_known_text_search_rate": looked_up([r for r, k in then if k is True]),
        "image_fact_unknown_text_search_rate": looked_up([r for r, k in then if k is False]),
    }


def compact_records(records: list[dict], rows: dict[str, dict], knows) -> list[dict]:
    """Scored evaluation records cut to what `summarize_run` reads (``RECORD_FIELDS``), each with its test
    row's ``kind`` and the probe's verdict ``known`` (True, False or None): a few dozen bytes a question, so
    a study's results can be committed and summarised again on any machine with
    ``summarize_run(compact, {r["data_id"]: r for r in compact}, lambda row: row["known"], ...)``."""
    out = []
    for r in records:
        row = rows[r["data_id"]]
        out.append({k: r[k] for k in RECORD_FIELDS} | {"kind": row["kind"], "known": knows(row)})
    return out


def fact_rollouts(run_dir: str | Path, rows: dict[str, dict], knows) -> list[dict]:
    """The training rollouts of a GRPO run (``samples.jsonl``) that ask for a fact the base model's probe
    has a verdict on (``rows``: the RL rows by ``data_id``), one dict each: ``step``, ``kind``
    (``KIND_NAMES``), ``facts`` (known / unknown), ``looked_up`` (a text search was made; an image search
    is not a look-up), ``em``, ``reward``."""
    from mmsearch_r1.data.schema import read_jsonl

    seen = []
    for s in read_jsonl(Path(run_dir) / "samples.jsonl", append_only=True):
        row = rows.get(s.get("data_id"))
        known = None if row is None else knows(row)
        if known is None:
            continue
        looked_up = any(
            m.get("role") == "tool" and m.get("name") == "text_search" for m in s.get("messages") or []
        )
        seen.append({"step": s["step"], "kind": KIND_NAMES.get(row.get("kind"), row.get("kind")),
                     "facts": "known" if known else "unknown", "looked_up": looked_up,
                     "em": float(bool(s.get("em"))), "reward": float(s.get("reward") or 0.0)})  # fmt: skip
    return seen


def boundary_curve(seen: list[dict], window: int = 10):
    """Per GRPO step, the text-search rate of `fact_rollouts` ``seen`` on facts the base model knows and on
    those it does not, for text-only questions and for image-then-fact ones (after the image search, is
    the fact looked up?) apart, as a rolling mean over ``window`` of the steps that asked such questions:
    a DataFrame with columns ``step``, ``kind``, ``facts`` (known / unknown), ``search_rate``,
    ``rollouts``."""
    import pandas as pd

    if not seen:
        return pd.DataFrame(columns=["step", "kind", "facts", "search_rate", "rollouts"])
    per = (
        pd.DataFrame(seen).groupby(["kind", "facts", "step"])["looked_up"].agg(["sum", "count"]).reset_index()
    )
    out = []
    for (kind, facts), g in per.groupby(["kind", "facts"]):
        g = g.sort_values("step")
        hits, n = (
            g["sum"].rolling(window, min_periods=1).sum(),
            g["count"].rolling(window, min_periods=1).sum(),
        )
        out.append(pd.DataFrame({"step": g["step"], "kind": kind, "facts": facts,
                                 "search_rate": hits / n, "rollouts": n}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def choice_payoffs(seen: list[dict], steps: tuple[int, int] | None = None):
    """What each choice earned among `fact_rollouts` ``seen``: per question kind, known or unknown fact,
    and choice (``looked up`` with a text search, or ``answered`` without), the rollouts, their accuracy
    and mean reward, over ``steps`` (first, last; all when None). GRPO moves the policy towards the choice
    with the higher reward within a question's group, so this table says which way the penalty pushes and
    how often the other choice was even tried."""
    import pandas as pd

    cols = ["kind", "facts", "choice"]
    seen = [r for r in seen if not steps or steps[0] <= r["step"] <= steps[1]]
    if not seen:
        return pd.DataFrame(columns=[*cols, "rollouts", "accuracy", "mean_reward"])
    df = pd.DataFrame(seen)
    df["choice"] = df["looked_up"].map({True: "looked up", False: "answered"})
    g = df.groupby(cols)
    out = g.size().rename("rollouts").to_frame().join(g["em"].mean().rename("accuracy"))
    return out.join(g["reward"].mean().rename("mean_reward")).round(3).reset_index()


def plot(result: dict, path: Path) -> None:
    """Accuracy on demand with its interval, calls per question, and the search rate on known against
    unknown text facts, per policy (seaborn)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    runs = result["runs"]
    labels = list(runs)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    acc = pd.DataFrame([{"policy": k, "method": m, "accuracy": runs[k][f"{m}_acc"]}
                        for k in labels for m in ("on_demand", "rag", "direct")])  # fmt: skip
    sns.barplot(acc, x="policy", y="accuracy", hue="method", ax=axes[0])
    for i, k in enumerate(labels):
        lo, hi = runs[k]["on_demand_ci"]
        axes[0].plot([i - 0.27, i - 0.27], [lo, hi], color="black", lw=1.5)
    calls = pd.DataFrame([{"policy": k, "calls per question": runs[k]["calls_per_q"]} for k in labels])
    sns.barplot(calls, x="policy", y="calls per question", ax=axes[1], color=sns.color_palette()[0])
    rate = pd.DataFrame([{"policy": k, "facts": side, "search rate": runs[k][f"{side}_search_rate"]}
                         for k in labels for side in ("known", "unknown")])  # fmt: skip
    sns.barplot(rate, x="policy", y="search rate", hue="facts", ax=axes[2])
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_title("accuracy (held-out entities and wordings)")
    axes[1].set_title("search calls per question, on demand")
    axes[2].set_title("search rate on text facts the base model knows / not")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves, path: Path) -> None:
    """The text-search rate on known and unknown facts over GRPO steps, one panel per run and question
    kind (seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs, kinds = list(dict.fromkeys(curves["run"])), sorted(set(curves["kind"]))
    shape = (max(len(kinds), 1), max(len(runs), 1))
    fig, axes = plt.subplots(*shape, figsize=(4.5 * shape[1], 3.4 * shape[0]), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, run in enumerate(runs):
            ax = axes[i][j]
            part = curves[(curves["run"] == run) & (curves["kind"] == kind)]
            if len(part):
                sns.lineplot(
                    part, x="step", y="search_rate", hue="facts", hue_order=["known", "unknown"], ax=ax
                )
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{run}: {kind}")
            ax.set_ylabel("text-search rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
