"""Bounded-cost handling of fetched, untrusted content: page titles, model answers, thumbnails.

Web pages, API answers and chat-model output are written by strangers, so the parsers written here
cost time linear in their input and memory bounded by a stated limit, and whatever is not ours
(json, trafilatura, Pillow's decoders) runs in a worker thread under a deadline:

- `html_title(html)`: the text of the first ``<title>`` element, found with `str.find` scans (no
  regular expression: ``<title[^>]*>(.*?)</title>`` backtracks quadratically on a page of repeated
  ``<title`` and blocked the event loop for minutes).
- `strip_think(text)`: drops ``<think>…</think>`` reasoning blocks from a chat answer in one pass; an
  unclosed ``<think>`` drops the rest (unfinished reasoning is not a summary), and a leading
  ``…</think>`` without an opening tag (chat templates that open the block in the prompt) is dropped.
- `decode_thumbnail(raw, max_pixels)`: reads the image header first and refuses an image above
  `max_pixels` before any pixel is decoded (a 140 KB PNG can declare 12000x12000 pixels); JPEGs are
  first shrunk at decode time by a power of two (``Image.draft``) when that brings them under the cap.
- `parse_json(body, what)`, `page_text(body)` (title and trafilatura main text of an HTML page) and
  `chat_reply(body)` (an OpenAI-compatible chat answer without its reasoning): the CPU-heavy steps
  that the web engines run through `offload`.
- `offload(fn, *args, seconds=, message=)`: runs CPU work in a worker thread, so the shared event loop
  keeps serving other requests, and gives up waiting after `seconds` with a `SearchError`.

What it does not: no network I/O, no retries. A worker thread that overruns its deadline cannot be
killed (Python has no way to); it finishes in the background and its result is dropped.
"""

from __future__ import annotations

import asyncio
import html as htmllib
import io
import json
import math

from PIL import Image

from .net import deadline
from .types import SearchError

MAX_THUMBNAIL_PIXELS = 2048 * 2048
"""Largest thumbnail decoded (4.2 megapixels, 12 MB as RGB): far above any search-result thumbnail."""
THUMBNAIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
"""Image formats a thumbnail may have; others are refused without trying more decoders."""
_TITLE_END = ">/ \t\r\n\f"


class ThumbnailTooLarge(SearchError):
    """A thumbnail declares more pixels than allowed; it was refused before decoding."""


def html_title(html: str, max_chars: int = 300) -> str:
    """Text of the first ``<title>`` element (entities decoded, whitespace collapsed), or "".

    Each `str.find` starts where the previous one stopped, so the cost is linear in `html`."""
    low = html.lower()
    i = 0
    while True:
        i = low.find("<title", i)
        if i < 0:
            return ""
        i += len("<title")
        if i < len(low) and low[i] not in _TITLE_END:  # <titlebar>, <title<title...: not a title tag
            continue
        gt = low.find(">", i)
        if gt < 0:
            return ""
        end = low.find("</title", gt + 1)
        if end < 0:
            return ""
        raw = html[gt + 1 : min(end, gt + 1 + 8 * max_chars)]
        return " ".join(htmllib.unescape(raw).split())[:max_chars]


def strip_think(text: str) -> str:
    """`text` without ``<think>…</think>`` blocks (see the module docstring), in linear time."""
    close = text.find("</think>")
    if close >= 0 and not 0 <= text.find("<think>") < close:
        text = text[close + len("</think>") :]
    out: list[str] = []
    i = 0
    while True:
        start = text.find("<think>", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        end = text.find("</think>", start + len("<think>"))
        if end < 0:
            break
        i = end + len("</think>")
    return "".join(out)


def decode_thumbnail(raw: bytes, max_pixels: int = MAX_THUMBNAIL_PIXELS) -> Image.Image:
    """Decode an untrusted image to RGB with at most `max_pixels` pixels; `SearchError` otherwise."""
    try:
        im = Image.open(io.BytesIO(raw), formats=THUMBNAIL_FORMATS)
    except Exception as e:  # noqa: BLE001 - decoders of hostile bytes raise many types
        raise SearchError(f"thumbnail is not a readable image ({type(e).__name__})") from None
    w, h = im.size
    if w * h > max_pixels and im.format == "JPEG":
        scale = next((s for s in (2, 4, 8) if math.ceil(w / s) * math.ceil(h / s) <= max_pixels), 0)
        if scale:
            im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
            w, h = im.size
    if w * h > max_pixels:
        raise ThumbnailTooLarge(
            f"thumbnail of {w}x{h} pixels refused before decoding: more than max_pixels={max_pixels} "
            "(raise WebConfig.max_thumbnail_pixels to accept larger images)"
        )
    try:
        im.load()
        return im.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise SearchError(f"thumbnail could not be decoded ({type(e).__name__}: {e})") from None


def parse_json(body: bytes, what: str) -> dict:
    """A JSON object from an API answer; `SearchError` naming `what` when malformed or not an object."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SearchError(f"malformed JSON from {what} ({len(body)} bytes)", retryable=False) from None
    if not isinstance(data, dict):
        raise SearchError(f"unexpected JSON from {what}: top level is {type(data).__name__}")
    return data


def page_text(body: bytes) -> tuple[str, str]:
    """(title, main text) of an HTML page (trafilatura's extraction; "" when it finds none)."""
    import trafilatura

    html = body.decode("utf-8", "replace")
    return html_title(html), trafilatura.extract(html) or ""


def chat_reply(body: bytes) -> str:
    """The reply text of an OpenAI-compatible chat completion, reasoning blocks removed."""
    try:
        out = parse_json(body, "chat endpoint")["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise SearchError("chat endpoint answer has no choices[0].message.content") from None
    return strip_think(str(out)).strip()


async def offload(fn, /, *args, seconds: float, message: str):
    """``fn(*args)`` in a worker thread; a `SearchError` saying `message` after `seconds`."""
    return await deadline(asyncio.to_thread(fn, *args), seconds, message)


__all__ = ["MAX_THUMBNAIL_PIXELS", "ThumbnailTooLarge", "chat_reply", "decode_thumbnail", "html_title", "offload",
           "page_text", "parse_json", "strip_think"]  # fmt: skip
