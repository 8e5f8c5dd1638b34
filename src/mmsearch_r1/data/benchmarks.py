"""Readers for the benchmarks: FVQA (train/test), InfoSeek, MMSearch, SimpleVQA and LiveVQA.

What it does: reads each benchmark either from the Hugging Face hub (when reachable) or from a local
file in the benchmark's own format, into the row schema of ``mmsearch_r1.data.schema``; bad rows are
handled as there (``on_bad``: report, raise or keep, each reason naming the column), a local file's name is in
every report and error, a column missing from the whole file is one error naming it, and a file that
is not valid JSON / jsonl is an error naming the file (and line). ``load_benchmark(name, path)``
dispatches by name.

What it does not: no network access of its own (the hub is reached only through ``datasets`` /
``huggingface_hub``), no scoring.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from mmsearch_r1.data.schema import (
    _candidates,
    _parquet_records,
    column,
    convert_rows,
    decode_image,
    load_fvqa_parquet,
    read_jsonl,
    require_columns,
)

HUB_IDS = {
    "fvqa": "lmms-lab/FVQA",
    "mmsearch": "CaraJ/MMSearch",
    "simplevqa": "m-a-p/SimpleVQA",
    "livevqa": "ONE-Lab/LiveVQA-Research-Preview",
}
"""Hub dataset ids. InfoSeek has none: MMSearch-R1's 2k subset ships as a parquet in its GitHub repo."""


def _hub(name: str, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except Exception as exc:  # offline, gated, renamed: all become one clear message
        raise RuntimeError(
            f"could not load {name} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Offline? Download it elsewhere and pass path=... (see mmsearch_r1.data.benchmarks.load_benchmark)."
        ) from exc


def _require(records: Any, required: tuple[str, ...], where: str, expects: str) -> None:
    """`require_columns` over records: a Dataset's ``column_names``, else the keys of its dict records."""
    names = getattr(records, "column_names", None)
    if names is None:
        names = set().union(*(r.keys() for r in records if isinstance(r, dict)))
    if len(records):  # no records: nothing to check (and nothing to load)
        require_columns(names, required, where=where, expects=expects)


def _as_list(value: Any) -> list:
    """A list of answers from a list, an array or a single value (a bare string is one answer)."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


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
    recs = read_jsonl(path)
    _require(recs, ("image_id", "question", "answer"), str(path),
             "InfoSeek jsonl lines {data_id, image_id, question, answer, answer_eval}")  # fmt: skip

    def to_row(r: dict, i: int) -> dict:
        with column("answer"):
            answers = _as_list(r.get("answer"))
            golds = [a for a in _as_list(r.get("answer_eval")) or answers if isinstance(a, str)]
            answer = (answers or golds or [""])[0]
            if isinstance(answer, dict):  # numeric answers: {"range": [...], "wikidata": x}
                answer = str(answer.get("wikidata", ""))
        with column("image_id"):
            if not r.get("image_id"):
                raise ValueError("missing image id")
            image = decode_image(str(Path(image_root or path.parent) / f"{r['image_id']}.jpg"))
        return {"data_id": str(r.get("data_id") or f"infoseek_{i}"), "image": image,
                "question": str(r.get("question") or ""), "answer": str(answer),
                "aliases": [a for a in golds if a != answer], "category": None,
                "kind": r.get("question_type"), "source": "infoseek"}  # fmt: skip

    return convert_rows(recs, to_row, source="infoseek", on_bad=on_bad, where=str(path))[0]


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
    where = str(path or HUB_IDS["mmsearch"])
    _require(recs, ("query", "query_image", "gt_answer"), where,
             "MMSearch end2end columns sample_id, query, query_image, gt_answer, alternative_gt_answers")  # fmt: skip

    def to_row(r: dict, i: int) -> dict:
        gt = str(r.get("gt_answer") or "").strip()
        with column("query_image"):
            image = decode_image(r.get("query_image"))
        with column("alternative_gt_answers"):
            aliases = [a for a in _candidates(r.get("alternative_gt_answers")) if a != gt]
        return {"data_id": str(r.get("sample_id") or f"mmsearch_{i}"), "image": image,
                "question": str(r.get("query") or ""), "answer": gt, "aliases": aliases,
                "category": None, "kind": r.get("area"), "source": "mmsearch"}  # fmt: skip

    names = {"question": "query", "answer": "gt_answer"}
    return convert_rows(recs, to_row, source="mmsearch", on_bad=on_bad, where=where, names=names)[0]


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
    where = str(path or HUB_IDS["simplevqa"])
    _require(recs, ("image", "question", "answer") + (("language",) if language else ()), where,
             "SimpleVQA columns data_id, image, question, answer, language (language=None: no filter)")  # fmt: skip
    if language:
        recs = [r for r in recs if str(r.get("language") or "").upper().startswith(language.upper())]

    def to_row(r: dict, i: int) -> dict:
        with column("image"):
            image = decode_image(r.get("image"))
        return {"data_id": f"simplevqa_{r.get('data_id', i)}", "image": image,
                "question": str(r.get("question") or ""), "answer": str(r.get("answer") or "").strip(),
                "aliases": [], "category": None, "kind": r.get("vqa_category"), "source": "simplevqa"}  # fmt: skip

    return convert_rows(recs, to_row, source="simplevqa", on_bad=on_bad, where=where)[0]


def load_livevqa(path: str | Path | None = None, *, on_bad: str = "report") -> datasets.Dataset:
    """LiveVQA research preview: a folder with ``qa.json`` (sample_id, query, query_image, gt_answer) and
    ``image/``; downloaded from ``ONE-Lab/LiveVQA-Research-Preview`` when no path is given."""
    if path is None:
        from huggingface_hub import snapshot_download

        path = _hub("LiveVQA", lambda: snapshot_download(HUB_IDS["livevqa"], repo_type="dataset",
                                                         allow_patterns=["qa.json", "image/**"]))  # fmt: skip
    root = Path(path)
    qa = root / "qa.json" if root.is_dir() else root
    expects = "LiveVQA qa.json: a list of {sample_id, query, query_image, gt_answer} objects"
    try:
        data = json.loads(qa.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{qa} is not valid JSON ({exc}); expected {expects}") from exc
    recs = data.get("data") or data.get("samples") if isinstance(data, dict) else data
    if not isinstance(recs, list):
        raise ValueError(
            f"{qa} holds a JSON {type(data).__name__} without a list of samples; expected {expects}"
        )
    _require(recs, ("query", "query_image", "gt_answer"), str(qa), expects)

    def to_row(r: dict, i: int) -> dict:
        with column("query_image"):
            img = str(r.get("query_image") or "")
            if not img:
                raise ValueError("missing image")
            p = qa.parent / img.lstrip("/")
            image = decode_image(str(p if p.is_file() else qa.parent / "image" / Path(img).name))
        golds = [str(a) for a in _as_list(r.get("gt_answer")) if a is not None and str(a).strip()]
        return {"data_id": str(r.get("sample_id") or f"livevqa_{i}"), "image": image,
                "question": str(r.get("query") or ""), "answer": golds[0] if golds else "",
                "aliases": golds[1:], "category": None, "kind": r.get("topic"), "source": "livevqa"}  # fmt: skip

    names = {"question": "query", "answer": "gt_answer"}
    return convert_rows(recs, to_row, source="livevqa", on_bad=on_bad, where=str(qa), names=names)[0]


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
