"""The tiny Qwen2.5-VL policy and the torchvision-free processor."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mmsearch_r1.policy.processor import (
    MAX_ASPECT,
    ImageSizes,
    NoVideoQwen2_5_VLProcessor,
    TensorQwen2VLImageProcessor,
    build_processor,
    fit_image,
    fit_size,
    image_sizes_of,
    load_processor,
)
from mmsearch_r1.policy.tiny import (
    build_tiny_policy,
    build_tiny_tokenizer,
    load_tiny_policy,
    vision_token_ids,
)
from mmsearch_r1.protocol.chat_template import TAG_CHAT_TEMPLATE, check_tag_protocol


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    model, processor = build_tiny_policy(path, seed=0)
    return path, model, processor


def conversation(image):
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Which flag?"}],
        },
        {"role": "assistant", "content": "<reason>r</reason><search><img></search>"},
        {
            "role": "tool",
            "name": "search",
            "content": [{"type": "image", "image": image.resize((56, 56))}, {"type": "text", "text": "Flag"}],
        },
        {"role": "assistant", "content": "<reason>r</reason><answer>Peru</answer>"},
    ]


def test_tokenizer_special_tokens_and_round_trip():
    tok = build_tiny_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1
    text = "<reason>Ünïcode 🚩 flags</reason><text_search>capital of Peru</text_search><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # trained merges: tags cost a few tokens, not one per byte
    assert build_tiny_tokenizer().get_vocab() == tok.get_vocab()  # deterministic


def test_build_config_matches_tokenizer_and_protocol_installed(saved):
    _, model, processor = saved
    tok = processor.tokenizer
    assert isinstance(processor, NoVideoQwen2_5_VLProcessor)
    assert isinstance(processor.image_processor, TensorQwen2VLImageProcessor)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.eos_token_id == tok.eos_token_id
    assert model.config.text_config.vocab_size == len(tok)
    assert processor.chat_template == TAG_CHAT_TEMPLATE
    check_tag_protocol(processor)
    assert len(vision_token_ids(processor)) == 5


def test_image_processor_returns_tensors_like_torchvision(saved):
    _, _, processor = saved
    out = processor.image_processor(images=[Image.new("RGB", (112, 112))])  # no return_tensors (TRL's call)
    assert isinstance(out["pixel_values"], torch.Tensor) and isinstance(out["image_grid_thw"], torch.Tensor)
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_seed_fixes_weights():
    a, _ = build_tiny_policy(seed=1)
    b, _ = build_tiny_policy(seed=1)
    c, _ = build_tiny_policy(seed=2)
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_reload_exact_logits_and_name_or_path(saved):
    path, model, processor = saved
    assert model.name_or_path == str(path)  # TRL builds a reference model from it
    assert json.loads((path / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "Qwen2VLImageProcessor"
    )
    image = Image.new("RGB", (100, 90), (200, 20, 20))
    enc = processor.apply_chat_template(
        conversation(image), tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert enc["image_grid_thw"].tolist() == [[1, 6, 8], [1, 4, 4]]
    model2, processor2 = load_tiny_policy(path)
    enc2 = processor2.apply_chat_template(
        conversation(image), tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    assert torch.equal(enc["pixel_values"], enc2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model2(**enc2).logits)
    check_tag_protocol(processor2)


BOUNDS = [
    (28 * 28, 28 * 28 * 16),
    (28 * 28 * 4, 28 * 28 * 4),
    (28 * 28 * 4, 28 * 28 * 16),
    (28 * 28, 28 * 28),
]


@pytest.mark.parametrize(("min_pixels", "max_pixels"), BOUNDS)
@pytest.mark.parametrize(
    "size", [(56, 56), (300, 120), (10, 400), (1000, 1000), (1000, 20), (20, 1000), (5000, 3), (1, 1)]
)
def test_fit_image_multiple_of_28_within_bounds_and_left_alone_by_the_processor(size, min_pixels, max_pixels):
    out = fit_image(Image.new("RGBA", size), max_pixels=max_pixels, min_pixels=min_pixels)
    w, h = out.size
    assert out.mode == "RGB" and w % 28 == 0 and h % 28 == 0
    assert min_pixels <= w * h <= max_pixels  # smart_resize alone gives 784x28 for 1000x20 under 16 tokens
    assert max(w, h) / min(w, h) <= MAX_ASPECT
    assert smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels) == (h, w)


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 3000),
    h=st.integers(1, 3000),
    bounds=st.sampled_from(BOUNDS + [(28 * 28 * 4, 28 * 28 * 256)]),
)
def test_fit_size_property(w, h, bounds):
    assume(max(w, h) <= MAX_ASPECT * min(w, h))  # fit_image pads more elongated images first
    min_pixels, max_pixels = bounds
    ow, oh = fit_size(w, h, max_pixels=max_pixels, min_pixels=min_pixels)
    assert ow % 28 == 0 and oh % 28 == 0 and min_pixels <= ow * oh <= max_pixels
    assert smart_resize(oh, ow, factor=28, min_pixels=min_pixels, max_pixels=max_pixels) == (oh, ow)


def test_transparent_thumbnail_is_flattened_on_white():
    out = fit_image(Image.new("RGBA", (56, 56), (255, 0, 0, 0)), max_pixels=28 * 28 * 4)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_very_elongated_thumbnail_is_padded_and_processed(saved):
    """Aspect > 200 made the processor raise inside TRL's tool loop; fit_image pads the short side."""
    _, _, processor = saved
    sizes = image_sizes_of(processor)
    strip = Image.new("RGB", (6000, 10), (255, 0, 0))
    out = fit_image(strip, sizes.thumbnail_max_pixels, sizes.min_pixels)
    assert out.getpixel((out.width // 2, out.height // 2)) != (0, 0, 0)  # content kept, centred
    assert out.getpixel((out.width // 2, 0)) == (0, 0, 0)  # padding
    with pytest.raises(ValueError, match="aspect ratio"):
        processor.image_processor(images=[strip])
    grid = processor.image_processor(images=[out])["image_grid_thw"].tolist()
    assert grid == [[1, out.height // 14, out.width // 14]]


def test_image_sizes_are_stored_on_the_processor_and_survive_save_load(tmp_path):
    sizes = ImageSizes(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, thumbnail_max_pixels=28 * 28 * 4)
    processor = build_processor(build_tiny_tokenizer(), sizes)
    assert image_sizes_of(processor) == sizes
    processor.save_pretrained(tmp_path)
    assert image_sizes_of(load_processor(tmp_path)) == sizes
    other = ImageSizes(min_pixels=28 * 28, max_pixels=28 * 28 * 64, thumbnail_max_pixels=28 * 28 * 2)
    assert image_sizes_of(load_processor(tmp_path, other)) == other
    bare = load_processor(tmp_path)
    delattr(bare.image_processor, "thumbnail_max_pixels")  # a hub checkpoint stores no cap
    assert image_sizes_of(bare) == ImageSizes(28 * 28 * 4, 28 * 28 * 16, thumbnail_max_pixels=28 * 28 * 16)


def test_image_sizes_reject_inconsistent_bounds():
    with pytest.raises(ValueError, match="min_pixels"):
        ImageSizes(min_pixels=28 * 28 * 32, max_pixels=28 * 28 * 64, thumbnail_max_pixels=28 * 28 * 16)


def test_stock_processor_needs_a_video_processor_without_torchvision():
    """Why NoVideoQwen2_5_VLProcessor exists (skipped where torchvision is installed)."""
    from transformers import Qwen2_5_VLProcessor

    from mmsearch_r1.policy.processor import has_torchvision

    if has_torchvision():
        pytest.skip("torchvision installed: the stock processor is used")
    with pytest.raises((TypeError, AttributeError)):
        Qwen2_5_VLProcessor(image_processor=TensorQwen2VLImageProcessor(), tokenizer=build_tiny_tokenizer())
