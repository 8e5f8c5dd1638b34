"""Datasets: the row schema, the benchmarks, the offline world, its questions and the curation.

What it does: ``schema`` defines the row every stage uses and reads/writes the FVQA / veRL parquet and
jsonl run files, ``benchmarks`` reads FVQA, InfoSeek, MMSearch, SimpleVQA and LiveVQA, ``world`` builds
the offline world of entities (flags, outlines, articles), ``questions`` generates its question pool and
``curation`` labels questions search-free / search-required and balances them. What it does not: no
search engines (``mmsearch_r1.tools``), no policy, no rollouts of its own (curation takes a rollout
function), no training.
"""
