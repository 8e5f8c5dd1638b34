"""Policies: loading a vision-language model with its processor, and the small CPU ones.

What it does: ``load`` loads any policy by name or path (``load_policy``: the demo and tiny policies, a
local folder, a hub id, LoRA/QLoRA), ``processor`` is the image processor and chat template the rollouts
and training use, ``tiny`` builds random tiny Qwen2.5-VL-shaped policies for tests, ``demo`` assembles
the CPU demo policy (SmolLM2 with a new vision tower) and ``vision_align`` teaches that vision tower the
world's entities. What it does not: no rollouts (``mmsearch_r1.agent``), no SFT or RL training loops.
"""
