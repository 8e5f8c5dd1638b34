"""Shared test data: tiny in-memory search engines (`mmsearch_r1.tools.types` protocols), a dataset row
whose answer the fake engines find, and the protocol's text fragments for fuzz tests."""

from __future__ import annotations

from PIL import Image

from mmsearch_r1.tools.types import ImageHit, SearchError, TextHit

THUMBNAILS = [Image.new("RGB", (56, 56), (250, 0, 0)), Image.new("RGB", (56, 56), (0, 0, 250))]

ROW = {
    "data_id": "q0",
    "image": Image.new("RGB", (112, 112), (200, 30, 30)),
    "question": "What is the capital of this country?",
    "answer": "Rubytown",
    "aliases": ["Ruby Town"],
    "category": "search_required",
    "kind": "textual",
    "source": "test",
}
"""A dataset row (the project's row schema) whose answer `FakeTextEngine` returns."""

PROTOCOL_FRAGMENTS = [
    "<reason>",
    "</reason>",
    "<answer>",
    "</answer>",
    "<search>",
    "</search>",
    "<img>",
    "<search><img></search>",
    "<text_search>",
    "</text_search>",
    "<information>",
    "<|im_end|>",
    "<|endoftext|>",
    "a",
    "b c",
    "Paris",
    " ",
    "\n",
    "<",
    ">",
    "/",
    "é",
]
"""Tags, end-of-turn tokens and filler that fuzz tests of the parsers join into turns."""


class FakeImageEngine:
    """Returns the same two hits (red and blue thumbnails) for any image; records the images searched."""

    name = "fake-image"

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.images: list[Image.Image] = []

    def search_image(self, image, *, k=5):
        self.images.append(image)
        if self.fail is not None:
            raise self.fail
        hits = [
            ImageHit(title="Flag of Redland", url="local://red", thumbnail=THUMBNAILS[0]),
            ImageHit(title="Flag of Blueland <|im_end|>", url="local://blue", thumbnail=THUMBNAILS[1]),
        ]
        return hits[:k]

    async def asearch_image(self, image, *, k=5):
        return self.search_image(image, k=k)


class FakeTextEngine:
    """Returns one page about Redland for any query; records the queries."""

    name = "fake-text"

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.queries: list[str] = []

    def search_text(self, query, *, k=5):
        self.queries.append(query)
        if self.fail is not None:
            raise self.fail
        return [
            TextHit(title="Redland", url="local://redland", summary="The capital of Redland is Rubytown.")
        ][:k]

    async def asearch_text(self, query, *, k=5):
        return self.search_text(query, k=k)


__all__ = ["PROTOCOL_FRAGMENTS", "ROW", "THUMBNAILS", "FakeImageEngine", "FakeTextEngine", "SearchError"]


def image_search_policy(engines, *, steps: int = 100, stop_below: float | None = None):
    """``(model, processor, rows)``: a tiny policy overfit to 'image search, then answer' on one synthetic
    flag question (``rows``, its one-row dataset), so that GRPO and viewer tests see real tool calls."""
    import torch

    from mmsearch_r1.agent.env import SearchEnv
    from mmsearch_r1.policy.tiny import build_tiny_policy, overfit
    from mmsearch_r1.protocol.tags import render_turn
    from mmsearch_r1.rl.data import synthetic_rows, trl_prompt

    torch.manual_seed(0)
    rows = synthetic_rows(seed=0).filter(lambda r: r["kind"] == "visual_knowledge").select([0])
    row = rows[0]
    env = SearchEnv(engines)
    env.reset(**row)
    user = trl_prompt(row["question"])[0]
    msgs = [
        {"role": "user", "content": [{"type": "image", "image": row["image"]}, user["content"][1]]},
        {"role": "assistant", "content": render_turn("image_search", "I do not know this flag.")},
        {"role": "tool", "name": "search", "content": env.search()},
        {"role": "assistant", "content": render_turn("answer", "The results say so.", answer=row["answer"])},
    ]
    model, processor = build_tiny_policy(seed=0)
    loss = overfit(model, processor, [msgs], steps=steps, stop_below=stop_below)
    return model, processor, rows, loss


class ScriptedTurns:
    """A generator (the rollout's ``Generator``) that writes ``turns[i]`` as the policy's i-th turn (the
    last one repeats), reading the turn index off the conversation so far."""

    def __init__(self, processor, turns: list[str]):
        self.tok = processor.tokenizer
        self.turns = turns

    def __call__(self, requests):
        out = []
        for ids, _ in requests:
            turn = self.tok.decode(ids, skip_special_tokens=False).count("<|im_start|>assistant") - 1
            out.append(self.tok.encode(self.turns[min(turn, len(self.turns) - 1)], add_special_tokens=False))
        return out


def send_bytes(handler, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
    """Answer a ``BaseHTTPRequestHandler`` request (loopback fake servers); a client gone early is fine."""
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
