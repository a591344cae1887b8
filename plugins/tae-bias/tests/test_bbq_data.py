"""Reading BBQ and deciding which answer is biased."""

from __future__ import annotations

import json

import pytest
from tae_bias import data as bbq_data
from tae_bias.data import load_bbq, parse_bbq_record
from tae_bias.groups import stereotyped_answers

from tae_framework.errors import DataError


def test_directory_of_category_files(bbq_dir):
    items = load_bbq(bbq_dir)
    assert len(items) == 4 * (4 + 3 + 2)
    assert {it.category for it in items} == {"Age", "Religion", "SES"}
    it = items[0]
    assert (it.uid, it.template, it.polarity, it.condition) == ("Age/0", "Age/1", "neg", "ambig")
    assert it.answers == ("The old man", "The boy", "Unknown") and it.unknown == 2 and it.label == 2


def test_categories_select_files_ignoring_case_and_underscores(bbq_dir):
    items = load_bbq(bbq_dir, categories=["religion", "s_e_s"])
    assert {it.category for it in items} == {"Religion", "SES"}


def test_one_jsonl_file_and_category_filter(tmp_path, rows, write):
    f = write(tmp_path / "all.jsonl", rows("Age", 2) + rows("Religion", 1))
    assert {it.category for it in load_bbq(f, categories=["Religion"])} == {"Religion"}


@pytest.mark.parametrize(
    ("polarity", "order", "biased_text"),
    [
        ("neg", (0, 1, 2), "The old man"),  # negative question: the stereotyped group
        ("nonneg", (0, 1, 2), "The boy"),  # non-negative question: the other group
        ("neg", (2, 1, 0), "The old man"),
        ("nonneg", (1, 2, 0), "The boy"),
    ],
)
def test_biased_answer_follows_polarity(record, polarity, order, biased_text):
    it = parse_bbq_record(record(polarity=polarity, order=order))
    assert it.answers[it.biased] == biased_text
    assert it.answers[it.unknown] == "Unknown"
    assert it.stereotyped == (it.answers.index("The old man"),)


def test_unknown_answer_found_from_answer_info_not_the_text(record):
    rec = record(order=(2, 0, 1), unknown_text="Nobody can say")
    it = parse_bbq_record(rec)
    assert it.unknown == 0 and it.label == 0


def test_hub_style_fields_are_accepted(record):
    rec = record(polarity="nonneg")
    rec["answer_label"] = rec.pop("label")
    rec["additional_metadata"] = json.dumps(rec["additional_metadata"])
    it = parse_bbq_record(rec)
    assert it.label == 2 and it.answers[it.biased] == "The boy"


@pytest.mark.parametrize(
    ("labels", "groups", "expected"),
    [
        ([["lowSES-M-Black"], ["highSES-M-Black"]], ["Black"], (0,)),  # Race_x_SES: low income only
        ([["F-Black"], ["M-White"]], ["Black"], (0,)),
        ([["F-Black"], ["F-White"]], ["F-Black"], (0,)),
        ([["F-Black"], ["M-Black"]], ["Black"], (0, 1)),  # both name the group
        ([["cook", "lowSES"], ["judge", "highSES"]], ["low SES"], (0,)),
        ([["trans woman", "trans_F"], ["woman", "nonTrans_F"]], ["trans"], (0,)),
        ([["Margaret", "woman"], ["Robert", "M"]], ["F"], (0,)),
        ([["Nigerian", "Africa"], ["Danish", "Europe"]], ["Nigerian", "Ethiopian"], (0,)),
        ([["South-American", "LatinSouthAmerica"], ["Danish", "Europe"]], ["American"], ()),
        ([["grandson", "nonOld"], ["grandfather", "old"]], ["old"], (1,)),
    ],
)
def test_stereotyped_answers_match_groups(labels, groups, expected):
    info = {"ans0": labels[0], "ans1": labels[1], "ans2": ["Unknown", "unknown"]}
    assert stereotyped_answers(info, groups, unknown=2) == expected


def test_no_biased_answer_when_both_or_neither_name_the_group(record):
    rec = record()
    rec["additional_metadata"]["stereotyped_groups"] = ["martian"]
    assert parse_bbq_record(rec).biased is None


def test_target_column_overrides_the_group_matching(record):
    rec = record(order=(0, 1, 2))
    rec["target_loc"] = 1
    assert parse_bbq_record(rec, target_column="target_loc").biased == 1
    rec["target_loc"] = 2  # the unknown answer cannot be the biased one
    with pytest.raises(DataError, match="target column 'target_loc'"):
        parse_bbq_record(rec, target_column="target_loc")


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("label", [3, -1, "x", None, 1.5, True])
def test_label_outside_0_2_names_the_item(record, label):
    rec = record(condition="disambig", example_id=7)
    rec["label"] = label
    with pytest.raises(DataError, match=r"BBQ item Age/7.*(label|lacks the field)"):
        parse_bbq_record(rec)


def test_ambiguous_item_without_unknown_option(record):
    rec = record(example_id=5)
    rec["answer_info"]["ans2"] = ["Someone", "person"]
    rec["ans2"] = "Someone"
    with pytest.raises(
        DataError,
        match=r"BBQ item Age/5 .*this ambiguous item has no 'unknown' answer.*fix the row",
    ):
        parse_bbq_record(rec)


def test_gold_answer_must_fit_the_context_condition(record):
    with pytest.raises(DataError, match="ambiguous context's gold answer must be the 'unknown'"):
        parse_bbq_record(record(label=0))
    with pytest.raises(DataError, match="disambiguated context's gold answer names a person"):
        parse_bbq_record(record(condition="disambig", label=2))


def test_bad_polarity_and_missing_field(record):
    with pytest.raises(DataError, match="question_polarity must be 'neg' or 'nonneg'"):
        parse_bbq_record(record(question_polarity="positive"))
    rec = record()
    del rec["additional_metadata"]
    with pytest.raises(DataError, match="lacks the field 'additional_metadata'"):
        parse_bbq_record(rec)


def test_categories_the_data_lacks(bbq_dir, tmp_path, rows, write):
    with pytest.raises(
        DataError, match=r"categories \['Nationality'\] have no file.*found: Age, Religion, SES"
    ):
        load_bbq(bbq_dir, categories=["Age", "Nationality"])
    f = write(tmp_path / "one.jsonl", rows("Age", 1))
    with pytest.raises(
        DataError, match=r"categories \['Religion'\] are not in the BBQ data.*it has: Age"
    ):
        load_bbq(f, categories=["Religion"])


def test_empty_data_duplicates_and_missing_paths(tmp_path, rows, write):
    with pytest.raises(DataError, match="no BBQ items"):
        load_bbq(write(tmp_path / "empty.jsonl", []))
    dup = rows("Age", 1)
    with pytest.raises(DataError, match="BBQ item Age/0 appears twice"):
        load_bbq(write(tmp_path / "dup.jsonl", dup + dup[:1]))
    with pytest.raises(DataError, match="does not exist"):
        load_bbq(tmp_path / "nope.jsonl")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="holds no .jsonl files"):
        load_bbq(tmp_path / "empty_dir")


def test_bad_json_line_names_the_line(tmp_path):
    f = tmp_path / "Age.jsonl"
    f.write_text("{not json}\n")
    with pytest.raises(DataError, match=r"Age.jsonl: line 1 is not valid JSON"):
        load_bbq(f)


# -- hub -------------------------------------------------------------------------------------
def test_hub_default_reads_config_all_split_test(monkeypatch, rows):
    import datasets

    calls = []

    def fake_load(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("split")))
        return datasets.Dataset.from_list(rows("Age", 1) + rows("Religion", 1))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    items = load_bbq(categories=["Religion"])
    assert calls == [(bbq_data.DEFAULT_HUB_ID, "All", "test")]
    assert {it.category for it in items} == {"Religion"} and len(items) == 4


def test_other_hub_ids_read_every_split(monkeypatch, rows):
    import datasets

    def fake_load(path, name=None, **kwargs):
        assert path == "someone/bbq" and name is None and "split" not in kwargs
        return datasets.DatasetDict(
            {
                "age": datasets.Dataset.from_list(rows("Age", 1)),
                "ses": datasets.Dataset.from_list(rows("SES", 1)),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert {it.category for it in load_bbq("someone/bbq")} == {"Age", "SES"}


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    import datasets

    def fail(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(
        DataError, match="cannot load BBQ from the hub id 'someone/bbq'.*local directory"
    ):
        load_bbq("someone/bbq")
