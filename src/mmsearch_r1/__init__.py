"""mmsearch-r1: teach vision-language models to search on demand with GRPO.

Subpackages, one per stage of the paper (each module says what it does and does not in its docstring):
``protocol`` (the tag protocol, prompts, reward and chat template), ``tools`` (search engines and the
cache), ``data`` (row schema, benchmarks, the offline world, questions, curation), ``policy`` (loading
policies; the tiny and CPU demo ones), ``agent`` (the search environment and the multi-turn rollout),
``sft`` (the supervised warm start), ``rl`` (GRPO through TRL), ``evaluation`` (benchmarks, judge,
metrics, analysis, the trajectory viewer) and ``miniature`` (Finding 5 on CPU). Top level: ``demo``
(``make demo``'s stage runner), ``pipeline`` (its data stages), ``cli``, ``helpers``, ``notebook_utils``.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes' CPU 4-bit path first tries a faster kernel fetched from the hub ("kernels-community") and
# warns on every import when it cannot; offline it never can, and its own fallback is what runs.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
