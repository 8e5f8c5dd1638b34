"""A bf16 copy of the policy that generates GRPO's rollouts on a CPU with native bf16 matmuls.

What it does: TRL generates a step's rollouts with the training model itself (``transformers``
``generate``), in the training weights' dtype: fp32 on the CPU, where bf16 is only used by the loss's
autocast. Generation is then more than half of a CPU demo GRPO step, most of it re-reading the prompt and
earlier turns (TRL's tool loop has no cache across turns) and reading fp32 weights once per token.
`GenerationCopy` keeps a bf16 copy of the model with fp32 attention (`mmsearch_r1.policy.bf16`: the matmuls are
what bf16 speeds up), refreshes the parameters that train from the model before the first
generation of every optimizer step, and lends it to TRL's ``_generate_single_turn``
(`mmsearch_r1.rl.run_logging.TimedGRPOTrainer`). The loss, the optimizer and the fp32 weights are TRL's
and unchanged; the rollouts are sampled from bf16 arithmetic, as a vLLM or bf16 GPU sampler does, which
the loss already uses under autocast.

What it does not: no copy under vLLM, with PEFT adapters, or where bf16 matmuls are not native (`wanted`).
"""

from __future__ import annotations

import copy

import torch

from mmsearch_r1.policy.bf16 import to_bf16_generation


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
        self.model = to_bf16_generation(copy.deepcopy(model))
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
