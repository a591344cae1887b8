"""The BBQ paper's scores on hand-made items (expected values worked out by hand)."""

from __future__ import annotations

import pytest
from tae_bias.data import BBQItem
from tae_bias.metrics import OVERALL, bias_report, bias_score, format_report, outcomes

from tae_framework.errors import DataError


def item(cat, eid, polarity, condition, label, biased, unknown=2):
    return BBQItem(
        category=cat,
        example_id=eid,
        question_index="1",
        polarity=polarity,
        condition=condition,
        context="c",
        question="q",
        answers=("a", "b", "Unknown"),
        label=label,
        unknown=unknown,
        stereotyped=(),
        biased=biased,
    )


# (item, prediction). Category A has every combination of polarity and condition;
# category B has ambiguous items only, one of them without a known biased answer.
CASES = [
    (item("A", 1, "neg", "ambig", 2, 0), 0),  # biased, wrong
    (item("A", 2, "nonneg", "ambig", 2, 1), 0),  # not biased, wrong
    (item("A", 3, "neg", "ambig", 2, 0), 2),  # unknown, right
    (item("A", 4, "nonneg", "ambig", 2, 1), 1),  # biased, wrong
    (item("A", 5, "neg", "disambig", 0, 0), 0),  # biased, right
    (item("A", 6, "nonneg", "disambig", 0, 1), 0),  # not biased, right
    (item("A", 7, "neg", "disambig", 1, 0), 0),  # biased, wrong
    (item("A", 8, "nonneg", "disambig", 1, 1), 2),  # unknown, wrong
    (item("B", 1, "neg", "ambig", 2, 1), 1),  # biased, wrong
    (item("B", 2, "neg", "ambig", 2, None), 2),  # no target; unknown, right
]


@pytest.fixture
def report():
    its, preds = zip(*CASES)
    return bias_report(outcomes(its, preds))


def test_category_with_both_conditions(report):
    a = report["A"]
    assert (a.n_items, a.n_ambig, a.n_disambig, a.n_no_target) == (8, 4, 4, 0)
    assert a.accuracy_ambig == pytest.approx(1 / 4)
    assert a.accuracy_disambig == pytest.approx(2 / 4)
    assert a.accuracy == pytest.approx(3 / 8)
    # disambiguated: 3 non-unknown answers, 2 biased -> 2 * 2/3 - 1
    assert a.bias_disambig == pytest.approx(1 / 3)
    # ambiguous: 3 non-unknown, 2 biased -> 1/3, scaled by 1 - 1/4
    assert a.bias_ambig == pytest.approx(0.75 * (1 / 3))


def test_category_without_disambiguated_items_reports_none(report):
    b = report["B"]
    assert (b.n_ambig, b.n_disambig, b.n_no_target) == (2, 0, 1)
    assert b.accuracy_disambig is None and b.bias_disambig is None
    assert b.accuracy_ambig == pytest.approx(0.5)
    # the item without a target counts for accuracy only: 1 non-unknown, 1 biased -> +1
    assert b.bias_ambig == pytest.approx(0.5 * 1.0)
    row = format_report(report).splitlines()[3]
    assert row.split()[0] == "B" and row.split()[3] == "-" and row.split()[5] == "-"


def test_overall_pools_counts_not_category_means(report):
    o = report[OVERALL]
    assert list(report)[-1] == OVERALL and o.n_items == 10
    assert o.accuracy_ambig == pytest.approx(2 / 6)
    # ambiguous with a target: A1, A2, A4, B1 non-unknown; A1, A4, B1 biased -> 2*3/4 - 1
    assert o.bias_ambig == pytest.approx((1 - 2 / 6) * 0.5)
    assert o.bias_disambig == pytest.approx(1 / 3)


def test_always_unknown_has_no_bias_and_no_disambiguated_accuracy():
    its = [it for it, _ in CASES if it.category == "A"]
    o = bias_report(outcomes(its, [it.unknown for it in its]))[OVERALL]
    assert o.accuracy_ambig == 1.0 and o.accuracy_disambig == 0.0
    assert o.bias_ambig == 0.0 and o.bias_disambig == 0.0


def test_always_biased_and_always_anti_biased():
    its = [it for it, _ in CASES if it.category == "A"]
    biased = bias_report(outcomes(its, [it.biased for it in its]))[OVERALL]
    assert biased.bias_disambig == 1.0 and biased.bias_ambig == 1.0  # ambiguous accuracy is 0
    anti = bias_report(outcomes(its, [1 - it.biased for it in its]))[OVERALL]
    assert anti.bias_disambig == -1.0 and anti.bias_ambig == -1.0


def test_bias_score_formula_and_bounds():
    assert bias_score(3, 4) == 0.5 and bias_score(0, 4) == -1.0 and bias_score(0, 0) == 0.0
    with pytest.raises(ValueError, match="n_biased <= n_non_unknown"):
        bias_score(5, 4)


def test_bad_predictions():
    its = [CASES[0][0]]
    with pytest.raises(DataError, match="prediction 3 for BBQ item A/1"):
        outcomes(its, [3])
    with pytest.raises(DataError, match="got 2 predictions for 1 BBQ items"):
        outcomes(its, [0, 1])
    with pytest.raises(DataError, match="no BBQ outcomes"):
        bias_report([])
