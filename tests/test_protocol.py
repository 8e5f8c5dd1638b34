"""Specification of the tag protocol: how one turn parses, which trajectories are well formed."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from search_fakes import PROTOCOL_FRAGMENTS

from mmsearch_r1.protocol.tags import (
    Budgets,
    count_searches,
    parse_turn,
    render_turn,
    validate_trajectory,
)

R = "<reason>I think.</reason>"


# --- well-formed turns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, answer, query",
    [
        (R + "<answer>Paris</answer>", "answer", "Paris", None),
        (R + "<search><img></search>", "image_search", None, None),
        (R + "<text_search>capital of Peru</text_search>", "text_search", None, "capital of Peru"),
        (R + " some words <answer> Lima </answer>", "answer", "Lima", None),  # text between is allowed
        (R + "<answer>Paris</answer><|im_end|>", "answer", "Paris", None),  # end-of-turn token ignored
        ("  " + R + "<answer>Paris</answer>\n<|endoftext|>\n", "answer", "Paris", None),
    ],
)
def test_well_formed_turns(text, kind, answer, query):
    turn = parse_turn(text)
    assert turn.kind == kind and turn.action == kind
    assert turn.why is None
    assert turn.reason == "I think."
    assert turn.answer == answer and turn.query == query


def test_multi_line_query_is_accepted_and_collapsed():
    turn = parse_turn(R + "<text_search>capital\n  of\tPeru</text_search>")
    assert turn.kind == "text_search" and turn.query == "capital of Peru"


def test_render_then_parse_round_trips():
    for kind, kw in [("answer", {"answer": "Lima"}), ("image_search", {}), ("text_search", {"query": "q x"})]:
        turn = parse_turn(render_turn(kind, "why", **kw))
        assert turn.kind == kind and turn.reason == "why"


def test_render_rejects_missing_payload():
    with pytest.raises(ValueError, match="answer="):
        render_turn("answer", "r")
    with pytest.raises(ValueError, match="query="):
        render_turn("text_search", "r")
    with pytest.raises(ValueError, match="unknown turn kind"):
        render_turn("dance", "r")


# --- malformed turns: each decided deliberately ------------------------------------------------


@pytest.mark.parametrize(
    "text, why, action",
    [
        ("", "empty turn", None),
        ("<answer>Paris</answer>", "missing <reason>", "answer"),  # fires, but bad format
        ("hello " + R + "<answer>Paris</answer>", "text before <reason>", "answer"),
        (R + "<answer>Paris</answer> thanks!", "text after the action", None),
        (R + "<search><img></search> ok", "text after the action", None),
        (R + "<answer>Paris", "unclosed <answer>", None),
        ("<reason>thinking... <answer>Paris</answer>", "unclosed <reason>", "answer"),
        (R + "<text_search>capital of", "unclosed <text_search>", None),
        (R + "<answer>  </answer>", "empty answer", "answer"),
        (R + "<text_search> </text_search>", "empty text-search query", None),
        (R + "<search>cat</search>", "malformed image search", None),
        (R + "<answer>A</answer><answer>B</answer>", "more than one action", "answer"),
        (R + "<search><img></search><answer>B</answer>", "more than one action", "answer"),
        (R + R + "<answer>B</answer>", "more than one <reason>", "answer"),
        ("<reason>maybe <search><img></search></reason><answer>B</answer>", "inside <reason>", "answer"),
        (R + "Unable to answer due to lack of relevant information", "no action", None),
    ],
)
def test_malformed_turns(text, why, action):
    turn = parse_turn(text)
    assert turn.kind == "invalid"
    assert why in turn.why
    assert turn.action == action


def test_invalid_turn_still_exposes_last_answer():
    # The paper extracts the last <answer> even from a badly formatted turn (reward 0.9 / 0.81 rows).
    turn = parse_turn(R + "<answer>A</answer><answer>B</answer>")
    assert turn.kind == "invalid" and turn.answer == "B"


def test_non_string_input_is_invalid_not_an_exception():
    assert parse_turn(None).kind == "invalid"  # type: ignore[arg-type]
    assert parse_turn(b"<answer>x</answer>").kind == "invalid"  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    turn = parse_turn(text)
    assert turn.kind in {"answer", "image_search", "text_search", "invalid"}
    assert (turn.kind == "invalid") == (turn.why is not None)


_pieces = st.sampled_from(PROTOCOL_FRAGMENTS)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=12))
def test_parse_never_raises_on_tag_soup(pieces):
    turn = parse_turn("".join(pieces))
    if turn.kind != "invalid":
        assert turn.kind == turn.action and turn.reason is not None


# --- trajectories ------------------------------------------------------------------------------

A = render_turn("answer", "r", answer="Lima")
I = render_turn("image_search", "r")  # noqa: E741
T = render_turn("text_search", "r", query="capital of Peru")


@pytest.mark.parametrize("seq", [[A], [I, A], [T, A], [I, T, A]])
def test_strict_accepts_the_papers_four_sequences(seq):
    assert validate_trajectory(seq, "strict") == (True, None)


@pytest.mark.parametrize(
    "seq, why",
    [
        ([T, I, A], "not one of the paper's four"),
        ([T, T, A], "not one of the paper's four"),
        ([I, T], "last turn does not answer"),
        ([A, A], "answer before the last turn"),
        ([I, T, T, A], "more than the budget"),
        ([], "no assistant turn"),
        ([I, "<answer>x</answer>"], "turn 2: missing <reason>"),
    ],
)
def test_strict_rejects(seq, why):
    ok, reason = validate_trajectory(seq, "strict")
    assert not ok and why in reason


def test_flexible_allows_any_order_within_budgets():
    assert validate_trajectory([T, I, A], "flexible")[0]
    assert validate_trajectory([T, T, A], "flexible")[0]
    ok, why = validate_trajectory([I, I, A], "flexible")
    assert not ok and "image searches" in why
    assert validate_trajectory([I, I, A], "flexible", Budgets(image=2))[0]
    with pytest.raises(ValueError, match="unknown grammar"):
        validate_trajectory([A], "loose")


def test_count_searches_ignores_the_final_turn():
    assert count_searches([I, T, A]) == {"image_search": 1, "text_search": 1}
    # a search in the last turn is never executed
    assert count_searches([I, T]) == {"image_search": 1, "text_search": 0}
    # a badly formatted search still ran
    assert count_searches(["<search><img></search>", A]) == {"image_search": 1, "text_search": 0}


def test_budgets_apply_under_strict_too_and_grammar_is_checked_first():
    ok, why = validate_trajectory([I, A], "strict", Budgets(image=0))
    assert not ok and "image searches" in why
    with pytest.raises(ValueError, match="unknown grammar"):
        validate_trajectory(["junk"], "loose")
