"""Safe, bounded, retrying HTTP for the web engines (httpx, asyncio).

What it does:
- `SafeHttp.request(...)`: one HTTP call with a global concurrency bound (semaphore), a per-host
  minimum interval (rate limit), a timeout, retries with exponential backoff and jitter on timeouts,
  connection errors, 429 and 5xx (honouring a short ``Retry-After``), and a cap on the bytes read.
- Failures while connecting, while waiting for headers and while reading the body (a stall after
  the headers, a connection closed before the declared length) all go through the same retry policy
  and end as a `SearchError` naming the URL (without its query) and the problem.
- Address policy: only http(s); for untrusted URLs (pages from search results, thumbnails) every hop,
  redirects included, is resolved with DNS and refused unless every address is globally routable
  unicast (`addresses.is_public_address`: 6to4, NAT64, Teredo and IPv4-mapped addresses unwrapped) or
  in a network explicitly allowed (`NetConfig.allow_networks`, e.g. ``["127.0.0.0/8"]`` in tests).
  Trusted API endpoints (the ones the user configured) may redirect only within the same origin, so
  keys never travel to another host.
- Secrets: `secret_values()` is the one list of key values (the ``SECRET_VARS`` environment variables
  plus keys registered with `SafeHttp.add_secret`); `redact` removes them and ``api_key=...`` /
  ``Authorization`` style fragments from every error message, and a logging filter installed on the
  ``httpx`` and ``httpcore`` loggers does the same to their records (httpx logs every request URL at
  INFO, and SerpAPI takes its key only in the query string).
- Deadlines: `deadline(coro, seconds, message)` bounds any awaitable; `run_sync` (sync callers) waits
  at most its `timeout` and cancels the call when it runs out.
- Counters: requests, retries, failures, refused, timeouts, read errors, by status.

What it does not: no caching (see `cache.py`), no response parsing. Known limit: DNS is resolved by
us for the check and again by httpx to connect, so a hostile DNS server could answer differently the
second time (DNS rebinding); pin hosts at the network level if that matters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from .addresses import is_public_address
from .types import SearchError

SECRET_VARS = ("SERPAPI_API_KEY", "JINA_API_KEY", "OPENAI_API_KEY")
"""Environment variables holding API keys; their values are redacted everywhere."""
DEFAULT_SYNC_TIMEOUT_S = 300.0
"""How long `run_sync` waits when the caller gives no budget of its own."""
_REGISTERED: set[str] = set()
_REGISTERED_LOCK = threading.Lock()  # logging filters read it from any thread
_KEY_PATTERNS = [
    re.compile(r"(?i)((?:api[_-]?key|key|token|access[_-]?token|secret)=)[^&\s\"']+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)[^\s\"',}]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"),
]


def secret_values(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every key value known to this process: the `SECRET_VARS` env values, registered keys, `extra`."""
    env = (os.environ.get(n, "").strip() for n in SECRET_VARS)
    with _REGISTERED_LOCK:
        registered = tuple(_REGISTERED)
    return sorted({v for v in (*env, *registered, *extra) if v}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | tuple[str, ...] = (), *, patterns: bool = True) -> str:
    """Remove known secret values and (with `patterns`) key-like URL/header fragments from a message.

    Search results are scrubbed with ``patterns=False``: only the exact key values go, so a result
    link that happens to carry ``key=...`` stays intact."""
    for s in sorted(secrets, key=len, reverse=True):
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    if patterns:
        for pat in _KEY_PATTERNS:
            text = pat.sub(r"\1***", text)
    return text


class _RedactingFilter(logging.Filter):
    """Rewrites a log record's message with `redact` (all known keys, key-like fragments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        clean = redact(msg, secret_values())
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


_LOG_FILTER = _RedactingFilter()


def install_log_redaction() -> None:
    """Put the redacting filter on the ``httpx`` and ``httpcore`` loggers and their children.

    A logger's filters see only records logged to that very logger, not those of its children, so
    every ``httpcore.*`` logger gets the filter too: the ones httpcore 1.x uses are created here
    (httpx imports httpcore only when it builds a transport), any other existing one is found by
    name. Idempotent; `SafeHttp` calls it again once its client exists."""
    names = {
        "httpx",
        "httpcore",
        *(f"httpcore.{n}" for n in ("connection", "http11", "http2", "proxy", "socks")),
    }
    names |= {n for n in list(logging.Logger.manager.loggerDict) if n.startswith(("httpx.", "httpcore."))}
    for name in names:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


install_log_redaction()


@dataclass
class NetConfig:
    """HTTP behaviour shared by all web engines."""

    timeout_s: float = 20.0
    """Per-attempt timeout (connect + read), seconds."""
    retries: int = 2
    """Extra attempts after the first on retryable failures (timeouts, 429, 5xx, connection errors)."""
    backoff_s: float = 0.5
    """First backoff; doubles each retry (with up to 25% jitter)."""
    backoff_max_s: float = 8.0
    """Largest single backoff (a longer Retry-After is capped to this)."""
    max_concurrency: int = 32
    """Most requests in flight at once (per event loop)."""
    per_host_interval_s: float = 0.0
    """Minimum seconds between request starts to the same host (0 = no rate limit)."""
    max_bytes: int = 5_000_000
    """Most response bytes read; more is an error (API) or a truncation (pages, `truncate=True`)."""
    max_redirects: int = 5
    """Most redirects followed."""
    allow_networks: list[str] = field(default_factory=list)
    """CIDRs that untrusted URLs may reach despite not being public (e.g. "127.0.0.0/8" in tests)."""
    user_agent: str = "mmsearch-r1/0.1 (+research; search tools)"
    """User-Agent header."""


class SafeHttp:
    """An httpx-based client with the policies of `NetConfig`; usable from any event loop."""

    def __init__(self, config: NetConfig | None = None, *, secrets: list[str] | None = None):
        self.config = config or NetConfig()
        self.secrets = [s for s in (secrets or []) if s]
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in self.config.allow_networks]
        self._state: dict[int, tuple] = {}  # id(loop) -> (loop, client, semaphore)
        self._host_next: dict[str, float] = {}
        self._host_lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self._clock = threading.Lock()
        with _REGISTERED_LOCK:
            _REGISTERED.update(self.secrets)

    def add_secret(self, value: str | None) -> None:
        """Remember a key this client sends, so that errors and the httpx/httpcore logs never show it."""
        if value and value not in self.secrets:
            self.secrets.append(value)
            with _REGISTERED_LOCK:
                _REGISTERED.add(value)

    def count(self, name: str, n: int = 1) -> None:
        with self._clock:
            self.counters[name] += n

    def _loop_state(self):
        loop = asyncio.get_running_loop()
        st = self._state.get(id(loop))
        if st is None or st[0] is not loop or st[1].is_closed:
            for k, v in list(self._state.items()):  # drop state of closed loops
                if v[0].is_closed():
                    self._state.pop(k, None)
            client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=httpx.Timeout(self.config.timeout_s),
                headers={"User-Agent": self.config.user_agent},
                limits=httpx.Limits(max_connections=self.config.max_concurrency * 2),
            )
            install_log_redaction()  # the client has imported httpcore: reach any logger it made
            st = (loop, client, asyncio.Semaphore(self.config.max_concurrency))
            self._state[id(loop)] = st
        return st

    async def aclose(self) -> None:
        st = self._state.pop(id(asyncio.get_running_loop()), None)
        if st is not None:
            await st[1].aclose()

    # -- policy ----------------------------------------------------------------------------------
    async def check_url(self, url: str) -> None:
        """Raise `SearchError` unless `url` is http(s) and resolves only to global (or allowed) IPs."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SearchError(f"refused URL with scheme {parts.scheme!r}: only http and https are allowed")
        host = parts.hostname
        if not host:
            raise SearchError(f"refused URL without a host: {redact(url, self.secrets)[:200]}")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
            except OSError as e:
                raise SearchError(f"cannot resolve host {host!r}: {e}", retryable=False) from None
            ips = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
        for ip in ips:
            if not is_public_address(ip, self._allowed):
                self.count("refused")
                raise SearchError(
                    f"refused URL to non-public address {ip} (host {host!r}): only globally routable "
                    "addresses are reached, unless the network is listed in NetConfig.allow_networks"
                )

    async def _throttle(self, host: str) -> None:
        gap = self.config.per_host_interval_s
        if gap <= 0:
            return
        with self._host_lock:
            now = time.monotonic()
            start = max(now, self._host_next.get(host, 0.0))
            self._host_next[host] = start + gap
        if start > now:
            await asyncio.sleep(start - now)

    # -- request ---------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        trusted: bool = False,
        params: dict | None = None,
        headers: dict | None = None,
        json_body: dict | None = None,
        content: bytes | None = None,
        truncate: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """Make one call with retries; returns (status, headers, body) of a 2xx answer.

        Raises `SearchError` (redacted) on a refused URL, a non-2xx final status, exhausted retries
        or an over-size body (unless `truncate`)."""
        cfg = self.config
        attempt = 0
        while True:
            try:
                once = self._once(method, url, trusted, params, headers, json_body, content, truncate)
                try:  # httpx timeouts are per read; this bounds a slowly dripping answer too
                    return await asyncio.wait_for(once, cfg.timeout_s * 3)
                except asyncio.TimeoutError:
                    self.count("timeouts")
                    raise SearchError(
                        f"no complete answer within {cfg.timeout_s * 3:.0f}s", retryable=True
                    ) from None
            except SearchError as e:
                if not e.retryable or attempt >= cfg.retries:
                    self.count("failures")
                    raise
                delay = min(cfg.backoff_max_s, cfg.backoff_s * (2**attempt))
                ra = getattr(e, "retry_after", None)
                if ra is not None:
                    delay = min(cfg.backoff_max_s, max(delay, ra))
                delay *= 1 + 0.25 * random.random()
                attempt += 1
                self.count("retries")
                await asyncio.sleep(delay)

    async def _once(self, method, url, trusted, params, headers, json_body, content, truncate):
        _, client, sem = self._loop_state()
        origin = urlsplit(url)[:2]
        cur = url
        async with sem:
            for _hop in range(self.config.max_redirects + 1):
                if not trusted:
                    await self.check_url(cur)
                elif urlsplit(cur).scheme not in ("http", "https"):
                    raise SearchError(f"refused API URL scheme {urlsplit(cur).scheme!r}")
                await self._throttle(urlsplit(cur).netloc)
                self.count("requests")
                try:
                    req = client.build_request(
                        method, cur, params=params, headers=headers, json=json_body, content=content
                    )
                    resp = await client.send(req, stream=True)
                except httpx.TimeoutException:
                    self.count("timeouts")
                    raise SearchError(
                        f"timeout after {self.config.timeout_s}s calling {self._show(cur)}", retryable=True
                    ) from None
                except httpx.HTTPError as e:
                    self.count("connect_errors")
                    msg = f"connection error calling {self._show(cur)}: {type(e).__name__}: {e}"
                    raise SearchError(redact(msg, self.secrets), retryable=True) from None
                try:
                    self.count(f"status_{resp.status_code}")
                    if resp.is_redirect:
                        loc = resp.headers.get("location", "")
                        nxt = urljoin(str(resp.request.url), loc)
                        if trusted and urlsplit(nxt)[:2] != origin:
                            raise SearchError(
                                f"refused redirect from API {self._show(cur)} to another origin; "
                                "keys are only sent to their own API"
                            )
                        cur, params = nxt, None  # the query is already in the redirected URL
                        if resp.status_code == 303:
                            method, json_body, content = "GET", None, None
                        continue
                    body = await self._read_body(resp, cur, truncate)
                finally:
                    await resp.aclose()
                status = resp.status_code
                if 200 <= status < 300:
                    return status, dict(resp.headers), body
                retryable = status == 429 or status >= 500
                err = SearchError(
                    f"HTTP {status} from {self._show(cur)}: {redact(body[:200].decode('utf-8', 'replace'), self.secrets)}",
                    retryable=retryable,
                )
                ra = resp.headers.get("retry-after")
                if ra and ra.strip().isdigit():
                    err.retry_after = float(ra)  # type: ignore[attr-defined]
                raise err
            raise SearchError(f"too many redirects (> {self.config.max_redirects}) from {self._show(url)}")

    async def _read_body(self, resp: httpx.Response, url: str, truncate: bool) -> bytes:
        """The capped body; a stall or a broken connection while reading is a retryable `SearchError`."""
        try:
            return await self._read_capped(resp, truncate)
        except httpx.TimeoutException:
            self.count("timeouts")
            raise SearchError(
                f"timeout after {self.config.timeout_s}s reading the answer body from {self._show(url)} "
                "(headers arrived, then the server stalled)",
                retryable=True,
            ) from None
        except httpx.TransportError as e:
            self.count("read_errors")
            msg = f"connection broke while reading the answer from {self._show(url)}: {type(e).__name__}: {e}"
            raise SearchError(redact(msg, self.secrets), retryable=True) from None
        except httpx.HTTPError as e:  # e.g. a body that does not match its Content-Encoding
            self.count("read_errors")
            msg = f"unreadable answer body from {self._show(url)}: {type(e).__name__}: {e}"
            raise SearchError(redact(msg, self.secrets)) from None

    async def _read_capped(self, resp: httpx.Response, truncate: bool) -> bytes:
        cap = self.config.max_bytes
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap and not truncate:
            self.count("too_large")
            raise SearchError(f"response too large ({declared} bytes > max_bytes={cap})")
        chunks, total = [], 0
        async for chunk in resp.aiter_bytes():
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                if truncate:
                    break
                self.count("too_large")
                raise SearchError(f"response too large (> max_bytes={cap})")
        return b"".join(chunks)[:cap]

    def _show(self, url: str) -> str:
        """A URL safe for messages: no query string (keys often live there), secrets redacted."""
        p = urlsplit(url)
        return redact(f"{p.scheme}://{p.netloc}{p.path}", self.secrets)[:200]


_BG: dict = {}
_BG_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    with _BG_LOCK:
        loop = _BG.get("loop")
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="mmsearch-tools-io", daemon=True)
            t.start()
            _BG["loop"] = loop
        return loop


async def deadline(aw, seconds: float, message: str):
    """Await `aw` for at most `seconds`; then cancel it and raise a retryable `SearchError(message)`.

    Unlike `asyncio.wait_for`, a `TimeoutError` raised by `aw` itself is passed on unchanged, so only
    this deadline produces `message`."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:  # our caller was cancelled: take the work down with it
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" noise
        raise SearchError(message, retryable=True)
    return task.result()


def run_sync(coro, timeout: float | None = DEFAULT_SYNC_TIMEOUT_S):
    """Run a coroutine from sync code on one shared background event loop (works inside a running
    loop too, and keeps HTTP connections pooled across sync calls).

    Waits at most `timeout` seconds (None: forever); then the call is cancelled and a retryable
    `SearchError` says so. Callers with a budget of their own pass it, plus a little grace, so that
    their own, more specific deadline error normally comes first."""
    fut = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        if fut.done():  # the coroutine itself raised TimeoutError
            raise
        fut.cancel()
        raise SearchError(
            f"no result within {timeout:g}s, so the call was cancelled: the service hung or the shared "
            "I/O loop was busy; retry, or give the call a larger budget",
            retryable=True,
        ) from None
