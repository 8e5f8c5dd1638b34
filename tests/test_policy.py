"""load_policy: tiny, local folders (full, LoRA, QLoRA 4-bit NF4), adapters, save/reload, chat template."""

from __future__ import annotations

import pytest
import torch

from mmsearch_r1.policy.load import Policy, load_policy
from mmsearch_r1.policy.tiny import build_tiny_policy
from mmsearch_r1.protocol.chat_template import TAG_CHAT_TEMPLATE
from mmsearch_r1.protocol.tags import render_turn


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_policy(save_dir=path, seed=3)
    return path


def _logits(policy: Policy, text: str = "<reason>r</reason><answer>Paris</answer>") -> torch.Tensor:
    policy.model.eval()
    ids = policy.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return policy.model(**ids).logits


def test_tiny_has_protocol_installed():
    policy = load_policy("tiny")
    assert policy.kind == "tiny" and not policy.lora
    assert policy.processor.chat_template == TAG_CHAT_TEMPLATE
    assert policy.tokenizer.response_template is not None


def test_local_full_save_reload_is_exact(tiny_dir, tmp_path):
    policy = load_policy(tiny_dir)
    assert policy.kind == "local" and policy.path == str(tiny_dir)
    out = policy.save(tmp_path / "copy")
    again = load_policy(out)
    assert torch.equal(_logits(policy), _logits(again))
    assert again.processor.chat_template == TAG_CHAT_TEMPLATE


def test_lora_only_adapter_trainable_and_reloads(tiny_dir, tmp_path):
    policy = load_policy(tiny_dir, lora=True, lora_r=4)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("visual" not in n for n in trainable)
    with torch.no_grad():  # make the adapter non-trivial so that the round trip means something
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    out = policy.save(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file()
    again = load_policy(out)
    assert again.lora and again.extra["base"] == str(tiny_dir)
    assert torch.allclose(_logits(policy), _logits(again), atol=1e-6)


def test_qlora_loads_nf4_and_trains(tiny_dir):
    policy = load_policy(tiny_dir, qlora=True, lora_r=4)
    assert policy.qlora and policy.lora
    kinds = {type(m).__name__ for n, m in policy.model.named_modules() if n.endswith("q_proj.base_layer")}
    assert kinds == {"Linear4bit"}
    ids = policy.tokenizer("hello", return_tensors="pt")
    policy.model.train()
    loss = policy.model(**ids, labels=ids.input_ids).loss
    loss.backward()
    grads = [p.grad for n, p in policy.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_qlora_adapter_reloads_onto_a_4bit_base_with_its_weights(tiny_dir, tmp_path):
    """A saved QLoRA adapter goes onto the bare 4-bit base: one adapter, its trained weights, no fresh one."""
    policy = load_policy(tiny_dir, qlora=True, lora_r=4)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    saved = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}
    out = policy.save(tmp_path / "qlora_adapter")
    again = load_policy(out, qlora=True)
    assert again.qlora and again.lora and again.extra["base"] == str(tiny_dir)
    loaded = {n: p for n, p in again.model.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys()  # not nested in a second PeftModel
    assert all(torch.equal(loaded[n].detach(), saved[n]) for n in saved)
    assert all(p.requires_grad for p in loaded.values())


def test_bad_inputs_name_the_fix(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match="folder"):
        load_policy(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="dtype"):
        load_policy("tiny", dtype="float77")
    with pytest.raises(ValueError, match="qlora"):
        load_policy("tiny", qlora=True)


def test_chat_template_renders_every_turn_kind():
    policy = load_policy("tiny")
    turns = [
        render_turn("image_search", "I do not know this flag."),
        render_turn("text_search", "I need its capital.", query="capital of Peru"),
        render_turn("answer", "The search says Lima.", answer="Lima"),
    ]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    for i, turn in enumerate(turns):
        messages.append({"role": "assistant", "content": turn})
        if i < 2:
            messages.append({"role": "user", "content": "<information>results</information>"})
    text = policy.processor.apply_chat_template(messages, tokenize=False)
    for turn in turns:
        assert turn + "<|im_end|>" in text
    assert text.count("<|image_pad|>") == 1
