"""The CPU GRPO step: the loss's LM head on the policy's own tokens (TRL's numbers there, nothing elsewhere), and the bf16 copy that generates the rollouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from mmsearch_r1.policy.tiny import build_tiny_policy
from mmsearch_r1.rl.policy_head import install_policy_token_head, unpadded_rows, wanted


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


def test_the_copys_lm_head_reads_a_contiguous_input():
    """``generate`` gives the head a strided view (the last position of each row after the prefill); the
    copy's head gets it contiguous (a strided input makes ``matmul`` copy the weight once per row), and
    the logits are the same."""
    from mmsearch_r1.rl.generation_copy import GenerationCopy

    model, _ = build_tiny_policy(seed=4)
    copy = GenerationCopy(model).model
    head = copy.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))  # after ours
    hidden = torch.randn(3, 7, head.in_features, dtype=torch.bfloat16)[:, -1:, :]
    assert not hidden.is_contiguous()
    with torch.no_grad():
        got = head(hidden)
    assert seen == [True]
    torch.testing.assert_close(got, torch.nn.functional.linear(hidden.contiguous(), head.weight))
    assert model.get_output_embeddings()._forward_pre_hooks == {}  # the training model is left alone


def test_frozen_layers_are_cast_to_bf16_once_and_give_autocasts_numbers():
    from mmsearch_r1.rl.policy_head import frozen_linears_cast_once
    from mmsearch_r1.rl.train import freeze_lower_layers

    model, _ = build_tiny_policy(seed=5)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as the demo policy's head is
    freeze_lower_layers(model, 1)
    params = {n: p for n, p in model.named_parameters()}
    ids = torch.randint(10, 200, (2, 12))

    def logits():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits

    want = logits()
    with frozen_linears_cast_once(model, torch.bfloat16) as n:
        assert n > 0 and model.lm_head.weight.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.dtype == torch.float32  # the tied embedding reads fp32
        got = logits()
        trained = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
        assert trained and all(m.weight.dtype == torch.float32 for m in trained)  # what trains is autocast's
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert {n: p for n, p in model.named_parameters()} == params  # the same fp32 parameters are back
    assert model.lm_head.weight is model.get_input_embeddings().weight


def _padded_batch(processor, completion: int):
    """Three sequences as TRL's loss gets them: prompts (one image, two images, none) left-padded,
    completions of 9, 3 and 6 tokens right-padded, and the images' ``pixel_values``."""
    from PIL import Image

    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    colours = ["red", "blue", "green"]
    texts = [f"{vision} Which flag is this?", f"{vision} and {vision} which one?", "Capital of Redland?"]
    images = [
        [Image.new("RGB", (112, 112), colours[0])],
        [Image.new("RGB", (56, 56), c) for c in colours[1:]],
        [],
    ]
    rows = [
        processor(text=[t], images=im or None, return_tensors="pt")
        for t, im in zip(texts, images, strict=True)
    ]
    prompts = [r["input_ids"][0] for r in rows]
    width = max(len(p) for p in prompts)
    torch.manual_seed(1)
    ids = torch.zeros(3, width + completion, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, n) in enumerate(zip(prompts, (9, 3, 6), strict=True)):
        ids[i, width - len(p) : width], mask[i, width - len(p) : width + n] = p, 1
        ids[i, width : width + n] = torch.randint(10, 200, (n,))
    fields = {
        "pixel_values": torch.cat([r["pixel_values"] for r in rows if "pixel_values" in r]),
        "image_grid_thw": torch.cat([r["image_grid_thw"] for r in rows if "image_grid_thw" in r]),
        "num_images": [len(im) for im in images],
    }
    return ids, mask, fields


def test_loss_forward_scores_each_sequence_without_its_padding():
    """The per-sequence, unpadded loss forward gives TRL's log-probs, entropies and gradients on the
    positions the loss reads, with images in some sequences and none in another."""
    from accelerate import Accelerator

    from mmsearch_r1.rl.run_logging import TimedGRPOTrainer

    model, processor = build_tiny_policy(seed=4)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    trainer = TimedGRPOTrainer.__new__(TimedGRPOTrainer)  # only what the loss forward reads
    trainer.model, trainer.temperature, trainer.accelerator = model, 0.7, Accelerator(cpu=True)
    trainer.args = SimpleNamespace(bf16=False)
    assert install_policy_token_head(trainer)
    completion = 10
    ids, mask, fields = _padded_batch(processor, completion)
    tool_mask = torch.ones(3, completion, dtype=torch.long)
    tool_mask[0, 2:5] = 0  # a tool result inside the first completion
    read = mask[:, -completion:].bool() & tool_mask.bool()

    def scored(per_sequence: bool):
        model.zero_grad()
        trainer.policy_token_head, trainer.policy_token_mask = per_sequence, tool_mask
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, completion, compute_entropy=True, **fields
        )
        (logps * read).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logps.detach(), entropy.detach(), grads

    rows = unpadded_rows(ids, mask, completion, fields)
    assert [keep for _, _, keep in rows] == [9, 3, 6]
    assert [int(r["attention_mask"].sum()) for _, r, _ in rows] == [
        r["input_ids"].size(1) for _, r, _ in rows
    ]
    assert "pixel_values" not in rows[2][1]  # the sequence without images gets none
    padded, per_sequence = scored(False), scored(True)
    torch.testing.assert_close(per_sequence[0][read], padded[0][read], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(per_sequence[1][read], padded[1][read], atol=1e-4, rtol=1e-4)
    assert not per_sequence[0][~mask[:, -completion:].bool()].any()  # padding: never scored
    assert per_sequence[2].keys() == padded[2].keys() and any("visual" in n for n in padded[2])
    for name, grad in padded[2].items():
        torch.testing.assert_close(per_sequence[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert unpadded_rows(ids, mask, completion, {**fields, "spatial_shapes": torch.ones(1)}) is None


def test_the_bench_compares_only_steps_that_generated_alike():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def steps(*rows):
        return [{"step": i + 1, "seconds": s, "generated_tokens": t} for i, (s, t) in enumerate(rows)]

    before = steps((50, 500), (40, 600), (30, 400), (36, 640))
    after = steps((25, 500), (60, 2200), (15, 390), (18, 600))  # step 2 looped; step 1 is warm-up
    m = bench.matched_speedup(before, after)
    assert m["steps"] == [3, 4]
    assert m["speedup"] == pytest.approx((30 + 36) / (15 + 18))
    assert bench.matched_speedup(before[:2], after[:2])["speedup"] is None


def test_the_copy_prefills_each_distinct_row_once_and_generates_the_same_tokens():
    """GRPO repeats every prompt over its rollouts: the copy prefills each distinct row once (a prompt
    with an image, one without, in any order), and greedy generation gives the tokens and scores plain
    ``generate`` gives. The same text with another picture is another row."""
    from PIL import Image

    from mmsearch_r1.rl.generation_copy import GenerationCopy, shared_prompt_generate

    model, processor = build_tiny_policy(seed=6)
    copy = GenerationCopy(model).model
    plain = copy.generate.args[1]
    tok = processor.tokenizer
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    rows = [
        processor(text=[f"{vision} Which flag is this?"], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt"),
        processor(text=["What is the capital of Redland, please?"], return_tensors="pt"),
    ]  # fmt: skip
    width = max(r["input_ids"].size(1) for r in rows)
    order = [0, 1, 1, 0, 0, 1]  # which prompt each rollout answers

    def left(key, value):
        return torch.cat([torch.nn.functional.pad(rows[i][key], (width - rows[i][key].size(1), 0), value=value)
                          for i in order])  # fmt: skip

    n_img = order.count(0)
    inputs = {"input_ids": left("input_ids", tok.pad_token_id), "attention_mask": left("attention_mask", 0),
              "mm_token_type_ids": left("mm_token_type_ids", 0),
              "pixel_values": torch.cat([rows[0]["pixel_values"]] * n_img),
              "image_grid_thw": torch.cat([rows[0]["image_grid_thw"]] * n_img)}  # fmt: skip
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id,
                "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    calls = []

    def counted(**kw):
        calls.append(tuple(kw["input_ids"].shape))
        return plain(**kw)

    def check(batch, distinct):
        calls.clear()
        with torch.no_grad():
            want = plain(**batch, **settings)
            got = shared_prompt_generate(copy, counted, **batch, **settings)
        assert calls[0] == (distinct, width - 1)  # the prefill: each distinct row, all but its last token
        assert torch.equal(got.sequences, want.sequences)
        for a, b in zip(got.scores, want.scores, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-3)  # wrong positions move them by ~1e-2

    check(inputs, distinct=2)
    other = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    other["pixel_values"][: len(other["pixel_values"]) // n_img] += 1  # the first image row: another picture
    check(other, distinct=3)
