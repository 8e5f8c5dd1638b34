"""mmsearch-r1: teach vision-language models to search on demand with GRPO.

Modules (each says what it does and does not in its own docstring):
``protocol`` (the tag protocol), ``prompts`` (every text the policy reads), ``rewards`` (the paper's
reward), ``tools`` (search engines and the cache), ``world``/``questions``/``data``/``curation``
(datasets), ``chat_template``/``processor``/``tiny``/``policy``/``demo_policy`` (policies),
``env``/``trl_rewards``/``train`` (GRPO through TRL), ``warmstart`` (SFT), ``rollout``/``evaluate``
(inference and evaluation).
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes' CPU 4-bit path first tries a faster kernel fetched from the hub ("kernels-community") and
# warns on every import when it cannot; offline it never can, and its own fallback is what runs.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
