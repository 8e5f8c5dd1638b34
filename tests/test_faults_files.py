"""Damaged and hostile files and inputs: each is read, refused or reported by name, never a crash.

- Append-only run files (``metrics.jsonl``, ``samples.jsonl``, ``eval_items.jsonl``) with a last line cut
  by a kill: the resume and the readers go on, with a warning, and keep every whole line.
- Data readers (FVQA/veRL parquet, InfoSeek jsonl, LiveVQA json, MMSearch, SimpleVQA): a missing column,
  a value of the wrong type, a decompression-bomb image or a file that is not JSON is named by file,
  row id and column.
- Search cache files: garbage, truncated, a directory, a damaged middle; the tools CLI's one-line errors.
- The tag protocol parser: linear time on long hostile turns, the old regex parser's results on short
  ones, no exception from a non-str turn.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from search_fakes import PROTOCOL_FRAGMENTS

from mmsearch_r1.data import benchmarks as B
from mmsearch_r1.data import schema as D
from mmsearch_r1.protocol import tags as P
from mmsearch_r1.tools.cache import CacheFileError, SearchCache, check_cache

# --------------------------------------------------------------------------- append-only run files


def test_resume_drops_a_cut_last_line_of_samples_and_metrics(tmp_path, caplog):
    from mmsearch_r1.rl.run_logging import MetricsLogger, read_metrics

    samples = [
        {"step": s, "question": f"q{s}", "messages": [{"role": "assistant", "content": "x"}]}
        for s in (1, 2, 3)
    ]
    whole = "".join(json.dumps(r) + "\n" for r in samples).encode()
    (tmp_path / "samples.jsonl").write_bytes(whole + '{"step": 4, "q": "Bogotá'.encode()[:-1])  # cut in "á"
    metrics = [{"step": s, "reward": s / 10} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in metrics) + '{"step": 4, "rew'
    )
    state = SimpleNamespace(is_world_process_zero=True, global_step=2)
    with caplog.at_level(logging.WARNING):
        MetricsLogger(tmp_path).on_train_begin(None, state, None)
    assert re.search(r"samples\.jsonl: skipped the cut last line 4", caplog.text)
    assert re.search(r"metrics\.jsonl: skipped the cut last line 4", caplog.text)
    kept = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert kept == samples[:2]
    assert read_metrics(tmp_path / "metrics.jsonl") == metrics[:2]


def test_read_jsonl_strict_names_file_and_line_append_only_warns(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n{"a": 3}\n{"a": 4, "b\n')
    with pytest.raises(ValueError, match=r"x\.jsonl line 2 is a JSON list"):
        D.read_jsonl(path)
    with caplog.at_level(logging.WARNING):
        assert D.read_jsonl(path, append_only=True) == [{"a": 1}, {"a": 3}]
    assert "skipped damaged line 2 of 4" in caplog.text and "skipped the cut last line 4" in caplog.text
    assert D.read_jsonl(tmp_path / "absent.jsonl", append_only=True) == []
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl is not UTF-8 text"):
        D.read_jsonl(path)


def test_write_jsonl_is_atomic_and_reads_back(tmp_path, monkeypatch):
    path = tmp_path / "new" / "x.jsonl"
    D.write_jsonl(path, [{"a": 1}, {"b": [2]}])
    assert D.read_jsonl(path) == [{"a": 1}, {"b": [2]}]
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temporary file left

    def killed(self, *args, **kwargs):  # a process killed before its rename
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        D.write_jsonl(path, [{"c": 3}])
    assert D.read_jsonl(path) == [{"a": 1}, {"b": [2]}]  # the old file, whole


def test_load_eval_skips_a_cut_last_item(tmp_path, caplog):
    from mmsearch_r1.evaluation.evaluate import load_eval

    (tmp_path / "eval.json").write_text(json.dumps({"n_items": 2}))
    (tmp_path / "eval_items.jsonl").write_text('{"data_id": "a"}\n{"data_id": "b"}\n{"data_id": "c", "tu')
    with caplog.at_level(logging.WARNING):
        result, items = load_eval(tmp_path)
    assert result == {"n_items": 2} and items == [{"data_id": "a"}, {"data_id": "b"}]
    assert "eval_items.jsonl: skipped the cut last line 3" in caplog.text


# --------------------------------------------------------------------------- data readers


def _png(size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels with almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _fvqa(i: int, **over) -> dict:
    rec = {
        "data_id": f"row_{i}",
        "prompt": [{"content": f"What is shown? ({i})", "role": "user"}],
        "images": [{"bytes": _png(), "path": None}],
        "reward_model": {"ground_truth": "flag", "candidate_answers": "[]", "style": "rule"},
        "data_source": "mmsearch_r1/test",
    }
    return {**rec, **over}


def _write_parquet(path: Path, recs: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path


@pytest.mark.parametrize(
    "drop, named",
    [(("images",), "images"), (("prompt", "reward_model"), "prompt, reward_model")],
)
def test_fvqa_missing_columns_are_one_error_naming_them(tmp_path, drop, named):
    recs = [{k: v for k, v in _fvqa(i).items() if k not in drop} for i in range(3)]
    path = _write_parquet(tmp_path / "cols.parquet", recs)
    with pytest.raises(ValueError, match=rf"cols\.parquet: missing column\(s\) {named} .*expected FVQA"):
        D.load_fvqa_parquet(path)
    from mmsearch_r1.rl.data import load_rows

    with pytest.raises(ValueError, match=rf"missing column\(s\) {named}"):  # not "has no rows"
        load_rows(str(path))


BOMB = _png_header(30_000, 30_000)  # over twice PIL's bound: PIL itself refuses it in Image.open
BIG = _png_header(10_000, 9_000)  # over the bound, under twice it: refused by the reader's own check


@pytest.mark.parametrize(
    "bad, column, why, rows",
    [  # parquet holds one type per column: a wrongly typed column makes every row bad
        ({"prompt": 5}, "prompt", "not int", (0, 1, 2)),
        ({"reward_model": "flag"}, "reward_model", "not str", (0, 1, 2)),
        ({"images": [{"bytes": BOMB, "path": None}]}, "images", "pixel bound", (1,)),
        ({"images": [{"bytes": BIG, "path": None}]}, "images", "over the bound of 89,478,485", (1,)),
        ({"prompt": [{"content": "", "role": "user"}]}, "prompt", "empty question", (1,)),
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_fvqa_bad_value_is_a_bad_row_named_by_file_id_and_column(tmp_path, caplog, bad, column, why, rows):
    path = _write_parquet(
        tmp_path / "vals.parquet", [_fvqa(i, **(bad if i in rows else {})) for i in range(3)]
    )
    with caplog.at_level(logging.WARNING):
        ds, rep = D.load_fvqa_parquet(path, return_report=True)
    assert ds["data_id"] == [f"row_{i}" for i in range(3) if i not in rows]  # the other rows load
    assert [rid for rid, _ in rep.bad] == [f"row_{i}" for i in rows]
    assert all(f"column '{column}'" in reason and why in reason for _, reason in rep.bad)
    assert "vals.parquet" in caplog.text and f"row_{rows[0]} (column '{column}'" in caplog.text
    with pytest.raises(ValueError, match=rf"vals\.parquet row row_{rows[0]}: column '{column}'"):
        D.load_fvqa_parquet(path, on_bad="raise")


def test_load_rows_names_the_bad_rows_when_none_is_left(tmp_path):
    from mmsearch_r1.rl.data import load_rows

    path = _write_parquet(tmp_path / "allbad.parquet", [_fvqa(0, prompt=5), _fvqa(1, prompt=6)])
    with pytest.raises(ValueError, match=r"has no rows: every row is bad .*row_0 \(column 'prompt'"):
        load_rows(str(path))


def test_decode_image_pixel_bound_reads_only_the_header():
    with pytest.raises(ValueError, match="6x6 pixels is over the bound of 35"):
        D.decode_image(_png((6, 6)), max_pixels=35)
    assert D.decode_image(_png((6, 6)), max_pixels=36).size == (6, 6)


def _infoseek_line(i: int, **over) -> str:
    rec = {"data_id": f"is_{i}", "image_id": "oven_1", "question": "Which river?", "answer": ["Rhine"]}
    return json.dumps({**rec, **over})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make, pattern",
    [
        (  # InfoSeek jsonl with a line that is not JSON
            lambda d: B.load_infoseek(
                _write(d / "info.jsonl", _infoseek_line(0) + "\n{oops\n"), image_root=d
            ),
            r"info\.jsonl line 2 is not JSON",
        ),
        (  # InfoSeek jsonl without the image_id column
            lambda d: B.load_infoseek(
                _write(d / "info.jsonl", json.dumps({"question": "q", "answer": ["a"]}))
            ),
            r"info\.jsonl: missing column\(s\) image_id ",
        ),
        (  # LiveVQA qa.json that is not JSON
            lambda d: B.load_livevqa(_write(d / "qa.json", '[{"sample_id": "lv1", ')),
            r"qa\.json is not valid JSON .*expected LiveVQA",
        ),
        (  # LiveVQA qa.json that is not a list of samples
            lambda d: B.load_livevqa(_write(d / "qa.json", '"just a string"')),
            r"qa\.json holds a JSON str without a list of samples",
        ),
        (  # LiveVQA without the query_image column
            lambda d: B.load_livevqa(_write(d / "qa.json", json.dumps([{"query": "q", "gt_answer": "a"}]))),
            r"qa\.json: missing column\(s\) query_image ",
        ),
        (  # MMSearch parquet without gt_answer
            lambda d: B.load_mmsearch(
                _write_parquet(d / "mm.parquet", [{"query": "q", "query_image": None}])
            ),
            r"mm\.parquet: missing column\(s\) gt_answer ",
        ),
        (  # SimpleVQA parquet without the language column the default filter reads
            lambda d: B.load_simplevqa(
                _write_parquet(d / "sv.parquet", [{"image": "x", "question": "q", "answer": "a"}])
            ),
            r"sv\.parquet: missing column\(s\) language ",
        ),
        (  # a parquet file that is not a parquet file
            lambda d: D.load_fvqa_parquet(_write(d / "junk.parquet", "not parquet")),
            r"junk\.parquet is not a readable parquet file",
        ),
    ],
)
def test_benchmark_files_with_bad_format_name_the_file(tmp_path, make, pattern):
    (tmp_path / "oven_1.jpg").write_bytes(_png())
    with pytest.raises(ValueError, match=pattern):
        make(tmp_path)


def test_benchmark_bad_rows_name_file_id_and_column(tmp_path, caplog):
    (tmp_path / "oven_1.jpg").write_bytes(_png())
    (tmp_path / "bomb.jpg").write_bytes(BOMB)
    lines = [_infoseek_line(0), _infoseek_line(1, image_id=None), _infoseek_line(2, image_id="bomb"),
             _infoseek_line(3, answer="Rhine")]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ds = B.load_infoseek(_write(tmp_path / "info.jsonl", "\n".join(lines)), image_root=tmp_path)
    assert ds["data_id"] == ["is_0", "is_3"] and ds[1]["answer"] == "Rhine"  # a bare string is one answer
    assert "info.jsonl" in caplog.text and "is_1 (column 'image_id': missing image id)" in caplog.text
    assert "is_2 (column 'image_id': image over the pixel bound" in caplog.text
    qa = [{"sample_id": "lv1", "query": "q", "query_image": "", "gt_answer": "a"}, "not an object"]
    with caplog.at_level(logging.WARNING):
        assert len(B.load_livevqa(_write(tmp_path / "qa.json", json.dumps(qa)))) == 0
    assert "lv1 (column 'query_image': missing image)" in caplog.text
    assert "livevqa_1 (record is a str, not an object" in caplog.text


# --------------------------------------------------------------------------- search cache files


def _cache(path: Path, n: int) -> Path:
    cache = SearchCache(path)
    conn = cache._conn()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?)",
                     [(f"k{i:05d}", "e", "text", json.dumps({"v": "x" * 200}), 0.0) for i in range(n)])  # fmt: skip
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    return path


def _damage_middle(src: Path, dest: Path) -> Path:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = b"\xde\xad\xbe\xef" * 1024
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def cache_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    good = _cache(d / "good.sqlite", 3000)
    (d / "trunc.sqlite").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "garbage.sqlite").write_bytes(b"this is not a database " * 100)
    (d / "adir").mkdir()
    return {"dir": d, "good": good, "damaged": _damage_middle(good, d / "damaged.sqlite"),
            "trunc": d / "trunc.sqlite", "garbage": d / "garbage.sqlite", "adir": d / "adir"}  # fmt: skip


@pytest.mark.parametrize(
    "name, fix", [("garbage", "cache-check"), ("trunc", "cache-check"), ("adir", "directory")]
)
def test_unopenable_cache_names_path_and_fix(cache_files, name, fix):
    path = cache_files[name]
    with pytest.raises(CacheFileError, match=rf"cannot open search cache {re.escape(str(path))}: .*{fix}"):
        SearchCache(path, "read-write")


def test_damaged_rows_read_as_misses_with_a_warning(cache_files, tmp_path, caplog):
    path = _damage_middle(cache_files["good"], tmp_path / "d.sqlite")
    cache = SearchCache(path, "read-write")
    with caplog.at_level(logging.WARNING):
        values = [cache.get(f"k{i:05d}") for i in range(3000)]
    missed = sum(v is None for v in values)
    assert 0 < missed < 100 and cache.stats.misses == missed == cache.stats.damaged
    assert "treated as a miss" in caplog.text and str(path) in caplog.text
    assert all(v == {"v": "x" * 200} for v in values if v is not None)
    cache.put("new", [1])  # a write elsewhere still works
    assert cache.get("new") == [1]


def test_check_cache_reports_ok_and_damaged(cache_files):
    good = check_cache(cache_files["good"])
    assert good == {"path": str(cache_files["good"]), "rows": 3000, "status": "ok", "problems": []}
    for name in ("damaged", "trunc", "garbage"):
        for quick in (False, True):
            report = check_cache(cache_files[name], quick=quick)
            assert report["status"] == "damaged" and report["problems"], (name, report)
    with pytest.raises(CacheFileError, match="is a directory"):
        check_cache(cache_files["adir"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SERPAPI_API_KEY": "test-key", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "MMSEARCH_INDEX_DIR": str(cwd / "no_index")}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "mmsearch_r1.tools", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (("cache-stats", "{garbage}"), "cannot open search cache .*garbage.sqlite"),
        (("cache-stats", "{adir}"), "is a directory"),
        (("cache-stats", "{dir}/absent.sqlite"), "does not exist"),
        (
            ("text", "hello", "--engine", "web", "--cache", "{garbage}"),
            "garbage.sqlite: file is not a database",
        ),
        (("text", "hello", "--engine", "web", "--cache", "{adir}"), "is a directory"),
        (("text", "hello"), r"no local text index .*python -m mmsearch_r1\.tools build-index --index-dir"),
        (("cache-check", "{adir}"), "is a directory"),
        (("cache-stats",), "required: path"),
    ],
)
def test_tools_cli_user_errors_are_one_line_exit_2(cache_files, args, message):
    argv = [a.format(**{k: str(v) for k, v in cache_files.items()}) for a in args]
    out = _cli(*argv, cwd=cache_files["dir"])
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and re.search(message, out.stderr), out.stderr


def test_tools_cli_cache_check_exit_status_and_help(cache_files):
    ok = _cli("cache-check", str(cache_files["good"]), cwd=cache_files["dir"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "ok"
    bad = _cli("cache-check", str(cache_files["damaged"]), cwd=cache_files["dir"])
    assert bad.returncode == 1 and json.loads(bad.stdout)["status"] == "damaged"
    assert _cli("--help", cwd=cache_files["dir"]).stdout.count("python -m mmsearch_r1.tools cache-check") == 1


def test_cache_check_does_not_change_the_file(cache_files, tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(cache_files["damaged"].read_bytes())
    before = path.read_bytes()
    check_cache(path)
    assert path.read_bytes() == before  # read-only: SQLite may add its -wal/-shm sidecars, no more
    with pytest.raises(sqlite3.DatabaseError):  # the damage is real: SQLite itself refuses a full scan
        sqlite3.connect(path).execute("SELECT * FROM entries").fetchall()


# --------------------------------------------------------------------------- protocol parser

MB = 1 << 20
HOSTILE = {
    "whitespace": " " * MB,
    "whitespace_then_text": "\n" * MB + "x",
    "unclosed_reason": "<reason>" * (MB // 8),
    "unclosed_answer": "<answer>" * (MB // 8),
    "repeated_search": "<search>" * (MB // 8),
    "repeated_text_search": "<text_search>" * (MB // 13),
    "end_tokens_and_text": "<|im_end|> x" * (MB // 12),
    "mixed": "<reason> <answer> <search> \n<text_search>" * (MB // 41),
    "closed_answers": "<reason>r</reason>" + "<answer>a</answer>" * (MB // 17),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_parser_is_linear_on_one_megabyte_turns(name):
    text = HOSTILE[name]
    t0 = time.perf_counter()
    turn = P.parse_turn(text)
    seconds = time.perf_counter() - t0
    assert seconds < 1.0, f"{name}: {seconds:.2f} s for {len(text):,} characters"
    assert turn.kind == "invalid" and turn.why


def test_non_str_turn_whose_str_raises_is_invalid():
    class Hostile:
        def __str__(self):
            raise RuntimeError("no str for you")

    turn = P.parse_turn(Hostile())
    assert turn.kind == "invalid" and turn.action is None
    assert turn.why == "turn is Hostile, not str" and turn.text == "<unprintable Hostile>"
    assert P.parse_turn(42).why == "turn is int, not str" and P.parse_turn(42).text == "42"


# The regex parser before the linear rewrite, kept as the oracle for short turns.
_OLD_END_RE = re.compile(r"(?:\s*(?:<\|im_end\|>|<\|endoftext\|>))+\s*$")
_OLD_REASON_RE = re.compile(r"<reason>(.*?)</reason>", re.DOTALL)
_OLD_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _old_parse_turn(text: str) -> P.Turn:
    body = _OLD_END_RE.sub("", text).strip()
    answers = _OLD_ANSWER_RE.findall(body)
    answer = answers[-1].strip() if answers else None
    reason_match = _OLD_REASON_RE.search(body)
    reason = reason_match.group(1).strip() if reason_match else None
    action, query, action_start = P._action_at_end(body)

    def invalid(why: str) -> P.Turn:
        return P.Turn("invalid", reason, answer, query, why, action, text)

    if not body:
        return invalid("empty turn")
    for open_tag, close_tag, name in (("<reason>", "</reason>", "reason"), ("<answer>", "</answer>", "answer"),
                                      ("<text_search>", "</text_search>", "text_search"),
                                      ("<search>", "</search>", "search")):  # fmt: skip
        if body.count(open_tag) != body.count(close_tag):
            return invalid(f"unclosed <{name}> tag")
    if action is None:
        if body.endswith("</text_search>"):
            return invalid("empty text-search query")
        if body.endswith("</search>"):
            return invalid("malformed image search: write exactly <search><img></search>")
        if any(tag in body for tag in ("</answer>", "<search><img></search>", "</text_search>")):
            return invalid("text after the action: the action must end the turn")
        return invalid("no action: end the turn with <answer>, <search><img></search> or <text_search>")
    if reason_match is None:
        return invalid("missing <reason>…</reason> before the action")
    if not body.startswith("<reason>"):
        return invalid("text before <reason>: the turn must start with <reason>")
    if body.count("<reason>") > 1:
        return invalid("more than one <reason> block")
    if reason_match.end() > action_start:
        return invalid("the action must come after </reason>")
    inside = reason_match.group(1)
    if any(tag in inside for tag in ("<answer>", "<search>", "<text_search>", "<information>")):
        return invalid("action tag inside <reason>")
    n_actions = body.count("<answer>") + body.count("<search><img></search>") + body.count("<text_search>")
    if n_actions != 1 or body.count("<search>") != body.count("<search><img></search>"):
        return invalid("more than one action in the turn")
    if action == "answer" and not answer:
        return invalid("empty answer")
    return P.Turn(action, reason, answer, query, None, action, text)


_PIECES = st.sampled_from([*PROTOCOL_FRAGMENTS, "\t", "\xa0", "\u2028", "\x1c", "</", "<|im_end|", "reason>"])


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=14).map("".join))
def test_linear_parser_matches_the_old_regex_parser(text):
    assert P.parse_turn(text) == _old_parse_turn(text)


@pytest.mark.parametrize(
    "text",
    [
        "<reason>r</reason><answer>a</answer>\n <|im_end|> \n<|endoftext|>\t",
        "<reason>r</reason><answer>a</answer><|im_end|>x<|im_end|>",
        "<reason>a<reason>b</reason><answer>c</answer>",
        "<answer>1</answer><answer>2</answer><answer>3",
        "<reason>r</reason><text_search> a \n b </text_search><|endoftext|><|im_end|>",
    ],
)
def test_linear_parser_matches_the_old_one_on_edge_cases(text):
    assert P.parse_turn(text) == _old_parse_turn(text)
