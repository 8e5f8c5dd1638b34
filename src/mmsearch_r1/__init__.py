"""mmsearch-r1: teach vision-language models to search on demand with GRPO.

Modules (each says what it does and does not in its own docstring):
``protocol`` (the tag protocol), ``prompts`` (every text the policy reads), ``rewards`` (the paper's
reward), ``tools`` (search engines and the cache), ``world``/``questions``/``data``/``curation``
(datasets), ``chat_template``/``processor``/``tiny``/``policy``/``demo_policy`` (policies),
``env``/``trl_rewards``/``train`` (GRPO through TRL), ``warmstart`` (SFT), ``rollout``/``evaluate``
(inference and evaluation).
"""

__version__ = "0.1.0"
