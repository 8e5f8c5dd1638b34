"""Teach the demo policy's new vision tower which entities it recognises, cheaply, before the warm start.

What it does: trains Qwen2.5-VL's vision tower (ViT + merger) alone, with the language model frozen and
never run, so that the visual tokens of an image *are* (close to) the input embeddings of a short caption:
``"red flag of France"`` for an entity in the ``known`` set, ``"red flag"`` (no name) for any other. The
pretrained language model then reads a known flag as if the caption were written in the prompt, and can
copy the name or the colour from it; for an unknown flag it sees no name. Which entities are known is a
parameter (the policy's visual knowledge boundary). Each visual token regresses one caption
token (the caption tiled over the image's tokens) with a mean-squared error on the embeddings plus a
cross-entropy over the vocabulary through the (tied) embedding matrix. Images are fresh random
perturbations of the world's clean images (`data.questions.perturb_image`), never the pool's query images.

This is the project's own cheap stand-in for a VLM's caption pre-training (LLaVA's stage 1 trains a
projector against a frozen LM; here the target is the caption's embeddings, so no LM forward or backward
is needed: thousands of images a minute on 2 CPU cores). Written by hand: no library does this.

What it does not: no protocol, no questions, no search (``mmsearch_r1.sft.warmstart`` does the SFT after it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmsearch_r1.data.questions import PerturbConfig, dominant_colour, perturb_image

VIEW_WORDS = {"flag": "flag", "outline": "map"}
"""Caption noun per image view."""


@dataclass
class VisionAlignConfig:
    """How the vision tower is taught."""

    steps: int = 40
    """Optimiser steps (recognising entities needs far more; the dominant colour alone learns in ~40)."""
    batch_size: int = 16
    """Images per step."""
    lr: float = 2e-3
    """AdamW learning rate (cosine decay, 5% warm-up)."""
    ce_weight: float = 1.0
    """Weight of the cross-entropy over the caption vocabulary (the MSE on embeddings has weight 1)."""
    views: tuple[str, ...] = ("flag", "outline")
    """Image views to learn (entities without a view are skipped)."""
    known_share: float = 0.5
    """Share of each batch drawn from the recognised entities' images (they are few; names are rare labels)."""
    seed: int = 0
    """Seed of the perturbations and the batch order."""
    perturb: PerturbConfig | None = None
    """Perturbation of the training images (default: the question pool's)."""


def caption(name: str | None, view: str, colour: str | None) -> str:
    """The one-token caption every visual token of an image regresses: the entity's name when it is
    recognised, else the flag's dominant colour (or the view's noun: "flag", "map")."""
    if name:
        return f" {name}"
    if colour and view == "flag":
        return f" {colour}"
    return f" {VIEW_WORDS.get(view, view)}"


def single_token_names(tokenizer, names) -> list[str]:
    """The names that are one token of ``tokenizer`` (with a leading space): the ones the tower can learn."""
    return [n for n in names if len(tokenizer(f" {n}", add_special_tokens=False).input_ids) == 1]


def _targets(tokenizer, captions: list[str]) -> list[torch.Tensor]:
    """The caption's first token (the whole caption for the demo's tokenizer, whose colour words and known
    names are single tokens; `single_token_names` keeps names that way)."""
    return [torch.tensor(tokenizer(c, add_special_tokens=False).input_ids[:1]) for c in captions]


def visual_tokens(model, processor, images) -> tuple[torch.Tensor, list[int]]:
    """The merged visual tokens of ``images`` (concatenated) and the number of tokens per image."""
    batch = processor.image_processor(images=images, return_tensors="pt")
    grid = batch["image_grid_thw"]
    merge = model.config.vision_config.spatial_merge_size
    out = model.model.visual(batch["pixel_values"].to(model.dtype), grid_thw=grid)
    feats = getattr(out, "pooler_output", out)
    return feats, (grid.prod(-1) // merge**2).tolist()


def align_vision(model, processor, world, known: set[str], cfg: VisionAlignConfig | None = None) -> dict:
    """Train ``model``'s vision tower in place so known entities' images read as their captions.

    Returns metrics: seconds, final loss, and token accuracy (nearest embedding == caption token) on
    fresh perturbations, for known and unknown entities.
    """
    cfg = cfg or VisionAlignConfig()
    tok = getattr(processor, "tokenizer", processor)
    emb = model.get_input_embeddings().weight.detach()
    items = []  # (entity_id, view, caption ids)
    for e in world.entities:
        for view in cfg.views:
            if view not in e.images:
                continue
            clean = world.image(e.id, view)
            colour = dominant_colour(clean) if view == "flag" else None
            name = e.name if e.id in known else None
            items.append((e.id, view, clean, caption(name, view, colour)))
    if not items:
        raise ValueError("no images to align: the world has no entity with the requested views")
    targets = _targets(tok, [it[3] for it in items])
    vocab = torch.unique(
        torch.cat(targets)
    )  # the cross-entropy runs over the caption vocabulary only (cheap)
    local = torch.full((emb.shape[0],), -1, dtype=torch.long)
    local[vocab] = torch.arange(len(vocab))
    visual = model.model.visual
    for p in model.parameters():
        p.requires_grad_(False)
    for p in visual.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(visual.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / cfg.steps)))
    )
    rng = np.random.default_rng(cfg.seed)
    is_known = np.array([it[0] in known for it in items], dtype=float)
    n_known = is_known.sum()
    if 0 < n_known < len(items):
        probs = np.where(
            is_known > 0, cfg.known_share / n_known, (1 - cfg.known_share) / (len(items) - n_known)
        )
    else:
        probs = np.full(len(items), 1 / len(items))
    scale = emb.pow(2).mean()
    visual.train()
    t0, loss_val = time.perf_counter(), float("nan")
    for _ in tqdm(range(cfg.steps), desc="vision alignment"):
        idx = rng.choice(len(items), size=min(cfg.batch_size, len(items)), replace=False, p=probs)
        images = [perturb_image(items[i][2], rng, cfg.perturb) for i in idx]
        feats, counts = visual_tokens(model, processor, images)
        tgt = torch.cat([targets[i].expand(n) for i, n in zip(idx, counts, strict=True)])
        mse = (feats - emb[tgt]).pow(2).mean() / scale
        ce = F.cross_entropy(feats @ emb[vocab].T, local[tgt])
        loss = mse + cfg.ce_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss)
    visual.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    metrics = {"vision_align_seconds": time.perf_counter() - t0, "vision_align_loss": loss_val}
    metrics.update(
        caption_accuracy(model, processor, items, targets, known, seed=cfg.seed + 1, perturb=cfg.perturb)
    )
    return metrics


@torch.no_grad()
def caption_accuracy(
    model, processor, items, targets, known, *, seed: int, perturb=None, batch: int = 64
) -> dict:
    """Share of visual tokens whose nearest embedding is their caption token, on fresh perturbations."""
    emb = model.get_input_embeddings().weight
    rng = np.random.default_rng(seed)
    hit = {True: [], False: []}
    for start in range(0, len(items), batch):
        chunk = list(range(start, min(start + batch, len(items))))
        feats, counts = visual_tokens(
            model, processor, [perturb_image(items[i][2], rng, perturb) for i in chunk]
        )
        pred = (feats @ emb.T).argmax(-1).split(counts)
        for i, p in zip(chunk, pred, strict=True):
            t = targets[i].expand(len(p))
            hit[items[i][0] in known].append(float((p == t).float().mean()))
    return {
        "caption_token_acc_known": float(np.mean(hit[True])) if hit[True] else float("nan"),
        "caption_token_acc_unknown": float(np.mean(hit[False])) if hit[False] else float("nan"),
    }
