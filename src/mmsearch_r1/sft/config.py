"""`WarmStartConfig`: every setting of a warm-start run (defaults: the CPU demo policy), and its row sample.

What it does: `WarmStartConfig` covers the policy, the knowledge probe, the vision alignment, the
trajectories, SFT and the validation, with `shrink_for_smoke` for tests; `sample_rows` is the seeded
sample of a split's rows that the warm start trains on and validates with. Shared by
`mmsearch_r1.sft.warmstart` (the run) and `mmsearch_r1.sft.validate` (measuring a saved policy with the
same settings), so that neither imports the other for them.

What it does not: no loading, no training, no evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mmsearch_r1.agent.env import EnvConfig
from mmsearch_r1.policy.vision_align import VisionAlignConfig
from mmsearch_r1.rl.presets import DEMO_IMAGE_K, DEMO_TEXT_K
from mmsearch_r1.sft.trajectories import AGNOSTIC_RATES, RAG_PLAN, ProbeConfig


@dataclass
class WarmStartConfig:
    """One warm-start run (defaults: the CPU demo policy)."""

    model: str = "demo"
    """Policy to start from: "demo", "tiny", a local folder or a hub id (`load_policy`)."""
    output_dir: str = "runs/warmstart"
    """Run folder: config, metrics, trajectories summary, and the policy in ``final/``."""
    seed: int = 0
    """Seed of sampling, splits and training."""
    visual_known: int = 0
    """How many entities the vision tower learns to recognise: the most populous ones whose name is a
    single token (a stand-in for prominence); drawn across all splits. 0 (default): none, so every entity
    in an image needs an image search and the knowledge boundary is the language model's (a from-scratch
    ViT did not learn 20 flags in 200 CPU steps; see the notebook)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Knowledge probe of the language model (k samples without search)."""
    align: bool = True
    """Teach the vision tower first (`policy.vision_align`); off for pretrained VLMs."""
    vision: VisionAlignConfig = field(default_factory=VisionAlignConfig)
    """Vision-tower alignment settings."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(image_k=DEMO_IMAGE_K, text_k=DEMO_TEXT_K))
    """Search settings of the trajectories and the evaluation (keep equal to RL's)."""
    max_train_rows: int | None = 800
    """Train-split questions turned into trajectories (seeded sample); None: all."""
    sft_trajectories: int | None = 400
    """Trajectories kept for SFT, balanced over the action sequences by ``plan_weights``; None: all.
    Fewer taught the protocol but not the RAG copy skill (docs/cpu_demo_settings.md)."""
    plan_weights: dict = field(default_factory=lambda: {
        "answer": 0.26, "image_search -> answer": 0.12, "text_search -> answer": 0.22,
        "image_search -> text_search -> answer": 0.2, RAG_PLAN: 0.2})  # fmt: skip
    """Target share of each action sequence among the SFT trajectories (the search share starts at ~74%).
    ``RAG_PLAN`` is the RAG workflow's shape (scripted searches, then the answer from the results), so that
    the RAG baseline meets turns the policy has seen. The knowledge boundary is learned from the direct
    answers and the text searches of text-only questions, so they get the most rows."""
    decision: str = "knowledge"
    """How each trajectory decides whether to search: ``knowledge`` (as an ideal policy with the probed
    knowledge would: the warm start imitates the knowledge boundary) or ``agnostic`` (at random with
    ``agnostic_rates`` per question kind, blind to knowledge; a direct answer states the base model's own
    probe answer, right or wrong, so SFT teaches no fact and no boundary: RL has to learn when to search).
    With ``agnostic`` the drawn plans keep their shares and only the RAG-shaped share of ``plan_weights``
    applies (`sft.trajectories.agnostic_weights`)."""
    agnostic_rates: dict = field(default_factory=lambda: dict(AGNOSTIC_RATES))
    """Search rate per question kind of the ``agnostic`` decision (`sft.trajectories.agnostic_plan`)."""
    answer_space: bool = True
    """Write the answers ``<answer> Lisbon</answer>``: the name's tokens are then those it has inside the
    results' sentences, so the answer is a copy of tokens (`sft.trajectories.trajectory`)."""
    max_length: int = 900
    """Longer trajectories (tokens, images included) are left out."""
    epochs: float = 1.0
    """Passes over the trajectories."""
    batch_size: int = 2
    """Trajectories per device step."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    lr: float = 2e-4
    """Peak learning rate (cosine decay, 5% warm-up)."""
    train_top_layers: int = 8
    """Language-model layers trained, counted from the top (-1: all, with the embeddings frozen). The
    frozen layers below run without autograd, which is most of the CPU saving. 8 of SmolLM2's 30, as the
    `cpu_demo` GRPO preset trains."""
    train_vision: bool = False
    """Also train the vision tower during SFT."""
    report_to: str = "tensorboard"
    """Where SFT also logs its loss: ``tensorboard`` (``output_dir/sft/runs/``), ``wandb``, ``trackio``, or
    ``none`` (as `mmsearch_r1.rl.config.TrainConfig.report_to`)."""
    bf16: str = "auto"
    """bf16 mixed precision (autocast, fp32 weights) in SFT: ``auto`` (on where matmuls are natively bf16,
    `mmsearch_r1.rl.grpo_args.fast_bf16`), ``true``, ``false``."""
    eval_rows: int | None = 48
    """Validation rows measured after training (seeded sample); 0 skips evaluation."""
    eval_sampled: bool = False
    """Also measure at temperature 1 (how RL samples); doubles the evaluation time."""
    eval_max_new_tokens: int = 48
    """Tokens per generated turn in the evaluation."""
    eval_batch_size: int = 12
    """Rollouts per generate call."""
    smoke: bool = False
    """Tiny sizes everywhere and the ``tiny`` policy instead of ``demo`` (about a minute on CPU), for tests."""

    def shrink_for_smoke(self) -> WarmStartConfig:
        """A copy with smoke sizes, written under ``runs/smoke/`` unless ``output_dir`` was chosen."""
        c = WarmStartConfig(**{**self.__dict__})
        c.model = "tiny" if self.model == "demo" else self.model  # the demo's 135M LM is minutes, not seconds
        if self.output_dir == WarmStartConfig.output_dir:  # never where load_policy("demo-sft") looks
            c.output_dir = "runs/smoke/warmstart"
        c.probe = ProbeConfig(k=1, max_new_tokens=4, batch_size=64)
        c.vision = VisionAlignConfig(steps=3, batch_size=8)
        c.max_train_rows, c.sft_trajectories, c.eval_rows, c.max_length, c.epochs = 8, 8, 4, 4096, 1.0
        c.batch_size, c.grad_accum, c.eval_max_new_tokens, c.eval_sampled = 2, 1, 16, False
        c.visual_known = min(self.visual_known, 10)
        c.report_to = "none"
        return c


def sample_rows(ds, n: int | None, seed: int) -> list[dict]:
    """``n`` rows of ``ds`` as dicts, a seeded sample (all of them when ``n`` is None or not smaller)."""
    rows = [dict(r) for r in ds]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows
