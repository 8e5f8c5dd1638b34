"""Specification of the prompts: the question is data, results are wrapped, next actions are stated."""

import pytest
from PIL import Image

from mmsearch_r1.protocol.prompts import (
    failed_search_text,
    first_user_content,
    first_user_text,
    image_results_blocks,
    next_step_text,
    text_results_text,
)
from mmsearch_r1.tools.types import ImageHit, TextHit

Q = "Which assistant wrote this?"  # "assistant" broke the paper's question recovery; here it is data


def test_first_turn_carries_the_question_verbatim_and_all_three_actions():
    text = first_user_text(Q)
    assert text.endswith(f"Question: {Q}")
    for tag in ("<reason>", "<answer>", "<search><img></search>", "<text_search>", "<information>"):
        assert tag in text
    blocks = first_user_content(Q)
    assert blocks[0] == {"type": "image"} and blocks[1]["text"] == text


def test_empty_question_is_a_clear_error():
    with pytest.raises(ValueError, match="empty question"):
        first_user_text("  ")


def test_image_results_interleave_thumbnails_and_titles():
    thumb = Image.new("RGB", (8, 8), "red")
    hits = [ImageHit("Flag of Peru", "u1", thumb), ImageHit("Peru - Wikipedia", "u2", None)]
    blocks = image_results_blocks(hits, Q)
    kinds = [b["type"] for b in blocks]
    assert kinds == ["text", "image", "text"]
    assert blocks[0]["text"].startswith("<information>[Image search results]\n1. ")
    assert blocks[1]["image"] is thumb
    tail = blocks[2]["text"]
    assert "Flag of Peru" in tail and "2. Peru - Wikipedia" in tail
    assert "</information>" in tail and f"Question: {Q}" in tail and "<text_search>" in tail


def test_text_results_and_failures():
    text = text_results_text([TextHit("Peru", "u", "Lima is the\ncapital.")], "capital of Peru", Q)
    assert text.startswith(
        "<information>[Text search results for: capital of Peru]\n1. Peru: Lima is the capital."
    )
    assert "</information>" in text and "<text_search>" not in text.split("</information>")[1]
    empty = text_results_text([], "zzz", Q)
    assert "No matching pages" in empty
    failed = failed_search_text("image_search", "budget of 1 image search used up", Q)
    assert "[Image search failed] budget of 1 image search used up" in failed and Q in failed


def test_next_step_lists_only_allowed_actions():
    assert "<text_search>" not in next_step_text(["answer"])
    assert "<search><img></search>" in next_step_text(["answer", "image_search"])
    with pytest.raises(ValueError):
        next_step_text([])
