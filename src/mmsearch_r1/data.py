"""Row schema, FVQA / veRL parquet reader and writer, and readers for the benchmarks.

What it does: defines the row schema every stage uses (a ``datasets.Dataset`` with ``data_id, image
(PIL), question, answer, aliases, category, kind, source``; extra columns are allowed and kept),
converts the FVQA / veRL parquet format (``prompt``, ``images``, ``reward_model{ground_truth,
candidate_answers}``, ``data_source``, ``data_id``, ``category``, optional ``extra_info``) to and from
it, and reads FVQA (train/test), InfoSeek, MMSearch, SimpleVQA and LiveVQA either from the hub (when
reachable) or from a local file in the benchmark's own format. Rows with a missing or corrupt image or
an empty question/answer are dropped *and reported* (``LoadReport``: ids, reasons, count) - or kept or
raised on, as the caller asks.

What it does not: no question generation (``questions.py``), no curation (``curation.py``), no
network access of its own (the hub is reached only through ``datasets`` / ``huggingface_hub``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

log = logging.getLogger(__name__)

ROW_COLUMNS = ("data_id", "image", "question", "answer", "aliases", "category", "kind", "source")
"""The columns every row has (others may follow)."""
CATEGORIES = ("search_free", "search_required")
HUB_IDS = {
    "fvqa": "lmms-lab/FVQA",
    "mmsearch": "CaraJ/MMSearch",
    "simplevqa": "m-a-p/SimpleVQA",
    "livevqa": "ONE-Lab/LiveVQA-Research-Preview",
}
"""Hub dataset ids. InfoSeek has none: MMSearch-R1's 2k subset ships as a parquet in its GitHub repo."""


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
    """PIL image from a PIL image, {'bytes','path'} dict, raw bytes, a base64 string or a file path.

    Raises ValueError naming the problem when the image is missing or cannot be decoded.
    """
    if isinstance(obj, list | tuple):
        if not obj:
            raise ValueError("missing image (empty list)")
        obj = obj[0]
    if isinstance(obj, Image.Image):
        return obj.convert("RGB")
    if isinstance(obj, dict):
        data = obj.get("bytes")
        obj = data if data else obj.get("path")
    if obj is None or (isinstance(obj, str | bytes) and len(obj) == 0):
        raise ValueError("missing image")
    try:
        if isinstance(obj, str):
            p = Path(obj) if root is None or Path(obj).is_absolute() else Path(root) / obj
            if len(obj) < 1024 and p.is_file():
                data = p.read_bytes()
            else:
                data = base64.b64decode(obj, validate=True)
        else:
            data = bytes(obj)
        im = Image.open(io.BytesIO(data))
        im.load()
        return im.convert("RGB")
    except (OSError, binascii.Error, ValueError, SyntaxError) as exc:
        raise ValueError(f"corrupt or unreadable image ({type(exc).__name__})") from exc


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
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            return []
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            try:
                import ast

                raw = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                return [raw]
    if isinstance(raw, str):
        return [raw]
    return [str(a) for a in raw if str(a).strip()]


def fvqa_record_to_row(rec: dict[str, Any], i: int = 0, *, source: str | None = None) -> dict[str, Any]:
    """One FVQA / veRL record -> one row (raises ValueError on a bad image)."""
    rm = rec.get("reward_model") or {}
    gt = rm.get("ground_truth")
    if isinstance(gt, dict):  # some veRL variants: {"target": [...]}
        gt = (gt.get("target") or [""])[0]
    if isinstance(gt, list):
        gt = gt[0] if gt else ""
    gt = str(gt or "").strip()
    extra = rec.get("extra_info") or {}
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    category = rec.get("category") or extra.get("category")
    row = {
        "data_id": str(rec.get("data_id") or extra.get("data_id") or f"{source or 'fvqa'}_{i}"),
        "image": decode_image(rec.get("images")),
        "question": _prompt_text(rec.get("prompt")),
        "answer": gt,
        "aliases": [a for a in _candidates(rm.get("candidate_answers")) if a != gt],
        "category": category if category in CATEGORIES else None,
        "kind": extra.get("kind") or None,
        "source": source or str(rec.get("data_source") or "fvqa"),
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


# --------------------------------------------------------------------------- benchmark readers


def _hub(name: str, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except Exception as exc:  # offline, gated, renamed: all become one clear message
        raise RuntimeError(
            f"could not load {name} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Offline? Download it elsewhere and pass path=... (see mmsearch_r1.data.load_benchmark)."
        ) from exc


def load_fvqa(split: str = "train", *, path: str | Path | None = None, **kw) -> datasets.Dataset:
    """FVQA train (4,856 rows, labelled) or test (1,800 rows): a local parquet, else ``lmms-lab/FVQA``."""
    if path is None:
        from huggingface_hub import hf_hub_download

        path = _hub(
            "FVQA", lambda: hf_hub_download(HUB_IDS["fvqa"], f"fvqa_{split}.parquet", repo_type="dataset")
        )
    return load_fvqa_parquet(path, **kw)


def load_infoseek(
    path: str | Path, *, image_root: str | Path | None = None, on_bad: str = "report"
) -> datasets.Dataset:
    """InfoSeek: MMSearch-R1's ``mmsearch_r1_infoseek_sub_2k.parquet`` (veRL format) or an InfoSeek jsonl.

    The jsonl rows (``data_id, image_id, question, answer, answer_eval``) need ``image_root`` holding
    ``<image_id>.jpg`` (the OVEN images). No hub copy exists, so a path is required.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return load_fvqa_parquet(path, on_bad=on_bad)
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def to_row(r: dict, i: int) -> dict:
        golds = [a for a in r.get("answer_eval") or r.get("answer") or [] if isinstance(a, str)]
        answer = (r.get("answer") or golds or [""])[0]
        if isinstance(answer, dict):  # numeric answers: {"range": [...], "wikidata": x}
            answer = str(answer.get("wikidata", ""))
        img = Path(image_root or path.parent) / f"{r.get('image_id')}.jpg"
        return {"data_id": str(r.get("data_id") or f"infoseek_{i}"), "image": decode_image(str(img)),
                "question": r.get("question", ""), "answer": str(answer),
                "aliases": [a for a in golds if a != answer], "category": None,
                "kind": r.get("question_type"), "source": "infoseek"}  # fmt: skip

    return convert_rows(recs, to_row, source="infoseek", on_bad=on_bad)[0]


def load_mmsearch(path: str | Path | None = None, *, on_bad: str = "report") -> datasets.Dataset:
    """MMSearch end2end (``CaraJ/MMSearch``, config/split "end2end"): rows without a query image are bad.

    Columns: sample_id, query, query_image, gt_answer, alternative_gt_answers, area, subfield, ...
    The paper uses the 171 questions that have an image; the others are reported as bad rows.
    """
    if path is None:
        recs = _hub(
            "MMSearch", lambda: datasets.load_dataset(HUB_IDS["mmsearch"], "end2end", split="end2end")
        )
    else:
        recs = _parquet_records(path)

    def to_row(r: dict, i: int) -> dict:
        gt = str(r.get("gt_answer") or "").strip()
        return {"data_id": str(r.get("sample_id") or f"mmsearch_{i}"), "image": decode_image(r.get("query_image")),
                "question": str(r.get("query") or ""), "answer": gt,
                "aliases": [a for a in _candidates(r.get("alternative_gt_answers")) if a != gt],
                "category": None, "kind": r.get("area"), "source": "mmsearch"}  # fmt: skip

    return convert_rows(recs, to_row, source="mmsearch", on_bad=on_bad)[0]


def load_simplevqa(
    path: str | Path | None = None, *, language: str | None = "EN", on_bad: str = "report"
) -> datasets.Dataset:
    """SimpleVQA (``m-a-p/SimpleVQA``, split "test"): English rows only by default (the paper's 1,013).

    Columns: data_id, image (base64 string or image), question, answer, language, vqa_category, ...
    """
    if path is None:
        recs = _hub("SimpleVQA", lambda: datasets.load_dataset(HUB_IDS["simplevqa"], split="test"))
    else:
        recs = _parquet_records(path)
    if language:
        recs = [r for r in recs if str(r.get("language") or "").upper().startswith(language.upper())]

    def to_row(r: dict, i: int) -> dict:
        return {"data_id": f"simplevqa_{r.get('data_id', i)}", "image": decode_image(r.get("image")),
                "question": str(r.get("question") or ""), "answer": str(r.get("answer") or "").strip(),
                "aliases": [], "category": None, "kind": r.get("vqa_category"), "source": "simplevqa"}  # fmt: skip

    return convert_rows(recs, to_row, source="simplevqa", on_bad=on_bad)[0]


def load_livevqa(path: str | Path | None = None, *, on_bad: str = "report") -> datasets.Dataset:
    """LiveVQA research preview: a folder with ``qa.json`` (sample_id, query, query_image, gt_answer) and
    ``image/``; downloaded from ``ONE-Lab/LiveVQA-Research-Preview`` when no path is given."""
    if path is None:
        from huggingface_hub import snapshot_download

        path = _hub("LiveVQA", lambda: snapshot_download(HUB_IDS["livevqa"], repo_type="dataset",
                                                         allow_patterns=["qa.json", "image/**"]))  # fmt: skip
    root = Path(path)
    qa = root / "qa.json" if root.is_dir() else root
    data = json.loads(qa.read_text(encoding="utf-8"))
    recs = data if isinstance(data, list) else data.get("data") or data.get("samples") or []

    def to_row(r: dict, i: int) -> dict:
        img = str(r.get("query_image") or "")
        if not img:
            raise ValueError("missing image")
        p = qa.parent / img.lstrip("/")
        p = p if p.is_file() else qa.parent / "image" / Path(img).name
        gt = r.get("gt_answer")
        golds = [str(a) for a in (gt if isinstance(gt, list) else [gt]) if a is not None and str(a).strip()]
        return {"data_id": str(r.get("sample_id") or f"livevqa_{i}"), "image": decode_image(str(p)),
                "question": str(r.get("query") or ""), "answer": golds[0] if golds else "",
                "aliases": golds[1:], "category": None, "kind": r.get("topic"), "source": "livevqa"}  # fmt: skip

    return convert_rows(recs, to_row, source="livevqa", on_bad=on_bad)[0]


def load_benchmark(name: str, path: str | Path | None = None, **kw) -> datasets.Dataset:
    """By name: "fvqa_train", "fvqa_test", "infoseek", "mmsearch", "simplevqa", "livevqa"."""
    if name in ("fvqa_train", "fvqa_test"):
        return load_fvqa(name.split("_")[1], path=path, **kw)
    readers = {"infoseek": load_infoseek, "mmsearch": load_mmsearch, "simplevqa": load_simplevqa,
               "livevqa": load_livevqa}  # fmt: skip
    if name not in readers:
        raise ValueError(
            f"unknown benchmark {name!r}; choose from fvqa_train, fvqa_test, {', '.join(readers)}"
        )
    if name == "infoseek" and path is None:
        raise ValueError(
            "InfoSeek has no hub copy: pass path= to mmsearch_r1_infoseek_sub_2k.parquet or a jsonl"
        )
    return readers[name](path, **kw)
