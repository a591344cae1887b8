"""Template folds never leak; fitting pairs follow the context condition."""

from __future__ import annotations

import pytest
from tae_bias.data import load_bbq, parse_bbq_record
from tae_bias.fitting import contrast_pairs, fitting_dataset
from tae_bias.folds import check_folds, items_of, template_folds
from tae_bias.protocol import PromptConfig

from tae_framework.errors import DataError
from tae_framework.tasks.base import Fold


@pytest.mark.parametrize("num_folds", [2, 3])
def test_no_template_is_both_fitted_on_and_tested(bbq_dir, num_folds):
    items = load_bbq(bbq_dir)
    folds = template_folds(items, num_folds=num_folds, seed=3)
    check_folds(folds, items)
    tested = [u for f in folds for u in f.test]
    assert sorted(tested) == sorted(it.uid for it in items)  # every item tested exactly once
    template_of = {it.uid: it.template for it in items}
    for f in folds:
        test_items = items_of(items, f.test)
        assert [it.uid for it in test_items] == list(f.test)
        fit = fitting_dataset(items_of(items, f.development))
        fit_groups = {e.group for e in fit}
        assert fit_groups <= set(f.development)
        fit_templates = {template_of[g] for g in fit_groups}
        assert not fit_templates & {it.template for it in test_items}
        # the texts too: no fitting prompt is a test prompt (same template => same wording)
        assert not {e.prompt for e in fit} & {
            f"{it.context}\n\nQ: {it.question}\nA:" for it in test_items
        }


def test_every_fold_tests_every_category_with_enough_templates(bbq_dir):
    items = load_bbq(bbq_dir)  # Age: 4 templates, Religion: 3, SES: 2
    for f in template_folds(items, num_folds=2):
        assert {u.split("/")[0] for u in f.test} == {"Age", "Religion", "SES"}


def test_folds_are_seeded(bbq_dir):
    items = load_bbq(bbq_dir)
    assert template_folds(items, seed=1) == template_folds(items, seed=1)
    assert any(
        a.test != b.test
        for a, b in zip(template_folds(items, seed=1), template_folds(items, seed=2))
    )


def test_leaky_folds_are_caught(bbq_dir):
    items = load_bbq(bbq_dir)
    good = template_folds(items)
    f0, f1 = good
    # one item of a tested template moved into training: its template now leaks
    moved = f0.test[0]
    leaky = Fold(0, test=f0.test[1:], train=(*f0.train, moved), val=f0.val)
    with pytest.raises(
        DataError, match=r"fold 0: template\(s\) \['Age/\d'\] are both tested and fitted on"
    ):
        check_folds([leaky, f1], items)
    # a whole template of fold 0 tested again in fold 1
    twice = {it.uid for it in items if it.template == items_of(items, f0.test)[0].template}
    f1_twice = Fold(
        1,
        test=(*f1.test, *sorted(twice)),
        train=tuple(u for u in f1.train if u not in twice),
        val=tuple(u for u in f1.val if u not in twice),
    )
    with pytest.raises(DataError, match="is tested in folds 0 and 1"):
        check_folds([f0, f1_twice], items)
    with pytest.raises(DataError, match="tested in no fold"):
        check_folds([f0], items)
    assert {it.template for it in items_of(items, f0.test)}.isdisjoint(
        {it.template for it in items_of(items, f0.development)}
    )


def test_too_few_templates(tmp_path, rows, write):
    items = load_bbq(write(tmp_path / "a.jsonl", rows("Age", 2)))
    with pytest.raises(DataError, match="2 BBQ template.*cannot make 3 folds"):
        template_folds(items, num_folds=3)


def test_fitting_pairs(record):
    amb_neg = parse_bbq_record(record(polarity="neg", order=(1, 0, 2)))
    amb_nonneg = parse_bbq_record(record(polarity="nonneg", order=(1, 0, 2)))
    dis = parse_bbq_record(record(condition="disambig", polarity="nonneg", order=(2, 1, 0)))

    def texts(it):
        aligned, misaligned = contrast_pairs(it)
        return [it.answers[aligned], [it.answers[m] for m in misaligned]]

    # ambiguous: unknown (aligned) vs the answer the stereotype points to (misaligned)
    assert texts(amb_neg) == ["Unknown", ["The old man"]]
    assert texts(amb_nonneg) == ["Unknown", ["The boy"]]
    # disambiguated: gold vs the other person
    assert dis.answers[dis.label] == "The boy"
    assert texts(dis) == ["The boy", ["The old man"]]
    data = fitting_dataset([amb_neg, dis], PromptConfig(completion=" -> {answer}"))
    assert [(e.completion, e.label, e.group) for e in data] == [
        (" -> Unknown", 1, "Age/0"),
        (" -> The old man", 0, "Age/0"),
        (" -> The boy", 1, "Age/0"),
        (" -> The old man", 0, "Age/0"),
    ]
    assert data[0].prompt == "A old man and a boy met.\n\nQ: Who forgot?\nA:"


def test_items_without_a_biased_answer_contrast_unknown_with_both_people(record):
    rec = record(example_id=4)
    rec["additional_metadata"]["stereotyped_groups"] = ["martian"]
    it = parse_bbq_record(rec)
    data = fitting_dataset([it])
    assert [(e.completion, e.label, e.group) for e in data] == [
        (" Unknown", 1, "Age/4"),
        (" The old man", 0, "Age/4"),
        (" The boy", 0, "Age/4"),
    ]
    with pytest.raises(DataError, match="no BBQ items"):
        fitting_dataset([])


def test_every_development_item_is_a_group_of_the_fitting_data(bbq_dir):
    from tae_bias.task import BBQTask

    task = BBQTask.load(source=str(bbq_dir), num_shots=2)
    for fold in task.folds():
        data = task.fitting_data(fold)
        assert {e.group for e in data} == set(fold.development)
        mask = data.validation_mask(fold.val)  # what the runner passes to fit
        assert 0 < int(mask.sum()) < len(data)
        for s in task._shots(fold):  # a shot's fitting prompt holds the other shot, never itself
            prompt = next(e.prompt for e in data if e.group == s.uid)
            assert prompt.count("\nA:") == 2


def test_fitting_subsample_is_balanced_and_leaves_the_test_parts_alone(bbq_dir):
    from collections import Counter

    from tae_bias.folds import subsample_development
    from tae_bias.task import BBQTask

    items = load_bbq(bbq_dir)
    full = template_folds(items)
    small = subsample_development(full, items, per_template=2, seed=0)
    check_folds(small, items)
    by_uid = {it.uid: it for it in items}
    for f, s in zip(full, small):
        assert s.test == f.test and set(s.development) <= set(f.development)
        per_template = Counter(by_uid[u].template for u in s.development)
        assert set(per_template.values()) == {2}  # every development template, 2 items each
        # the two kept items of a template come from different (condition, polarity) strata
        for t in per_template:
            kept = [by_uid[u] for u in s.development if by_uid[u].template == t]
            assert len({(it.condition, it.polarity) for it in kept}) == 2
    task = BBQTask.load(source=str(bbq_dir), fit_per_template=3)
    for fold in task.folds():
        data = task.fitting_data(fold)
        assert {e.group for e in data} == set(fold.development)
        data.validation_mask(fold.val)
    with pytest.raises(DataError, match="per_template must be at least 1"):
        subsample_development(full, items, per_template=0)
