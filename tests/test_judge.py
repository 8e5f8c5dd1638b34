"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (no network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mmsearch_r1.evaluation.judge import (
    JUDGE_SYSTEM,
    JudgeConfig,
    JudgeItem,
    LLMJudge,
    build_messages,
    parse_verdict,
)


class _FakeJudge(BaseHTTPRequestHandler):
    """Answers Yes when the correct answer's first word occurs in the model's answer."""

    requests: list[dict] = []
    headers_seen: list[dict] = []
    fail_first: int = 0
    reply_override: str | None = None

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        type(self).headers_seen.append(dict(self.headers))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        user = body["messages"][1]["content"]
        user = user if isinstance(user, str) else user[-1]["text"]
        fields = dict(line.split(": ", 1) for line in user.splitlines() if ": " in line)
        gold = fields["Correct answer"].split()[0].lower()
        yes = gold in fields["Model's answer"].lower()
        text = (
            type(self).reply_override or f"<judge>{'Yes' if yes else 'No'}</judge> <reason>fake rule</reason>"
        )
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    _FakeJudge.requests, _FakeJudge.headers_seen = [], []
    _FakeJudge.fail_first, _FakeJudge.reply_override = 0, None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _judge(url, tmp_path, **kw):
    cfg = JudgeConfig(base_url=url, model="fake", cache_path=str(tmp_path / "j.sqlite"), backoff_s=0.01, **kw)
    return LLMJudge(cfg)


def test_parse_verdict():
    assert parse_verdict("<judge>Yes</judge> <reason>ok</reason>") is True
    assert parse_verdict("<judge> no </judge>") is False
    assert parse_verdict("Yes, it matches.") is True
    assert parse_verdict("I cannot tell") is None
    assert parse_verdict(None) is None


def test_prompt_is_our_own_and_lists_aliases():
    msgs = build_messages(JudgeItem("What country?", "Peru", "peru!", ["Republic of Peru"]))
    assert msgs[0]["content"] == JUDGE_SYSTEM and "You are an AI assistant" not in JUDGE_SYSTEM
    assert "Republic of Peru" in msgs[1]["content"] and "Model's answer: peru!" in msgs[1]["content"]
    img = Image.new("RGB", (8, 8))
    with_img = build_messages(JudgeItem("q", "a", "b", [], img), send_image=True)
    assert with_img[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_verdicts_shortcuts_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_JUDGE_API_KEY", "sk-test-secret")
    judge = _judge(server, tmp_path)
    items = [
        JudgeItem("Capital of Peru?", "Lima", "It is Lima, Peru"),  # judged Yes
        JudgeItem("Capital of Peru?", "Lima", "Cusco"),  # judged No
        JudgeItem("Capital of Peru?", "Lima", "lima."),  # exact match: no call
        JudgeItem("Capital of Peru?", "Lima", ""),  # empty: no call
    ]
    verdicts = judge.judge_many(items)
    assert [v.correct for v in verdicts] == [True, False, True, False]
    assert [v.source for v in verdicts] == ["judge", "judge", "exact", "empty"]
    assert len(_FakeJudge.requests) == 2
    req = _FakeJudge.requests[0]
    assert req["temperature"] == 0.0 and req["top_p"] == 0.1 and req["model"] == "fake"
    assert _FakeJudge.headers_seen[0]["Authorization"] == "Bearer sk-test-secret"
    # A second judge on the same cache file answers from the cache: no new request.
    again = _judge(server, tmp_path).judge_many(items[:2])
    assert [v.correct for v in again] == [True, False] and {v.source for v in again} == {"cache"}
    assert len(_FakeJudge.requests) == 2
    assert "sk-test-secret" not in (tmp_path / "j.sqlite").read_bytes().decode("latin-1")


def test_no_key_no_header_and_retries(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEARCH_JUDGE_API_KEY", raising=False)
    _FakeJudge.fail_first = 2
    v = _judge(server, tmp_path, retries=3).judge("Capital?", "Lima", "Lima city")
    assert v.correct is True and len(_FakeJudge.requests) == 3
    assert "Authorization" not in _FakeJudge.headers_seen[-1]


def test_failures_give_none_never_raise(server, tmp_path):
    _FakeJudge.reply_override = "I am not sure."
    judge = _judge(server, tmp_path, retries=1)
    v = judge.judge("Capital?", "Lima", "Cusco")
    assert v.correct is None and v.source == "error" and judge.failures == 1
    dead = _judge("http://127.0.0.1:9/v1", tmp_path / "x", retries=0, timeout_s=2)
    assert dead.judge("Capital?", "Lima", "Cusco").correct is None


def test_missing_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MMSEARCH_JUDGE_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="MMSEARCH_JUDGE_BASE_URL"):
        LLMJudge(JudgeConfig(cache_path=None))


def test_matcher_for_reward_ablation(server, tmp_path):
    from mmsearch_r1.protocol.rewards import reward_parts

    judge = _judge(server, tmp_path)
    turns = ["<reason>r</reason><answer>It is Lima, Peru</answer>"]
    assert reward_parts(turns, ["Lima"], match=judge.matcher("Capital of Peru?")).accuracy == 1.0
    assert reward_parts(turns, ["Lima"]).accuracy == 0.0
