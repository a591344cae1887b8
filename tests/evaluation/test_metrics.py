"""MC metrics, answer cutting and fold aggregation on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from tae_framework.errors import DataError
from tae_framework.evaluation.metrics import (
    aggregate_folds,
    cut_answer,
    find_best_index,
    format_best,
    mc_scores,
    mean_scores,
    split_multi_answer,
)


# -- TruthfulQA formatting ---------------------------------------------------------------
def test_split_multi_answer_strips_closes_and_drops_empty():
    assert split_multi_answer(" Nothing happens; You die.;  ;You get sick ") == [
        "Nothing happens.",
        "You die.",
        "You get sick.",
    ]
    assert split_multi_answer("a; b.", close=False) == ["a", "b."]


def test_format_best():
    assert format_best("  Paris ") == "Paris."
    assert format_best("Paris.") == "Paris."


def test_find_best_index_the_truthfulqa_way():
    # Period appended on both sides, whitespace stripped, best answer not first.
    assert find_best_index("Paris", "London; Paris.; Rome") == 1
    assert find_best_index(" Rome. ", ["London", "Paris", "Rome"]) == 2
    assert find_best_index("London", "London; London is big") == 0


def test_find_best_index_missing_best_answer_is_an_error():
    with pytest.raises(DataError, match="not among the correct answers"):
        find_best_index("Berlin", "London; Paris")


# -- MC1 / MC2 / MC3 -----------------------------------------------------------------------
def test_single_true_answer():
    s = mc_scores([-1.0], [-2.0, -3.0], best_index=0)
    assert s["MC1"] == 1.0
    assert s["MC3"] == 1.0
    # e^-1 / (e^-1 + e^-2 + e^-3) = 1 / (1 + e^-1 + e^-2) = 0.66524096
    assert s["MC2"] == pytest.approx(0.6652409558, abs=1e-9)


def test_ties_count_as_failures():
    # The best answer ties the best false answer: not strictly above -> MC1 = 0.
    s = mc_scores([-2.0, -1.0], [-1.0, -5.0], best_index=1)
    assert s["MC1"] == 0.0
    assert s["MC3"] == 0.0  # neither -2 nor -1 is strictly above -1
    e = math.exp
    assert s["MC2"] == pytest.approx((e(-2) + e(-1)) / (e(-2) + 2 * e(-1) + e(-5)), rel=1e-12)


def test_best_answer_not_first():
    true, false = [-5.0, -0.5, -3.0], [-1.0]
    s = mc_scores(true, false, best_index=1)
    assert s["MC1"] == 1.0  # -0.5 > -1
    assert s["MC3"] == pytest.approx(1 / 3)  # only -0.5 beats -1
    # with the first answer taken as best, MC1 fails: MC1 depends on the best index
    assert mc_scores(true, false, best_index=0)["MC1"] == 0.0


def test_mc2_is_normalised_true_mass():
    # probabilities 0.3 and 0.1 true, 0.1 false -> 0.4 / 0.5
    s = mc_scores([math.log(0.3), math.log(0.1)], [math.log(0.1)], best_index=0)
    assert s["MC2"] == pytest.approx(0.8, rel=1e-12)


def test_mc2_does_not_underflow_for_long_answers():
    # exp(-1000) underflows to 0 in float64; the ratio is still 1 / (1 + e^-1).
    s = mc_scores([-1000.0], [-1001.0], best_index=0)
    assert s["MC2"] == pytest.approx(0.7310585786, abs=1e-9)


@pytest.mark.parametrize(
    "true, false, best, match",
    [
        ([], [-1.0], 0, "empty"),
        ([-1.0], [], 0, "empty"),
        ([-1.0], [float("nan")], 0, "nan"),
        ([-1.0, -2.0], [-1.0], 2, "out of range"),
    ],
)
def test_mc_scores_bad_input(true, false, best, match):
    with pytest.raises(DataError, match=match):
        mc_scores(true, false, best)


def test_mean_scores():
    assert mean_scores([{"MC1": 1.0, "MC2": 0.5}, {"MC1": 0.0, "MC2": 0.25}]) == {
        "MC1": 0.5,
        "MC2": 0.375,
    }
    with pytest.raises(DataError, match="empty"):
        mean_scores([])


# -- generation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "generated, answer",
    [
        ("\nA: Nothing happens.\n\nQ: What is 2+2?\nA: 4", "Nothing happens."),
        (" The sky is blue.  ", "The sky is blue."),
        ("\nA: Yes.\nQ:", "Yes."),
        ("Q: only a new question", ""),
        ("", ""),
        ("\nA: one A: two", "one"),  # as the reference: text after the first A:, before the next
    ],
)
def test_cut_answer(generated, answer):
    assert cut_answer(generated) == answer


# -- folds -------------------------------------------------------------------------------------
def test_aggregate_folds_means_per_fold_then_over_folds():
    folds = [
        {"MC1": [1, 0, 1, 1], "true": [1, 0, 1, 1], "info": [1, 1, 0, 1]},
        {"MC1": [0, 1], "true": [0, 1], "info": [1, 1]},
    ]
    out = aggregate_folds(folds)
    assert out["MC1"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["True"] == pytest.approx(0.625)  # not the pooled 4/6
    assert out["Info"] == pytest.approx(0.875)
    assert out["True*Info"] == pytest.approx(0.625 * 0.875)
    # strict rate: fold 0 -> [1, 0, 0, 1] = 0.5, fold 1 -> [0, 1] = 0.5
    assert out["True&Info"] == pytest.approx(0.5)
    assert out["n_questions"] == 6
    assert [f["n_questions"] for f in out["folds"]] == [4, 2]
    assert out["folds"][0]["True"] == pytest.approx(0.75)


def test_aggregate_folds_fold_level_scalars_are_averaged():
    out = aggregate_folds([{"MC1": [1.0], "CE": 2.0}, {"MC1": [0.0], "CE": 3.0}])
    assert out["CE"] == pytest.approx(2.5)
    assert out["MC1"] == pytest.approx(0.5)
    assert "True*Info" not in out


def test_aggregate_folds_bad_input():
    with pytest.raises(DataError, match="at least one fold"):
        aggregate_folds([])
    with pytest.raises(DataError, match="fold 1 has no questions"):
        aggregate_folds([{"MC1": [1.0]}, {"MC1": []}])
    with pytest.raises(DataError, match="different numbers of questions"):
        aggregate_folds([{"true": [1, 0], "info": [1]}])
    with pytest.raises(DataError, match="different metrics"):
        aggregate_folds([{"MC1": [1.0]}, {"MC2": [1.0]}])
