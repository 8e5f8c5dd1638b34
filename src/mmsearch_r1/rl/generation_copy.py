"""A bf16 copy of the policy that generates GRPO's rollouts on a CPU with native bf16 matmuls.

What it does: TRL generates a step's rollouts with the training model itself (``transformers``
``generate``), in the training weights' dtype: fp32 on the CPU, where bf16 is only used by the loss's
autocast. Generation is then more than half of a CPU demo GRPO step, most of it re-reading the prompt and
earlier turns (TRL's tool loop has no cache across turns) and reading fp32 weights once per token.
`GenerationCopy` keeps a bf16 copy of the model whose attention runs PyTorch's ``scaled_dot_product_attention``
in fp32 (`sdpa_fp32`, registered with transformers' ``AttentionInterface``: bf16 attention with a padding
mask is slower than fp32 on these CPUs, and the matmuls are what bf16 speeds up), refreshes the parameters that train from the model before the first
generation of every optimizer step, and lends it to TRL's ``_generate_single_turn``
(`mmsearch_r1.rl.run_logging.TimedGRPOTrainer`). The loss, the optimizer and the fp32 weights are TRL's
and unchanged; the rollouts are sampled from bf16 arithmetic, as a vLLM or bf16 GPU sampler does, which
the loss already uses under autocast.

What it does not: no copy under vLLM, with PEFT adapters, or where bf16 matmuls are not native (`wanted`).
"""

from __future__ import annotations

import copy

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION = "mmsearch_sdpa_fp32"
"""The attention implementation of the copy (`sdpa_fp32`)."""


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
copy's attention is given ``sdpa``'s (without it, left-padded sequences of a batch read the padding)."""


def wanted(setting: str, *, device, use_vllm: bool, peft: bool) -> bool:
    """Whether rollouts come from a bf16 copy: ``auto`` on a CPU with native bf16 matmuls
    (`rl.grpo_args.fast_bf16`) without vLLM or PEFT, ``true`` (CPU or GPU), ``false``."""
    from mmsearch_r1.rl.grpo_args import fast_bf16

    if setting not in ("auto", "true", "false"):
        raise ValueError(f"generation_copy must be 'auto', 'true' or 'false', got {setting!r}")
    if setting == "false" or use_vllm or peft:
        return False
    return setting == "true" or (torch.device(device).type == "cpu" and fast_bf16())


class GenerationCopy:
    """The bf16 generating copy of ``model`` (made before TRL patches the model's forward)."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).to(torch.bfloat16).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.set_attn_implementation(ATTENTION)
        self.step = None

    def refresh(self, source, step: int) -> None:
        """Copy ``source``'s trainable parameters into the copy, once per optimizer ``step``."""
        if step == self.step:
            return
        mine = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in source.named_parameters():
                if (
                    p.requires_grad or self.step is None
                ):  # everything once (a resumed checkpoint), then what trains
                    mine[name].copy_(p.detach())
        self.step = step
