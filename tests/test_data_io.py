"""Row schema, FVQA/veRL parquet round trip, benchmark readers on small local files in their real formats,
and bad-row reporting (missing/corrupt image, empty answer)."""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsearch_r1.data import benchmarks as B
from mmsearch_r1.data import schema as D


def _png(colour=(200, 30, 30), size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _fvqa_record(i, *, image=None, answer="namus", cands='["NAMUS"]', category="search_free", with_cat=True):
    rec = {
        "prompt": [{"content": f"What is the name of the system shown in the image? ({i})", "role": "user"}],
        "images": [{"bytes": _png() if image is None else image, "path": None}],
        "reward_model": {"ground_truth": answer, "candidate_answers": cands, "style": "rule"},
        "data_source": "mmsearch_r1/fvqa_train",
        "image_urls": None,
        "data_id": f"fvqa_train_{i}",
    }
    if with_cat:
        rec["category"] = category
    return rec


def test_rows_to_dataset_schema():
    ds = D.rows_to_dataset(
        [
            {
                "data_id": "a",
                "image": Image.new("RGB", (4, 4)),
                "question": "q",
                "answer": "x",
                "aliases": ["y"],
                "category": None,
                "kind": "k",
                "source": "s",
            }
        ]  # fmt: skip
    )
    assert tuple(ds.column_names) == D.ROW_COLUMNS
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["aliases"] == ["y"]
    with pytest.raises(ValueError, match="extra"):
        D.rows_to_dataset([{**ds[0], "surprise": 1}])


def test_load_fvqa_parquet_real_format(tmp_path):
    recs = [_fvqa_record(0), _fvqa_record(1, cands="[]", category="search_required")]
    path = tmp_path / "fvqa_train.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    ds = D.load_fvqa_parquet(path)
    assert len(ds) == 2 and tuple(ds.column_names) == D.ROW_COLUMNS
    r = ds[0]
    assert r["data_id"] == "fvqa_train_0" and r["answer"] == "namus" and r["aliases"] == ["NAMUS"]
    assert r["question"].startswith("What is the name") and r["category"] == "search_free"
    assert r["image"].size == (24, 16) and r["source"] == "mmsearch_r1/fvqa_train"
    assert ds[1]["aliases"] == [] and ds[1]["category"] == "search_required"


def test_fvqa_test_has_no_category_column(tmp_path):
    path = tmp_path / "fvqa_test.parquet"
    pq.write_table(pa.Table.from_pylist([_fvqa_record(0, with_cat=False)]), path)
    assert D.load_fvqa_parquet(path)[0]["category"] is None


def test_bad_rows_are_reported_by_id_and_count(tmp_path, caplog):
    recs = [
        _fvqa_record(0),
        _fvqa_record(1, image=b"not an image"),
        _fvqa_record(2, answer=""),
        {**_fvqa_record(3), "images": []},
    ]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    ds, rep = D.load_fvqa_parquet(path, return_report=True)
    assert len(ds) == 1 and rep.n_total == 4 and rep.n_bad == 3
    bad = dict(rep.bad)
    assert set(bad) == {"fvqa_train_1", "fvqa_train_2", "fvqa_train_3"}
    assert "corrupt" in bad["fvqa_train_1"] and "empty answer" in bad["fvqa_train_2"]
    assert "missing image" in bad["fvqa_train_3"]
    assert "3 bad" in caplog.text
    with pytest.raises(ValueError, match="fvqa_train_1"):
        D.load_fvqa_parquet(path, on_bad="raise")
    kept = D.load_fvqa_parquet(path, on_bad="keep")
    assert len(kept) == 4 and kept[1]["image"] is None


def test_write_then_read_round_trip_keeps_extras(tmp_path):
    rows = [
        {
            "data_id": f"w{i}",
            "image": Image.new("RGB", (8, 6), (i * 40, 0, 0)),
            "question": f"q{i}",
            "answer": "Bogotá",
            "aliases": ["Bogota"],
            "category": "search_required",
            "kind": "text_only",
            "source": "world",
            "entity_id": "country/CO",
        }  # fmt: skip
        for i in range(3)
    ]
    ds = D.rows_to_dataset(rows, {"entity_id": D.datasets.Value("string")})
    path = D.write_fvqa_parquet(ds, tmp_path / "out.parquet", data_source="mmsearch_r1/world_train")
    raw = pq.read_table(path).to_pylist()[0]
    assert raw["prompt"] == [{"content": "q0", "role": "user"}]
    assert json.loads(raw["reward_model"]["candidate_answers"]) == ["Bogota"]
    assert "mmsearch_r1" in raw["data_source"] and raw["images"][0]["bytes"][:4] == b"\x89PNG"
    back = D.load_fvqa_parquet(path)
    assert back["data_id"] == ["w0", "w1", "w2"] and back[0]["aliases"] == ["Bogota"]
    assert back[0]["kind"] == "text_only" and back[0]["category"] == "search_required"
    assert D.read_extra_info(path)[0]["entity_id"] == "country/CO"
    assert back["source"] == ["world"] * 3  # from extra_info, not data_source


def test_numeric_and_odd_candidate_answers(tmp_path):
    recs = [_fvqa_record(0, answer="1984", cands="1984"), _fvqa_record(1, answer="1984", cands="[1984, 1985, null]"),
            _fvqa_record(2, answer="7", cands='"seven"'), _fvqa_record(3, cands="{'a': 1}")]  # fmt: skip
    path = tmp_path / "num.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    ds, rep = D.load_fvqa_parquet(path, return_report=True)  # no TypeError aborting the load
    assert ds["aliases"] == [[], ["1985"], ["seven"]]
    why = "column 'reward_model.candidate_answers': candidate answers must be a list, a string or a number, not dict"
    assert rep.bad == [("fvqa_train_3", why)]
    assert D._candidates(1984) == ["1984"] and D._candidates([None, 2.5, " "]) == ["2.5"]
    assert D._candidates(None) == [] and D._candidates("Lima") == ["Lima"]


def test_write_pool_returns_sizes_without_rereading(tmp_path):
    ds = D.rows_to_dataset([{"data_id": f"p{i}", "image": Image.new("RGB", (4, 4)), "question": "q", "answer": "a",
                             "aliases": [], "category": None, "kind": None, "source": "s"} for i in range(3)])  # fmt: skip
    sizes = D.write_pool({"train": ds, "test": ds.select([0])}, tmp_path, "world")
    assert sizes == {"train": {"path": str(tmp_path / "world_train.parquet"), "rows": 3},
                     "test": {"path": str(tmp_path / "world_test.parquet"), "rows": 1}}  # fmt: skip
    raw = pq.read_table(tmp_path / "world_test.parquet").to_pylist()[0]
    assert raw["data_source"] == "mmsearch_r1/world_test"


def test_mmsearch_end2end_format(tmp_path):
    recs = [
        {"sample_id": "1", "query": "Which bridge is this?", "query_image": {"bytes": _png(), "path": "q.png"},
         "image_search_result": None, "area": "news", "subfield": "x", "timestamp": "2024-09",
         "gt_requery": "bridge", "gt_answer": "Golden Gate Bridge", "alternative_gt_answers": ["Golden Gate"]},
        {"sample_id": "2", "query": "Text only?", "query_image": None, "image_search_result": None,
         "area": "news", "subfield": "x", "timestamp": "2024-09", "gt_requery": "", "gt_answer": "x",
         "alternative_gt_answers": []},
    ]  # fmt: skip
    path = tmp_path / "end2end.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    ds = B.load_benchmark("mmsearch", path)
    assert len(ds) == 1 and ds[0]["answer"] == "Golden Gate Bridge" and ds[0]["aliases"] == ["Golden Gate"]
    assert ds[0]["source"] == "mmsearch" and ds[0]["data_id"] == "1"


def test_simplevqa_format_base64_and_english_filter(tmp_path):
    b64 = base64.b64encode(_png()).decode()
    base = {"image_description": "", "original_category": "c", "source": "s", "atomic_question": "",
            "atomic_fact": "", "vqa_category": "recognition"}  # fmt: skip
    recs = [
        {**base, "data_id": 0, "image": b64, "language": "EN", "question": "Who is this?", "answer": "Ada"},
        {**base, "data_id": 1, "image": b64, "language": "CN", "question": "这是谁?", "answer": "阿达"},
        {
            **base,
            "data_id": 2,
            "image": "bm90IGFuIGltYWdl",
            "language": "EN",
            "question": "Q?",
            "answer": "A",
        },
    ]
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    ds = B.load_simplevqa(path)
    assert ds["data_id"] == ["simplevqa_0"] and ds[0]["kind"] == "recognition"
    assert len(B.load_simplevqa(path, language=None)) == 2  # the corrupt row stays reported, not kept


def test_livevqa_folder_format(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "a.jpg").write_bytes(_png())
    qa = [
        {
            "sample_id": "lv1",
            "query": "What event is shown?",
            "query_image": "image/a.jpg",
            "gt_answer": "Expo",
        },
        {"sample_id": "lv2", "query": "Missing?", "query_image": "image/missing.jpg", "gt_answer": "x"},
    ]
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    ds = B.load_benchmark("livevqa", tmp_path)
    assert ds["data_id"] == ["lv1"] and ds[0]["answer"] == "Expo"


def test_infoseek_jsonl_and_parquet(tmp_path):
    (tmp_path / "oven_1.jpg").write_bytes(_png())
    line = {"data_id": "infoseek_val_1", "image_id": "oven_1", "question": "Which river?",
            "answer": ["Rhine"], "answer_eval": ["Rhine", "Rhein"], "data_split": "val_unseen_entity"}  # fmt: skip
    (tmp_path / "infoseek_val.jsonl").write_text(json.dumps(line) + "\n")
    ds = B.load_infoseek(tmp_path / "infoseek_val.jsonl", image_root=tmp_path)
    assert ds[0]["answer"] == "Rhine" and ds[0]["aliases"] == ["Rhein"]
    pq.write_table(pa.Table.from_pylist([_fvqa_record(0)]), tmp_path / "sub.parquet")
    assert len(B.load_benchmark("infoseek", tmp_path / "sub.parquet")) == 1
    with pytest.raises(ValueError, match="no hub copy"):
        B.load_benchmark("infoseek")


def test_hub_failure_is_a_clear_error(monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(D.datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="pass path="):
        B.load_mmsearch()
    with pytest.raises(ValueError, match="unknown benchmark"):
        B.load_benchmark("nope")


def test_decode_image_variants(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png())
    for obj in (
        _png(),
        {"bytes": _png(), "path": None},
        base64.b64encode(_png()).decode(),
        str(p),
        [{"bytes": _png()}],
    ):
        assert D.decode_image(obj).size == (24, 16)
    for bad in (None, b"", [], {"bytes": None, "path": None}, b"garbage"):
        with pytest.raises(ValueError):
            D.decode_image(bad)
    for missing in ("/no/such.png", "images/a.jpg", str(tmp_path / "gone")):
        with pytest.raises(ValueError, match="image file not found: .*(such.png|a.jpg|gone)"):
            D.decode_image(missing)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):  # exists but broken: not "not found"
        D.decode_image(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="corrupt"):
        D.decode_image("aGVsbG8=")  # valid base64, not an image


def test_transparent_pixels_become_white_everywhere(tmp_path):
    from mmsearch_r1.helpers import to_rgb

    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert to_rgb(im).getpixel((0, 0)) == (255, 255, 255)
    assert D.decode_image(im).getpixel((0, 0)) == (255, 255, 255)
    assert D.decode_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)
    assert D.to_rgb is to_rgb
