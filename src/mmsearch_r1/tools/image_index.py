"""Offline image search: a gallery index on disk and brute-force k-NN over it (re-exported by ``local``).

What it does:
- `build_image_index(records, out_dir)` embeds a gallery of records ``{image: PIL|path, title, url,
  text}`` (tqdm), saves float16 embeddings (one vector per image, plus the embedder's colour-layout
  views when it has them: ``views.npy``, (n, views, d)), small thumbnails and the records, built in a
  side folder and swapped in whole (a reader never sees half an index).
- `LocalImageEngine.load` reads them back (memory-mapped when large, lazy thumbnails) and answers
  `search_image` by brute-force k-NN in numpy: score = w₁ · embedding cosine + w₂ · best (gallery
  view, query view) cosine, the weights saved with the index (``score_weights`` in meta.json),
  returning `ImageHit(title, url, thumbnail, snippet, score)`. Indexes without views (older
  feature versions, the ``pixel`` embedder) score by the embedding alone.
- `reduce_index` projects the embeddings of a large gallery to fewer dimensions (PCA).

What it does not: no approximate nearest neighbours (brute force is fast enough up to ~100k), no
text → image search, no network, no staleness check (``engines.world_indexes`` rebuilds the World
index when ``embed.FEATURES_VERSION`` changes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .types import ImageHit, SearchError


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False))


def _open(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, (str, Path)):
        return Image.open(img)
    raise ValueError(f"gallery image must be a PIL image or a file path, got {type(img).__name__}")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace folder `out` by `tmp` (two renames: readers see the old or the new index, never a mix)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build_image_index(
    records: list[dict],
    out_dir: str | Path,
    *,
    embedder: str = "effnet-lite0",
    thumb_size: int = 256,
    batch_size: int = 16,
    show_progress: bool = True,
    exact_below: int = 20_000,
    reduced_dim: int = 256,
) -> Path:
    """Embed a gallery ``{image, title, url, text}`` into `out_dir` (embeddings, views, thumbnails, records).

    Galleries of `exact_below` images or more get their embeddings projected to `reduced_dim`
    dimensions (`reduce_index`) so that brute-force search stays fast; smaller ones keep exact
    features. Layout views are never projected (about 24 kB per image as float16)."""
    if not records:
        raise ValueError("cannot build an image index from an empty gallery")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "image" not in r or not r.get("title"):
            raise ValueError(f"gallery record {i} needs 'image' and 'title' fields")
    from .embed import FEATURES_VERSION, get_embedder  # torch is imported only when images are embedded

    emb = get_embedder(embedder)
    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "thumbs").mkdir(parents=True)
    try:
        meta_records, vecs, views = [], [], []
        bar = tqdm(total=len(records), desc=f"embed gallery ({embedder})", disable=not show_progress)
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            images = []
            for j, r in enumerate(chunk):
                im = _open(r["image"]).convert("RGB")
                images.append(im)
                th = im.copy()
                th.thumbnail((thumb_size, thumb_size))
                name = f"{start + j:06d}.png"
                th.save(tmp / "thumbs" / name)
                meta_records.append(
                    {"title": str(r["title"]), "url": str(r.get("url", "")), "text": str(r.get("text", ""))}
                    | {"thumb": name}
                )
            vecs.append(emb.embed(images))
            if emb.views is not None:
                views.append(emb.views.gallery(images).astype(np.float16))
            bar.update(len(chunk))
        bar.close()
        np.save(tmp / "embeddings.npy", np.concatenate(vecs).astype(np.float16))
        if views:
            np.save(tmp / "views.npy", np.concatenate(views))
        _write_json(tmp / "records.json", meta_records)
        meta = {
            "kind": "image",
            "embedder": embedder,
            "n": len(meta_records),
            "features_version": FEATURES_VERSION,
            "score_weights": list(emb.score_weights) if views else [1.0, 0.0],
            "views": int(views[0].shape[1]) if views else 0,
        }
        _write_json(tmp / "meta.json", meta)
        if len(meta_records) >= exact_below:
            reduce_index(tmp, reduced_dim)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def reduce_index(index_dir: str | Path, dim: int = 256, sample: int = 2048, seed: int = 0) -> Path:
    """Project a saved image index to `dim` dimensions with an uncentred PCA fitted on a sample.

    Dot products with gallery vectors are preserved exactly when the gallery spans at most `dim`
    dimensions, approximately otherwise; the projection is saved as ``proj.npy`` and applied to
    queries. Replaces ``embeddings.npy`` by the projected float32 vectors."""
    d = Path(index_dir)
    emb = np.load(d / "embeddings.npy", mmap_mode="r")
    if (d / "proj.npy").exists() or emb.shape[1] <= dim:
        return d
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(emb), size=min(sample, len(emb)), replace=False))
    _, _, vt = np.linalg.svd(np.asarray(emb[idx], dtype=np.float32), full_matrices=False)
    proj = np.ascontiguousarray(
        vt[:dim].T.astype(np.float32)
    )  # (full dim, ≤ dim): fewer when the sample is smaller
    out = np.lib.format.open_memmap(
        d / "embeddings.tmp.npy", mode="w+", dtype=np.float32, shape=(len(emb), proj.shape[1])
    )
    for i in range(0, len(emb), 16384):
        out[i : i + 16384] = np.asarray(emb[i : i + 16384], dtype=np.float32) @ proj
    out.flush()
    del out, emb
    np.save(d / "proj.npy", proj)
    (d / "embeddings.tmp.npy").replace(d / "embeddings.npy")
    return d


def _dot(a: np.ndarray, q: np.ndarray, step: int = 16384) -> np.ndarray:
    """``a @ q`` for a float32 array, or in float32 chunks for a float16 one (numpy has no fast f16 matmul)."""
    if a.dtype == np.float32:
        return a @ q
    return np.concatenate([np.asarray(a[i : i + step], dtype=np.float32) @ q for i in range(0, len(a), step)])


class LocalImageEngine:
    """k-NN over a saved gallery index (embedding cosine ⊕ best layout-view cosine); returns thumbnails."""

    name = "local-image"

    def __init__(
        self,
        index_dir: Path,
        emb: np.ndarray,
        records: list[dict],
        embedder_name: str,
        proj=None,
        views: np.ndarray | None = None,
        score_weights: tuple[float, float] = (1.0, 0.0),
    ):
        self.index_dir, self.emb, self.records, self.embedder_name = index_dir, emb, records, embedder_name
        self.proj: np.ndarray | None = proj
        """Query projection (full dim × reduced dim) of a reduced index, else None."""
        self.views: np.ndarray | None = views
        """Gallery layout views (n, views, d), or None (indexes of embedders without views, or older)."""
        self.score_weights = score_weights
        """Weights of the embedding cosine and of the best view cosine in a hit's score."""
        self.cascade = True
        """Skip the embedding (the CNN forward pass) when the views alone already decide the first hit."""
        self._embedder = None

    @classmethod
    def load(cls, index_dir: str | Path) -> LocalImageEngine:
        d = Path(index_dir)
        if not (d / "embeddings.npy").exists():
            raise FileNotFoundError(
                f"no image index in {d}: build one with mmsearch_r1.tools.local.build_image_index"
            )
        meta = json.loads((d / "meta.json").read_text())
        emb = np.load(d / "embeddings.npy", mmap_mode="r")
        if emb.shape[0] * emb.shape[1] <= 100_000_000:  # up to ~400 MB as float32: keep in RAM
            emb = np.asarray(emb, dtype=np.float32)
        views = None
        if (d / "views.npy").exists():
            views = np.load(d / "views.npy", mmap_mode="r")
            if views.size <= 100_000_000:
                views = np.asarray(views, dtype=np.float32)
        records = json.loads((d / "records.json").read_text())
        proj = np.load(d / "proj.npy") if (d / "proj.npy").exists() else None
        wg, wv = meta.get("score_weights", (1.0, 0.0))
        if views is None:
            wg, wv = 1.0, 0.0
        return cls(d, emb, records, meta["embedder"], proj, views, (float(wg), float(wv)))

    @property
    def embedder(self):
        if self._embedder is None:
            from .embed import get_embedder

            self._embedder = get_embedder(self.embedder_name)
        return self._embedder

    def _rebuild_error(self, what: str, have: int, got: int) -> SearchError:
        return SearchError(
            f"image index {self.index_dir} has {have}-d {what} but the {self.embedder_name} embedder gives "
            f"{got}-d: rebuild the index (python -m mmsearch_r1.tools build-index --rebuild)",
            engine=self.name,
        )

    def scores(self, image: Image.Image) -> np.ndarray:
        """Score of every gallery image for a query image (higher is more similar).

        Cascade: when views are scored first and their best score leads the second by more than the
        embedding weight, the embedding term is left out. The first hit is the same as with it, since
        the embeddings are non-negative features (ReLU, histograms) whose cosines lie in [0, 1] (for a
        PCA-reduced index, approximately); the later hits and all scores then omit that term."""
        wg, wv = self.score_weights
        sims = np.zeros(len(self.records), np.float32)
        if wv:
            lay = getattr(self.embedder, "views", None)
            if lay is None:
                raise self._rebuild_error("layout views", self.views.shape[2], 0)
            qv = lay.query(image).T  # (d, hypotheses)
            n, v, dim = self.views.shape
            if qv.shape[0] != dim:
                raise self._rebuild_error("layout views", dim, qv.shape[0])
            sims += wv * _dot(self.views.reshape(n * v, dim), qv).reshape(n, -1).max(1)
            if self.cascade and wg and len(sims) > 1:
                second, first = np.partition(sims, len(sims) - 2)[-2:]
                if first - second > wg:
                    return sims
        if wg:
            q = self.embedder.embed([image])[0].astype(np.float32)
            if self.proj is not None and q.shape[0] == self.proj.shape[0]:
                q = q @ self.proj
            if q.shape[0] != self.emb.shape[1]:
                raise self._rebuild_error("embeddings", self.emb.shape[1], q.shape[0])
            sims += wg * _dot(self.emb, q)
        return sims

    def rank(self, image: Image.Image, k: int = 5) -> list[tuple[int, float]]:
        """(gallery index, score) pairs, best first."""
        sims = self.scores(image)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top])]
        return [(int(i), float(sims[i])) for i in top]

    def search_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        if not isinstance(image, Image.Image):
            raise SearchError(f"image search needs a PIL image, got {type(image).__name__}", engine=self.name)
        hits = []
        for i, score in self.rank(image, k):
            r = self.records[i]
            thumb = Image.open(self.index_dir / "thumbs" / r["thumb"])
            thumb.load()
            hits.append(
                ImageHit(
                    title=r["title"], url=r["url"], thumbnail=thumb, snippet=r["text"][:300], score=score
                )
            )
        return hits

    async def asearch_image(self, image: Image.Image, *, k: int = 5) -> list[ImageHit]:
        return await asyncio.to_thread(self.search_image, image, k=k)
