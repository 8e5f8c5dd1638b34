"""Row schema and the FVQA / veRL parquet reader and writer.

What it does: defines the row schema every stage uses (a ``datasets.Dataset`` with ``data_id, image
(PIL), question, answer, aliases, category, kind, source``; extra columns are allowed and kept),
converts the FVQA / veRL parquet format (``prompt``, ``images``, ``reward_model{ground_truth,
candidate_answers}``, ``data_source``, ``data_id``, ``category``, optional ``extra_info``) to and from
it (``load_fvqa_parquet``, ``write_fvqa_parquet``, ``write_pool``). Rows with a missing or corrupt
image or an empty question/answer are dropped *and reported* (``LoadReport``: ids, reasons, count) -
or kept or raised on, as the caller asks. ``to_row`` helpers (``decode_image``, ``convert_rows``) are
shared with the benchmark readers.

What it does not: no benchmark readers (``benchmarks_data.py``: FVQA from the hub, InfoSeek, MMSearch,
SimpleVQA, LiveVQA; ``load_benchmark`` and friends stay importable from here), no question
generation (``questions.py``), no curation (``curation.py``), no network access.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from mmsearch_r1.helpers import to_rgb  # noqa: F401  (re-exported: data.to_rgb)

log = logging.getLogger(__name__)

ROW_COLUMNS = ("data_id", "image", "question", "answer", "aliases", "category", "kind", "source")
"""The columns every row has (others may follow)."""
CATEGORIES = ("search_free", "search_required")


def row_features(extra: dict[str, Any] | None = None) -> datasets.Features:
    """``datasets.Features`` of the row schema, plus ``extra`` columns (name -> feature)."""
    f = {
        "data_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "aliases": datasets.Sequence(datasets.Value("string")),
        "category": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
    f.update(extra or {})
    return datasets.Features(f)


def rows_to_dataset(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> datasets.Dataset:
    """Build a row-schema Dataset from dicts (PIL images). Extra keys need a feature in ``extra``."""
    feats = row_features(extra)
    cols = {k: [r.get(k) for r in rows] for k in feats}
    for r in rows[:1]:
        unknown = set(r) - set(feats)
        if unknown:
            raise ValueError(f"rows have columns {sorted(unknown)} with no feature; pass them in `extra`")
    return datasets.Dataset.from_dict(cols, features=feats)


# --------------------------------------------------------------------------- bad-row handling


@dataclass
class LoadReport:
    """What a reader kept and what it dropped (and why)."""

    source: str
    n_total: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(data_id, reason) for every dropped (or, with on_bad="keep", flagged) row."""

    @property
    def n_bad(self) -> int:
        return len(self.bad)

    def __str__(self) -> str:
        head = ", ".join(f"{i} ({r})" for i, r in self.bad[:5])
        more = f" and {self.n_bad - 5} more" if self.n_bad > 5 else ""
        return f"{self.source}: {self.n_total} rows, {self.n_bad} bad" + (
            f": {head}{more}" if self.bad else ""
        )


def decode_image(obj: Any, *, root: Path | None = None) -> Image.Image:
    """RGB PIL image (transparency on white) from a PIL image, {'bytes','path'} dict, raw bytes, a
    base64 string or a file path (relative paths under ``root``).

    Raises ValueError naming the problem: missing image, file not found, or corrupt/unreadable data.
    """
    if isinstance(obj, list | tuple):
        if not obj:
            raise ValueError("missing image (empty list)")
        obj = obj[0]
    if isinstance(obj, Image.Image):
        return to_rgb(obj)
    if isinstance(obj, dict):
        data = obj.get("bytes")
        obj = data if data else obj.get("path")
    if obj is None or (isinstance(obj, str | bytes) and len(obj) == 0):
        raise ValueError("missing image")
    try:
        if isinstance(obj, str):
            p = Path(obj) if root is None or Path(obj).is_absolute() else Path(root) / obj
            data = p.read_bytes() if len(obj) < 1024 and p.is_file() else base64.b64decode(obj, validate=True)
        else:
            data = bytes(obj)
        im = Image.open(io.BytesIO(data))
        im.load()
        return to_rgb(im)
    except (OSError, binascii.Error, ValueError, SyntaxError) as exc:
        if isinstance(obj, str) and _looks_like_path(obj) and not p.is_file():
            raise ValueError(f"image file not found: {p}") from exc
        raise ValueError(f"corrupt or unreadable image ({type(exc).__name__})") from exc


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _looks_like_path(s: str) -> bool:
    """A short string that did not decode and has an image suffix or a path separator: a missing file
    rather than bad base64 (only called after decoding failed)."""
    return len(s) < 1024 and (s.lower().endswith(_IMAGE_SUFFIXES) or "/" in s or "\\" in s)


def convert_rows(
    records: Iterable[dict[str, Any]],
    to_row: Callable[[dict[str, Any], int], dict[str, Any]],
    *,
    source: str,
    on_bad: str = "report",
    extra: dict[str, Any] | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Map raw records to rows with ``to_row``; rows it rejects (ValueError) are handled by ``on_bad``.

    on_bad: "report" (drop, log a warning with ids and count), "raise" (ValueError on the first),
    "keep" (keep with image None / empty fields, still reported).
    """
    if on_bad not in ("report", "raise", "keep"):
        raise ValueError(f"on_bad must be 'report', 'raise' or 'keep', not {on_bad!r}")
    rep, rows = LoadReport(source), []
    for i, rec in enumerate(records):
        rep.n_total += 1
        try:
            row = to_row(rec, i)
            if not str(row.get("question") or "").strip():
                raise ValueError("empty question")
            if not str(row.get("answer") or "").strip():
                raise ValueError("empty answer")
            rows.append(row)
        except ValueError as exc:
            rid = str(rec.get("data_id") or rec.get("sample_id") or rec.get("id") or f"{source}_{i}")
            if on_bad == "raise":
                raise ValueError(f"{source} row {rid}: {exc}") from exc
            rep.bad.append((rid, str(exc)))
            if on_bad == "keep":
                rows.append(_partial_row(rec, rid, source))
    if rep.bad:
        log.warning("%s", rep)
    return rows_to_dataset(rows, extra), rep


def _partial_row(rec: dict, rid: str, source: str) -> dict[str, Any]:
    return {"data_id": rid, "image": None, "question": str(rec.get("question") or ""), "answer": "",
            "aliases": [], "category": None, "kind": None, "source": source}  # fmt: skip


# --------------------------------------------------------------------------- FVQA / veRL format


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    msgs = list(prompt or [])
    users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"] or msgs
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):  # multimodal content blocks
        content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content).replace("<image>", "").strip()


def _candidates(raw: Any) -> list[str]:
    """Alternative answers as strings, from a list, a JSON / Python-literal string, a plain string or a
    number (e.g. 1984); None entries are skipped. Other types raise ValueError (the row is reported)."""
    if hasattr(raw, "tolist"):  # numpy / pyarrow arrays from parquet readers
        raw = raw.tolist()
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return []
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            import ast

            try:
                raw = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return [text]
    if raw is None:
        return []
    if isinstance(raw, str | int | float):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ValueError(f"candidate answers must be a list, a string or a number, not {type(raw).__name__}")
    return [str(a) for a in raw if a is not None and str(a).strip()]


def fvqa_record_to_row(rec: dict[str, Any], i: int = 0, *, source: str | None = None) -> dict[str, Any]:
    """One FVQA / veRL record -> one row (raises ValueError on a bad image or bad candidate answers).

    ``source``: an explicit value, else ``extra_info["source"]`` (what ``write_fvqa_parquet`` stores),
    else ``data_source``."""
    rm = rec.get("reward_model") or {}
    gt = rm.get("ground_truth")
    if isinstance(gt, dict):  # some veRL variants: {"target": [...]}
        gt = (gt.get("target") or [""])[0]
    if isinstance(gt, list):
        gt = gt[0] if gt else ""
    gt = str(gt or "").strip()
    extra = rec.get("extra_info") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"extra_info is not JSON ({exc})") from exc
    if not isinstance(extra, dict):
        extra = {}
    category = rec.get("category") or extra.get("category")
    row = {
        "data_id": str(rec.get("data_id") or extra.get("data_id") or f"{source or 'fvqa'}_{i}"),
        "image": decode_image(rec.get("images")),
        "question": _prompt_text(rec.get("prompt")),
        "answer": gt,
        "aliases": [a for a in _candidates(rm.get("candidate_answers")) if a != gt],
        "category": category if category in CATEGORIES else None,
        "kind": extra.get("kind") or None,
        "source": source or str(extra.get("source") or rec.get("data_source") or "fvqa"),
    }
    return row


def _parquet_records(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such parquet file: {path}")
    return pq.read_table(path).to_pylist()


def load_fvqa_parquet(
    path: str | Path, *, on_bad: str = "report", return_report: bool = False
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Read an FVQA / veRL parquet file into the row schema (extra_info fields are not kept)."""
    recs = _parquet_records(path)
    ds, rep = convert_rows(recs, lambda r, i: fvqa_record_to_row(r, i), source=str(path), on_bad=on_bad)
    return (ds, rep) if return_report else ds


def write_fvqa_parquet(
    ds: datasets.Dataset | Iterable[dict[str, Any]],
    path: str | Path,
    *,
    data_source: str = "mmsearch_r1/world",
    image_format: str = "PNG",
) -> Path:
    """Write rows in the FVQA / veRL parquet format; columns beyond the schema go to ``extra_info``.

    ``data_source`` must contain "mmsearch_r1" for veRL to route the rows to the MMSearch-R1 scorer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = []
    for row in ds:
        buf = io.BytesIO()
        decode_image(row["image"]).save(buf, format=image_format)
        extra = {k: v for k, v in row.items() if k not in ROW_COLUMNS}
        extra.update({"kind": row.get("kind"), "source": row.get("source")})
        recs.append(
            {
                "data_id": row["data_id"],
                "prompt": [{"content": row["question"], "role": "user"}],
                "images": [{"bytes": buf.getvalue(), "path": None}],
                "reward_model": {
                    "ground_truth": row["answer"],
                    "candidate_answers": json.dumps(list(row.get("aliases") or []), ensure_ascii=False),
                    "style": "rule",
                },
                "data_source": data_source,
                "image_urls": None,
                "category": row.get("category"),
                "extra_info": json.dumps(extra, ensure_ascii=False, default=str),
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path


def read_extra_info(path: str | Path) -> list[dict[str, Any]]:
    """The ``extra_info`` dicts of a parquet written by ``write_fvqa_parquet`` (entity ids, splits, ...)."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist()
    return [json.loads(x) if isinstance(x, str) else (x or {}) for x in col]


def write_pool(
    pool: Mapping[str, datasets.Dataset], out_dir: str | Path, prefix: str, *, image_format: str = "PNG"
) -> dict[str, dict[str, Any]]:
    """Write each named split to ``out_dir/<prefix>_<name>.parquet`` with ``data_source``
    "mmsearch_r1/<prefix>_<name>"; returns {name: {"path": str, "rows": n}} (counts from the
    datasets written, no re-reading)."""
    out: dict[str, dict[str, Any]] = {}
    for name, ds in pool.items():
        path = write_fvqa_parquet(
            ds,
            Path(out_dir) / f"{prefix}_{name}.parquet",
            data_source=f"mmsearch_r1/{prefix}_{name}",
            image_format=image_format,
        )
        out[name] = {"path": str(path), "rows": len(ds)}
    return out


_BENCHMARK_NAMES = ("HUB_IDS", "load_benchmark", "load_fvqa", "load_infoseek", "load_livevqa", "load_mmsearch",
                    "load_simplevqa")  # fmt: skip


def __getattr__(name: str) -> Any:
    """Benchmark readers moved to ``benchmarks_data``; still importable from here (lazily: no cycle)."""
    if name in _BENCHMARK_NAMES:
        from mmsearch_r1 import benchmarks_data

        return getattr(benchmarks_data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
