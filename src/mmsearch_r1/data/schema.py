"""Row schema and the FVQA / veRL parquet reader and writer.

What it does: defines the row schema every stage uses (a ``datasets.Dataset`` with ``data_id, image
(PIL), question, answer, aliases, category, kind, source``; extra columns are allowed and kept),
converts the FVQA / veRL parquet format (``prompt``, ``images``, ``reward_model{ground_truth,
candidate_answers}``, ``data_source``, ``data_id``, ``category``, optional ``extra_info``) to and from
it (``load_fvqa_parquet``, ``write_fvqa_parquet``, ``write_pool``). Rows with a missing or corrupt
image or an empty question/answer are dropped *and reported* (``LoadReport``: ids, reasons, count) -
or kept or raised on, as the caller asks; every reason names the column, and a column missing from
the whole file is one error that lists it with what the reader expects. An image over
``MAX_IMAGE_PIXELS`` (a decompression bomb) is a bad row like a corrupt one. ``to_row`` helpers
(``decode_image``, ``convert_rows``, ``column``, ``require_columns``) are shared with the benchmark
readers. ``read_jsonl`` reads a jsonl file, naming the file and line of a bad one (in append-only run
files it skips, with a warning, the cut last line a killed process leaves); ``write_jsonl`` writes one.

What it does not: no benchmark readers (``data.benchmarks``: FVQA from the hub, InfoSeek, MMSearch,
SimpleVQA, LiveVQA, ``load_benchmark``), no question generation (``data.questions``), no curation
(``data.curation``), no network access.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from mmsearch_r1.helpers import to_rgb  # also importable from here: schema.to_rgb

log = logging.getLogger(__name__)

ROW_COLUMNS = ("data_id", "image", "question", "answer", "aliases", "category", "kind", "source")
"""The columns every row has (others may follow)."""
CATEGORIES = ("search_free", "search_required")
MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width x height) a reader decodes: PIL's default decompression-bomb bound. A bigger
image is a bad row (reported like a corrupt one), not an out-of-memory crash or an aborted load."""
FVQA_COLUMNS = ("prompt", "images", "reward_model")
"""Columns an FVQA / veRL parquet must have (``data_id``, ``category``, ``data_source`` and
``extra_info`` are optional)."""


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


def decode_image(obj: Any, *, root: Path | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """RGB PIL image (transparency on white) from a PIL image, {'bytes','path'} dict, raw bytes, a
    base64 string or a file path (relative paths under ``root``).

    Raises ValueError naming the problem: missing image, file not found, corrupt/unreadable data, or
    an image over ``max_pixels`` (checked from the header, before the pixels are decoded).
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
        im = Image.open(io.BytesIO(data))  # reads the header only: the size is known, no pixels yet
        if im.width * im.height <= max_pixels:
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as exc:  # PIL's own check, at twice its bound, in Image.open
        raise ValueError(f"image over the pixel bound ({exc}): shrink it or drop the row") from exc
    except (OSError, binascii.Error, ValueError, SyntaxError) as exc:
        if isinstance(obj, str) and _looks_like_path(obj) and not p.is_file():
            raise ValueError(f"image file not found: {p}") from exc
        raise ValueError(f"corrupt or unreadable image ({type(exc).__name__})") from exc
    raise ValueError(f"image of {im.width}x{im.height} pixels is over the bound of {max_pixels:,} "
                     "(a decompression bomb or an unscaled scan): shrink it or drop the row")  # fmt: skip


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _looks_like_path(s: str) -> bool:
    """A short string that did not decode and has an image suffix or a path separator: a missing file
    rather than bad base64 (only called after decoding failed)."""
    return len(s) < 1024 and (s.lower().endswith(_IMAGE_SUFFIXES) or "/" in s or "\\" in s)


@contextmanager
def column(name: str) -> Iterator[None]:
    """Re-raise a ValueError, TypeError or AttributeError of the block as a ValueError naming ``name``.

    ``to_row`` functions read each source column inside ``with column("..."):`` so that a bad value
    (an int prompt, a string where a struct belongs) becomes a bad row saying which column is wrong.
    """
    try:
        yield
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"column {name!r}: {exc}") from exc


def require_columns(columns: Iterable[str], required: Iterable[str], *, where: str, expects: str) -> None:
    """One ValueError listing every ``required`` column absent from ``columns`` and what is expected.

    A column missing from the whole file is a wrong file or format, not thousands of bad rows.
    """
    have = set(columns)
    missing = [c for c in required if c not in have]
    if missing:
        has = ", ".join(sorted(have)) or "none"
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)} (has {has}); expected {expects}")


def convert_rows(
    records: Iterable[dict[str, Any]],
    to_row: Callable[[dict[str, Any], int], dict[str, Any]],
    *,
    source: str,
    on_bad: str = "report",
    extra: dict[str, Any] | None = None,
    where: str | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Map raw records to rows with ``to_row``; rows it rejects are handled by ``on_bad``.

    A row is rejected when ``to_row`` raises ValueError (or TypeError / AttributeError: a value of an
    unexpected type) or leaves the question or answer empty. on_bad: "report" (drop, log a warning
    with ids and count), "raise" (ValueError on the first), "keep" (keep with image None / empty
    fields, still reported). ``where``: the file read, named in the report; ``names``: the source
    column of ``question`` / ``answer``, named when they are empty.
    """
    if on_bad not in ("report", "raise", "keep"):
        raise ValueError(f"on_bad must be 'report', 'raise' or 'keep', not {on_bad!r}")
    names = {"question": "question", "answer": "answer", **(names or {})}
    rep, rows = LoadReport(f"{source} ({where})" if where and where != source else source), []
    for i, rec in enumerate(records):
        rep.n_total += 1
        rec_get = rec.get if isinstance(rec, Mapping) else {}.get
        rid = str(rec_get("data_id") or rec_get("sample_id") or rec_get("id") or f"{source}_{i}")
        try:
            if not isinstance(rec, Mapping):
                raise ValueError(f"record is a {type(rec).__name__}, not an object with named columns")
            row = to_row(rec, i)
            for key in ("question", "answer"):
                if not str(row.get(key) or "").strip():
                    raise ValueError(f"column {names[key]!r}: empty {key}")
            rows.append(row)
        except (ValueError, TypeError, AttributeError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            if on_bad == "raise":
                raise ValueError(f"{rep.source} row {rid}: {why}") from exc
            rep.bad.append((rid, why))
            if on_bad == "keep":
                rows.append(_partial_row(rec_get, rid, source))
    if rep.bad:
        log.warning("%s", rep)
    return rows_to_dataset(rows, extra), rep


def _partial_row(rec_get: Callable[[str], Any], rid: str, source: str) -> dict[str, Any]:
    return {"data_id": rid, "image": None, "question": str(rec_get("question") or ""), "answer": "",
            "aliases": [], "category": None, "kind": None, "source": source}  # fmt: skip


# --------------------------------------------------------------------------- FVQA / veRL format


def _prompt_text(prompt: Any) -> str:
    prompt = prompt.tolist() if hasattr(prompt, "tolist") else prompt  # numpy arrays from parquet
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    if not isinstance(prompt, list | tuple):
        raise ValueError(f"must be a string or a list of chat messages, not {type(prompt).__name__}")
    msgs = [m for m in prompt if isinstance(m, Mapping)]
    users = [m for m in msgs if m.get("role") == "user"] or msgs
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):  # multimodal content blocks
        content = " ".join(str(c.get("text") or "") for c in content if isinstance(c, Mapping))
    return str(content or "").replace("<image>", "").strip()


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
    with column("reward_model"):
        if not isinstance(rm, Mapping):
            raise ValueError(f"must be a struct {{ground_truth, candidate_answers}}, not {type(rm).__name__}")
        gt = rm.get("ground_truth")
        if isinstance(gt, Mapping):  # some veRL variants: {"target": [...]}
            gt = gt.get("target")
        gt = gt.tolist() if hasattr(gt, "tolist") else gt
        if isinstance(gt, list | tuple):
            gt = gt[0] if gt else ""
        gt = str(gt or "").strip()
    with column("reward_model.candidate_answers"):
        aliases = [a for a in _candidates(rm.get("candidate_answers")) if a != gt]
    extra = rec.get("extra_info") or {}
    with column("extra_info"):
        if isinstance(extra, str):
            try:
                extra = json.loads(extra or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(extra, Mapping):
        extra = {}
    category = rec.get("category") or extra.get("category")
    with column("images"):
        image = decode_image(rec.get("images"))
    with column("prompt"):
        question = _prompt_text(rec.get("prompt"))
    return {
        "data_id": str(rec.get("data_id") or extra.get("data_id") or f"{source or 'fvqa'}_{i}"),
        "image": image,
        "question": question,
        "answer": gt,
        "aliases": aliases,
        "category": category if category in CATEGORIES else None,
        "kind": extra.get("kind") or None,
        "source": source or str(extra.get("source") or rec.get("data_source") or "fvqa"),
    }


def _parquet_records(path: str | Path, required: Iterable[str] = (), expects: str = "") -> list[dict]:
    """The rows of a parquet file as dicts, after checking that its ``required`` columns exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such parquet file: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable parquet file ({exc}); check the path") from exc
    require_columns(table.column_names, required, where=str(path), expects=expects)
    return table.to_pylist()


def load_fvqa_parquet(
    path: str | Path, *, on_bad: str = "report", return_report: bool = False
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Read an FVQA / veRL parquet file into the row schema (extra_info fields are not kept)."""
    expects = "FVQA / veRL columns prompt, images, reward_model{ground_truth, candidate_answers}"
    recs = _parquet_records(path, FVQA_COLUMNS, expects)
    names = {"question": "prompt", "answer": "reward_model.ground_truth"}
    ds, rep = convert_rows(recs, fvqa_record_to_row, source=str(path), on_bad=on_bad, names=names)
    return (ds, rep) if return_report else ds


def read_jsonl(path: str | Path, *, append_only: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file, one per non-blank line, in order.

    A line that is not a JSON object is a ValueError naming the file, the line and the fix - except in an
    ``append_only`` file (a run's ``metrics.jsonl``, ``samples.jsonl``, ``eval_items.jsonl``). A process
    killed mid-write leaves a cut last line there, and the resume must go on: bad lines are skipped with a
    warning naming them, and a missing file reads as no records."""
    path = Path(path)
    if append_only and not path.is_file():
        return []
    try:  # a cut in the middle of a multi-byte character spoils only the cut line
        lines = path.read_bytes().decode("utf-8", errors="replace" if append_only else "strict").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc}); a jsonl file must be UTF-8") from exc
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            problem = None if isinstance(rec, dict) else f"a JSON {type(rec).__name__}, not an object"
        except json.JSONDecodeError as exc:
            problem = f"not JSON ({exc.msg} at column {exc.colno})"
        if problem is None:
            out.append(rec)
        elif not append_only:
            raise ValueError(f"{path} line {n} is {problem}: each line must be a JSON object; fix it")
        elif n == last:
            log.warning("%s: skipped the cut last line %d (a run killed mid-write): %s", path, n, problem)
        else:
            log.warning("%s: skipped damaged line %d of %d: %s", path, n, last, problem)
    return out


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` to ``path`` as jsonl, atomically (a temporary file of this process, renamed)."""
    tmp = Path(path).with_name(f"{Path(path).name}.{os.getpid()}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


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
