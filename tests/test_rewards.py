"""Specification of the reward: the paper's table, the options, and properties that always hold."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_r1.protocol.rewards import (
    exact_match,
    golds_of,
    mmsearch_reward,
    normalize_answer,
    penalty_factor,
    reward_parts,
    sub_exact_match,
)
from mmsearch_r1.protocol.tags import render_turn

GOLDS = ["Lima", "Ciudad de los Reyes"]
A_OK = render_turn("answer", "r", answer="lima")
A_BAD = render_turn("answer", "r", answer="Cusco")
I = render_turn("image_search", "r")  # noqa: E741
T = render_turn("text_search", "r", query="capital of Peru")
BROKEN_OK = "<answer>The Lima.</answer>"  # right answer, no <reason>: bad format
BROKEN_BAD = "<answer>Cusco</answer>"


# --- the paper's six values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "turns, expected, row",
    [
        ([A_OK], 1.0, "correct, no search, valid format"),
        ([I, A_OK], 0.91, "correct with search, valid format"),
        ([I, T, A_OK], 0.91, "correct with two searches (penalised once)"),
        ([BROKEN_OK], 0.9, "correct, no search, invalid format"),
        ([I, BROKEN_OK], 0.81, "correct with search, invalid format"),
        ([A_BAD], 0.1, "wrong, valid format"),
        ([T, A_BAD], 0.1, "wrong with search: no penalty on wrong answers"),
        ([BROKEN_BAD], 0.0, "wrong, invalid format"),
        ([I, T], 0.0, "no final answer"),
    ],
)
def test_paper_reward_table(turns, expected, row):
    assert mmsearch_reward(turns, GOLDS) == pytest.approx(expected), row


def test_reward_parts_are_reported():
    parts = reward_parts([I, T, A_OK], GOLDS)
    assert parts.as_dict() == {
        "reward": pytest.approx(0.91),
        "accuracy": 1.0,
        "format": 1.0,
        "searches": 2,
        "image_searches": 1,
        "text_searches": 1,
        "penalty_factor": pytest.approx(0.9),
    }


def test_answer_is_read_from_the_final_turn_only():
    early = "<reason>r</reason>Maybe <answer>Lima</answer>"  # answer in a non-final turn
    assert reward_parts([early, A_BAD], GOLDS).accuracy == 0.0


# --- options -----------------------------------------------------------------------------------


def test_penalty_zero_removes_the_cost_of_searching():
    assert mmsearch_reward([I, T, A_OK], GOLDS, penalty=0.0) == pytest.approx(1.0)


def test_per_call_penalty_compounds():
    assert mmsearch_reward([I, T, A_OK], GOLDS, penalty_mode="per_call") == pytest.approx(0.9 * 0.81 + 0.1)
    assert mmsearch_reward([I, A_OK], GOLDS, penalty_mode="per_call") == pytest.approx(0.91)


def test_tool_costs_weight_each_tool():
    costs = {"image_search": 2.0, "text_search": 0.5}
    assert penalty_factor(True, {"image_search": 1, "text_search": 0}, tool_costs=costs) == pytest.approx(0.8)
    assert penalty_factor(True, {"image_search": 0, "text_search": 1}, tool_costs=costs) == pytest.approx(
        0.95
    )
    f = penalty_factor(True, {"image_search": 1, "text_search": 1}, penalty_mode="per_call", tool_costs=costs)
    assert f == pytest.approx(0.8 * 0.95)
    with pytest.raises(ValueError, match="unknown tools"):
        penalty_factor(True, {"image_search": 1, "text_search": 0}, tool_costs={"maps": 1.0})


def test_flexible_grammar_rewards_other_orders():
    assert mmsearch_reward([T, I, A_OK], GOLDS) == pytest.approx(0.81)  # strict: bad format
    assert mmsearch_reward([T, I, A_OK], GOLDS, grammar="flexible") == pytest.approx(0.91)


def test_subem_and_callable_matchers():
    long = render_turn("answer", "r", answer="It is Lima, Peru")
    assert mmsearch_reward([long], GOLDS) == pytest.approx(0.1)
    assert mmsearch_reward([long], GOLDS, match="subem") == pytest.approx(1.0)
    assert mmsearch_reward([A_BAD], GOLDS, match=lambda pred, golds: True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown match"):
        mmsearch_reward([A_OK], GOLDS, match="fuzzy")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="penalty_mode"):
        mmsearch_reward([I, A_OK], GOLDS, penalty_mode="twice")
    with pytest.raises(ValueError, match="format_weight"):
        mmsearch_reward([A_OK], GOLDS, format_weight=2.0)


# --- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, norm",
    [("The Eiffel Tower!", "eiffel tower"), ("  A  cat ", "cat"), ("U.S.A.", "usa"), ("an apple", "apple")],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_and_sub_exact_match():
    assert exact_match("the lima", GOLDS) and exact_match("Ciudad de los Reyes", GOLDS)
    assert not exact_match("Lima Peru", GOLDS) and sub_exact_match("Lima Peru", GOLDS)
    assert not sub_exact_match("Limassol", ["Lima"])  # whole words only
    assert not exact_match("", GOLDS) and not exact_match(None, GOLDS)
    assert not exact_match("the", ["a"])  # golds that normalise to nothing never match
    assert exact_match("Lima", "Lima")  # a single gold string works too


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalisation_is_idempotent(s):
    assert normalize_answer(normalize_answer(s)) == normalize_answer(s)


_turn = st.one_of(
    st.sampled_from([A_OK, A_BAD, I, T, BROKEN_OK, BROKEN_BAD, "", "<search><img></search>"]),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_turn, min_size=1, max_size=4), st.sampled_from(["strict", "flexible"]))
def test_default_reward_is_always_one_of_the_six_values(turns, grammar):
    r = mmsearch_reward(turns, GOLDS, grammar=grammar)
    assert any(math.isclose(r, v) for v in (1.0, 0.91, 0.9, 0.81, 0.1, 0.0)), r


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_turn, min_size=1, max_size=4),
    st.floats(0, 1),
    st.floats(0, 1),
    st.sampled_from(["once", "per_call"]),
)
def test_reward_is_built_from_its_parts(turns, p, f, mode):
    parts = reward_parts(turns, GOLDS, penalty=p, format_weight=f, penalty_mode=mode)
    n = parts.searches
    expected_factor = 1.0 if not parts.accuracy or n == 0 else ((1 - p) if mode == "once" else (1 - p) ** n)
    assert parts.penalty_factor == pytest.approx(expected_factor)
    assert parts.reward == pytest.approx(
        (1 - f) * parts.accuracy * expected_factor + f * parts.format, abs=1e-9
    )


def test_environment_search_counts_replace_the_text_count():
    # The environment refused the text search (budget): only the image search ran.
    parts = reward_parts([I, T, A_OK], GOLDS, searches={"image_search": 1, "text_search": 0})
    assert parts.searches == 1 and parts.reward == pytest.approx(0.91)
    # No search ran at all (both refused): no penalty.
    assert mmsearch_reward([I, A_OK], GOLDS, searches={"image_search": 0}) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="searches must map"):
        reward_parts([A_OK], GOLDS, searches={"maps": 1})


def test_out_of_range_settings_and_missing_golds_are_named():
    with pytest.raises(ValueError, match="penalty must be in"):
        mmsearch_reward([I, A_OK], GOLDS, penalty=1.5)
    with pytest.raises(ValueError, match="tool_costs"):
        penalty_factor(
            True, {"image_search": 1, "text_search": 0}, penalty=0.6, tool_costs={"image_search": 2}
        )
    with pytest.raises(TypeError, match="golds must be"):
        mmsearch_reward([A_OK], None)


def test_golds_of_joins_answer_and_aliases():
    assert golds_of("Lima", ["Ciudad de los Reyes", "Lima", "", None]) == ["Lima", "Ciudad de los Reyes"]
    assert golds_of("Lima", "LIM") == ["Lima", "LIM"]
    assert golds_of("Lima", None) == ["Lima"]
