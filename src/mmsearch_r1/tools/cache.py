"""Content-addressed, persistent record / replay cache for search calls (SQLite, WAL).

What it does:
- `cache_key(engine, settings, kind, query)` hashes the engine name, its result-affecting settings and
  the query (text, or the raw bytes of an image) into one hex key, so equal calls share one entry.
- `SearchCache` stores JSON values under those keys in one SQLite file opened in WAL mode with a busy
  timeout, one connection per thread and process: several processes (rollout workers) can read and
  write the same file at once.
- Modes: ``off`` (never read or write), ``read-write`` (record: read hits, store misses),
  ``replay-only`` (read hits; a miss is a `SearchError` saying the call was not recorded).
- Counters (this process): hits, misses, writes, estimated dollars spent on misses and saved by hits.
- `export(path)` writes a self-contained copy (SQLite backup API); `import_from(path)` merges another
  cache file in (existing keys win), so a run can ship its cache and others replay it for free.
- Damage: a file that cannot be opened (not SQLite, truncated, a directory) is a `CacheFileError` naming
  the path and the fix; a damaged entry reads as a miss (and a failed write is skipped), with a warning,
  so one bad page costs a repeated call rather than the run. `check_cache(path)` runs SQLite's
  integrity check read-only (``python -m mmsearch_r1.tools cache-check PATH``).

What it does not: no eviction, no TTL (reset a cache by deleting the file), no pickling (values are
JSON, so importing a cache file from someone else cannot execute code). Hit serialisation for
images lives in `engines.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .types import SearchError

log = logging.getLogger(__name__)

CacheMode = Literal["off", "read-write", "replay-only"]
MODES = ("off", "read-write", "replay-only")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def image_bytes(image: Image.Image) -> bytes:
    """Canonical bytes of an image for hashing: mode, size and raw pixels (format-independent)."""
    im = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    return f"{im.mode}:{im.size[0]}x{im.size[1]}:".encode() + im.tobytes()


def cache_key(engine: str, settings: dict[str, Any], kind: str, query: str | bytes | Image.Image) -> str:
    """Hex sha256 of (engine, settings, kind, query). Settings must be JSON-serialisable, no secrets."""
    h = hashlib.sha256()
    h.update(json.dumps([engine, settings, kind], sort_keys=True, default=str).encode())
    h.update(b"\0")
    if isinstance(query, Image.Image):
        h.update(b"img:" + hashlib.sha256(image_bytes(query)).digest())
    elif isinstance(query, bytes):
        h.update(b"bytes:" + hashlib.sha256(query).digest())
    else:
        h.update(b"text:" + query.encode())
    return h.hexdigest()


@dataclass
class CacheStats:
    """Per-process counters of one `SearchCache`."""

    hits: int = 0
    """Lookups answered from the cache."""
    misses: int = 0
    """Lookups not found (each one led to a real call, or to an error in replay-only mode)."""
    writes: int = 0
    """Entries stored."""
    dollars_spent: float = 0.0
    """Estimated dollars of the real calls made on misses (engine cost table)."""
    dollars_saved: float = 0.0
    """Estimated dollars that hits avoided."""
    damaged: int = 0
    """Reads and writes that met a damaged entry or page (reads count as misses too)."""

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class CacheConfig:
    """Where the cache lives and how it is used."""

    path: str | None = None
    """SQLite file (created with its folder). Required unless mode is off."""
    mode: CacheMode = "read-write"
    """off | read-write (record) | replay-only (a miss is an error)."""
    cost_per_call: dict[str, float] = field(
        default_factory=lambda: {"serpapi": 0.015, "jina": 0.0002, "llm": 0.0005, "searxng": 0.0}
    )
    """Estimated dollars per real call, by cost class (for the counters only)."""


class CacheFileError(ValueError):
    """A cache file that cannot be opened or checked; the message names the path and the fix."""


_CHECK_HINT = "check it with `python -m mmsearch_r1.tools cache-check {path}`"


def _is_lock(exc: BaseException) -> bool:
    """A lock held by another process past the busy timeout: contention, not damage."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class SearchCache:
    """A SQLite-backed key → JSON store shared safely by threads and processes."""

    def __init__(self, path: str | os.PathLike | None, mode: CacheMode = "read-write"):
        if mode not in MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {MODES}")
        if mode != "off" and path is None:
            raise ValueError(f"cache mode {mode!r} needs a path (or use mode='off')")
        self.mode: CacheMode = mode
        self.path = Path(path) if path is not None else None
        self.stats = CacheStats()
        self._local = threading.local()
        self._lock = threading.Lock()
        if self.path is not None and mode != "off":
            if mode == "replay-only" and not self.path.exists():
                raise ValueError(f"replay-only cache file {self.path} does not exist; record it first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn()  # create schema early so errors surface at construction

    # -- connections -----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        pid = getattr(self._local, "pid", None)
        if conn is None or pid != os.getpid():
            try:
                conn = self._open()
            except sqlite3.Error as exc:
                raise self._open_error(exc) from exc
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            for attempt in range(50):  # switching to WAL can itself meet a lock while others start up
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    if attempt == 49 or not _is_lock(exc):
                        raise
                    time.sleep(0.05)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _open_error(self, exc: sqlite3.Error) -> CacheFileError:
        if self.path.is_dir():
            fix = f"it is a directory: give a file path, such as {self.path / 'search.sqlite'}"
        elif _is_lock(exc):
            fix = "another process holds a write lock on it: retry when that process is done"
        else:
            fix = ("it is not a readable SQLite cache (another kind of file, truncated or damaged): "
                   f"{_CHECK_HINT.format(path=self.path)}, then delete it or use another path")  # fmt: skip
        return CacheFileError(f"cannot open search cache {self.path}: {exc}; {fix}")

    def _damaged(self, action: str, key: str, exc: Exception) -> None:
        with self._lock:
            self.stats.damaged += 1
        log.warning("search cache %s: %s entry %s… failed (%s: %s); %s", self.path, action, key[:12],
                    type(exc).__name__, exc, _CHECK_HINT.format(path=self.path))  # fmt: skip

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- get / put -------------------------------------------------------------------------------
    def get(self, key: str, *, cost: float = 0.0) -> Any | None:
        """The stored value or None. Counts a hit (and `cost` dollars saved) or a miss.

        In replay-only mode a miss raises `SearchError` (not retryable)."""
        if self.mode == "off":
            return None
        conn = self._conn()
        value = None
        try:
            row = conn.execute("SELECT value FROM entries WHERE key=?", (key,)).fetchone()
            if row is not None:
                value = json.loads(row[0])
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:  # a damaged page or value: a miss
            if _is_lock(exc):
                raise
            self._damaged("reading (treated as a miss)", key, exc)
            row = None
        with self._lock:
            if row is not None:
                self.stats.hits += 1
                self.stats.dollars_saved += cost
            else:
                self.stats.misses += 1
        if row is not None:
            return value
        if self.mode == "replay-only":
            raise SearchError(
                f"cache miss in replay-only mode (key {key[:12]}…): this call was not recorded in "
                f"{self.path}; record it with mode 'read-write' or use a cache that contains it",
                engine="cache",
            )
        return None

    def put(self, key: str, value: Any, *, engine: str = "", kind: str = "") -> None:
        """Store a JSON-serialisable value (read-write mode only; a no-op otherwise)."""
        if self.mode != "read-write":
            return
        text = json.dumps(value)
        conn = self._conn()
        try:
            conn.execute(
                "INSERT OR REPLACE INTO entries(key, engine, kind, value, created) VALUES (?,?,?,?,?)",
                (key, engine, kind, text, time.time()),
            )
        except sqlite3.DatabaseError as exc:  # the caller has its result; only the recording is lost
            if _is_lock(exc):
                raise
            self._damaged("writing (not recorded)", key, exc)
            return
        with self._lock:
            self.stats.writes += 1

    def record_spend(self, dollars: float) -> None:
        """Add the estimated cost of a real (uncached) call to the counters."""
        with self._lock:
            self.stats.dollars_spent += dollars

    def __len__(self) -> int:
        if self.mode == "off":
            return 0
        return self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # -- export / import -------------------------------------------------------------------------
    def export(self, dest: str | os.PathLike) -> Path:
        """Write a self-contained copy of the cache to `dest` (a consistent snapshot)."""
        if self.path is None:
            raise ValueError("this cache has no file to export (mode 'off')")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = sqlite3.connect(str(dest))
        try:
            self._conn().backup(out)
        finally:
            out.close()
        return dest

    def import_from(self, src: str | os.PathLike) -> int:
        """Merge the entries of another cache file into this one; keys already present win.

        Returns the number of new entries."""
        if self.path is None or self.mode == "off":
            raise ValueError("cannot import into a cache with mode 'off'")
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"cache file to import not found: {src}")
        conn = self._conn()
        before = len(self)
        conn.execute("ATTACH DATABASE ? AS other", (str(src),))
        try:
            conn.execute(
                "INSERT OR IGNORE INTO entries SELECT key, engine, kind, value, created FROM other.entries"
            )
        finally:
            conn.execute("DETACH DATABASE other")
        return len(self) - before


def check_cache(path: str | os.PathLike, *, quick: bool = False) -> dict[str, Any]:
    """Check a cache file without changing it: ``{"path", "rows", "status": "ok" | "damaged", "problems"}``.

    Runs SQLite's ``integrity_check`` (``quick_check`` with ``quick``: faster, skips index contents),
    checks the ``entries`` table exists and, unless ``quick``, that every stored value is JSON. ``rows``
    is None when the table cannot be counted. A missing path or a directory raises `CacheFileError`.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a cache file" if path.is_dir() else "does not exist"
        raise CacheFileError(f"{path} {what}: give the path of a search cache file (.sqlite)")
    problems: list[str] = []

    def run(sql: str, each: Any = None) -> list[tuple] | None:
        """Rows of ``sql`` (or ``each(row)`` applied while streaming them); None and a problem on error."""
        try:
            cursor = conn.execute(sql)
            return cursor.fetchall() if each is None else [each(r) for r in cursor]
        except sqlite3.DatabaseError as exc:
            if (problem := f"{type(exc).__name__}: {exc}") not in problems:
                problems.append(problem)
            return None

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = run("PRAGMA quick_check" if quick else "PRAGMA integrity_check") or []
        problems += [r[0] for r in found if r[0] != "ok"]
        tables = run("SELECT name FROM sqlite_master WHERE type='table'")
        if tables is not None and ("entries",) not in tables:
            problems.append("no 'entries' table: not a search cache")
        counted = run("SELECT COUNT(*) FROM entries") if tables and ("entries",) in tables else None
        rows = counted[0][0] if counted else None
        not_json = (
            run("SELECT value FROM entries", lambda r: not _is_json(r[0])) if rows and not quick else None
        )
        bad = sum(not_json or [])
        problems += [f"{bad} entries whose value is not JSON"] if bad else []
    finally:
        conn.close()
    return {"path": str(path), "rows": rows, "status": "damaged" if problems else "ok", "problems": problems}


def _is_json(text: Any) -> bool:
    try:
        json.loads(text)
        return True
    except (TypeError, ValueError):
        return False


# -- JSON (de)serialisation of images for cached hits ------------------------------------------------
def image_to_b64(image: Image.Image | None) -> str | None:
    """Encode a thumbnail as base64 PNG (None stays None)."""
    import base64

    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def image_from_b64(text: str | None) -> Image.Image | None:
    """Decode `image_to_b64` output (None stays None; an undecodable image becomes None)."""
    import base64

    if not text:
        return None
    try:
        im = Image.open(io.BytesIO(base64.b64decode(text)))
        im.load()
        return im
    except Exception:
        return None
