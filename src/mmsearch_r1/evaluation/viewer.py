"""A trajectory viewer: one self-contained HTML page of a run folder's rollouts, with their images.

What it does:
- ``python -m mmsearch_r1.evaluation.viewer RUN_DIR [-o OUT.html]`` (or `write_viewer`) reads an evaluation run
  folder (``eval.json`` + ``eval_items.jsonl``, `mmsearch_r1.evaluation.evaluate`) and/or a GRPO run folder
  (``metrics.jsonl`` + ``samples.jsonl``, `mmsearch_r1.rl.run_logging`) and writes ONE HTML file (default
  ``RUN_DIR/viewer.html``): per rollout the question image, the question and gold answer, every assistant
  turn as the model wrote it, every tool result with its thumbnails in place of its ``<image>`` markers
  and its hit titles, and the verdicts (evaluation: exact match, SubEM, the LLM judge where present;
  training: the reward and exact match of the final answer).
- Filters (plain JavaScript, no network): method, correct / wrong, searched or not, question kind,
  benchmark, and for training the step; a line counts the rollouts shown.
- Images are shown as stored: `mmsearch_r1.helpers.jpeg_b64` is the project's one "image -> small base64
  JPEG" encoder, with which `agent.rollout.Trajectory.record` (evaluation records, <= 96 px) and
  `rl.run_logging.rollout_text` (``samples.jsonl``, <= 128 px) store them.
Safety: model output and web content are untrusted. Every text is HTML-escaped, images are accepted
only as base64 strings, and a Content-Security-Policy allows only the page's own script (by hash),
inline styles and ``data:`` images, so an injected ``<script>`` could not run and nothing is fetched.

What it does not: no images the run did not store (records written before images were kept show the
text only), no metrics or plots (`mmsearch_r1.evaluation.analysis`), no server, no pagination (a page of a long
training run grows with its ``samples.jsonl``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

from mmsearch_r1.cli import UserError, run
from mmsearch_r1.protocol.rewards import exact_match, golds_of
from mmsearch_r1.protocol.tags import parse_turn

METHODS = ("direct", "rag", "on_demand")
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MIME = {"/9j/": "jpeg", "iVBOR": "png", "R0lGOD": "gif", "UklGR": "webp"}
FILL_HINT = (
    "fill it with an evaluation (mmsearch_r1.evaluation.evaluate.evaluate(EvalConfig(name=...)), notebook 05) or a "
    "GRPO run (python -m mmsearch_r1.rl.train --preset tiny, notebook 03); `make demo` writes "
    "runs/demo_eval and runs/demo_grpo"
)


# -- reading a run folder ------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _images(rec: dict) -> tuple[str | None, list[list]]:
    """(question image, thumbnails per tool result) of a record's ``images`` field (absent: none)."""
    images = rec.get("images") if isinstance(rec.get("images"), dict) else {}
    tools = [t if isinstance(t, list) else [] for t in images.get("tools") or []]
    return images.get("question"), tools


def _eval_rollout(r: dict) -> dict:
    """One evaluation record (`agent.rollout.Trajectory.record` + `evaluation.metrics.score_record`) as a card."""
    question_image, thumbs = _images(r)
    turns = [t for t in r.get("turns") or [] if isinstance(t, dict)]
    obs = [o for o in r.get("observations") or [] if isinstance(o, dict)]
    steps: list[dict] = []
    for i, t in enumerate(turns):
        steps.append({"role": "assistant", "text": t.get("text", ""), "scripted": t.get("scripted"),
                      "replaced": t.get("replaced_turn")})  # fmt: skip
        if t.get("tool_calls") and i < len(turns) - 1 and obs:
            steps.append(_tool_step(obs.pop(0), thumbs))
    steps += [_tool_step(o, thumbs) for o in obs]  # results after the last turn (cut for length)
    em = r.get("em")
    judge = r.get("judge")
    verdicts = [("EM", em), ("SubEM", r.get("subem"))]
    if judge is not None:
        verdicts.append((f"judge ({r.get('judge_source') or 'llm'})", judge))
    return {
        "source": "evaluation", "method": r.get("method") or "", "kind": r.get("kind") or "",
        "benchmark": r.get("benchmark") or "", "step": None,
        "correct": bool(judge if judge is not None else em),
        "searched": bool(r.get("searches", r.get("searched", 0))),
        "title": f"{r.get('data_id') or ''} · sample {r.get('sample', 0)}",
        "question": r.get("question"), "answer": r.get("answer"), "aliases": r.get("aliases") or [],
        "prediction": r.get("prediction"), "question_image": question_image, "steps": steps,
        "verdicts": verdicts, "reward": None, "note": r.get("judge_reason") if judge is not None else None,
        "stop": r.get("stop"),
    }  # fmt: skip


def _tool_step(o: dict, thumbs: list[list]) -> dict:
    """A tool observation with the thumbnails kept for it (consumed in order)."""
    images = thumbs.pop(0) if thumbs else []
    return {"role": "tool", "tool": o.get("tool"), "status": o.get("status"), "text": o.get("text", ""),
            "hits": o.get("hits") or [], "reason": o.get("reason"), "images": images}  # fmt: skip


def _final_answer(messages: list[dict]) -> str | None:
    """The answer of the last assistant message (for samples written before ``prediction`` was kept)."""
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    turn = parse_turn(str(last.get("content") or "")) if last is not None else None
    return turn.answer if turn is not None and turn.action == "answer" else None


def _train_rollout(s: dict) -> dict:
    """One ``samples.jsonl`` line (`rl.run_logging.rollout_text`) as a card."""
    question_image, thumbs = _images(s)
    messages = [m for m in s.get("messages") or [] if isinstance(m, dict)]
    steps, called = [], None
    for m in messages:
        if m.get("role") == "tool":
            images = thumbs.pop(0) if thumbs else []
            tool = m.get("name") or called  # samples before ``name`` was kept: the call before it
            steps.append({"role": "tool", "tool": tool, "text": m.get("content", ""), "images": images})
            continue
        tool_calls = [c for c in m.get("tool_calls") or [] if isinstance(c, dict)]
        called = tool_calls[-1].get("name") if tool_calls else None
        calls = [f"{c.get('name')}({json.dumps(c.get('arguments'))})" for c in tool_calls]
        text = (f"<reason>{m['reasoning']}</reason>" if m.get("reasoning") else "") + str(
            m.get("content") or ""
        )
        steps.append({"role": m.get("role") or "?", "text": text, "calls": calls})
    prediction = s["prediction"] if "prediction" in s else _final_answer(messages)
    correct = s.get("em")
    if correct is None:
        correct = exact_match(prediction, golds_of(s.get("answer"), s.get("aliases")))
    searched = bool(s.get("searched"))
    return {
        "source": "training", "method": "on_demand", "kind": s.get("kind") or "", "benchmark": "",
        "step": s.get("step"), "correct": bool(correct), "searched": bool(searched),
        "title": f"step {s.get('step')}" + (f" · {s['data_id']}" if s.get("data_id") else ""),
        "question": s.get("question"), "answer": s.get("answer"), "aliases": s.get("aliases") or [],
        "prediction": prediction, "question_image": question_image, "steps": steps,
        "verdicts": [("EM", bool(correct))], "reward": s.get("reward"), "note": None, "stop": None,
    }  # fmt: skip


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """``(header, rollouts)`` of a run folder; a `UserError` naming the folder when there is nothing to show."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; {FILL_HINT}")
    from mmsearch_r1.data.schema import (
        read_jsonl,  # the project's reader of run files (imports datasets: lazy)
    )

    items = read_jsonl(run_dir / "eval_items.jsonl", append_only=True)  # a cut last line: skipped
    samples = read_jsonl(run_dir / "samples.jsonl", append_only=True)
    if not items and not samples:
        found = ", ".join(sorted(p.name for p in run_dir.iterdir())[:8]) or "nothing"
        why = f"no rollouts in eval_items.jsonl or samples.jsonl (found: {found})"
        if (run_dir / "metrics.jsonl").is_file():
            why = "metrics.jsonl but no samples.jsonl rollouts (train with log_samples > 0)"
        raise UserError(f"{run_dir}: {why}; {FILL_HINT}")
    header = {"name": run_dir.name, "eval": _json(run_dir / "eval.json") if items else None,
              "metrics": read_jsonl(run_dir / "metrics.jsonl", append_only=True) if samples else []}  # fmt: skip
    return header, [_eval_rollout(r) for r in items] + [_train_rollout(s) for s in samples]


# -- rendering --------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """HTML-escaped text (quotes too, so it is safe inside attributes); None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def img_tag(b64: Any, alt: str, cls: str = "thumb") -> str:
    """An ``<img>`` with a data URI, or nothing when ``b64`` is not a plain base64 string."""
    if not isinstance(b64, str) or not _B64_RE.fullmatch(b64):
        return ""
    mime = next((m for prefix, m in _MIME.items() if b64.startswith(prefix)), "jpeg")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/{mime};base64,{b64}">'


def _tool_html(step: dict) -> str:
    """A tool result: its text with each ``<image>`` marker replaced by the next kept thumbnail."""
    images = [i for i in step.get("images") or [] if isinstance(i, str)]
    parts = str(step.get("text") or "").split("<image>")
    body = esc(parts[0])
    for k, part in enumerate(parts[1:]):
        body += (img_tag(images[k], "search result") if k < len(images) else esc("<image>")) + esc(part)
    body += "".join(img_tag(i, "search result") for i in images[len(parts) - 1 :])
    status = f" · {esc(step['status'])}" if step.get("status") else ""
    reason = f' <span class="why">{esc(step["reason"])}</span>' if step.get("reason") else ""
    hits = "".join(f"<li>{esc(h)}</li>" for h in step.get("hits") or [])
    hits = f'<ol class="hits">{hits}</ol>' if hits else ""
    return (f'<div class="turn tool"><div class="who">tool: {esc(step.get("tool"))}{status}{reason}</div>'
            f'<pre>{body}</pre>{hits}</div>')  # fmt: skip


def _attrs(r: dict) -> dict[str, str]:
    """What the filters compare: one string per filter key ("" for no value)."""
    return {"source": r["source"], "method": str(r["method"]), "verdict": "correct" if r["correct"] else "wrong",
            "search": "searched" if r["searched"] else "no search", "kind": str(r["kind"]),
            "benchmark": str(r["benchmark"]), "step": "" if r["step"] is None else str(r["step"])}  # fmt: skip


def _card(i: int, r: dict) -> str:
    """One rollout as an ``<article>`` whose data attributes (`_attrs`) the filters read."""
    data = " ".join(f'data-{k}="{esc(v)}"' for k, v in _attrs(r).items())
    verdicts = " ".join(
        f'<span class="v {"ok" if ok else "no" if ok is not None else ""}">{esc(name)}: '
        f"{'✓' if ok else '✗' if ok is not None else '–'}</span>"
        for name, ok in r["verdicts"]
    )
    if isinstance(r["reward"], (int, float)):
        verdicts += f' <span class="v">reward: {r["reward"]:.3f}</span>'
    turns = []
    for s in r["steps"]:
        if s["role"] == "tool":
            turns.append(_tool_html(s))
            continue
        tag = " (scripted)" if s.get("scripted") else ""
        calls = "".join(f'<div class="call">→ {esc(c)}</div>' for c in s.get("calls") or [])
        replaced = f'<div class="why">replaced turn: {esc(s["replaced"])}</div>' if s.get("replaced") else ""
        turns.append(f'<div class="turn {esc(s["role"])}"><div class="who">{esc(s["role"])}{tag}</div>'
                     f"<pre>{esc(s['text'])}</pre>{calls}{replaced}</div>")  # fmt: skip
    aliases = f" (also: {esc(', '.join(map(str, r['aliases'])))})" if r["aliases"] else ""
    meta = " · ".join(esc(x) for x in (r["source"], r["method"], r["kind"], r["benchmark"], r["stop"]) if x)
    note = f'<div class="why">{esc(r["note"])}</div>' if r.get("note") else ""
    return (
        f'<article class="rollout {"correct" if r["correct"] else "wrong"}" id="r{i}" {data}>'
        f'<div class="head"><b>#{i + 1}</b> {esc(r["title"])} <span class="meta">{meta}</span> {verdicts}</div>'
        f'<div class="q">{img_tag(r["question_image"], "question image", "qimg")}<div>'
        f'<div class="question">{esc(r["question"])}</div><div>gold: <b>{esc(r["answer"])}</b>{aliases}</div>'
        f"<div>prediction: <b>{esc(r['prediction'])}</b></div>{note}</div></div>{''.join(turns)}</article>"
    )


def _filters(rollouts: list[dict]) -> str:
    """Button groups (a select for steps) for every attribute with more than one value; the method,
    verdict, search and (training) step groups are always shown, so a page always has the same controls."""
    groups = []
    for key, label in (("source", "run"), ("method", "method"), ("verdict", "verdict"), ("search", "search"),
                       ("kind", "kind"), ("benchmark", "benchmark"), ("step", "step")):  # fmt: skip
        counts: dict[str, int] = {}
        for v in (_attrs(r)[key] for r in rollouts):
            if v:
                counts[v] = counts.get(v, 0) + 1
        if not counts or (len(counts) < 2 and key not in ("method", "verdict", "search", "step")):
            continue
        order = sorted(
            counts, key=lambda v: (METHODS.index(v) if v in METHODS else 9, int(v) if v.isdigit() else 0, v)
        )
        if key == "step":
            opts = "".join(f'<option value="{esc(v)}">step {esc(v)} ({n})</option>' for v, n in
                           ((v, counts[v]) for v in order))  # fmt: skip
            groups.append(f'<label class="group">step <select data-key="step"><option value="">all</option>'
                          f"{opts}</select></label>")  # fmt: skip
            continue
        buttons = [f'<button type="button" data-key="{key}" data-value="" aria-pressed="true">all</button>']
        buttons += [f'<button type="button" data-key="{key}" data-value="{esc(v)}" aria-pressed="false">'
                    f"{esc(v)} ({counts[v]})</button>" for v in order]  # fmt: skip
        groups.append(f'<div class="group"><span>{label}</span>{"".join(buttons)}</div>')
    return f'<nav id="filters">{"".join(groups)}</nav>'


def _summary(header: dict) -> str:
    """Short tables: eval.json's accuracy and search ratio per benchmark and method; the first and last
    training step's reward, accuracy and search ratio."""
    tables: list[tuple[list[str], list[list[Any]]]] = []
    if header.get("eval"):
        rows = []
        for bench, by_method in (header["eval"].get("benchmarks") or {}).items():
            for method, s in by_method.items():
                a = s.get("all", {})
                keys = ("n", "acc", "em", "sr_any", "image_calls_per_q", "text_calls_per_q")
                rows.append([bench, method] + [a.get(k) for k in keys])
        tables.append((["benchmark", "method", "n", "acc", "EM", "SR (any)", "img/q", "txt/q"], rows))
    if header.get("metrics"):
        ms = header["metrics"]
        keys = ("step", "reward", "accuracy", "search_ratio", "image_calls", "text_calls")
        tables.append(
            (list(keys), [[m.get(k) for k in keys] for m in ([ms[0], ms[-1]] if len(ms) > 1 else ms)])
        )

    def cell(v: Any) -> str:
        return esc(f"{v:.3f}" if isinstance(v, float) else v)

    out = []
    for cols, rows in tables:
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        out.append(f'<table class="summary"><tr>{head}</tr>{body}</table>' if rows else "")
    return "".join(out)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:12px;color:#222;background:#fafafa}
h1{font-size:20px;margin:4px 0} [hidden]{display:none!important}
#filters{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ccc;z-index:1}
.group{display:inline-block;margin:2px 12px 2px 0}.group>span{color:#666;margin-right:4px}
button{border:1px solid #aaa;background:#fff;border-radius:10px;padding:1px 8px;margin:1px;cursor:pointer}
button[aria-pressed=true]{background:#2a6fdb;color:#fff;border-color:#2a6fdb}
article{background:#fff;border:1px solid #ddd;border-left:5px solid #c33;margin:10px 0;padding:8px}
article.correct{border-left-color:#2a2}.head{margin-bottom:6px}.meta{color:#777}
.v{border-radius:8px;padding:0 6px;background:#eee;margin-left:4px}.v.ok{background:#d6f5d6}.v.no{background:#f8d7d7}
.q{display:flex;gap:10px;align-items:flex-start}.qimg{max-width:128px;border:1px solid #ccc}
.question{font-weight:600}.turn{margin:6px 0 0 0;padding:4px 8px;border-radius:4px}
.assistant{background:#eef4ff}.tool{background:#f4f4f0}.who{font-size:12px;color:#555}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12px/1.35 ui-monospace,monospace}
.thumb{height:48px;vertical-align:middle;border:1px solid #ccc;margin:1px}.hits{margin:2px 0;font-size:12px}
.why{color:#a60;font-size:12px}.call{font-size:12px;color:#246}
table.summary{border-collapse:collapse;font-size:12px;margin:6px 0}.summary td,.summary th{border:1px solid #ccc;padding:1px 6px}
"""

SCRIPT = """
(function () {
  var state = {};
  var cards = Array.prototype.slice.call(document.querySelectorAll('article.rollout'));
  var count = document.getElementById('count');
  function apply() {
    var shown = 0;
    cards.forEach(function (c) {
      var ok = Object.keys(state).every(function (k) {
        return !state[k] || c.getAttribute('data-' + k) === state[k];
      });
      c.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + ' of ' + cards.length + ' rollouts shown';
  }
  document.querySelectorAll('#filters button').forEach(function (b) {
    b.addEventListener('click', function () {
      var key = b.getAttribute('data-key');
      state[key] = b.getAttribute('data-value');
      document.querySelectorAll('#filters button[data-key="' + key + '"]').forEach(function (o) {
        o.setAttribute('aria-pressed', o === b ? 'true' : 'false');
      });
      apply();
    });
  });
  document.querySelectorAll('#filters select').forEach(function (s) {
    s.addEventListener('change', function () { state[s.getAttribute('data-key')] = s.value; apply(); });
  });
  apply();
})();
"""


def render_page(run_dir: str | Path) -> tuple[str, int]:
    """``(html, number of rollouts)`` of a run folder (see the module docstring)."""
    header, rollouts = load_run(run_dir)
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    kinds = " + ".join(k for k, on in (("evaluation", header["eval"] is not None), ("training", header["metrics"]
                                        or any(r["source"] == "training" for r in rollouts))) if on)  # fmt: skip
    policy = (header.get("eval") or {}).get("policy")
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{esc(header['name'])}: trajectories</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(header['name'])}</h1><div>{esc(kinds)} run · {len(rollouts)} rollouts"
        f"{' · policy ' + esc(policy) if policy else ''} · correct = the judge's verdict where present, else"
        f" exact match</div>{_summary(header)}{_filters(rollouts)}"
        f'<p id="count">{len(rollouts)} of {len(rollouts)} rollouts shown</p><main>'
        + "".join(_card(i, r) for i, r in enumerate(rollouts))
        + f"</main><script>{SCRIPT}</script></body></html>\n"
    )
    return page, len(rollouts)


def write_viewer(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, int]:
    """Write the page of ``run_dir`` to ``out`` (default ``run_dir/viewer.html``); returns (path, rollouts)."""
    page, n = render_page(run_dir)
    path = Path(out) if out else Path(run_dir) / "viewer.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path, n


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmsearch_r1.evaluation.viewer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", help="an evaluation or GRPO run folder (e.g. runs/demo_eval)")
    parser.add_argument("-o", "--output", help="the HTML file to write (default: RUN_DIR/viewer.html)")
    args = parser.parse_args(argv)
    path, n = write_viewer(args.run_dir, args.output)
    print(f"wrote {path} ({n} rollouts, {path.stat().st_size / 1024:.0f} KiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmsearch_r1.evaluation.viewer``: a missing or empty run folder is one ``error:`` line (exit 2)."""
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
