"""The GRPO loss's language-model head on the policy's own completion tokens only (CPU).

What it does: TRL's ``GRPOTrainer`` scores completions with a fused, chunked LM head
(``trl.trainer.utils.add_fused_lm_head``: ``model(..., labels=..., fused_lm_head=True)`` returns per-token
log-probabilities and entropies). Off Triton devices (the CPU) that head projects *every* position of the
batch, prompt, image tokens and tool results included, and masks afterwards; with SmolLM2's 49k-word
vocabulary its forward and backward were about a third of a CPU demo GRPO step (docs/cpu_demo_settings.md).
`install_policy_token_head(trainer)` wraps the patched forward so that, when TRL asks for the fused head,
only the positions the loss reads are projected: completion tokens the policy wrote (TRL's ``tool_mask`` is
1 there; 0 on tool results), not padding, prompt or tool results. It returns the fields TRL reads
(``log_probs``, ``entropy``, ``label_mask``; zero where not projected), so the loss, the entropy metric and
the gradients are those of TRL's head on those positions (tested). `unpadded_rows` cuts the loss's padded
batch into one sequence per row without its padding, which `mmsearch_r1.rl.run_logging.TimedGRPOTrainer`
scores one at a time under the same setting (a direct answer no longer costs the forward of the longest
search trajectory in its micro-batch). TRL keeps everything else.

What it does not: no vocabulary chunking (the policy writes a few hundred tokens per micro-batch, so the
logits of those positions are small on CPU); nothing on CUDA, where TRL's Triton kernel already skips
unlabelled positions; no logit soft-capping or scaling (models that need them keep TRL's head).
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
from trl.trainer.utils import split_pixel_values_by_grid


def wanted(setting: str, device: torch.device | str) -> bool:
    """Whether the policy-token head is used: ``auto`` on CPU only, ``true``, ``false``."""
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"policy_token_head must be 'auto', 'true' or 'false', got {setting!r}")
    return setting == "true" or (setting == "auto" and torch.device(device).type == "cpu")


def _unsupported(model) -> str | None:
    text = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):  # fmt: skip
        if getattr(text, name, None) not in (None, 1, 1.0):
            return name
    return None


def install_policy_token_head(trainer) -> bool:
    """Wrap ``trainer.model``'s fused-head forward (see the module docstring); returns whether it did.

    The trainer must set ``trainer.policy_token_mask`` (the batch's ``tool_mask``, or None) around each
    loss computation (`mmsearch_r1.rl.run_logging.TimedGRPOTrainer` does)."""
    from trl.trainer.utils import FusedCausalLMOutput

    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if _unsupported(model):
        return False
    fused = model.forward  # TRL's patched forward: generation and other callers keep it
    temperature = float(trainer.temperature)

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head or labels is None or kwargs.get("shift_labels") is not None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        labels = labels[:, 1:]
        keep = labels != -100
        policy = getattr(trainer, "policy_token_mask", None)
        if policy is not None and policy.size(0) == keep.size(0) and policy.size(1) <= keep.size(1):
            keep[:, keep.size(1) - policy.size(1) :] &= policy.to(keep.device).bool()
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        logits = self.get_output_embeddings()(hidden[keep]).float() / temperature
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        zeros = torch.zeros(keep.shape, dtype=picked.dtype, device=picked.device)
        return FusedCausalLMOutput(
            loss=-picked.sum() / keep.sum().clamp(min=1),
            log_probs=zeros.masked_scatter(keep, picked),
            entropy=zeros.masked_scatter(keep, entropy),
            label_mask=keep,
        )

    model.forward = types.MethodType(forward, model)
    return True


#: Multimodal fields `unpadded_rows` knows how to cut per sequence (Qwen2.5-VL's); with any other field
#: present, TRL's padded batch is kept.
_ROW_FIELDS = {"pixel_values", "image_grid_thw", "num_images", "token_type_ids", "mm_token_type_ids"}


def unpadded_rows(input_ids, attention_mask, logits_to_keep: int, fields: dict):
    """The loss's batch cut into one sequence per row, without padding; None where a field is unknown.

    TRL pads a micro-batch to its longest sequence (prompts on the left, completions on the right) and the
    loss forward computes every padded position: a direct answer of 20 tokens costs as much as a search
    trajectory of 450. Each row here is ``(i, kwargs, keep)``: ``kwargs`` are the model inputs of row ``i``
    from its first to its last attended position (its images' ``pixel_values`` rows included), ``keep`` the
    number of its completion positions kept (at least 1). The caller scores each row and puts the
    row's ``keep`` log-probs back at the start of its completion; the trimmed positions are padding, which
    the loss masks. Written by hand: TRL chunks a batch (``batch_size``) but never trims it (its
    ``split_pixel_values_by_grid`` cuts the images per row).
    """
    present = {k for k, v in fields.items() if v is not None}
    if present - _ROW_FIELDS or ("pixel_values" in present) != ("image_grid_thw" in present):
        return None
    if "pixel_values" in present and "num_images" not in present:
        return None
    prompt_len = input_ids.size(1) - logits_to_keep
    if "pixel_values" in present:  # each row's pixel_values and image_grid_thw
        split = split_pixel_values_by_grid(
            {k: fields[k] for k in ("pixel_values", "image_grid_thw", "num_images")}
        )
    rows = []
    for i in range(input_ids.size(0)):
        attended = attention_mask[i].nonzero().flatten()
        left = int(attended[0]) if attended.numel() else prompt_len
        right = int(attended[-1]) + 1 if attended.numel() else prompt_len + 1
        keep = max(1, right - prompt_len)
        left, right = min(left, prompt_len - 1), prompt_len + keep
        kwargs = {
            "input_ids": input_ids[i : i + 1, left:right],
            "attention_mask": attention_mask[i : i + 1, left:right],
        }
        for name in ("token_type_ids", "mm_token_type_ids"):
            if name in present:
                kwargs[name] = fields[name][i : i + 1, left:right]
        if "pixel_values" in present:
            kwargs["num_images"] = [fields["num_images"][i]]
            if fields["num_images"][i]:  # a row without images passes none
                kwargs["pixel_values"] = split["pixel_values"][i]
                kwargs["image_grid_thw"] = split["image_grid_thw"][i]
        rows.append((i, kwargs, keep))
    return rows


@contextlib.contextmanager
def frozen_linears_cast_once(model, dtype: torch.dtype):
    """Within the block, every frozen fp32 ``nn.Linear`` of ``model`` holds a ``dtype`` copy of its weight
    and bias, made once on entry; on exit the fp32 parameters are back.

    Under autocast each matmul casts its fp32 weight to the autocast dtype, and it keeps the cast only for
    weights that train: the frozen layers' weights (and the tied vocabulary-sized LM head) are cast again
    on every forward, and `unpadded_rows` makes one forward per sequence. Inside autocast the copy gives
    the same numbers (the same rounding, done once); outside autocast such a layer refuses an fp32 input,
    so use it only around forwards that run under ``dtype`` autocast. Tied weights stay tied elsewhere: an
    embedding sharing the head's weight keeps reading fp32."""
    swapped = []
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module.weight.requires_grad:
            continue
        if module.weight.dtype != torch.float32:
            continue
        old = dict(module._parameters)
        for name, p in old.items():
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
        swapped.append((module, old))
    try:
        yield len(swapped)
    finally:
        for module, old in swapped:
            module._parameters.update(old)
