"""Test doubles: tiny in-memory search engines implementing `mmsearch_r1.tools.types` protocols."""

from __future__ import annotations

from PIL import Image

from mmsearch_r1.tools.types import ImageHit, SearchError, TextHit

THUMBNAILS = [Image.new("RGB", (56, 56), (250, 0, 0)), Image.new("RGB", (56, 56), (0, 0, 250))]


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


__all__ = ["FakeImageEngine", "FakeTextEngine", "SearchError", "THUMBNAILS"]
