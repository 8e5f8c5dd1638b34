"""The miniature: the paper's Finding 5 (search penalty, data balance) on a 1M-parameter model on CPU.

What it does: ``data`` builds the synthetic questions, index and tokenizer, ``run`` runs the warm start,
the GRPO ablations and their evaluation (``python -m mmsearch_r1.miniature``; ``make reproduce`` through
the demo), and ``figures`` draws them. What it does not: no real policy, no benchmark; the full-size
stages are ``mmsearch_r1.sft``, ``mmsearch_r1.rl`` and ``mmsearch_r1.evaluation``.
"""
