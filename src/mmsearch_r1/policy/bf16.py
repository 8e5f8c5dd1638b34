"""bf16 generation on a CPU: the policy's weights in bf16, its attention in fp32.

What it does: `to_bf16_generation` turns a model into one that generates with native bf16 matmuls (twice
as fast as fp32 on CPUs that have them) while its attention runs PyTorch's ``scaled_dot_product_attention``
in fp32 (`sdpa_fp32`, registered with transformers as `ATTENTION`, with ``sdpa``'s padding masks): bf16
attention with a padding mask is slower than fp32 on these CPUs. GRPO's rollouts on a CPU come from such a
copy (`mmsearch_r1.rl.generation_copy`), and an evaluation can generate with it (`EvalConfig.bf16`).

What it does not: no training in bf16 (the loss's autocast is TRL's), nothing on a GPU (bf16 there is the
model's ``dtype``).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION = "mmsearch_sdpa_fp32"
"""The name transformers knows `sdpa_fp32` by."""


def sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' ``sdpa`` attention computed in fp32, its output cast back to the inputs' dtype.

    When decoding (one query token) with grouped key/value heads, the query heads of a group attend to
    their shared key/value head as rows of one product, instead of transformers' copying every cached
    key and value once per query head (``repeat_kv``, which it does whenever a padding mask is given):
    the same numbers without reading the cache three times per token."""
    dtype = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] == 1 and groups > 1 and kwargs.get("position_bias") is None:
        b, h, _, d = query.shape
        out = torch.nn.functional.scaled_dot_product_attention(
            query.float().reshape(b, h // groups, groups, d), key.float(), value.float(),
            attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"),
        )  # fmt: skip
        return out.reshape(b, h, 1, d).transpose(1, 2).to(dtype), None
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, **kwargs
    )
    return out.to(dtype), weights


AttentionInterface.register(ATTENTION, sdpa_fp32)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
"""transformers builds no padding or causal mask for an attention it has no mask function for, so the
attention is given ``sdpa``'s (without it, left-padded sequences of a batch read the padding)."""


def _contiguous_input(module, args):
    """Forward pre-hook: the first input made contiguous (see `to_bf16_generation`)."""
    return (args[0].contiguous(), *args[1:])


def to_bf16_generation(model):
    """``model`` in bf16, in eval mode, without gradients, with the `ATTENTION` attention (in place).

    Its LM head also gets a contiguous input: after the prompt's prefill, ``generate`` hands the head the
    last position of every row (``logits_to_keep=1``), a strided view, and PyTorch's ``matmul`` then falls
    back to a batched product that copies the vocabulary-sized weight once per row (0.86 s for 8 rows of
    the demo policy on 2 cores, once per ``generate`` call; a contiguous input takes milliseconds)."""
    model.to(torch.bfloat16).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.set_attn_implementation(ATTENTION)
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model
