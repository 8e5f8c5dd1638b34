"""Real web search engines: image search (SerpAPI Google Lens, SearXNG/TinEye) and text search
(SerpAPI Google or SearXNG → page reading by Jina Reader or local trafilatura → summary by any
OpenAI-compatible chat endpoint, or a local extractive summary).

Keys come only from environment variables, read at call time and never stored in configs, logs,
caches or errors: ``SERPAPI_API_KEY`` (SerpAPI), ``JINA_API_KEY`` (optional: Jina Reader works without
one at a lower rate), ``OPENAI_API_KEY`` (required for api.openai.com; optional for a self-hosted
``OPENAI_BASE_URL`` such as ``vllm serve``). ``SEARXNG_URL`` points at a SearXNG instance with the JSON
format enabled. A missing variable is a `SearchError` naming it.

Images given as pixels (the FVQA data has no image URLs): both Google Lens (SerpAPI takes only a
``url`` parameter, no upload and no data: URL) and SearXNG's TinEye engine (search by URL only) need a
public URL. `ImageHostConfig` says how we get one, in this order: the image's own URL if the caller
put one in ``image.info["url"]``; else ``mode="dir"``: save the PNG under a content-addressed name in
a folder the user publishes at ``MMSEARCH_IMAGE_BASE_URL`` (a bucket, a static web server); else
``mode="upload"``: PUT/POST the bytes to ``MMSEARCH_IMAGE_UPLOAD_URL`` (a self-hosted transfer.sh-like
service answering with the URL as text or JSON ``{"url": ...}``). Because each unique image is
searched once and then cached, the image only needs to stay reachable until that first call.

Bounded cost: each search call has one wall-clock budget (`WebConfig.call_timeout_s`) that covers
every request, page read, parse and summary, and the sync wrappers wait no longer than that (plus a
few seconds of grace). Fetched content is parsed off the event loop, in linear time and with a
pixel cap on thumbnails (`content.py`), under the per-step deadline `NetConfig.timeout_s`. Hits are
scrubbed of every known key value before they are returned, so no key reaches an observation or a
cache row even when an API echoes it.

What it does not: no caching (wrapped by `engines.py`), no browser rendering, no crawling.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from .content import (
    MAX_THUMBNAIL_PIXELS,
    ThumbnailTooLarge,
    chat_reply,
    decode_thumbnail,
    offload,
    page_text,
    parse_json,
)
from .local import extractive_summary
from .net import NetConfig, SafeHttp, deadline, redact, run_sync, secret_values
from .types import ImageHit, SearchError, TextHit

SYNC_GRACE_S = 5.0
"""Extra seconds the sync wrappers wait beyond `WebConfig.call_timeout_s` (the async deadline fires first)."""

SUMMARY_SYSTEM = (
    "You condense web pages for a research assistant. Write at most five sentences of plain prose "
    "that cover the main points of the page as a whole. If the page states facts that bear on the "
    "question, include them explicitly, with names, numbers and dates. Use only what the page says."
)
SUMMARY_USER = "Question: {question}\n\nPage text (first {limit} characters):\n{content}"


def env_key(name: str, purpose: str, *, required: bool = True) -> str | None:
    """Read a secret from the environment; a clear `SearchError` naming the variable if missing."""
    value = os.environ.get(name, "").strip()
    if not value and required:
        raise SearchError(f"{name} is not set: export {name}=... to use {purpose}", engine="web")
    return value or None


@dataclass
class ImageHostConfig:
    """How an image given as pixels becomes a public URL for the image-search APIs."""

    mode: Literal["none", "dir", "upload"] = "none"
    """none: only images carrying image.info['url'] can be searched; dir: publish a folder; upload: send bytes."""
    dir: str = "data/image_host"
    """Folder written in mode dir (publish it at base_url)."""
    base_url: str | None = None
    """Public URL of `dir` (default: env MMSEARCH_IMAGE_BASE_URL)."""
    upload_url: str | None = None
    """Upload endpoint in mode upload (default: env MMSEARCH_IMAGE_UPLOAD_URL); answers with the URL."""
    upload_method: Literal["PUT", "POST"] = "PUT"
    """HTTP method of the upload endpoint."""


@dataclass
class WebConfig:
    """Which web services the web engines use, and how."""

    image_backend: Literal["serpapi", "searxng"] = "serpapi"
    """Image search: SerpAPI Google Lens, or SearXNG's TinEye reverse-image engine."""
    text_backend: Literal["serpapi", "searxng"] = "serpapi"
    """Web search API for text queries."""
    reader: Literal["jina", "local"] = "jina"
    """Page reading: Jina Reader (r.jina.ai) or a local fetch + trafilatura extraction."""
    summarizer: Literal["llm", "extractive"] = "extractive"
    """llm: an OpenAI-compatible chat endpoint; extractive: query-focused sentence extract (no cost)."""
    serpapi_url: str = "https://serpapi.com/search.json"
    """SerpAPI endpoint."""
    searxng_url: str | None = None
    """SearXNG base URL (default: env SEARXNG_URL)."""
    jina_url: str = "https://r.jina.ai/"
    """Jina Reader prefix."""
    llm_base_url: str | None = None
    """OpenAI-compatible base URL ending in /v1 (default: env OPENAI_BASE_URL, else api.openai.com)."""
    llm_model: str | None = None
    """Summary model name (default: env SUMMARY_MODEL, else gpt-4o-mini)."""
    llm_max_tokens: int = 300
    """Summary length cap, tokens."""
    max_page_chars: int = 30000
    """Page text given to the summariser (the paper's 30k characters)."""
    candidates: int = 10
    """Search results requested; failed pages are replaced by the next candidates."""
    snippet_fallback: bool = True
    """When fewer than k pages can be read, fill with the search snippets of failed ones."""
    hl: str = "en"
    """Interface language sent to the search APIs."""
    call_timeout_s: float = 120.0
    """Wall-clock budget of one search call (API, pages, parsing, summaries); past it, a SearchError."""
    max_thumbnail_pixels: int = MAX_THUMBNAIL_PIXELS
    """Thumbnails declaring more pixels are skipped before decoding (JPEGs are first shrunk if possible)."""
    image_host: ImageHostConfig = field(default_factory=ImageHostConfig)
    """How images given as pixels get a URL."""
    net: NetConfig = field(default_factory=NetConfig)
    """Timeouts, retries, concurrency, rate limit, address policy."""


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class WebSearch:
    """Image and text search on the web; implements both engine protocols (sync and async)."""

    def __init__(self, config: WebConfig | None = None):
        self.config = config or WebConfig()
        self.http = SafeHttp(self.config.net)
        self.name = f"web-{self.config.image_backend}-{self.config.text_backend}"

    async def _work(self, what: str, fn, /, *args):
        """``fn(*args)`` off the event loop, within the per-step deadline `NetConfig.timeout_s`."""
        t = self.config.net.timeout_s
        return await offload(fn, *args, seconds=t, message=(
            f"{what} took longer than NetConfig.timeout_s={t:g}s and was abandoned: the content is "
            "too large or too complex"))  # fmt: skip

    async def _parse(self, body: bytes, what: str) -> dict:
        return await self._work(f"parsing the {what} answer", parse_json, body, what)

    def _clean(self, value):
        """`value` with every known key value replaced (strings only; APIs may echo the key they got)."""
        if not isinstance(value, str):
            return value
        return redact(value, secret_values(self.http.secrets), patterns=False)

    def _scrub(self, hits: list) -> list:
        """The hits with their text cleaned (summaries may echo a key sent to Jina or the chat API)."""
        for h in hits:
            for attr in ("title", "url", "snippet", "summary"):
                if hasattr(h, attr):
                    setattr(h, attr, self._clean(getattr(h, attr)))
        return hits

    async def _within_budget(self, aw, what: str):
        b = self.config.call_timeout_s
        return await deadline(aw, b, (
            f"{what} did not finish within WebConfig.call_timeout_s={b:g}s: the services are slow or "
            "hung; raise the budget, or lower NetConfig.timeout_s / retries so that failures come sooner"))  # fmt: skip

    # -- settings / costs (no secrets) -----------------------------------------------------------------
    def settings(self, kind: str) -> dict:
        c = self.config
        if kind == "image":
            return {"backend": c.image_backend, "hl": c.hl}
        return {"backend": c.text_backend, "reader": c.reader, "summarizer": c.summarizer,
                "model": self._llm_model() if c.summarizer == "llm" else None, "hl": c.hl}  # fmt: skip

    def estimated_cost(self, kind: str, k: int = 5, cost: dict[str, float] | None = None) -> float:
        cost = cost or {}
        c = self.config
        if kind == "image":
            return cost.get(c.image_backend, 0.0)
        total = cost.get(c.text_backend, 0.0)
        total += k * (cost.get("jina", 0.0) if c.reader == "jina" else 0.0)
        total += k * (cost.get("llm", 0.0) if c.summarizer == "llm" else 0.0)
        return total

    def check_env(self, kinds: tuple[str, ...] = ("image", "text")) -> None:
        """Fail early (SearchError naming the variable) when a needed key or URL is missing."""
        c = self.config
        if ("image" in kinds and c.image_backend == "serpapi") or (
            "text" in kinds and c.text_backend == "serpapi"
        ):
            env_key("SERPAPI_API_KEY", "SerpAPI search")
        if ("image" in kinds and c.image_backend == "searxng") or (
            "text" in kinds and c.text_backend == "searxng"
        ):
            self._searxng()
        if "text" in kinds and c.summarizer == "llm":
            self._llm_base()

    def _searxng(self) -> str:
        url = self.config.searxng_url or os.environ.get("SEARXNG_URL", "").strip()
        if not url:
            raise SearchError(
                "SEARXNG_URL is not set: export SEARXNG_URL=http://host:8080 (JSON format enabled)"
            )
        return url.rstrip("/")

    def _llm_base(self) -> tuple[str, str | None]:
        base = self.config.llm_base_url or os.environ.get("OPENAI_BASE_URL", "").strip()
        key = env_key("OPENAI_API_KEY", "the OpenAI API summariser", required=not base)
        self.http.add_secret(key)
        return (base or "https://api.openai.com/v1").rstrip("/"), key

    def _llm_model(self) -> str:
        return self.config.llm_model or os.environ.get("SUMMARY_MODEL", "").strip() or "gpt-4o-mini"

    def _serpapi_key(self) -> str:
        key = env_key("SERPAPI_API_KEY", "SerpAPI search")
        self.http.add_secret(key)
        return key  # type: ignore[return-value]

    # -- image -----------------------------------------------------------------------------------------
    async def image_url(self, image: Image.Image) -> str:
        """A public URL for `image` (see the module docstring)."""
        url = image.info.get("url") if hasattr(image, "info") else None
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return url
        h = self.config.image_host
        data = await self._work("encoding the query image", _png, image)
        name = hashlib.sha256(data).hexdigest()[:32] + ".png"
        if h.mode == "dir":
            base = h.base_url or os.environ.get("MMSEARCH_IMAGE_BASE_URL", "").strip()
            if not base:
                raise SearchError("MMSEARCH_IMAGE_BASE_URL is not set: the public URL of ImageHostConfig.dir")
            path = Path(h.dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(data)
            return f"{base.rstrip('/')}/{name}"
        if h.mode == "upload":
            up = h.upload_url or os.environ.get("MMSEARCH_IMAGE_UPLOAD_URL", "").strip()
            if not up:
                raise SearchError(
                    "MMSEARCH_IMAGE_UPLOAD_URL is not set: an upload endpoint answering with a URL"
                )
            _, _, body = await self.http.request(
                h.upload_method, f"{up.rstrip('/')}/{name}", trusted=True, content=data,
                headers={"Content-Type": "image/png"},
            )  # fmt: skip
            text = body[:4096].decode("utf-8", "replace").strip()
            if text.startswith("{"):
                text = str((await self._parse(body, "image upload")).get("url", ""))
            if not text.startswith(("http://", "https://")):
                raise SearchError("image upload endpoint did not answer with an http(s) URL")
            return text
        raise SearchError(
            "web image search needs a public image URL: set image.info['url'], or configure "
            "ImageHostConfig(mode='dir' with MMSEARCH_IMAGE_BASE_URL, or mode='upload' with MMSEARCH_IMAGE_UPLOAD_URL)"
        )

    async def _thumbnail(self, url: str | None) -> Image.Image | None:
        """The decoded thumbnail, or None (counted) when it cannot be fetched, is too large or broken."""
        if not url:
            return None
        try:
            if url.startswith("data:image/"):  # SerpAPI sometimes inlines thumbnails as base64
                import base64

                raw = base64.b64decode(url.split(",", 1)[1])
            else:
                _, _, raw = await self.http.request("GET", url)
            return await self._work(
                "decoding a thumbnail", decode_thumbnail, raw, self.config.max_thumbnail_pixels
            )
        except ThumbnailTooLarge:
            self.http.count("thumbnails_too_large")
        except Exception:  # noqa: BLE001 - a missing thumbnail only drops that hit
            pass
        self.http.count("thumbnail_failures")
        return None

    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return await self._within_budget(self._search_image(image, k), "web image search")

    async def _search_image(self, image: Image.Image, k: int) -> list[ImageHit]:
        c = self.config
        url = await self.image_url(image)
        if c.image_backend == "serpapi":
            params = {"engine": "google_lens", "url": url, "hl": c.hl, "api_key": self._serpapi_key()}
            _, _, body = await self.http.request("GET", c.serpapi_url, trusted=True, params=params)
            data = await self._parse(body, "SerpAPI Google Lens")
            if data.get("error"):
                raise SearchError(redact(f"SerpAPI error: {str(data['error'])[:200]}", self.http.secrets))
            rows = [(m.get("title"), m.get("link"), m.get("thumbnail"), m.get("source", ""))
                    for m in data.get("visual_matches") or [] if isinstance(m, dict)]  # fmt: skip
        else:
            params = {"q": url, "format": "json", "engines": "tineye"}
            _, _, body = await self.http.request(
                "GET", self._searxng() + "/search", trusted=True, params=params
            )
            data = await self._parse(body, "SearXNG")
            rows = [(m.get("title"), m.get("url"), m.get("thumbnail_src") or m.get("img_src"), m.get("content", ""))
                    for m in data.get("results") or [] if isinstance(m, dict)]  # fmt: skip
        # cleaned before any thumbnail is fetched, so no echoed key travels to a thumbnail host
        rows = [tuple(map(self._clean, r)) for r in rows if r[0]][: max(k * 2, k)]
        thumbs = await asyncio.gather(*(self._thumbnail(r[2]) for r in rows))
        hits = [ImageHit(title=str(t), url=str(u or ""), thumbnail=th, snippet=str(s or ""))
                for (t, u, _, s), th in zip(rows, thumbs, strict=True)]  # fmt: skip
        valid = [h for h in hits if h.thumbnail is not None]
        return self._scrub((valid or hits)[:k])

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return run_sync(self.asearch_image(image, k=k), timeout=self.config.call_timeout_s + SYNC_GRACE_S)

    # -- text ------------------------------------------------------------------------------------------
    async def _web_results(self, query: str) -> list[dict]:
        c = self.config
        if c.text_backend == "serpapi":
            params = {"engine": "google", "q": query, "num": c.candidates, "hl": c.hl,
                      "api_key": self._serpapi_key()}  # fmt: skip
            _, _, body = await self.http.request("GET", c.serpapi_url, trusted=True, params=params)
            data = await self._parse(body, "SerpAPI Google")
            if data.get("error"):
                if "hasn't returned any results" in str(data["error"]):
                    return []
                raise SearchError(redact(f"SerpAPI error: {str(data['error'])[:200]}", self.http.secrets))
            rows = data.get("organic_results") or []
            return [{"title": r.get("title", ""), "url": r.get("link", ""), "snippet": r.get("snippet", "")}
                    for r in rows if isinstance(r, dict) and r.get("link")][: c.candidates]  # fmt: skip
        params = {"q": query, "format": "json", "categories": "general"}
        _, _, body = await self.http.request("GET", self._searxng() + "/search", trusted=True, params=params)
        rows = (await self._parse(body, "SearXNG")).get("results") or []
        return [{"title": r.get("title", ""), "url": r.get("url", ""), "snippet": r.get("content", "")}
                for r in rows if isinstance(r, dict) and r.get("url")][: c.candidates]  # fmt: skip

    async def read_page(self, url: str) -> tuple[str, str]:
        """(title, text) of a page, by Jina Reader or local extraction; `SearchError` when unreadable."""
        c = self.config
        if not url.startswith(("http://", "https://")):
            raise SearchError("refused page URL: only http and https are allowed")
        if c.reader == "jina":
            key = env_key("JINA_API_KEY", "Jina Reader", required=False)
            self.http.add_secret(key)
            headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
            _, _, body = await self.http.request("GET", c.jina_url + url, trusted=True, headers=headers)
            data = (await self._parse(body, "Jina Reader")).get("data") or {}
            title, text = str(data.get("title") or ""), str(data.get("content") or "")
        else:
            _, _, body = await self.http.request("GET", url, truncate=True)
            title, text = await self._work("extracting the page text", page_text, body)
        if not text.strip():
            raise SearchError("page has no readable text")
        return self._clean(title), self._clean(text[: c.max_page_chars])  # page text goes on to the LLM

    async def summarize(self, text: str, question: str) -> str:
        """Summary of a page focused on `question` (the search query: a tool call carries only the query)."""
        c = self.config
        if c.summarizer == "extractive":
            summarise = functools.partial(extractive_summary, max_sentences=5, max_chars=900)
            return await self._work("summarising the page", summarise, text, question)
        base, key = self._llm_base()
        payload = {
            "model": self._llm_model(),
            "messages": [
                {"role": "system", "content": SUMMARY_SYSTEM},
                {"role": "user", "content": SUMMARY_USER.format(question=question, limit=c.max_page_chars,
                                                                 content=text[: c.max_page_chars])},
            ],
            "temperature": 0.0,
            "max_tokens": c.llm_max_tokens,
        }  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        _, _, body = await self.http.request("POST", f"{base}/chat/completions", trusted=True, json_body=payload,
                                             headers=headers)  # fmt: skip
        out = await self._work("reading the chat answer", chat_reply, body)
        if not out:
            raise SearchError("chat endpoint returned an empty summary")
        return out

    async def _page_hit(self, row: dict, query: str) -> TextHit:
        title, text = await self.read_page(row["url"])
        summary = await self.summarize(text, query)
        return TextHit(title=row["title"] or title, url=row["url"], summary=summary)

    async def asearch_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("empty text query: write a few keywords", engine=self.name)
        return await self._within_budget(self._search_text(query, k), "web text search")

    async def _search_text(self, query: str, k: int) -> list[TextHit]:
        # cleaned before any page is fetched, so no echoed key travels to a page host or the reader
        rows = [{f: self._clean(v) for f, v in r.items()} for r in await self._web_results(query)]
        done: dict[int, TextHit] = {}
        failed: list[int] = []
        nxt = 0
        while len(done) < k and nxt < len(rows):
            batch = list(range(nxt, min(len(rows), nxt + k - len(done))))
            nxt = batch[-1] + 1
            outs = await asyncio.gather(
                *(self._page_hit(rows[i], query) for i in batch), return_exceptions=True
            )
            for i, o in zip(batch, outs, strict=True):
                if isinstance(o, TextHit):
                    done[i] = o
                else:
                    if not isinstance(o, Exception):
                        raise o
                    failed.append(i)
                    self.http.count("page_failures")
        if self.config.snippet_fallback:
            for i in failed:
                if len(done) >= k:
                    break
                if rows[i]["snippet"]:
                    done[i] = TextHit(title=rows[i]["title"], url=rows[i]["url"], summary=rows[i]["snippet"])
        if not done and rows:
            raise SearchError(f"none of the {len(rows)} result pages could be read or summarised")
        return self._scrub([done[i] for i in sorted(done)][:k])

    def search_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        return run_sync(self.asearch_text(query, k=k), timeout=self.config.call_timeout_s + SYNC_GRACE_S)
