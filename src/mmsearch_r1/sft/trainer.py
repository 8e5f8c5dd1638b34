"""TRL's ``SFTTrainer`` with the LM head run only on the supervised positions, on every device.

What it does: `SupervisedHeadSFTTrainer.compute_loss` runs the model's backbone, keeps the hidden states
whose next-token label is not -100, projects only those through the LM head (in fp32, outside autocast)
and returns their mean negative log-likelihood (over ``num_items_in_batch`` when the Trainer passes it,
as TRL does). It logs TRL's ``entropy`` and ``mean_token_accuracy`` from the same logits.

Why by hand: TRL 1.16's fused LM head scores only the supervised positions on Triton devices (CUDA,
XPU); elsewhere it scores every position so that tile shapes stay static for compilers. On the CPU demo
the loss covers ~20% of a trajectory's tokens (the policy's own turns), and the full head (49,152-word
vocabulary) with its backward was about half of an SFT step (``benchmarks/bench_sft_head.py`` times both).
The loss is the same quantity; only the positions that do not count are skipped.

What it does not: on a Triton device, or with a custom ``compute_loss_func``, label smoothing, a loss
type other than "nll", sequence parallelism, a model wrapped for distributed training (its wrapper's
forward must run), or ``return_outputs=True``, it defers to TRL's own
``compute_loss`` unchanged. No MoE auxiliary loss (the project's policies are dense).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer
from trl.kernels.chunked_logprob import _use_triton


def supervised_nll(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module):
    """Per-position NLL, entropy and top-1 hits of the positions whose next-token label is not -100.

    ``hidden`` is ``(batch, seq, dim)``, ``labels`` ``(batch, seq)`` unshifted (position t predicts
    label t + 1). Returns three 1-D tensors over the supervised positions, in row-major order.
    """
    hidden, targets = hidden[:, :-1], labels[:, 1:].to(hidden.device)
    mask = targets != -100
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.float()
        logits = F.linear(hidden[mask].float(), head.weight.float(), bias)
        logp = torch.log_softmax(logits, dim=-1)
    target = targets[mask]
    nll = -logp.gather(-1, target[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
        top1 = logits.argmax(-1) == target
    return nll, entropy, top1


class SupervisedHeadSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss projects only the supervised positions through the LM head (see module)."""

    def _defer(self, model, return_outputs: bool) -> bool:
        device = next(model.parameters()).device
        sp = getattr(getattr(self.accelerator, "parallelism_config", None), "sp_enabled", False)
        return bool(
            _use_triton(device)
            or return_outputs
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or self.args.loss_type != "nll"
            or sp
            or model is not self.accelerator.unwrap_model(model)  # DDP/FSDP/DeepSpeed: keep their forward
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._defer(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        kwargs["use_cache"] = False
        base = (
            model.get_base_model() if hasattr(model, "get_base_model") else model
        )  # PEFT: LoRA stays injected
        hidden = base.base_model(**kwargs).last_hidden_state
        nll, entropy, top1 = supervised_nll(hidden, labels, base.get_output_embeddings())
        denom = num_items_in_batch if num_items_in_batch is not None else max(nll.numel(), 1)
        loss = nll.sum() / torch.as_tensor(denom, device=nll.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        n = self.accelerator.gather_for_metrics(torch.tensor(nll.numel(), device=nll.device)).sum()
        ent = self.accelerator.gather_for_metrics(entropy.sum()).sum()
        hits = self.accelerator.gather_for_metrics(top1.sum()).sum()
        self._metrics[mode]["entropy"].append((ent / n).item() if n > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((hits / n).item() if n > 0 else 0.0)
        if mode == "train" and "attention_mask" in inputs:
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
