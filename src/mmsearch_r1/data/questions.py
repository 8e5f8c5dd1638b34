"""FVQA-style question pool from the offline world: four kinds, perturbed query images, seeded splits.

What it does: turns every world entity into short-answer visual questions of four kinds,
- ``search_free``: answerable from the image alone (the dominant colour of a flag);
- ``visual_knowledge``: name the entity in the image ("Which country's flag is this?"): image search
  unless the policy knows it;
- ``textual_knowledge``: a fact about the entity in the image (its capital or continent): image search
  then text search;
- ``text_only``: a fact about a named entity (the image is the entity's flag, not needed): text search,
with gold answers plus aliases. Query images are perturbed copies of the gallery images (crop,
rotation, colour, blur, background, JPEG) so that image search is real retrieval. Entities are split
train/validation/test with a seed, so test entities (and their query images) never appear in
training. A ``known`` set of entities (the policy's knowledge boundary, drawn across all splits) sets
each row's prior ``category``: questions about a known entity, and search-free questions, are
``search_free``; the rest are ``search_required``. Curation (``data.curation``) can relabel from rollouts.

What it does not: no search engine of its own, no model; no I/O except reading the world's images
(``query_image_engine`` hands recall checks a local engine from ``mmsearch_r1.tools``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from mmsearch_r1.data.schema import rows_to_dataset
from mmsearch_r1.data.wordings import split_wordings, wording_of
from mmsearch_r1.data.world.build import Entity, World
from mmsearch_r1.helpers import seeded_rng, to_rgb

KINDS = ("search_free", "visual_knowledge", "textual_knowledge", "text_only")
TEMPLATES: dict[str, tuple[str, str, str]] = {
    # name: (kind, view, question text)
    "flag_colour": ("search_free", "flag", "Which colour covers the largest part of this flag?"),
    "flag_country": ("visual_knowledge", "flag", "Which country's flag is shown in the image?"),
    "outline_country": ("visual_knowledge", "outline", "Which country has the outline shown on this map?"),
    "flag_capital": ("textual_knowledge", "flag", "What is the capital city of the country whose flag is shown?"),
    "flag_continent": ("textual_knowledge", "flag", "On which continent is the country whose flag is shown?"),
    "outline_capital": ("textual_knowledge", "outline", "What is the capital city of the country outlined on this map?"),
    "capital_of": ("text_only", "flag", "What is the capital city of {name}?"),
    "continent_of": ("text_only", "flag", "On which continent is {name}?"),
}  # fmt: skip
"""Question templates. The question text is data: it lands in row["question"]."""
SPLITS = ("train", "validation", "test")
EXTRA_FEATURES = {
    "entity_id": datasets.Value("string"),
    "template": datasets.Value("string"),
    "split": datasets.Value("string"),
    "known": datasets.Value("bool"),
    "wording": datasets.Value("int32"),
}
"""Columns questions add to the row schema."""


@dataclass
class PerturbConfig:
    """How query images differ from the gallery image they come from."""

    max_side: int = 192
    """Longest side of the query image in pixels (small images keep VLM token counts low)."""
    crop: tuple[float, float] = (0.8, 1.0)
    """Fraction of the area kept by a random crop (min, max)."""
    rotate_deg: float = 10.0
    """Maximal absolute rotation in degrees."""
    brightness: float = 0.15
    """Brightness and contrast jitter (factor drawn in 1 +- this)."""
    saturation: float = 0.15
    """Saturation jitter (small, so that colour questions keep their answer)."""
    blur_prob: float = 0.3
    """Probability of a Gaussian blur (radius 0.5-1.2)."""
    background_prob: float = 0.2
    """Probability of pasting the image, shrunk, on a noisy or plain background."""
    background_scale: tuple[float, float] = (0.8, 0.95)
    """Side of the pasted image relative to the background canvas (min, max)."""
    jpeg_quality: tuple[int, int] = (35, 90)
    """JPEG re-encoding quality range."""

    @classmethod
    def hard(cls) -> PerturbConfig:
        """Harsher queries: local image search recall@1 0.96 (validation flags) and 1.00 (outlines); the
        EfficientNet-only engine before 2026-11-24 got about 0.64 and 0.35."""
        return cls(crop=(0.7, 1.0), rotate_deg=12.0, background_prob=0.5, background_scale=(0.65, 0.9))


@dataclass
class QuestionConfig:
    """What pool to build from the world."""

    seed: int = 0
    """Seed for the entity split, template sampling and image perturbations."""
    split_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    """Fractions of entities in train / validation / test."""
    templates: tuple[str, ...] = tuple(TEMPLATES)
    """Templates to instantiate (keys of ``TEMPLATES``)."""
    max_entities: int | None = None
    """Use at most this many entities (seeded sample), e.g. for smoke runs."""
    known: frozenset[str] = frozenset()
    """Entity ids the policy knows (its knowledge boundary). Sets the prior ``category``."""
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    """Query-image perturbation."""
    source: str = "world"
    """Value of the ``source`` column."""
    wordings: str = "template"
    """How questions are worded (`mmsearch_r1.data.wordings`): ``template`` (each template's own text),
    ``train`` (drawn from the training wordings) or ``heldout`` (drawn from the held-out wordings). The
    query image of a row is the same whatever the wording."""
    wordings_per_row: int = 1
    """With ``wordings="train"``: distinct wordings per (entity, template), each its own row (more data)."""
    wording_seed: int = 0
    """Seed of the train/held-out split of the wordings (`split_wordings`), kept apart from ``seed``."""


# --------------------------------------------------------------------------- colours

_COLOURS = ("red", "white", "blue", "green", "yellow", "black", "orange")


def colour_shares(im: Image.Image) -> dict[str, float]:
    """Share of pixels per basic colour name (HSV rules; greys below 0.35 value count as black)."""
    hsv = np.asarray(to_rgb(im).resize((96, 64)).convert("HSV"), dtype=np.float32) / 255.0
    h, s, v = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    name = np.full(h.shape, "", dtype=object)
    chroma = (s > 0.3) & (v > 0.25)
    name[~chroma & (v >= 0.6)] = "white"
    name[~chroma & (v < 0.35)] = "black"
    name[chroma & ((h < 15) | (h >= 330))] = "red"
    name[chroma & (h >= 15) & (h < 40)] = "orange"
    name[chroma & (h >= 40) & (h < 70)] = "yellow"
    name[chroma & (h >= 70) & (h < 170)] = "green"
    name[chroma & (h >= 170) & (h < 265)] = "blue"
    n = h.size
    return {c: float((name == c).sum()) / n for c in _COLOURS}


def dominant_colour(im: Image.Image, *, min_share: float = 0.45, min_margin: float = 0.15) -> str | None:
    """The colour that clearly dominates a flag, or None when no colour clearly does."""
    shares = sorted(colour_shares(im).items(), key=lambda kv: -kv[1])
    (c1, s1), (_, s2) = shares[0], shares[1]
    return c1 if s1 >= min_share and s1 - s2 >= min_margin else None


# --------------------------------------------------------------------------- perturbation


def perturb_image(im: Image.Image, rng: np.random.Generator, cfg: PerturbConfig | None = None) -> Image.Image:
    """A perturbed copy of ``im``: crop, rotation, colour jitter, blur, background, JPEG, resize."""
    out = Image.open(io.BytesIO(perturb_image_bytes(im, rng, cfg)))
    out.load()
    return to_rgb(out)


def perturb_image_bytes(im: Image.Image, rng: np.random.Generator, cfg: PerturbConfig | None = None) -> bytes:
    """Like ``perturb_image`` but returns the JPEG bytes (what the datasets store, without re-encoding)."""
    cfg = cfg or PerturbConfig()
    im = to_rgb(im)
    w, h = im.size
    keep = rng.uniform(*cfg.crop)
    cw, ch = max(8, int(w * np.sqrt(keep))), max(8, int(h * np.sqrt(keep)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if max(im.size) > 1.25 * cfg.max_side:  # work at about the output size (cheaper)
        s = 1.25 * cfg.max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
    bg_colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if cfg.rotate_deg:
        im = im.rotate(float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)), Image.BILINEAR, expand=True,
                       fillcolor=bg_colour)  # fmt: skip
    im = ImageEnhance.Brightness(im).enhance(1 + rng.uniform(-cfg.brightness, cfg.brightness))
    im = ImageEnhance.Contrast(im).enhance(1 + rng.uniform(-cfg.brightness, cfg.brightness))
    im = ImageEnhance.Color(im).enhance(1 + rng.uniform(-cfg.saturation, cfg.saturation))
    if rng.random() < cfg.blur_prob:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2))))
    if rng.random() < cfg.background_prob:
        scale = rng.uniform(*cfg.background_scale)
        W, H = int(im.width / scale), int(im.height / scale)
        if rng.random() < 0.5:
            noise = rng.integers(0, 256, (max(1, H // 8), max(1, W // 8), 3), dtype=np.uint8)
            canvas = Image.fromarray(noise).resize((W, H), Image.BILINEAR)
        else:
            canvas = Image.new("RGB", (W, H), bg_colour)
        canvas.paste(im, (int(rng.integers(0, W - im.width + 1)), int(rng.integers(0, H - im.height + 1))))
        im = canvas
    s = cfg.max_side / max(im.size)
    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return buf.getvalue()


# --------------------------------------------------------------------------- splits and knowledge


def split_entities(ids: Iterable[str], fractions=(0.6, 0.1, 0.3), seed: int = 0) -> dict[str, str]:
    """Entity id -> "train" | "validation" | "test" (seeded; disjoint by construction)."""
    ids = sorted(ids)
    if abs(sum(fractions) - 1) > 1e-6 or len(fractions) != 3:
        raise ValueError(f"split_fractions must be 3 numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_tr = int(round(fractions[0] * len(ids)))
    n_va = int(round(fractions[1] * len(ids)))
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "train" if rank < n_tr else ("validation" if rank < n_tr + n_va else "test")
    return out


def known_by_population(world: World, n: int = 75) -> frozenset[str]:
    """The ``n`` most populous entities: a stand-in for what a small LM knows (prominence tracks recall)."""
    ranked = sorted(world.entities, key=lambda e: -e.facts.get("population", 0))
    return frozenset(e.id for e in ranked[:n])


def known_random(world: World, fraction: float = 0.35, seed: int = 0) -> frozenset[str]:
    """A random known set of the given fraction of entities (drawn across all splits)."""
    ids = sorted(e.id for e in world.entities)
    rng = np.random.default_rng(seed + 7919)
    return frozenset(rng.choice(ids, size=int(round(fraction * len(ids))), replace=False).tolist())


# --------------------------------------------------------------------------- pool


def _answer(e: Entity, template: str, clean: Image.Image, query: bytes) -> tuple[str, list[str]] | None:
    """Gold answer and aliases, or None to drop the row. A colour answer must hold for both the clean
    flag and the perturbed query image (the one the policy sees): blur, jitter or a background can
    change which colour dominates."""
    if template == "flag_colour":
        c = dominant_colour(clean)
        if c is None or dominant_colour(Image.open(io.BytesIO(query))) != c:
            return None
        return c, []
    if template.endswith("_country"):
        return e.name, list(e.aliases)
    if template.endswith("capital") or template == "capital_of":
        return e.facts["capital"], list(e.facts.get("capital_aliases", []))
    if template.endswith("continent") or template == "continent_of":
        return e.facts["continent"], list(e.facts.get("continent_aliases", []))
    raise ValueError(f"unknown template {template!r}")


def build_pool(world: World, config: QuestionConfig | None = None) -> datasets.DatasetDict:
    """The question pool as a DatasetDict(train, validation, test) in the row schema (+ EXTRA_FEATURES)."""
    cfg = config or QuestionConfig()
    bad = [t for t in cfg.templates if t not in TEMPLATES]
    if bad:
        raise ValueError(f"unknown templates {bad}; choose from {list(TEMPLATES)}")
    ents = sorted(world.entities, key=lambda e: e.id)
    if cfg.max_entities is not None and cfg.max_entities < len(ents):
        pick = np.random.default_rng(cfg.seed).choice(len(ents), cfg.max_entities, replace=False)
        ents = [ents[i] for i in sorted(pick)]
    split_of = split_entities([e.id for e in ents], cfg.split_fractions, cfg.seed)
    if cfg.wordings not in ("template", "train", "heldout"):
        raise ValueError(
            f"QuestionConfig.wordings must be 'template', 'train' or 'heldout', got {cfg.wordings!r}"
        )
    wording_split = split_wordings(cfg.wording_seed)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for e in ents:
        clean_cache: dict[str, Image.Image] = {}
        for t in cfg.templates:
            kind, view, _ = TEMPLATES[t]
            if view not in e.images:
                continue
            if view not in clean_cache:
                clean_cache[view] = world.image(e.id, view)
            split = split_of[e.id]
            data_id = f"{cfg.source}_{t}_{e.id.split('/')[-1].lower()}"
            jpeg = perturb_image_bytes(clean_cache[view], seeded_rng(cfg.seed, split, data_id), cfg.perturb)
            ans = _answer(e, t, clean_cache[view], jpeg)
            if ans is None:
                continue
            known = e.id in cfg.known
            for w in _wordings(cfg, wording_split, t, data_id):
                rows[split].append(
                    {
                        "data_id": data_id if cfg.wordings == "template" else f"{data_id}_w{w}",
                        "image": {"bytes": jpeg, "path": None},
                        "question": wording_of(t, w, e.name),
                        "answer": ans[0],
                        "aliases": [a for a in dict.fromkeys(ans[1]) if a != ans[0]],
                        "category": "search_free" if kind == "search_free" or known else "search_required",
                        "kind": kind,
                        "source": cfg.source,
                        "entity_id": e.id,
                        "template": t,
                        "split": split,
                        "known": known,
                        "wording": w,
                    }
                )
    return datasets.DatasetDict({s: rows_to_dataset(rows[s], EXTRA_FEATURES) for s in SPLITS})


def _wordings(cfg: QuestionConfig, split: dict, template: str, data_id: str) -> list[int]:
    """The wording indices of one (entity, template): 0 (the template's text) or a seeded draw."""
    if cfg.wordings == "template":
        return [0]
    choices = split[template][cfg.wordings]
    k = cfg.wordings_per_row if cfg.wordings == "train" else 1
    rng = seeded_rng(cfg.wording_seed, "wording", data_id)
    return sorted(rng.choice(choices, size=min(k, len(choices)), replace=False).tolist())


def pool_counts(pool: datasets.DatasetDict) -> list[dict]:
    """Rows per (split, kind, category, known): a tidy table for plots and the data card."""
    from collections import Counter

    c: Counter = Counter()
    for split, ds in pool.items():
        for kind, cat, known in zip(ds["kind"], ds["category"], ds["known"], strict=True):
            c[(split, kind, cat, known)] += 1
    return [
        {"split": s, "kind": k, "category": cat, "known": kn, "n": n}
        for (s, k, cat, kn), n in sorted(c.items())
    ]


def image_search_recall(ds: datasets.Dataset, engine, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of an image engine on the query images of *every* row of ``ds``: a hit is right when
    its url names the row's entity.

    ``engine`` is anything with ``search_image(image, k=...) -> list[hit]`` whose hits carry ``url``
    (``World.url`` addresses). Select the rows first (``recall_by_view`` scores the visual-knowledge
    templates); text-only rows would count as queries too.
    """
    hits_at = {k: 0 for k in ks}
    n = 0
    for row in ds:
        hits = engine.search_image(row["image"], k=max(ks))
        ents = [World.entity_of_url(getattr(h, "url", "") or "") for h in hits]
        n += 1
        for k in ks:
            hits_at[k] += row["entity_id"] in ents[:k]
    return {f"recall@{k}": hits_at[k] / max(n, 1) for k in ks} | {"n": n}


def recall_by_view(ds: datasets.Dataset, engine, ks: tuple[int, ...] = (1, 5)) -> dict[str, dict]:
    """``image_search_recall`` on the visual-knowledge rows ("which country is this?"), overall
    ("all") and per view ("flag", "outline"; a view with no rows is left out)."""
    views = {TEMPLATES[t][1]: t for t in TEMPLATES if TEMPLATES[t][0] == "visual_knowledge"}
    visual = ds.filter(lambda t: t in views.values(), input_columns="template")
    out = {"all": image_search_recall(visual, engine, ks)}
    for view, template in views.items():
        sub = visual.filter(lambda t, tt=template: t == tt, input_columns="template")
        if len(sub):
            out[view] = image_search_recall(sub, engine, ks)
    return out


def pool_entities(pool: datasets.DatasetDict | dict) -> set[str]:
    """Entity ids used by any split of a pool."""
    return {e for ds in pool.values() for e in ds["entity_id"]}


def query_image_engine(
    world: World, *, entity_ids: Iterable[str] | None = None, index_dir: str | Path | None = None
):
    """A local image engine (``mmsearch_r1.tools``) over the world's gallery, for recall checks.

    Without ``entity_ids``: the shared index from ``tools.engines.world_indexes()`` (built once,
    rebuilt there when its feature version is stale). With ``entity_ids``: a small gallery of those
    entities only, embedded into ``index_dir`` (required then), e.g. for smoke runs.
    """
    from mmsearch_r1.tools.engines import world_indexes
    from mmsearch_r1.tools.local import LocalImageEngine, build_image_index

    if entity_ids is None:
        return LocalImageEngine.load(world_indexes() / "image")
    if index_dir is None:
        raise ValueError("query_image_engine(entity_ids=...) needs index_dir= for the small gallery index")
    keep = set(entity_ids)
    gallery = [g for g in world.search_gallery() if World.entity_of_url(g["url"]) in keep]
    return LocalImageEngine.load(build_image_index(gallery, index_dir, show_progress=False))
