"""`RolloutConfig`: how the inference rollout runs (method, sampling, batching), and the `METHODS`.

What it does: holds the settings shared by the rollout (`mmsearch_r1.agent.rollout`) and the generators
(`mmsearch_r1.agent.generation`: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``), so that
neither imports the other for them. The methods: ``on_demand`` (the policy decides), ``direct`` (every
search is refused, the policy answers from what it knows), ``rag`` (the paper's RAG workflow: an image
search, then a text search, then the answer).

What it does not: no rollout, no generation, no environment settings (`mmsearch_r1.agent.env.EnvConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("on_demand", "direct", "rag")


@dataclass
class RolloutConfig:
    """How the inference rollout runs."""

    method: str = "on_demand"
    """``on_demand`` | ``direct`` | ``rag`` (see `METHODS`)."""
    max_new_tokens: int = 160
    """Tokens per assistant turn at most (the paper's eval lets a turn run to the context limit)."""
    max_completion_length: int | None = None
    """Like ``GRPOConfig.max_completion_length``: a tool result that would push model + tool tokens past
    it is dropped and the rollout ends (None: no limit)."""
    temperature: float = 0.0
    """0 is greedy (the paper's evaluation); > 0 samples (curation's k rollouts)."""
    top_p: float = 1.0
    """Nucleus sampling when ``temperature > 0``."""
    batch_size: int = 8
    """Sequences per ``generate`` call."""
    tool_workers: int = 8
    """Threads running the tool calls of a round concurrently."""
    seed: int = 0
    """Seed for sampling."""
    pad_ratio: float = 1.5
    """Split a round's generate call where the longest sequence exceeds the shortest by this factor
    (on CPU every padding token costs as much as a real one)."""
    rag_reasons: tuple[str, str] = (
        "I will look the image up first.",
        "Now I will look up the fact the question asks for.",
    )
    """The ``<reason>`` text of the RAG workflow's scripted image-search and (fallback) text-search turns."""
    direct_reason: str = "search is switched off for this question; answer from what you know"
    """Why a search is refused in the ``direct`` method (shown to the policy)."""
    progress: bool = True
    """Show a tqdm bar over batches."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"RolloutConfig.method must be one of {METHODS}, got {self.method!r}.")
