"""Result types and the one engine interface shared by every search backend.

What it does: defines `ImageHit` and `TextHit` (what a search returns), `SearchError` (what an engine
raises when a call fails), and the two protocols an engine implements, each with a sync and an async
method. Everything that searches (the local engines, the web engines, the FVQA cache, the record /
replay cache wrapper) speaks these types, and everything that consumes results (`SearchEnv`, the
prompts, evaluation) reads only these types.

What it does not: no engine, no I/O, no caching, no retry logic (see the other modules of
`mmsearch_r1.tools`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass
class ImageHit:
    """One image-search result: a page whose main image matches the query image."""

    title: str
    """Title of the page the image comes from (what the policy reads)."""
    url: str = ""
    """Address of the page (or a stable local identifier for offline engines)."""
    thumbnail: Image.Image | None = None
    """The matched image, downscaled; shown to the policy as a real image. None if unavailable."""
    snippet: str = ""
    """Optional short text about the page (not shown by the paper protocol; kept for logs)."""
    score: float | None = None
    """Engine-specific similarity score, higher is better (None when the engine gives none)."""


@dataclass
class TextHit:
    """One text-search result: a page and a query-focused summary of it."""

    title: str
    """Page title."""
    url: str = ""
    """Page address (or a stable local identifier for offline engines)."""
    summary: str = ""
    """Query-focused summary of the page (extractive offline, an LLM summary on the web)."""
    score: float | None = None
    """Engine-specific relevance score, higher is better (None when the engine gives none)."""


class SearchError(Exception):
    """A search call failed (network, API, missing key, malformed response, budget...).

    The message must name the problem and, where there is one, the fix. It must never contain an
    API key. Callers that feed the policy (``SearchEnv``) turn it into an error observation.
    """

    def __init__(self, message: str, *, engine: str = "", retryable: bool = False):
        super().__init__(message)
        self.engine = engine
        self.retryable = retryable


@runtime_checkable
class ImageSearchEngine(Protocol):
    """Search by image: returns pages whose images resemble the query image."""

    name: str

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]: ...

    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]: ...


@runtime_checkable
class TextSearchEngine(Protocol):
    """Search by text query: returns pages with query-focused summaries."""

    name: str

    def search_text(self, query: str, *, k: int = 5) -> list[TextHit]: ...

    async def asearch_text(self, query: str, *, k: int = 5) -> list[TextHit]: ...


@dataclass
class Engines:
    """The pair of engines a rollout uses (either may be None: that tool then reports an error)."""

    image: ImageSearchEngine | None = None
    text: TextSearchEngine | None = None
    extra: dict = field(default_factory=dict)
    """Free-form details for logging (engine names, cache mode); never secrets."""
