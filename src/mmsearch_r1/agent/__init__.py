"""The agent: the search environment and the multi-turn rollout of a policy with its tools.

What it does: ``env`` is the ``SearchEnv`` whose methods are the policy's tools (budgets, observations,
thumbnails), ``conversation`` builds the conversation in token ids as TRL does, ``generation`` batches
next-turn generation (HF ``generate`` or vLLM), and ``rollout`` plays questions to their end outside
training (evaluation, curation, the warm start's validation) with ``rollout_config`` as its settings. What
it does not: no scoring beyond exact match, no training, no prompt wording (``mmsearch_r1.protocol``).
"""
