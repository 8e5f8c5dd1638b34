"""One warm-start SFT step of the CPU demo policy: TRL's LM head vs the supervised-positions head.

Times ``compute_loss`` + backward (no optimizer step: both see the same weights) of `mmsearch_r1.sft.trainer.SupervisedHeadSFTTrainer`
against TRL's own ``SFTTrainer.compute_loss`` (on CPU: every position through the 49,152-word LM head)
on the same batch of the demo policy (top 8 layers trainable, as the warm start; bf16 autocast where the
CPU has native bf16 matmuls), and checks that both give the same loss. Writes
``benchmarks/results/sft_head.json``. Run alone: ``OMP_NUM_THREADS=2 python benchmarks/bench_sft_head.py``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch
from trl import SFTConfig, SFTTrainer

from mmsearch_r1.policy.load import load_policy
from mmsearch_r1.rl.grpo_args import fast_bf16
from mmsearch_r1.sft.trainer import SupervisedHeadSFTTrainer
from mmsearch_r1.sft.warmstart import freeze_for_sft

RESULTS = Path(__file__).resolve().parent / "results"
SEQ, ROWS, SUPERVISED, REPEATS = 450, 2, 90, 5  # a demo trajectory: ~450 tokens, ~20% the policy's own


def main() -> int:
    torch.manual_seed(0)
    policy = load_policy("demo")
    freeze_for_sft(policy.model, train_top_layers=8, train_vision=False)
    policy.model.train()
    ids = torch.randint(100, 40000, (ROWS, SEQ))
    labels = torch.full_like(ids, -100)
    labels[:, -SUPERVISED:] = ids[:, -SUPERVISED:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    bf16 = fast_bf16()
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", use_cpu=True, bf16=bf16, remove_unused_columns=False,
                         dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)  # fmt: skip
        ds = datasets.Dataset.from_list([{"input_ids": [1, 2]}])
        trainer = SupervisedHeadSFTTrainer(model=policy.model, args=args, train_dataset=ds,
                                           processing_class=policy.tokenizer)  # fmt: skip
    out = {"rows": ROWS, "seq": SEQ, "supervised_per_row": SUPERVISED, "bf16_autocast": bf16,
           "threads": torch.get_num_threads()}  # fmt: skip
    for name, compute in (("trl_all_positions", SFTTrainer.compute_loss),
                          ("supervised_positions", SupervisedHeadSFTTrainer.compute_loss)):  # fmt: skip
        times, losses = [], []
        for _ in range(REPEATS + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = compute(trainer, policy.model, dict(batch))
            loss.backward()
            policy.model.zero_grad(set_to_none=True)  # no update: both variants see the same weights
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        out[name] = {"step_seconds_median": statistics.median(times[1:]), "step_seconds": times[1:],
                     "loss": losses[-1]}  # fmt: skip
    out["speedup"] = (
        out["trl_all_positions"]["step_seconds_median"] / out["supervised_positions"]["step_seconds_median"]
    )
    out["loss_abs_diff"] = abs(out["trl_all_positions"]["loss"] - out["supervised_positions"]["loss"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft_head.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
