"""The `tiny` policy: a randomly initialised Qwen2.5-VL with a locally built tokenizer, for tests.

What it does: `build_tiny_tokenizer` makes a byte-level BPE tokenizer with the ``tokenizers`` library
(merges trained on a small built-in text list of protocol text, so a tag costs a few tokens rather than
one per byte; every string still round-trips exactly) plus Qwen2.5-VL's special tokens (``<|im_start|>``,
``<|im_end|>`` = eos, ``<|endoftext|>`` = pad, the vision tokens) and ``<tool_call>``/``</tool_call>``.
`build_tiny_policy` builds a ``Qwen2_5_VLForConditionalGeneration`` from a small config whose special
token ids match that tokenizer, and the processor (`mmsearch_r1.policy.processor`) with the tag protocol
installed. With ``save_dir`` the model and processor are saved there and the model's ``name_or_path``
points to it, so TRL can build a reference model from the path (``beta > 0`` without PEFT), and
`load_tiny_policy` reloads both exactly. `overfit` teaches a (tiny) policy scripted conversations with
plain torch (assistant tokens only), so tests can drive TRL's loop with a policy that calls the tools.

What it does not: no pretrained weights, no knowledge; the CPU demo policy lives in `mmsearch_r1.policy.demo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mmsearch_r1.policy.processor import ImageSizes, build_processor, load_processor
from mmsearch_r1.protocol.chat_template import assistant_token_mask

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""Qwen2.5-VL's special tokens, in its order (ids follow the BPE vocabulary here)."""
EXTRA_TOKENS = ["<tool_call>", "</tool_call>"]
"""Added (non-special) tokens of Qwen2.5-VL used by the native JSON tool-call protocol."""
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
"""Tokens a tiny random model must never sample (pass their ids as ``suppress_tokens``)."""

DEFAULT_TRAIN_TEXTS = [
    "system\nYou are a helpful assistant.",
    "<reason>The image shows a flag I do not recognise, so I search the image.</reason><search><img></search>",
    "<reason>I need a fact about this entity.</reason><text_search>capital of France</text_search>",
    "<reason>The results name the country.</reason><answer>Paris</answer>",
    "<information>[Image Search Results]\n1. Flag of France - Wikipedia\n2. Tabby cat - Wikipedia</information>",
    "<information>[Text Search Results] population area language currency</information>",
    "Question: What is the capital of the country whose flag is shown? Answer the question.",
    "Next: answer, or search by text if you still need information.",
    '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>',
    "the of and to in is was for on with as by at from that which this it an be are",
    "What animal is this? A cat. What country is this flag from? Which city? How many people?",
]
"""Text the tiny tokenizer's merges are trained on (protocol tags and common words)."""


def build_tiny_tokenizer(
    vocab_size: int = 512, train_texts: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2.5-VL's special tokens (eos ``<|im_end|>``, pad ``<|endoftext|>``).

    ``vocab_size`` bounds the learned vocabulary (bytes + merges); the special and extra tokens are added
    after it. Training is deterministic for the same texts. Padding side is left, as TRL generates.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(train_texts or DEFAULT_TRAIN_TEXTS) * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(EXTRA_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a randomly initialised Qwen2.5-VL (language model and vision tower)."""

    hidden_size: int = 64
    """Language-model width."""
    layers: int = 2
    """Language-model decoder layers."""
    heads: int = 4
    """Attention heads of the language model."""
    kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int | None = None
    """MLP width (None: 2 * hidden_size)."""
    vision_depth: int = 2
    """Vision-tower blocks."""
    vision_hidden: int = 32
    """Vision-tower width."""
    vision_heads: int = 2
    """Vision-tower attention heads."""
    vision_intermediate: int = 64
    """Vision-tower MLP width."""


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(),
    # Qwen2.5-0.5B's decoder (width, depth, heads, MLP) under a quarter of Qwen2.5-VL's vision tower (8 of
    # its 32 blocks at full width). The vocabulary is the tiny tokenizer's, so Qwen's 136M-parameter
    # embedding and 151,936-way output layer are not part of it.
    "qwen-0.5b": ModelShape(hidden_size=896, layers=24, heads=14, kv_heads=2, intermediate_size=4864,
                            vision_depth=8, vision_hidden=1280, vision_heads=16, vision_intermediate=3420),
}  # fmt: skip
"""Named shapes: ``tiny`` (tests) and ``qwen-0.5b`` (speed and memory profiles on a GPU)."""


def tiny_config(
    tokenizer,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    shape: ModelShape | None = None,
) -> Qwen2_5_VLConfig:
    """A small ``Qwen2_5_VLConfig`` whose special token ids come from ``tokenizer``.

    ``shape`` gives every size; without it the tiny shape with ``hidden_size``/``layers``/``vision_depth``.
    """
    shape = shape or ModelShape(hidden_size=hidden_size, layers=layers, vision_depth=vision_depth)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    half_head = shape.hidden_size // shape.heads // 2
    section = [half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]  # temporal, height, width
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size or shape.hidden_size * 2,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        "bos_token_id": None,  # like Qwen's tokenizer: no BOS is prepended
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    depth = shape.vision_depth
    vision_config = {
        "depth": depth,
        "hidden_size": shape.vision_hidden,
        "intermediate_size": shape.vision_intermediate,
        "num_heads": shape.vision_heads,
        "out_hidden_size": shape.hidden_size,
        "fullatt_block_indexes": sorted({min(i, depth - 1) for i in range(3, depth, 4)} | {depth - 1}),
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def vision_token_ids(processor) -> list[int]:
    """Ids of the vision tokens (for ``GRPOConfig(generation_kwargs={"suppress_tokens": ...})``)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]


def build_tiny_policy(
    save_dir: str | Path | None = None,
    seed: int = 0,
    *,
    sizes: ImageSizes | None = None,
    protocol: str = "tags",
    hidden_size: int = 64,
    layers: int = 2,
    shape: ModelShape | str | None = None,
):
    """Build ``(model, processor)``: a tiny random Qwen2.5-VL and its processor with ``protocol`` installed.

    ``seed`` fixes the weights. ``sizes`` sets the image pixel bounds (default: tiny images, 4 to 64 tokens
    per question image, thumbnails up to 16). ``shape`` (a `ModelShape` or a name in `SHAPES`) replaces
    ``hidden_size``/``layers`` with every size. With ``save_dir`` both are saved there and
    ``model.name_or_path`` is that path (what TRL needs to build a reference model).
    """
    sizes = sizes or ImageSizes(
        min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64, thumbnail_max_pixels=28 * 28 * 16
    )
    tokenizer = build_tiny_tokenizer()
    processor = build_processor(tokenizer, sizes, protocol=protocol)
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    config = tiny_config(tokenizer, hidden_size=hidden_size, layers=layers, shape=shape)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.eval()
    if save_dir is not None:
        save_dir = Path(save_dir)
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
        model.name_or_path = str(save_dir)
        model.config._name_or_path = str(save_dir)
    return model, processor


def load_tiny_policy(path: str | Path, *, protocol: str = "tags"):
    """Reload ``(model, processor)`` saved by `build_tiny_policy` (exact weights; protocol re-installed)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model, load_processor(path, protocol=protocol)


def overfit(
    model,
    processor,
    conversations: list[list[dict]],
    steps: int = 60,
    *,
    lr: float = 3e-3,
    stop_below: float | None = None,
) -> float:
    """Overfit ``model`` on ``conversations`` (chat messages) with AdamW; return the last step's loss.

    Each step is one conversation (in turn); the loss covers the assistant tokens only
    (`assistant_token_mask`: tool results and prompts are masked). With ``stop_below`` training stops
    once every conversation's latest loss is below it. For tests and demos on tiny policies: no
    batching, no scheduler, no checkpoints (the warm start uses TRL's SFTTrainer).
    """
    if not conversations:
        raise ValueError("overfit needs at least one conversation.")
    batches = []
    for msgs in conversations:
        enc = processor.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt")
        mask = torch.tensor([assistant_token_mask(enc["input_ids"][0], processor)])
        batches.append((enc, enc["input_ids"].masked_fill(mask == 0, -100)))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    latest = [float("inf")] * len(batches)
    loss = float("nan")
    try:
        for step in range(steps):
            enc, labels = batches[step % len(batches)]
            out = model(**enc, labels=labels).loss
            out.backward()
            opt.step()
            opt.zero_grad()
            loss = latest[step % len(batches)] = out.item()
            if stop_below is not None and max(latest) < stop_below:
                break
    finally:
        model.eval()
    return loss
