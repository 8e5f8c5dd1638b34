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

The copy also prefills each distinct row of a batch once (`shared_prompt_generate`): GRPO samples each
prompt ``num_generations`` times, and ``generate`` would read the same prompt, image included, once per
rollout.

What it does not: no copy under vLLM, with PEFT adapters, or where bf16 matmuls are not native (`wanted`);
no cache kept from one turn of the tool loop to the next (TRL's loop prefills each turn's whole
conversation again).
"""

from __future__ import annotations

import copy
import functools

import torch
from trl.trainer.utils import split_pixel_values_by_grid

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
        self.model.generate = functools.partial(shared_prompt_generate, self.model, self.model.generate)
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


_SHARABLE = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
"""The inputs `shared_prompt_generate` can cut per row (Qwen2.5-VL's); with any other, it generates as is."""


def _per_row_images(model, inputs: dict) -> list | None:
    """Each row's ``(image_grid_thw, pixel_values)`` (``(None, None)`` for every row of a batch without
    images), cut by TRL's ``split_pixel_values_by_grid`` with each row's image count read from its
    ``vision_start_token_id`` tokens; None where there is no such token id or no grid."""
    ids = inputs["input_ids"]
    if inputs.get("pixel_values") is None:
        return [(None, None)] * ids.size(0)
    start = getattr(model.config, "vision_start_token_id", None)
    if start is None or inputs.get("image_grid_thw") is None:
        return None
    counts = (ids == start).sum(1).tolist()
    split = split_pixel_values_by_grid({"pixel_values": inputs["pixel_values"],
                                        "image_grid_thw": inputs["image_grid_thw"], "num_images": counts})  # fmt: skip
    return list(zip(split["image_grid_thw"], split["pixel_values"], strict=True))


def _shared_rows(inputs: dict, images: list) -> tuple[list[int], list[int]] | None:
    """``(unique, index)``: the rows to prefill and, for every row, the one of them it repeats (same
    tokens, padding and images, ``images`` from `_per_row_images`); None when no row repeats another."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]

    def same(a: int, b: int) -> bool:
        if not (torch.equal(ids[a], ids[b]) and torch.equal(mask[a], mask[b])):
            return False
        (ta, pa), (tb, pb) = images[a], images[b]
        return ta is None or (torch.equal(ta, tb) and torch.equal(pa, pb))

    unique, index = [], []
    for row in range(ids.size(0)):
        match = next((k for k, u in enumerate(unique) if same(u, row)), None)
        if match is None:
            unique.append(row)
            match = len(unique) - 1
        index.append(match)
    return None if len(unique) == ids.size(0) else (unique, index)


def shared_prompt_generate(model, generate, **inputs):
    """``generate(**inputs)``, with each distinct row prefilled once.

    GRPO's first turn repeats every prompt over its rollouts, and a peaked policy often writes the same
    first turn in several rollouts, so later turns repeat rows too. The distinct rows are prefilled (all
    their tokens but the last, through ``generate`` itself, so positions and image features are those
    ``generate`` computes), every row takes the cache of the row it repeats, and ``generate`` continues
    the whole batch from there: the same tokens (tested), each distinct row read once. Anything else
    (all rows distinct, inputs it does not know, a cache given) goes to ``generate`` unchanged. Written
    by hand: ``generate`` shares nothing across rows."""
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if ids is None or mask is None or ids.size(1) < 2 or set(tensors) - _SHARABLE:
        return generate(**inputs)
    if inputs.get("past_key_values") is not None:
        return generate(**inputs)
    images = _per_row_images(model, tensors)
    shared = None if images is None else _shared_rows(tensors, images)
    if shared is None:
        return generate(**inputs)
    unique, index = shared
    first = {
        k: tensors[k][unique] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in tensors
    }
    if tensors.get("pixel_values") is not None:
        first["image_grid_thw"] = torch.cat([images[u][0] for u in unique])
        first["pixel_values"] = torch.cat([images[u][1] for u in unique])
    kwargs = {k: v for k, v in inputs.items() if k not in _SHARABLE and k != "generation_config"}
    config = copy.deepcopy(inputs.get("generation_config") or model.generation_config)
    other = config.update(**kwargs)  # the caller's settings, then only the prefill
    config.update(max_new_tokens=1, min_new_tokens=0, do_sample=False, return_dict_in_generate=True)
    prefix = {k: (v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
              for k, v in first.items()}  # fmt: skip
    cache = generate(**prefix, generation_config=config, **other).past_key_values
    if not hasattr(cache, "batch_select_indices"):
        return generate(**inputs)
    rows = torch.tensor(index, device=ids.device)
    cache.batch_select_indices(rows)  # each row continues from the prefill of the row it repeats
    inner = getattr(model, "model", None)
    if getattr(inner, "rope_deltas", None) is not None:  # Qwen-VL's multimodal position offsets
        inner.rope_deltas = inner.rope_deltas[rows]
    rest = {k: v for k, v in inputs.items() if k not in _SHARABLE}
    return generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **rest)
