"""LLM-as-judge accuracy through any OpenAI-compatible chat endpoint, with cached verdicts.

What it does: `LLMJudge` asks a chat model (a ``vllm serve`` / ``trl vllm-serve`` server, a hosted
API, anything that speaks ``POST {base_url}/chat/completions``) whether a model's answer is correct
given the question, the gold answer and its aliases, following the paper's judging rules (paper §5.4,
App. F.3: greedy decoding, a Yes/No verdict inside ``<judge>`` tags). The prompt is written in the
project's own words. Verdicts are stored in a SQLite file (the tools' `SearchCache`, keyed by a hash of
the model, the prompt version and the judged text), so re-scoring a run costs nothing, and a run can
ship its verdicts. Calls run concurrently in a small thread pool with retries and backoff; a call that
still fails gives the verdict ``None`` (counted, never a crash). Two shortcuts save calls: an empty
answer is wrong, and an exact match (after normalisation) is right (``trust_exact_match``).

Keys come only from the environment variable named in `JudgeConfig.api_key_env` and are never logged
or cached. With no key set, no ``Authorization`` header is sent (fine for local servers).

What it does not: no reward shaping (pass ``judge.matcher()`` to ``rewards.reward_parts(match=...)``
for the judge-reward ablation), no model serving, no metrics aggregation (``mmsearch_r1.evaluation.evaluate``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from mmsearch_r1.protocol.rewards import exact_match
from mmsearch_r1.tools.cache import SearchCache, cache_key

PROMPT_VERSION = "judge-v1"
"""Bump when the prompt changes: it is part of every cache key, so old verdicts are not reused."""

JUDGE_SYSTEM = """\
You grade answers to questions about images. You are given a question, the correct answer, other \
accepted forms of it, and a model's answer. Decide whether the model's answer is right. Rules:
1. Judge the meaning, not the wording: spelling variants, abbreviations and extra polite words are fine.
2. A more specific answer that contains the correct one is right (for example a full name for a surname).
3. Extra details are fine only if they are true; an answer that contradicts, changes or leaves out a \
key part of the correct answer is wrong.
4. Numbers must agree in value; a different unit is fine if the value converts correctly.
5. For people, first and last names must match; an extra correct middle name is fine.
6. For yes/no questions the answer must say the same yes or no.
7. If the answer matches any one of the accepted forms under these rules, it is right.
8. Use the image only if the text alone cannot settle the question.
Reply with <judge>Yes</judge> or <judge>No</judge>, then <reason>one short sentence</reason>."""

JUDGE_USER = """\
Question: {question}
Correct answer: {answer}
Other accepted forms: {aliases}
Model's answer: {response}
Is the model's answer right? Reply <judge>Yes</judge> or <judge>No</judge> and a short <reason>."""

_VERDICT_RE = re.compile(r"<judge>\s*(yes|no)\s*</judge>", re.IGNORECASE)
_LOOSE_RE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


@dataclass
class JudgeConfig:
    """Where the judge lives and how it is called."""

    base_url: str | None = None
    """OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``; default: env ``MMSEARCH_JUDGE_BASE_URL``."""
    model: str | None = None
    """Model name sent in the request; default: env ``MMSEARCH_JUDGE_MODEL``, else ``gpt-4o``."""
    api_key_env: str = "MMSEARCH_JUDGE_API_KEY"
    """Name of the environment variable holding the key (the key itself is never stored or logged)."""
    temperature: float = 0.0
    """Sampling temperature (the paper: 0)."""
    top_p: float = 0.1
    """Nucleus sampling (the paper: 0.1)."""
    max_tokens: int = 128
    """Cap on the verdict's length."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    retries: int = 3
    """Extra attempts after a failed request (5xx, 429, network, unreadable verdict)."""
    backoff_s: float = 1.0
    """First wait between attempts; doubles each time."""
    concurrency: int = 8
    """Requests in flight at once."""
    cache_path: str | None = "runs/judge_cache.sqlite"
    """SQLite file of cached verdicts (None: no cache)."""
    cache_mode: str = "read-write"
    """``read-write`` (record), ``replay-only`` (a miss is an error verdict) or ``off``."""
    send_image: bool = False
    """Attach the question image (base64 PNG) for vision judges; text-only endpoints need False."""
    trust_exact_match: bool = True
    """Count an exact match as right without asking (rule 7 makes it right anyway; saves calls)."""

    def resolved(self) -> JudgeConfig:
        """A copy with the env-var defaults filled in (no secrets: only the URL and model name)."""
        out = JudgeConfig(**self.__dict__)
        out.base_url = self.base_url or os.environ.get("MMSEARCH_JUDGE_BASE_URL")
        out.model = self.model or os.environ.get("MMSEARCH_JUDGE_MODEL") or "gpt-4o"
        return out


@dataclass
class Verdict:
    """One judged answer."""

    correct: bool | None
    """True/False, or None when the judge could not be reached or gave no readable verdict."""
    reason: str = ""
    """The judge's one-line reason, or why no call was made / why it failed."""
    source: str = "judge"
    """``judge`` (a fresh call), ``cache``, ``exact`` (exact-match shortcut), ``empty`` or ``error``."""
    raw: str = ""
    """The judge's raw reply (for audits)."""

    def as_dict(self) -> dict:
        return {"correct": self.correct, "reason": self.reason, "source": self.source}


@dataclass
class JudgeItem:
    """What the judge needs about one answer."""

    question: str
    answer: str
    response: str | None
    aliases: Sequence[str] = field(default_factory=list)
    image: object | None = None
    """The question image (PIL), sent only with ``send_image``."""


def parse_verdict(text: str) -> bool | None:
    """``<judge>Yes</judge>`` → True, ``<judge>No</judge>`` → False; a bare leading Yes/No is accepted; else None."""
    if not isinstance(text, str):
        return None
    m = _VERDICT_RE.search(text) or _LOOSE_RE.search(text)
    return None if m is None else m.group(1).lower() == "yes"


def _reason_of(text: str) -> str:
    m = re.search(r"<reason>(.*?)</reason>", text or "", re.DOTALL)
    return " ".join((m.group(1) if m else "").split())[:300]


def build_messages(item: JudgeItem, *, send_image: bool = False) -> list[dict]:
    """The chat messages sent to the judge for one item."""
    golds = [a for a in item.aliases if a and a != item.answer]
    user = JUDGE_USER.format(
        question=" ".join(item.question.split()),
        answer=item.answer,
        aliases="; ".join(golds) if golds else "(none)",
        response=" ".join((item.response or "").split()),
    )
    content: str | list[dict] = user
    if send_image and item.image is not None:
        buf = io.BytesIO()
        item.image.convert("RGB").save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": user}]
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


class LLMJudge:
    """Judge answers with an OpenAI-compatible chat endpoint; verdicts cached in SQLite."""

    def __init__(self, config: JudgeConfig | None = None, *, transport: httpx.BaseTransport | None = None):
        self.config = (config or JudgeConfig()).resolved()
        if not self.config.base_url:
            raise ValueError(
                "The LLM judge has no endpoint: set JudgeConfig.base_url or the env var "
                "MMSEARCH_JUDGE_BASE_URL (e.g. http://127.0.0.1:8000/v1 for `vllm serve`)."
            )
        self._transport = transport
        self.cache = (
            SearchCache(self.config.cache_path, self.config.cache_mode)
            if self.config.cache_path and self.config.cache_mode != "off"
            else None
        )
        self.calls = 0
        """Requests actually sent (retries included)."""
        self.failures = 0
        """Items that ended without a readable verdict."""
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    # -- one item -------------------------------------------------------------------------------
    def _key(self, item: JudgeItem) -> str:
        settings = {"model": self.config.model, "prompt": PROMPT_VERSION, "image": self.config.send_image}
        payload = json.dumps([item.question, item.answer, sorted(item.aliases), item.response or ""])
        return cache_key("llm-judge", settings, "judge", payload)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _ask(self, client: httpx.Client, item: JudgeItem) -> Verdict:
        cfg = self.config
        body = {
            "model": cfg.model,
            "messages": build_messages(item, send_image=cfg.send_image),
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
        }
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        last = "no attempt"
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            self._count("calls")
            try:
                resp = client.post(url, json=body, headers=self._headers(), timeout=cfg.timeout_s)
            except httpx.HTTPError as err:
                last = f"request failed: {type(err).__name__}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:  # a client error will not improve on retry
                return Verdict(None, f"HTTP {resp.status_code} from the judge endpoint", "error")
            try:
                text = resp.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                last = "unreadable response body"
                continue
            verdict = parse_verdict(text)
            if verdict is None:
                last = "no <judge>Yes/No</judge> in the reply"
                continue
            return Verdict(verdict, _reason_of(text), "judge", text)
        return Verdict(None, last, "error")

    def _judge_one(self, client: httpx.Client, item: JudgeItem) -> Verdict:
        if not (item.response or "").strip():
            return Verdict(False, "no answer", "empty")
        if self.config.trust_exact_match and exact_match(item.response, [item.answer, *item.aliases]):
            return Verdict(True, "exact match", "exact")
        key = self._key(item)
        if self.cache is not None:
            try:
                hit = self.cache.get(key)
            except Exception as err:  # replay-only miss
                self._count("failures")
                return Verdict(None, str(err), "error")
            if hit is not None:
                return Verdict(hit["correct"], hit.get("reason", ""), "cache", hit.get("raw", ""))
        verdict = self._ask(client, item)
        if verdict.correct is None:
            self._count("failures")
        elif self.cache is not None:
            self.cache.put(
                key, {"correct": verdict.correct, "reason": verdict.reason, "raw": verdict.raw}, kind="judge"
            )
        return verdict

    # -- public ---------------------------------------------------------------------------------
    def judge(
        self, question: str, answer: str, response: str | None, aliases: Sequence[str] = (), image=None
    ):
        """Judge one answer; returns a `Verdict`."""
        return self.judge_many([JudgeItem(question, answer, response, list(aliases), image)])[0]

    def judge_many(self, items: Sequence[JudgeItem], *, progress: bool = False) -> list[Verdict]:
        """Judge many answers concurrently (``config.concurrency`` threads); order is kept."""
        if not items:
            return []
        with httpx.Client(transport=self._transport) as client:
            with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
                it = pool.map(lambda x: self._judge_one(client, x), items)
                if progress:
                    from tqdm.auto import tqdm

                    it = tqdm(it, total=len(items), desc="judge")
                return list(it)

    def matcher(self, question: str, image=None):
        """A ``match=`` callable for ``protocol.rewards.reward_parts`` that asks this judge (a reward ablation)."""

        def match(pred: str | None, golds: Sequence[str]) -> bool:
            golds = list(golds)
            if not golds:
                return False
            return bool(self.judge(question, golds[0], pred, golds[1:], image).correct)

        return match
