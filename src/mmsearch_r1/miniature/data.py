"""The miniature's world, questions, search index, policy and warm-start trajectories (the paper's Finding 5 on CPU).

What it does (a published CPU recipe for on-demand search, ported to this project's stack):
- `MiniatureConfig`: every setting of the miniature (data, model, warm start, GRPO, evaluation).
- `build_data(cfg)`: the offline world's countries with ASCII names (<= 24 chars) and capitals (<= 16,
  not contained in the name), shuffled (seeded) into KNOWN and UNKNOWN halves, each split into RL-train
  and held-out test entities. One ``capital_of`` question per entity ("What is the capital city of X?")
  in the row schema; the row image is the entity's flag shrunk to 28x28 (one vision token); category
  ``search_free`` for known, ``search_required`` for unknown. Saved as a ``save_to_disk`` DatasetDict
  (``TrainConfig.dataset``) with splits ``rl_balanced`` (all known-train + all unknown-train),
  ``rl_unbalanced`` (``unbalanced_known`` known-train + all unknown-train), ``train`` and ``test``.
  (A folder rather than a parquet file: it keeps the splits and the extra columns ``entity``, ``known``,
  ``split`` together, and `mmsearch_r1.rl.data.load_rows` reads it with ``dataset_split``.)
- The search index (`mmsearch_r1.tools.local`, BM25): one fact sentence "The capital of X is Y." per real
  entity plus one per SYNTHETIC entity (names and capitals sampled from character-trigram models of the
  real ones): the synthetic facts are the warm start's copy exercises and the real run's distractors.
  A pixel-embedded flag gallery completes the folder so that ``TrainConfig(engine="local",
  index_dir=...)`` loads it, but the miniature gives no image-search budget (the question names the
  country: an image search cannot help, and a budget of 0 keeps each rollout at <= 2 turns).
- `build_policy(cfg)`: a from-scratch ``Qwen2_5_VLForConditionalGeneration`` (`mmsearch_r1.policy.tiny`'s config,
  hidden 128, 4 layers, FFN 512) with the tiny byte-level tokenizer (no merges, so names are copied
  byte by byte) plus ADDED tokens for every constant string of the protocol (system prompt, the
  first-turn instructions of `mmsearch_r1.protocol.prompts`, the tags, the reasons, the constant parts of a
  text-search observation). The chat template is the project's tag template, unchanged; a whole search
  trajectory is 100-230 tokens (the constant text alone is ~1,000 characters, one token per byte without them).
- `sft_examples(...)`: warm-start trajectories rendered exactly as TRL builds them at RL time (prompt ids
  of `mmsearch_r1.agent.conversation`, generated-turn ids, the tool suffix of a real `SearchEnv` observation),
  with a loss mask: KNOWN = direct answers and search->answer (all assistant tokens); UNKNOWN =
  search->answer with the capital after the search MASKED (not memorised) + a few wrong direct guesses;
  SYNTHETIC = search->answer at full loss (the copy skill).

What it does not: no training loop or evaluation (`mmsearch_r1.miniature.run`), no new protocol.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
from PIL import Image

from mmsearch_r1.protocol import prompts
from mmsearch_r1.protocol.tags import render_turn
from mmsearch_r1.tools.types import TextHit

QUESTION = "What is the capital city of {name}?"
"""The world's ``capital_of`` template (`mmsearch_r1.data.questions.TEMPLATES`)."""
REASON_KNOWN = "I know the answer."
REASON_SEARCH = "I do not know it, so I search."
REASON_FOUND = "The search result gives it."
FACT = "The capital of {name} is {capital}."


@dataclass
class MiniatureConfig:
    """Every setting of the miniature (defaults: the reference study's recipe)."""

    root: str = "data/generated/miniature"
    """Folder of the questions (``questions/``), the index (``index/``) and the warm-started policy (``sft/``)."""
    runs_dir: str = "runs"
    """Runs go to ``<runs_dir>/miniature_<name>/``; the summary to ``<runs_dir>/miniature/``."""
    seed: int = 0
    """Seed of the entity splits, synthetic names, warm-start data/weights and GRPO."""
    train_fraction: float = 0.6
    """Share of each (KNOWN / UNKNOWN) half used as RL-train entities; the rest is held-out test."""
    unbalanced_known: int = 10
    """KNOWN entities in the unbalanced RL set (the reference: 10 known / 61 unknown = 14%)."""
    n_synthetic: int = 6000
    """Synthetic (trigram) entities: copy exercises in the warm start, distractor facts in the index."""
    hidden_size: int = 128
    """Hidden size of the from-scratch language model."""
    layers: int = 4
    """Decoder layers."""
    ffn_size: int = 512
    """MLP width."""
    known_direct: int = 20
    """Warm start: direct-answer trajectories per KNOWN entity."""
    known_search: int = 14
    """Warm start: search->answer trajectories per KNOWN entity (full loss)."""
    unknown_search: int = 9
    """Warm start: search->answer trajectories per UNKNOWN entity (the capital after the search masked)."""
    unknown_wrong: int = 3
    """Warm start: wrong direct guesses (another capital) per UNKNOWN entity."""
    sft_steps: int = 1500
    """Warm-start optimizer steps."""
    sft_batch: int = 32
    """Warm-start batch size."""
    sft_lr: float = 2e-3
    """Warm-start peak learning rate (AdamW, betas 0.9/0.98, 5% warm-up, cosine to 10%)."""
    grpo_steps: int = 200
    """GRPO steps of the balanced runs (p=0.1 reached 0.25 / 0.88 search ratio on search-free /
    search-required questions after 100 steps, and 0.10 / 0.97 after 200)."""
    unbalanced_steps: int = 100
    """GRPO steps of the unbalanced run (the reference's 100; it measured SR ~1.0 there)."""
    grpo_lr: float = 1e-4
    """GRPO learning rate (constant)."""
    prompts_per_step: int = 8
    """Questions per GRPO step (each with ``num_generations`` rollouts)."""
    num_generations: int = 8
    """Rollouts per question."""
    text_k: int = 1
    """Text-search hits shown to the policy."""
    max_completion_length: int = 160
    """Tokens of a whole rollout after the prompt (both turns and the observation)."""
    penalties: tuple[float, ...] = (0.1, 0.0, 0.3)
    """Penalties of the balanced runs (0.1 and 0 are Finding 5's; the others draw the frontier). Each
    extra one costs ~8-10 min of CPU: ``--penalties 0.1 0 0.05 0.2 0.3`` draws a denser frontier."""
    eval_samples: int = 4
    """Sampled (T=1) on-demand rollouts per question in the evaluation (0: greedy only)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def questions_dir(self) -> Path:
        return Path(self.root) / "questions"

    @property
    def index_dir(self) -> Path:
        return Path(self.root) / "index"

    @property
    def sft_dir(self) -> Path:
        return Path(self.root) / "sft"


# -- entities and questions ---------------------------------------------------------------------------


def world_pairs() -> list[dict]:
    """The world's countries usable here: ``{id, name, capital, aliases, flag}`` (filters in the module doc)."""
    from mmsearch_r1.data.world.build import build_world

    world = build_world()
    out = []
    for e in world.entities:
        name, cap = e.name, e.facts["capital"]
        if not (name.isascii() and cap.isascii() and len(name) <= 24 and len(cap) <= 16):
            continue
        if cap.lower() in name.lower() or "flag" not in e.images:
            continue
        aliases = [a for a in e.facts.get("capital_aliases", []) if a.isascii()]
        out.append(
            {"id": e.id, "name": name, "capital": cap, "aliases": aliases, "flag": world.image(e.id, "flag")}
        )
    return out


class Trigram:
    """A character-trigram model of strings (sampling made-up names that look like the real ones)."""

    def __init__(self, words: list[str]):
        self.next: dict[str, list[str]] = defaultdict(list)
        for w in words:
            s = "^^" + w + "$"
            for i in range(len(s) - 2):
                self.next[s[i : i + 2]].append(s[i + 2])

    def sample(self, rng: random.Random, max_len: int = 16) -> str:
        s = "^^"
        while len(s) < max_len + 2:
            c = rng.choice(self.next[s[-2:]])
            if c == "$":
                break
            s += c
        return s[2:]


def synthetic_pairs(real: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` made-up (name, capital) pairs from trigram models of the real ones.

    Names are unique as BM25 sees them (their word sets), so the query "capital of X" finds X's fact."""
    from mmsearch_r1.tools.local import tokenize

    rng = random.Random(seed + 1)
    names, caps = Trigram([p["name"] for p in real]), Trigram([p["capital"] for p in real])
    taken = {tuple(sorted(tokenize(p["name"]))) for p in real}  # what BM25 sees of a name
    out: list[dict] = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            break
        name, cap = names.sample(rng, 24).strip(), caps.sample(rng, 16).strip()
        key = tuple(sorted(tokenize(name)))
        if len(name) < 3 or len(cap) < 3 or not key or key in taken or cap.lower() in name.lower():
            continue
        taken.add(key)
        out.append({"id": f"synthetic/{len(out)}", "name": name, "capital": cap, "aliases": []})
    if len(out) < n:
        raise ValueError(
            f"drew only {len(out)} of {n} new names from a trigram model of {len(real)} real ones: "
            "too few (or too alike) real names; ask for fewer or give more"
        )
    return out


def tiny_flag(image: Image.Image) -> Image.Image:
    """The flag shrunk to 28x28 pixels: one Qwen2.5-VL vision token."""
    return image.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR)


def noise_flag(rng: random.Random) -> Image.Image:
    """A random two-colour 28x28 'flag' for synthetic entities."""
    im = Image.new("RGB", (28, 28), tuple(rng.randrange(256) for _ in range(3)))
    im.paste(tuple(rng.randrange(256) for _ in range(3)), (0, 14, 28, 28))
    return im


def _row(p: dict, known: bool, split: str) -> dict:
    return {
        "data_id": f"miniature/capital_of/{p['id']}",
        "image": tiny_flag(p["flag"]),
        "question": QUESTION.format(name=p["name"]),
        "answer": p["capital"],
        "aliases": p["aliases"],
        "category": "search_free" if known else "search_required",
        "kind": "text_only",
        "source": "miniature",
        "entity": p["name"],
        "known": known,
        "split": split,
    }


EXTRA = {
    "entity": datasets.Value("string"),
    "known": datasets.Value("bool"),
    "split": datasets.Value("string"),
}


@dataclass
class MiniData:
    """The built data: question splits, the entities by group, and where they are saved."""

    splits: datasets.DatasetDict
    known: list[dict]
    unknown: list[dict]
    synthetic: list[dict]


def split_entities(pairs: list[dict], cfg: MiniatureConfig) -> tuple[list[tuple[dict, bool, str]], int]:
    """Seeded KNOWN/UNKNOWN halves, each cut into RL-train / test: ``[(pair, known, split)]``, n_train."""
    order = sorted(pairs, key=lambda p: p["id"])
    random.Random(cfg.seed).shuffle(order)
    half = len(order) // 2
    n_train = round(half * cfg.train_fraction)
    out = []
    for known, group in ((True, order[:half]), (False, order[half : 2 * half])):
        out += [(p, known, "train" if i < n_train else "test") for i, p in enumerate(group)]
    return out, n_train


def build_data(cfg: MiniatureConfig, *, pairs: list[dict] | None = None) -> MiniData:
    """Questions (saved to ``cfg.questions_dir``) and the search index (``cfg.index_dir``)."""
    from mmsearch_r1.data.schema import rows_to_dataset
    from mmsearch_r1.tools.engines import build_indexes

    pairs = pairs if pairs is not None else world_pairs()
    assigned, _ = split_entities(pairs, cfg)
    rows = [_row(p, known, split) for p, known, split in assigned]
    train = [r for r in rows if r["split"] == "train"]
    known_train = [r for r in train if r["known"]]
    unbalanced = known_train[: cfg.unbalanced_known] + [r for r in train if not r["known"]]
    splits = datasets.DatasetDict(
        {
            "rl_balanced": rows_to_dataset(train, EXTRA),
            "rl_unbalanced": rows_to_dataset(unbalanced, EXTRA),
            "train": rows_to_dataset(train, EXTRA),
            "test": rows_to_dataset([r for r in rows if r["split"] == "test"], EXTRA),
        }
    )
    splits.save_to_disk(str(cfg.questions_dir))
    synthetic = synthetic_pairs(pairs, cfg.n_synthetic, cfg.seed)
    corpus = [
        {"title": p["name"], "url": f"world://{p['id']}/facts", "text": FACT.format(**p)}
        for p in pairs + synthetic
    ]
    gallery = [{"image": tiny_flag(p["flag"]), "title": f"Flag of {p['name']}", "url": f"world://{p['id']}/flag",
                "text": ""} for p in pairs]  # fmt: skip
    build_indexes(gallery, corpus, cfg.index_dir, embedder="pixel")
    return MiniData(
        splits,
        [p for p, known, _ in assigned if known],
        [p for p, known, _ in assigned if not known],
        synthetic,
    )


# -- tokenizer and policy ---------------------------------------------------------------------------


def protocol_tokens() -> list[str]:
    """Constant strings of the conversation, each made one added token (longest first)."""
    sentinel = "\x00"
    first = prompts.first_user_text(sentinel).split(sentinel)[0]
    obs = prompts.text_results_text([TextHit("\x01", "", "\x02")], "\x03", "\x04", allowed=("answer",))
    pieces = [p for chunk in obs.split("\x01") for q in chunk.split("\x02") for r in q.split("\x03")
              for p in r.split("\x04")]  # fmt: skip
    fixed = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", first, QUESTION.split("{")[0],
             "<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
             REASON_KNOWN, REASON_SEARCH, REASON_FOUND, "capital of ", FACT.split("{")[0]]  # fmt: skip
    out = list(dict.fromkeys(fixed + [p for p in pieces if len(p) >= 4]))
    return sorted(out, key=len, reverse=True)


def build_policy(cfg: MiniatureConfig, save_dir: str | Path | None = None):
    """``(model, processor)``: the from-scratch Qwen2.5-VL of the miniature (saved to ``save_dir`` if given)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mmsearch_r1.policy.processor import ImageSizes, build_processor
    from mmsearch_r1.policy.tiny import build_tiny_tokenizer, tiny_config

    tokenizer = build_tiny_tokenizer(vocab_size=256)  # bytes only: names are copied byte by byte
    tokenizer.add_tokens(protocol_tokens())
    sizes = ImageSizes(min_pixels=28 * 28, max_pixels=28 * 28, thumbnail_max_pixels=28 * 28)
    processor = build_processor(tokenizer, sizes)
    config = tiny_config(tokenizer, hidden_size=cfg.hidden_size, layers=cfg.layers, vision_depth=1)
    config.text_config.intermediate_size = cfg.ffn_size
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    if save_dir is not None:
        save_policy(model, processor, save_dir)
    return model, processor


def save_policy(model, processor, save_dir: str | Path) -> Path:
    """Save model and processor so that `mmsearch_r1.policy.load.load_policy(save_dir)` reloads them."""
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    model.name_or_path = model.config._name_or_path = str(save_dir)
    return save_dir


# -- warm-start trajectories -------------------------------------------------------------------------


@dataclass
class Example:
    """One warm-start trajectory: ids (TRL's layout), a loss mask, and its image."""

    ids: list[int]
    mask: list[int]
    image: Image.Image
    group: str


class _Renderer:
    """Builds trajectories exactly as TRL does at RL time (prompt + turn + tool suffix + turn)."""

    def __init__(self, processor, env_factory):
        from mmsearch_r1.agent.conversation import prompt_ids

        self.processor, self.env_factory, self.prompt_ids = processor, env_factory, prompt_ids
        self.tok = processor.tokenizer
        self.ans_open = self.tok.convert_tokens_to_ids("<answer>")
        self._prompts: dict[str, list[int]] = {}

    def turn(self, text: str) -> list[int]:
        return self.tok.encode(text + self.tok.eos_token, add_special_tokens=False)

    def prompt(self, row: dict) -> list[int]:
        key = row["question"]
        if key not in self._prompts:
            self._prompts[key] = self.prompt_ids(self.processor, row)
        return self._prompts[key]

    def direct(self, row: dict, answer: str, group: str) -> Example:
        p, t = self.prompt(row), self.turn(render_turn("answer", REASON_KNOWN, answer=answer))
        return Example(p + t, [0] * len(p) + [1] * len(t), row["image"], group)

    def search(self, row: dict, name: str, answer: str, group: str, *, mask_answer: bool) -> Example:
        from mmsearch_r1.agent.conversation import tool_suffix_ids

        env = self.env_factory()
        env.reset(**row)
        query = f"capital of {name}"
        obs = env.text_search(query)
        p = self.prompt(row)
        t1 = self.turn(render_turn("text_search", REASON_SEARCH, query=query))
        suffix = tool_suffix_ids(self.processor, [{"role": "tool", "name": "text_search", "content": obs}])
        t2 = self.turn(render_turn("answer", REASON_FOUND, answer=answer))
        m2 = [1] * len(t2)
        if mask_answer:  # the capital's ids between <answer> and </answer>
            start = t2.index(self.ans_open) + 1
            m2[start : len(t2) - 2] = [0] * (len(t2) - 2 - start)
        ids = p + t1 + suffix + t2
        return Example(ids, [0] * len(p) + [1] * len(t1) + [0] * len(suffix) + m2, row["image"], group)


def sft_examples(data: MiniData, cfg: MiniatureConfig, processor, env_factory) -> list[Example]:
    """The warm-start set (see the module docstring), shuffled."""
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed + 2)
    r = _Renderer(processor, env_factory)
    caps = [p["capital"] for p in data.known + data.unknown]
    out: list[Example] = []
    for p in tqdm(data.known + data.unknown + data.synthetic, desc="warm-start trajectories", leave=False):
        group = "known" if p in data.known else "unknown" if "flag" in p else "synthetic"
        image = tiny_flag(p["flag"]) if "flag" in p else noise_flag(rng)
        row = {"question": QUESTION.format(name=p["name"]), "image": image, "answer": p["capital"]}
        if group == "known":
            out += [r.direct(row, p["capital"], group)] * cfg.known_direct
            out += [r.search(row, p["name"], p["capital"], group, mask_answer=False)] * cfg.known_search
        elif group == "unknown":
            out += [r.search(row, p["name"], p["capital"], group, mask_answer=True)] * cfg.unknown_search
            wrong = [c for c in caps if c != p["capital"]]
            out += [r.direct(row, rng.choice(wrong), group) for _ in range(cfg.unknown_wrong)]
        else:
            out.append(r.search(row, p["name"], p["capital"], group, mask_answer=False))
    rng.shuffle(out)
    return out
