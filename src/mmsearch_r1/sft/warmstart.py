"""Supervised warm start (notebook 02): teach a policy the tag protocol with TRL's ``SFTTrainer``.

What it does, in order (`run_warmstart`):
1. loads the policy (`mmsearch_r1.policy.load.load_policy`; default the CPU demo policy) and the world,
   the question pool and the local engines;
2. measures the language model's real knowledge boundary (`sft.trajectories.probe_knowledge`: k samples
   without search, as curation does) and picks the entities the vision tower will recognise (a
   parameter: ``visual_known``);
3. for the demo's new vision tower, teaches it those entities (`policy.vision_align.align_vision`);
4. builds protocol trajectories for the train split with real tool results (`sft.trajectories`);
5. fine-tunes with ``trl.SFTTrainer`` (`sft.trainer.SupervisedHeadSFTTrainer`: the LM head only on the
   supervised positions, also on CPU) with the loss on the policy's own tokens only: `ProtocolCollator`
   renders each conversation with the chat template's ``{% generation %}`` markers
   (``return_assistant_tokens_mask``), expands the image placeholders, and sets every other label to
   -100 (TRL's own ``assistant_only_loss`` needs transformers >= 5.18 for vision data; this collator is
   the same rule written for 5.15-5.17);
6. saves the policy (``output_dir/final``, what ``load_policy("demo-sft")`` reads) and measures it on the
   validation split (`sft.validate`): accuracy, strict-format validity, search ratio, and the RAG check
   (accuracy under the rollout's ``rag`` workflow: image search, text search, answer) on questions that
   need a search.

With a GPU model id and distilled trajectories the same code is the paper's SFT baseline.

Its settings are `sft.config.WarmStartConfig`; ``python -m mmsearch_r1.sft.warmstart`` runs it from a shell.

What it does not: no RL (``mmsearch_r1.rl``), no curation; no tokenisation of its own besides the collator.
"""

from __future__ import annotations

import json
import random
import resource
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mmsearch_r1.data.world.build import build_world
from mmsearch_r1.policy.demo import cache_root
from mmsearch_r1.policy.load import load_policy
from mmsearch_r1.policy.processor import image_sizes_of
from mmsearch_r1.policy.vision_align import align_vision, single_token_names
from mmsearch_r1.rl.grpo_args import _flag, fast_bf16, reporters
from mmsearch_r1.sft.config import WarmStartConfig, sample_rows
from mmsearch_r1.sft.trajectories import (
    RAG_PLAN,
    agnostic_weights,
    balance,
    build_trajectories,
    knowledge_summary,
    needs_search,
    probe_knowledge,
)
from mmsearch_r1.sft.validate import validate
from mmsearch_r1.tools.engines import make_engines, world_indexes


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def freeze_for_sft(model, train_top_layers: int, train_vision: bool) -> int:
    """Freeze all but the top ``train_top_layers`` language layers (+ final norm; the vision tower if asked;
    an untied output layer when all layers train).
    Returns the number of trainable parameters."""
    base = getattr(model, "model", model)
    lm = base.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    layers = lm.layers if train_top_layers < 0 else lm.layers[len(lm.layers) - train_top_layers :]
    for layer in layers:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in lm.norm.parameters():
        p.requires_grad_(True)
    head = model.get_output_embeddings()
    if train_top_layers < 0 and head is not None and head.weight is not model.get_input_embeddings().weight:
        head.weight.requires_grad_(True)  # an untied output layer is trained with all layers
    if train_vision:
        for p in base.visual.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ProtocolCollator:
    """Batches ``{"messages": json, "images": [PIL]}`` rows for SFT with loss on assistant tokens only.

    The chat template's ``{% generation %}`` markers give the assistant mask (the assistant turns' text and
    their ``<|im_end|>``); each ``<|image_pad|>`` is expanded to the image's token count, as the processor
    does; labels are the input ids on assistant tokens and -100 elsewhere (prompt, tool results, images,
    padding). Padding is on the right.
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = processor.image_processor
        self.max_length = max_length
        self.pad_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.merge = getattr(self.image_processor, "merge_size", 2)

    def encode(self, example: dict) -> dict:
        """One example: ``input_ids``, ``assistant_mask`` (image placeholders expanded) and image tensors."""
        msgs = (
            json.loads(example["messages"]) if isinstance(example["messages"], str) else example["messages"]
        )
        r = self.tokenizer.apply_chat_template(
            msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(r["input_ids"]), list(r["assistant_masks"])
        images = list(example.get("images") or [])
        n_pads = ids.count(self.pad_id)
        if n_pads != len(images):
            raise ValueError(
                f"example has {n_pads} image placeholders but {len(images)} images; fix the trajectory"
            )
        out: dict = {}
        counts: list[int] = []
        if images:
            img = self.image_processor(images=images, return_tensors="pt")
            out = {"pixel_values": img["pixel_values"], "image_grid_thw": img["image_grid_thw"]}
            counts = (img["image_grid_thw"].prod(-1) // self.merge**2).tolist()
        eids, emask, k = [], [], 0
        for t, m in zip(ids, mask, strict=True):
            if t == self.pad_id:
                eids += [t] * counts[k]
                emask += [0] * counts[k]
                k += 1
            else:
                eids.append(t)
                emask.append(m)
        return {"input_ids": eids, "assistant_mask": emask, **out}

    def __call__(self, examples: list[dict]) -> dict:
        enc = [self.encode(e) for e in examples]
        if self.max_length is not None:
            too_long = [len(e["input_ids"]) for e in enc if len(e["input_ids"]) > self.max_length]
            if too_long:
                raise ValueError(
                    f"examples of {too_long} tokens exceed max_length={self.max_length}; filter them first"
                )
        width = max(len(e["input_ids"]) for e in enc)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        att = torch.zeros((len(enc), width), dtype=torch.long)
        labels = torch.full((len(enc), width), -100, dtype=torch.long)
        for i, e in enumerate(enc):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            att[i, :n] = 1
            m = torch.tensor(e["assistant_mask"], dtype=torch.bool)
            labels[i, :n][m] = ids[i, :n][m]
        batch = {"input_ids": ids, "attention_mask": att, "labels": labels,
                 "mm_token_type_ids": (ids == self.pad_id).long()}  # fmt: skip
        with_img = [e for e in enc if "pixel_values" in e]
        if with_img:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_img])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_img])
        return batch


def length_batched(rows: list[dict], batch_size: int, seed: int) -> list[dict]:
    """``rows`` (each with a ``length``) reordered so that every run of ``batch_size`` rows has similar
    lengths (fewer padded tokens per SFT step), with the batches in a seeded random order.

    Written by hand because transformers' ``group_by_length`` sampler sorts each megabatch longest first:
    every ~40 steps ran from the long search trajectories to the short direct answers, and the last,
    low-learning-rate steps taught only direct answers (docs/cpu_demo_settings.md has that run's numbers).
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return [rows[i] for batch in batches for i in batch]


def sft(policy, rows: list[dict], cfg: WarmStartConfig, output_dir: Path) -> dict:
    """Fine-tune ``policy.model`` in place on trajectory rows with ``trl.SFTTrainer``; returns log metrics."""
    import datasets
    from trl import SFTConfig

    from mmsearch_r1.sft.trainer import SupervisedHeadSFTTrainer

    if cfg.bf16 not in ("auto", "true", "false"):
        raise ValueError(f"WarmStartConfig.bf16={cfg.bf16!r}: use 'auto', 'true' or 'false'")
    collator = ProtocolCollator(policy.processor, cfg.max_length)
    batched = bool(rows) and "length" in rows[0]  # lengths known: feed similar lengths together
    if batched:
        rows = length_batched(rows, cfg.batch_size, cfg.seed)
    ds = datasets.Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(output_dir / "sft"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to=reporters(cfg.report_to),
        gradient_checkpointing=False,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=_flag(cfg.bf16, fast_bf16()),
        dataloader_num_workers=0,
        disable_tqdm=False,
        # rows with a "length" come in `length_batched` order, which the sequential sampler keeps
        train_sampling_strategy="sequential" if batched else "random",
    )
    trainer = SupervisedHeadSFTTrainer(model=policy.model, args=args, train_dataset=ds, processing_class=policy.processor,
                         data_collator=collator)  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"sft_seconds": time.perf_counter() - t0, "sft_steps": trainer.state.global_step,
            "sft_loss_first": losses[0] if losses else None, "sft_loss_last": losses[-1] if losses else None,
            "sft_losses": losses}  # fmt: skip


def pick_visual_known(world, tokenizer, n: int) -> set[str]:
    """The ``n`` most populous entities whose name is a single token (what the vision tower can learn)."""
    ents = sorted(world.entities, key=lambda e: -e.facts.get("population", 0))
    ok = set(single_token_names(tokenizer, [e.name for e in ents]))
    return {e.id for e in [x for x in ents if x.name in ok][:n]}


def run_warmstart(cfg: WarmStartConfig | None = None, *, world=None, pool=None, engines=None) -> dict:
    """Run the whole warm start (see the module docstring); returns the metrics also written to
    ``output_dir/metrics.json``. ``world``/``pool``/``engines`` default to the offline world's."""
    cfg = cfg or WarmStartConfig()
    if cfg.smoke:
        cfg = cfg.shrink_for_smoke()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    world = world or build_world()
    if pool is None:
        from mmsearch_r1.data.questions import QuestionConfig, build_pool

        pool = build_pool(world, QuestionConfig(seed=cfg.seed, max_entities=24 if cfg.smoke else None))
    if engines is None:
        world_indexes()
        engines = make_engines()
    policy = load_policy(cfg.model)
    m: dict = {"model": cfg.model, "params": policy.num_parameters()}
    knowledge = probe_knowledge(policy.model, policy.tokenizer, world, cfg.probe,
                                cache_dir=None if cfg.smoke else cache_root())  # fmt: skip
    m["knowledge"] = knowledge_summary(knowledge)
    visual_known = pick_visual_known(world, policy.tokenizer, cfg.visual_known) if cfg.visual_known else set()
    m["visual_known"] = len(visual_known)
    if cfg.align:
        m.update(align_vision(policy.model, policy.processor, world, visual_known, cfg.vision))
    rows = sample_rows(pool["train"], cfg.max_train_rows, cfg.seed)
    t0 = time.perf_counter()
    # thumbnails in the SFT data sized by the policy's own cap, as in its evaluation, RL and curation
    env = replace(cfg.env, sizes=image_sizes_of(policy.processor))
    rag = cfg.plan_weights.get(RAG_PLAN, 0) > 0
    traj, stats = build_trajectories(rows, world, engines, visual_known, knowledge, env, rag=rag,
                                     answer_space=cfg.answer_space, decision=cfg.decision,
                                     rates=cfg.agnostic_rates, seed=cfg.seed)  # fmt: skip
    collator = ProtocolCollator(policy.processor)
    lengths = [len(collator.encode(r)["input_ids"]) for r in traj]
    traj = [{**r, "length": n} for r, n in zip(traj, lengths, strict=True) if n <= cfg.max_length]
    weights = cfg.plan_weights
    if cfg.decision == "agnostic":
        weights = agnostic_weights(traj, cfg.plan_weights.get(RAG_PLAN, 0.0))
    traj = balance(traj, cfg.sft_trajectories, weights, cfg.seed)
    m.update({"trajectory_seconds": time.perf_counter() - t0, "trajectories": len(traj),
              "trajectory_plans": dict(stats), "sft_plans": dict(Counter(r["plan"] for r in traj)), "trajectory_tokens_mean": sum(lengths) / max(len(lengths), 1),
              "trajectory_search_share": sum("search" in r["plan"] for r in traj) / max(len(traj), 1)})  # fmt: skip
    if not traj:
        raise ValueError(
            f"no trajectories left ({dict(stats)}; max_length={cfg.max_length}): raise max_length or rows"
        )
    m["trainable_params"] = freeze_for_sft(policy.model, cfg.train_top_layers, cfg.train_vision)
    m.update(sft(policy, traj, cfg, out))
    for p in policy.model.parameters():
        p.requires_grad_(True)
    policy.model.config.use_cache = True
    policy.save(out / "final")
    m["train_seconds"] = time.perf_counter() - t_start
    m["peak_rss_gib_after_train"] = peak_rss_gib()
    if cfg.eval_rows != 0:
        needs = lambda row: needs_search(row, visual_known, knowledge)  # noqa: E731
        m.update(validate(policy, sample_rows(pool["validation"], cfg.eval_rows, cfg.seed), engines, cfg, needs,
                          lambda eid: world.entity(eid).name, examples=out / "eval_examples.json"))  # fmt: skip
    m["total_seconds"] = time.perf_counter() - t_start
    m["peak_rss_gib"] = peak_rss_gib()
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return m


def demo_stage() -> dict:
    """`make demo`'s warm-start stage: the default run without its own evaluation (the evaluation stage
    measures the warm-started policy), skipped when ``runs/warmstart/final`` exists."""
    cfg = WarmStartConfig(eval_rows=0)
    done = Path(cfg.output_dir) / "metrics.json"
    if (Path(cfg.output_dir) / "final" / "config.json").is_file() and done.is_file():
        print(f"warm start: reusing {cfg.output_dir}/final (delete it to retrain)")
        return json.loads(done.read_text())
    m = run_warmstart(cfg)
    print(summary_line(m))
    return m


def summary_line(m: dict) -> str:
    """One line of the run's key numbers (the validation's, or that it was skipped)."""
    head = f"warm start: {m.get('total_seconds', 0):.0f} s, peak {m.get('peak_rss_gib', 0):.1f} GiB"
    g = m.get("eval_greedy", {}).get("all")
    if not g:
        return (
            f"{head}, validation skipped (eval_rows=0; python -m mmsearch_r1.sft.validate POLICY --validate)"
        )
    rag = m.get("eval_rag_on_unknown", {})
    rag_text = f", RAG acc on unknown {rag['acc']:.2f}" if "acc" in rag else ""
    return f"{head}, val acc {g['acc']:.2f}, format {g['format']:.2f}, search ratio {g['searched']:.2f}{rag_text}"


def main(argv: list[str] | None = None) -> int:
    """``python -m mmsearch_r1.sft.warmstart [--smoke] [--output-dir DIR] [--model NAME]``."""
    from mmsearch_r1.cli import run

    return run(_main, argv)


def _main(argv: list[str] | None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m mmsearch_r1.sft.warmstart",
        description=__doc__.splitlines()[0],
        epilog="examples:\n  python -m mmsearch_r1.sft.warmstart                  # the CPU demo policy -> runs/warmstart/final\n"
        "  python -m mmsearch_r1.sft.warmstart --smoke          # tiny policy, about a minute -> runs/smoke/warmstart\n"
        "  python -m mmsearch_r1.sft.warmstart --model PATH --output-dir runs/ws_mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes and the tiny policy (writes under runs/smoke/)"
    )
    p.add_argument("--model", default="demo", help="demo, tiny, a local folder or a hub id")
    p.add_argument("--output-dir", default=WarmStartConfig.output_dir)
    a = p.parse_args(argv)
    print(summary_line(run_warmstart(WarmStartConfig(model=a.model, output_dir=a.output_dir, smoke=a.smoke))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
