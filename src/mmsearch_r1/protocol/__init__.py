"""The tag protocol: what the policy reads and writes, and how its turns are scored.

What it does: ``tags`` parses and renders the ``<reason>``/``<search>``/``<text_search>``/``<answer>`` turns
(strict and lenient, never raising), ``prompts`` holds every text the policy reads (instructions, tool
observations), ``rewards`` is the paper's reward (exact match, format, search penalty), and
``chat_template`` (with ``tag_protocol.jinja``) renders the protocol as a ChatML chat template that TRL's
tool loop can parse. What it does not: no models, no tokenisation of rollouts, no tools, no training.
"""
