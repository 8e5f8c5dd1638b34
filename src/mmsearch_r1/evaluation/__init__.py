"""Evaluation: a policy on the benchmarks, the judge, the metrics, the analysis and the viewer (05, 06).

What it does: ``evaluate`` runs a policy with each method (on-demand, direct, RAG) through the shared
rollout, ``metrics`` scores the records, ``judge`` grades answers with an LLM, ``analysis`` makes the
tables and figures, and ``viewer`` writes one HTML page of a run's trajectories (``python -m
mmsearch_r1.evaluation.viewer RUN_DIR``). Named ``evaluation``, not ``eval``, which is a builtin. What
it does not: no training, no rollout of its own (``mmsearch_r1.agent.rollout``).
"""
