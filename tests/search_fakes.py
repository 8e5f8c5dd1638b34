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
