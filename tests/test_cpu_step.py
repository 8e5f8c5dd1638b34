"""The CPU GRPO step: the loss's LM head on the policy's own tokens (TRL's numbers there, nothing elsewhere), and the bf16 copy that generates the rollouts."""

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


def test_generation_copy_is_bf16_and_follows_the_trained_parameters_once_per_step():
    from mmsearch_r1.rl.generation_copy import GenerationCopy
    from mmsearch_r1.rl.generation_copy import wanted as copy_wanted

    model, _ = build_tiny_policy(seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    top = model.model.language_model.layers[-1]
    for p in top.parameters():
        p.requires_grad_(True)
    gen = GenerationCopy(model)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in gen.model.parameters())
    with torch.no_grad():  # a checkpoint loaded after the copy was made: the first refresh copies everything
        model.model.language_model.layers[0].mlp.up_proj.weight.add_(1.0)
    gen.refresh(model, step=0)
    same = lambda a, b: torch.allclose(a.float(), b.bfloat16().float())  # noqa: E731
    assert same(
        gen.model.model.language_model.layers[0].mlp.up_proj.weight,
        model.model.language_model.layers[0].mlp.up_proj.weight,
    )
    with torch.no_grad():
        top.mlp.up_proj.weight.add_(1.0)
    gen.refresh(model, step=0)  # same optimizer step: not copied again
    assert not same(gen.model.model.language_model.layers[-1].mlp.up_proj.weight, top.mlp.up_proj.weight)
    gen.refresh(model, step=1)
    assert same(gen.model.model.language_model.layers[-1].mlp.up_proj.weight, top.mlp.up_proj.weight)
    ids = torch.randint(10, 200, (2, 12))
    out = gen.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
    )
    assert out.shape == (2, 16)
    assert not copy_wanted("auto", device="cpu", use_vllm=True, peft=False)
    assert not copy_wanted("auto", device="cpu", use_vllm=False, peft=True)
    assert not copy_wanted("auto", device="cuda", use_vllm=False, peft=False) and not copy_wanted(
        "false", device="cpu", use_vllm=False, peft=False
    )
    with pytest.raises(ValueError, match="generation_copy must be"):
        copy_wanted("maybe", device="cpu", use_vllm=False, peft=False)


@pytest.mark.parametrize("q_len", [1, 5])
def test_fp32_attention_of_the_copy_equals_transformers_sdpa(q_len):
    """Decoding with grouped key/value heads takes its own path (no copy of the cache per head): same numbers."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mmsearch_r1.policy.bf16 import sdpa_fp32

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    b, heads, kv_heads, length, d = 2, 9, 3, 11, 8
    q = torch.randn(b, heads, q_len, d, dtype=torch.bfloat16)
    k, v = (torch.randn(b, kv_heads, length, d, dtype=torch.bfloat16) for _ in range(2))
    mask = torch.zeros(b, 1, q_len, length)
    mask[0, ..., :4] = torch.finfo(torch.float32).min  # the first sequence left-padded by 4
    mask += torch.triu(torch.full((q_len, length), torch.finfo(torch.float32).min), length - q_len + 1)
    got, _ = sdpa_fp32(module, q, k, v, mask, dropout=0.0, scaling=d**-0.5)
    want, _ = sdpa_attention_forward(
        module, q.float(), k.float(), v.float(), mask, dropout=0.0, scaling=d**-0.5
    )
    assert got.dtype == torch.bfloat16 and got.shape == want.shape == (b, q_len, heads, d)
    torch.testing.assert_close(got.float(), want.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_the_copys_attention_masks_the_padding_of_a_batch():
    """A left-padded sequence gets the logits it gets alone: transformers masks padding for the copy's
    attention as it does for ``sdpa`` (it builds no mask for an attention it has no mask function for)."""
    from mmsearch_r1.policy.bf16 import ATTENTION

    model, _ = build_tiny_policy(seed=2)
    model.set_attn_implementation(ATTENTION)  # fp32: only the attention function differs from sdpa
    ids = torch.randint(10, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # the second sequence left-padded by 4
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, 4:], attention_mask=mask[1:, 4:]).logits
    torch.testing.assert_close(batch[1, 4:], alone[0], rtol=1e-4, atol=1e-4)
