"""Batched next-turn generation over token-id requests: HF ``generate`` (CPU/GPU) or vLLM (GPU).

What it does: a generator maps a batch of requests (the token ids so far and the images they reference,
in order) to the ids of the next assistant turn, cut after the end-of-turn token, exactly as TRL's
``_generate_single_turn`` does: `HFGenerator` left-pads the batch, runs the image processor on every
image of the batch, builds ``mm_token_type_ids`` from the ``<|image_pad|>`` positions and calls
``model.generate``; `VLLMGenerator` sends ``{"prompt_token_ids", "multi_modal_data"}`` rows as TRL's
vLLM path does (``vllm`` is imported only when it is built).

What it does not: no parsing, no tools, no chat template (`mmsearch_r1.agent.rollout`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmsearch_r1.agent.rollout_config import RolloutConfig

Request = tuple[list[int], list]
"""One generation request: the token ids so far and the images they reference, in order."""
Generator = Callable[[Sequence[Request]], list[list[int]]]
"""Maps requests to the new turn's token ids (ending with the end-of-turn token when it stopped)."""


class HFGenerator:
    """Batched ``model.generate`` over token-id requests with images (left padding; CPU or GPU)."""

    def __init__(self, model, processor, config: RolloutConfig | None = None, *, suppress_tokens=None):
        """``suppress_tokens``: ids never sampled; None (default) means the processor's vision placeholder
        tokens (`vision_ids`), as training suppresses them; ``()`` suppresses nothing."""
        self.model, self.processor = model, processor
        self.config = config or RolloutConfig()
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.suppress_tokens = list(vision_ids(processor) if suppress_tokens is None else suppress_tokens)
        self.image_pad_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def __call__(self, requests: Sequence[Request]) -> list[list[int]]:
        cfg, tok = self.config, self.tokenizer
        pad, eos = tok.pad_token_id, tok.eos_token_id
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids, _ in requests)
        input_ids = torch.tensor(
            [[pad] * (width - len(ids)) + list(ids) for ids, _ in requests], device=device
        )
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in requests], device=device)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        images = [im for _, ims in requests for im in ims]
        if images:
            pixels = self.processor.image_processor(images=images, return_tensors="pt")
            inputs.update({k: v.to(device) for k, v in pixels.items()})
            inputs["mm_token_type_ids"] = (input_ids == self.image_pad_id).long()
        sample = cfg.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": sample}
        kwargs.update({"temperature": cfg.temperature, "top_p": cfg.top_p} if sample else {"top_k": None})
        if self.suppress_tokens:
            kwargs["suppress_tokens"] = self.suppress_tokens
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs, pad_token_id=pad, eos_token_id=eos)
        result = []
        for row in out[:, width:].tolist():
            cut = row.index(eos) + 1 if eos in row else len(row)
            result.append(row[:cut])
        return result


class VLLMGenerator:
    """vLLM over token-id requests (GPU). ``vllm`` is imported only here; pass ``llm`` to reuse an engine."""

    def __init__(
        self, model_path: str | None = None, config: RolloutConfig | None = None, *, llm=None, **llm_kw
    ):
        try:
            import vllm
        except ImportError as err:  # pragma: no cover - GPU installs only
            raise ImportError(
                "VLLMGenerator needs vLLM: pip install '.[gpu]' (vllm==0.31.0) on a GPU machine."
            ) from err
        self.config = config or RolloutConfig()
        self.llm = llm or vllm.LLM(model=model_path, limit_mm_per_prompt={"image": 8}, **llm_kw)
        self._params = vllm.SamplingParams(
            max_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=self.config.seed,
        )

    def __call__(self, requests: Sequence[Request]) -> list[list[int]]:  # pragma: no cover - GPU only
        rows = []
        for ids, ims in requests:  # the same input format TRL's vLLM path sends
            row: dict[str, Any] = {"prompt_token_ids": list(ids)}
            if ims:
                row["multi_modal_data"] = {"image": ims if len(ims) > 1 else ims[0]}
            rows.append(row)
        outs = self.llm.generate(rows, sampling_params=self._params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


def vision_ids(processor) -> list[int]:
    """Ids of the vision placeholder tokens the tokenizer really has, for ``suppress_tokens`` (a random or
    barely trained model can sample them; a token missing from the vocabulary would map to unk: skipped)."""
    from mmsearch_r1.policy.tiny import VISION_TOKENS

    vocab = getattr(processor, "tokenizer", processor).get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]
