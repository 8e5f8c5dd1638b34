"""Supervised warm start: teach a policy the tag protocol before RL (notebook 02).

What it does: ``warmstart`` runs it (``python -m mmsearch_r1.sft.warmstart``) with the settings of
``config``, ``trajectories`` probes the language model's knowledge and builds protocol trajectories with
real tool results, ``trainer`` is TRL's ``SFTTrainer`` with the loss on the supervised positions only, and
``validate`` measures a warm-started policy (``python -m mmsearch_r1.sft.validate``). What it does not: no
RL (``mmsearch_r1.rl``), no curation, no benchmark evaluation (``mmsearch_r1.evaluation``).
"""
