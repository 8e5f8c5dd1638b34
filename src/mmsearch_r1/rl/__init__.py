"""GRPO through TRL: the paper's reinforcement learning of on-demand search (notebooks 03 and 04).

What it does: ``config`` is every setting of a run (``TrainConfig``, presets, ``configs/*.yaml``),
``grpo_args`` turns it into TRL's ``GRPOConfig``, ``data`` loads the training rows and engines, ``rewards``
adapts the paper's reward to TRL, ``train`` runs it (``python -m mmsearch_r1.rl.train``), ``run_logging``
writes the run's metrics and samples, ``resume`` continues a run, and ``scale_up`` builds multi-GPU launch
commands. What it does not: no SFT (``mmsearch_r1.sft``), no benchmark evaluation
(``mmsearch_r1.evaluation``), no rollout loop of its own (TRL's tool loop runs the ``SearchEnv``).
"""
