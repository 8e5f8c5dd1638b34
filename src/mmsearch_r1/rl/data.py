"""Training inputs for GRPO: the question rows, their TRL prompt format, and the search engines.

What it does:
- `load_rows(spec, split, ...)` resolves `TrainConfig.dataset` into a ``datasets.Dataset`` in the row
  schema (``world``: the offline world's question pool; ``synthetic``: a few coloured-square questions;
  a ``save_to_disk`` folder; an FVQA/veRL ``.parquet``).
- `to_trl_dataset(rows)` adds TRL's conversational VLM ``prompt`` column,
  ``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": first_user_text(q)}]}]``,
  and keeps every row column (the image for the processor, question/answer/aliases for `SearchEnv` and
  the reward).
- `synthetic_rows` / `synthetic_engines`: a self-contained miniature (6 made-up countries, their flags
  as coloured patterns, a gallery and a corpus indexed with the tools' local engines and the pixel
  embedder) so that smoke runs and tests need neither the world build nor model weights.
- `make_train_engines(config)` builds the configured engines with `mmsearch_r1.tools.engines.make_engines`.

What it does not: no curation (``mmsearch_r1.data.curation``), no world building (``mmsearch_r1.data.world.build``).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from mmsearch_r1.protocol.prompts import first_user_text

SYNTHETIC = [
    # name, colours (stripes), capital
    ("Rubria", ("red", "white"), "Corla"),
    ("Azuria", ("blue", "yellow"), "Benmar"),
    ("Verdania", ("green", "white"), "Tolsk"),
    ("Solvia", ("yellow", "black"), "Maren"),
    ("Noctia", ("black", "red"), "Pellin"),
    ("Auralia", ("orange", "blue"), "Quarro"),
]
"""The synthetic miniature's countries: name, flag stripe colours, capital."""


def synthetic_flag(colours: tuple[str, ...], size: int = 56, jitter: int = 0, seed: int = 0) -> Image.Image:
    """A flag of horizontal stripes; ``jitter`` shifts it a few pixels (a perturbed query image)."""
    im = Image.new("RGB", (size, size), colours[0])
    draw = ImageDraw.Draw(im)
    h = size // len(colours)
    for i, c in enumerate(colours):
        draw.rectangle([0, i * h, size, (i + 1) * h], fill=c)
    if jitter:
        rng = random.Random(seed)
        im = im.rotate(rng.uniform(-jitter, jitter), fillcolor="gray")
    return im


def synthetic_rows(n: int | None = None, seed: int = 0) -> datasets.Dataset:
    """Questions in the row schema about the synthetic countries (flag -> country, flag -> capital)."""
    rows = []
    for i, (name, colours, capital) in enumerate(SYNTHETIC):
        image = synthetic_flag(colours, jitter=8, seed=seed * 100 + i)
        for kind, question, answer in (
            ("visual_knowledge", "Which country's flag is shown in the image?", name),
            ("textual_knowledge", "What is the capital city of the country whose flag is shown?", capital),
        ):
            rows.append(
                {
                    "data_id": f"synthetic_{kind}_{name.lower()}",
                    "image": image,
                    "question": question,
                    "answer": answer,
                    "aliases": [],
                    "category": "search_required",
                    "kind": kind,
                    "source": "synthetic",
                }
            )
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    ds = ds.shuffle(seed=seed)
    return ds.select(range(min(n, len(ds)))) if n else ds


def synthetic_engines(index_dir: str | Path):
    """Local engines over the synthetic gallery and corpus (built into ``index_dir`` once, ~1 s)."""
    from mmsearch_r1.tools.engines import EngineConfig, build_indexes, make_engines

    index_dir = Path(index_dir)
    if not (index_dir / "image" / "meta.json").exists() or not (index_dir / "text" / "meta.json").exists():
        gallery = [
            {
                "image": synthetic_flag(c),
                "title": f"Flag of {n}",
                "url": f"https://example.org/{n}",
                "text": "",
            }
            for n, c, _ in SYNTHETIC
        ]
        corpus = [
            {
                "title": n,
                "url": f"https://example.org/{n}",
                "text": f"{n} is a country. Its flag has {c[0]} and {c[1]} stripes. The capital of {n} is {cap}.",
            }
            for n, c, cap in SYNTHETIC
        ]
        build_indexes(gallery, corpus, index_dir, embedder="pixel")
    return make_engines(EngineConfig(image="local", text="local", index_dir=str(index_dir)))


def _world_rows(split: str, seed: int) -> datasets.Dataset:
    from mmsearch_r1.data.questions import QuestionConfig, build_pool
    from mmsearch_r1.data.world.build import build_world

    pool = build_pool(build_world(), QuestionConfig(seed=seed))
    if split not in pool:
        raise KeyError(f"The world pool has splits {list(pool)}, not {split!r}; set dataset_split.")
    return pool[split]


def load_rows(
    spec: str, split: str = "train", *, max_rows: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Resolve a `TrainConfig.dataset` spec into row-schema questions (seeded subsample to ``max_rows``)."""
    report = None  # a parquet's bad-row report, named when no row is left
    if spec == "synthetic":
        ds = synthetic_rows(seed=seed)
    elif spec == "world":
        ds = _world_rows(split, seed)
    else:
        path = Path(spec)
        if path.suffix == ".parquet":
            from mmsearch_r1.data.schema import load_fvqa_parquet

            ds, report = load_fvqa_parquet(path, return_report=True)
        elif path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise KeyError(f"{path} holds splits {list(loaded)}, not {split!r}; set dataset_split.")
                loaded = loaded[split]
            ds = loaded
        else:
            raise FileNotFoundError(
                f"dataset {spec!r} is not 'world', 'synthetic', a save_to_disk folder or a .parquet file "
                "(build the world pool with notebooks/01_data.ipynb, or pass an existing path)."
            )
    missing = [c for c in ("image", "question", "answer") if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {spec!r} lacks the row-schema columns {missing}.")
    if max_rows is not None and max_rows < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_rows))
    if len(ds) == 0:
        why = f": every row is bad ({report})" if report is not None and report.n_bad else ""
        raise ValueError(f"dataset {spec!r} (split {split!r}) has no rows{why}.")
    return ds


def trl_prompt(question: str) -> list[dict]:
    """TRL's conversational VLM prompt of one question (the image block is filled from the row's image)."""
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": first_user_text(question)}]}
    ]


def to_trl_dataset(rows: datasets.Dataset) -> datasets.Dataset:
    """Add the ``prompt`` column; keep all row columns (``aliases`` defaults to an empty list)."""
    if "aliases" not in rows.column_names:
        rows = rows.add_column("aliases", [[] for _ in range(len(rows))])
    return rows.map(lambda r: {"prompt": trl_prompt(r["question"])})


def make_train_engines(config, run_dir: str | Path | None = None):
    """The search engines of a `TrainConfig` (``synthetic``: built under the run folder)."""
    from mmsearch_r1.tools.engines import EngineConfig, make_engines
    from mmsearch_r1.tools.types import Engines

    if config.engine == "none":
        return Engines()
    if config.engine == "synthetic":
        return synthetic_engines(Path(run_dir or config.run_dir) / "synthetic_index")
    from mmsearch_r1.tools.cache import CacheConfig

    kwargs = dict(
        image={"local": "local", "web": "web", "fvqa-cache": "fvqa-cache"}[config.engine],
        text="web" if config.engine in ("web", "fvqa-cache") else "local",
        cache=CacheConfig(path=config.cache_path, mode=config.cache_mode),
    )
    if config.index_dir:
        kwargs["index_dir"] = config.index_dir
    if config.engine == "local" and not config.index_dir:
        from mmsearch_r1.tools.engines import world_indexes

        world_indexes()  # builds data/world/index from the offline world when missing
    return make_engines(EngineConfig(**kwargs))
