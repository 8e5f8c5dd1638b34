"""The GRPO loss's LM head on the policy's own tokens: TRL's numbers on those positions, nothing elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from mmsearch_r1.policy.tiny import build_tiny_policy
from mmsearch_r1.rl.policy_head import install_policy_token_head, wanted


def _fused_pair(temperature: float):
    """Two copies of one tiny policy with TRL's fused head; the second also gets the policy-token head."""
    (a, _), (b, _) = build_tiny_policy(seed=3), build_tiny_policy(seed=3)
    for m in (a, b):
        add_fused_lm_head(m, temperature=temperature, outputs=("log_probs", "entropy"))
    trainer = SimpleNamespace(model=b, temperature=temperature, policy_token_mask=None)
    assert install_policy_token_head(trainer)
    return a, b, trainer


def test_policy_token_head_matches_trls_head_where_the_loss_reads_it():
    torch.manual_seed(0)
    trl_model, ours, trainer = _fused_pair(temperature=0.7)
    ids = torch.randint(10, 200, (3, 24))
    attention = torch.ones_like(ids)
    attention[0, :4] = 0  # left padding
    completion = 10
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :-completion] = -100
    tool_mask = torch.ones(3, completion, dtype=torch.long)
    tool_mask[:, 3:7] = 0  # a tool result inside the completion
    trainer.policy_token_mask = tool_mask

    ref = trl_model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
    out = ours(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
    read = torch.zeros(3, 23, dtype=torch.bool)
    read[:, -completion:] = tool_mask.bool()  # the positions TRL's loss multiplies by 1
    assert torch.equal(out.label_mask, read)
    assert torch.allclose(out.log_probs[read], ref.log_probs[read], atol=1e-5)
    assert torch.allclose(out.entropy[read], ref.entropy[read], atol=1e-4)
    assert not out.log_probs[~read].any() and not out.entropy[~read].any()  # never projected

    # same gradients for a loss over the read positions (what GRPO's loss is)
    (ref.log_probs * read).sum().backward()
    (out.log_probs * read).sum().backward()
    for (name, p), (_, q) in zip(trl_model.named_parameters(), ours.named_parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name

    # generation and plain forwards are untouched
    plain = ours(input_ids=ids, attention_mask=attention).logits
    assert torch.allclose(plain, trl_model(input_ids=ids, attention_mask=attention).logits)


def test_policy_token_head_setting():
    assert wanted("auto", "cpu") and not wanted("auto", torch.device("cuda", 0))
    assert wanted("true", "cuda") and not wanted("false", "cpu")
    with pytest.raises(ValueError, match="policy_token_head must be"):
        wanted("yes", "cpu")
