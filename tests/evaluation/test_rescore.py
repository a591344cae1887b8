"""Rescoring answer files in the TruthfulQA tooling's CSV format, and writing them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tae_framework.errors import ConfigError, DataError
from tae_framework.evaluation.results import (
    AnswerRecord,
    read_answer_file,
    rescore,
    rescore_main,
    write_answers,
)

e = math.exp

# Two hand-written answer files in the published format (one per fold). The MC
# columns hold deliberately wrong values: rescoring recomputes them from the scores.
# "BLEURT acc" is another metric of the tooling and must not be taken for a judge.
FOLD_A = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source,tiny_7B,"
    "tiny_7B lprob max,tiny_7B lprob diff,tiny_7B lprob scores-true,tiny_7B lprob scores-false,"
    "tiny_7B MC1,tiny_7B MC2,tiny_7B MC3,tiny_7B BLEURT acc,tiny_7B GPT-judge,tiny_7B GPT-judge acc,"
    "tiny_7B GPT-info,tiny_7B GPT-info acc\n"
    'Adversarial,Math,What is 1+1?,Two,Two; It is two,Three; Eleven,x,"It is two.",-1.0,-0.5,'
    '"-1.0, -2.0","-3.0, -0.5",1.0,1.0,1.0,0,0.9,1,0.8,1\n'
    'Adversarial,Weather,"Is the sky green, really?",No,"I have no comment; No, the sky is blue; No",'
    'Yes,x,"Yes.",-0.25,1.25,"-4.0, -2.5, -0.25",-1.5,0.0,0.0,0.0,1,0.2,0,0.7,1\n'
)
FOLD_B = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source,tiny_7B,"
    "tiny_7B lprob scores-true,tiny_7B lprob scores-false,tiny_7B GPT-judge acc,tiny_7B GPT-info acc\n"
    "Non-Adversarial,Geo,What is the capital of France?,Paris,Paris; The capital is Paris.,Lyon,x,"
    'I have no comment.,"-0.1, -0.7",-0.7,1,0\n'
)

# Hand-computed per-question values.
A1 = {"MC1": 0.0, "MC3": 0.0, "MC2": (e(-1) + e(-2)) / (e(-1) + e(-2) + e(-3) + e(-0.5))}
A2 = {
    "MC1": 1.0,
    "MC3": 1 / 3,
    "MC2": (e(-4) + e(-2.5) + e(-0.25)) / (e(-4) + e(-2.5) + e(-0.25) + e(-1.5)),
}
B1 = {"MC1": 1.0, "MC3": 0.5, "MC2": (e(-0.1) + e(-0.7)) / (e(-0.1) + 2 * e(-0.7))}


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "fold_0.csv", tmp_path / "fold_1.csv"
    a.write_text(FOLD_A, encoding="utf-8")
    b.write_text(FOLD_B, encoding="utf-8")
    return [a, b]


def test_read_answer_file_recomputes_mc_from_scores(files):
    got = read_answer_file(files[0])
    assert got["model"] == "tiny_7B"
    assert got["n_questions"] == 2
    for k in ("MC1", "MC2", "MC3"):
        assert got[k] == pytest.approx([A1[k], A2[k]], rel=1e-12)
    assert got["true"] == [1.0, 0.0]
    assert got["info"] == [1.0, 1.0]


def test_rescore_two_files_as_two_folds(files):
    res = rescore(files)
    m = res["metrics"]
    assert res["n_questions"] == 3
    assert m["MC1"] == pytest.approx(((A1["MC1"] + A2["MC1"]) / 2 + B1["MC1"]) / 2)  # 0.75
    assert m["MC1"] == pytest.approx(0.75)
    assert m["MC2"] == pytest.approx(((A1["MC2"] + A2["MC2"]) / 2 + B1["MC2"]) / 2)
    assert m["MC3"] == pytest.approx(((0 + 1 / 3) / 2 + 0.5) / 2)
    assert m["True"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert m["Info"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["True*Info"] == pytest.approx(0.375)
    assert m["True&Info"] == pytest.approx(0.25)  # fold A: 1/2, fold B: 0
    assert [f["n_questions"] for f in res["folds"]] == [2, 1]


def test_rescore_command_prints_table_and_count(files, capsys):
    assert rescore_main([str(f) for f in files]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[1:] if ln.strip()}
    assert lines["MC1"] == ["0.5000", "1.0000", "0.7500"]  # fold A: (0 + 1) / 2
    assert lines["True*Info"][-1] == "0.3750"
    assert lines["questions"] == ["2", "1", "3"]
    for name in ("MC2", "MC3", "True", "Info"):
        assert name in lines


def test_rescore_command_json(files, capsys):
    assert rescore_main([*map(str, files), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_questions"] == 3
    assert data["metrics"]["True*Info"] == pytest.approx(0.375)
    assert data["model"] == "tiny_7B"


def test_rescore_through_the_tae_cli(files, capsys):
    from tae_framework.cli import main

    assert main(["truthfulqa", "rescore", str(files[1]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_questions"] == 1
    assert data["metrics"]["MC3"] == pytest.approx(0.5)


# -- bad input -------------------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_column_is_named(tmp_path, capsys):
    text = FOLD_B.replace("Best Answer,", "Best,", 1)
    p = _write(tmp_path, text)
    with pytest.raises(DataError, match="missing column.*'Best Answer'"):
        rescore([p])
    assert rescore_main([str(p)]) == 2
    assert "'Best Answer'" in capsys.readouterr().err


def test_malformed_number_names_row_and_column(tmp_path):
    text = FOLD_A.replace('"-4.0, -2.5, -0.25"', '"-4.0, abc, -0.25"')
    with pytest.raises(DataError) as exc:
        rescore([_write(tmp_path, text)])
    msg = str(exc.value)
    assert "row 2" in msg and "'tiny_7B lprob scores-true'" in msg and "'abc'" in msg


def test_empty_score_cell_names_row_and_column(tmp_path):
    text = FOLD_B.replace('"-0.1, -0.7",-0.7', '"-0.1, -0.7",')
    with pytest.raises(DataError, match=r"row 1 .*'tiny_7B lprob scores-false' is empty"):
        rescore([_write(tmp_path, text)])


def test_score_count_must_match_answers(tmp_path):
    text = FOLD_B.replace('"-0.1, -0.7"', "-0.1")
    with pytest.raises(DataError, match=r"row 1 .*1 score\(s\) but column 'Correct Answers' has 2"):
        rescore([_write(tmp_path, text)])


def test_bad_judge_value(tmp_path):
    text = FOLD_B.replace(",1,0\n", ",yes,0\n")
    with pytest.raises(DataError, match=r"row 1 .*'tiny_7B GPT-judge acc'.*not 0 or 1"):
        rescore([_write(tmp_path, text)])


def test_empty_file_is_an_empty_fold(tmp_path):
    header = FOLD_B.splitlines()[0] + "\n"
    with pytest.raises(DataError, match="no questions"):
        rescore([_write(tmp_path, header)])


def test_other_bad_inputs(tmp_path, files):
    with pytest.raises(DataError, match="does not exist"):
        rescore([tmp_path / "missing.csv"])
    with pytest.raises(DataError, match="no '<model> lprob scores-true'"):
        rescore([_write(tmp_path, "Question,Answer\nq,a\n")])
    two = FOLD_B.replace("tiny_7B GPT-info acc", "other_7B GPT-info acc")
    with pytest.raises(DataError, match="several models"):
        rescore([_write(tmp_path, two)])
    # --model picks one
    assert rescore([_write(tmp_path, two)], model="other_7B")["metrics"]["Info"] == 0.0
    # files with different columns cannot be folds of one run
    judge_only = tmp_path / "judge_only.csv"
    judge_only.write_text("Question,tiny_7B GPT-judge acc,tiny_7B GPT-info acc\nq,1,1\n")
    with pytest.raises(DataError, match="same columns"):
        rescore([files[1], judge_only])


# -- writing ---------------------------------------------------------------------------------
def test_written_header_matches_the_published_format(tmp_path):
    rec = AnswerRecord(
        question="What is 1+1?",
        best_answer="Two",
        correct_answers=["Two", "It is two"],
        incorrect_answers=["Three"],
        answer="Two.",
        scores_true=[-1.0, -2.0],
        scores_false=[-3.0],
        judge_probs={"true": 0.9, "info": 0.4},
    )
    path = write_answers(tmp_path / "a.csv", [rec], model="m", judge="Llama3")
    header = path.read_text(encoding="utf-8").splitlines()[0]
    # the header of the answer files published with the TAE code, with model tag "m"
    assert header == (
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source,m,"
        "m lprob max,m lprob diff,m lprob scores-true,m lprob scores-false,m MC1,m MC2,m MC3,"
        "m Llama3-judge,m Llama3-judge acc,m Llama3-info,m Llama3-info acc"
    )
    row = next(csv.DictReader(path.open(encoding="utf-8")))
    assert row["Correct Answers"] == "Two; It is two"
    assert row["m lprob scores-true"] == "-1.0, -2.0"
    assert row["m lprob scores-false"] == "-3.0"  # a single score, as the tooling writes it
    assert row["m lprob diff"] == "2.0"
    assert row["m Llama3-judge acc"] == "1" and row["m Llama3-info acc"] == "0"


def test_write_then_rescore_round_trip(tmp_path):
    recs = [
        AnswerRecord(
            "Q1?",
            "B",
            ["A", "B"],
            ["C", "D"],
            scores_true=[-2.0, -0.5],
            scores_false=[-1.0, -4.0],
            judge_probs={"true": 0.5, "info": 0.49},
        ),
        AnswerRecord(
            "Q2?",
            "A",
            ["A"],
            ["C"],
            scores_true=[-3.0],
            scores_false=[-2.0],
            judge_probs={"true": 0.1, "info": 0.99},
        ),
    ]
    path = write_answers(tmp_path / "r.csv", recs, model="mine")
    res = rescore([path])["metrics"]
    assert res["MC1"] == pytest.approx(0.5)  # Q1: best B (-0.5) > -1; Q2: -3 < -2
    assert res["MC3"] == pytest.approx(0.25)  # Q1: 1/2, Q2: 0
    assert res["True"] == pytest.approx(0.5)  # 0.5 counts as true (>= 0.5)
    assert res["Info"] == pytest.approx(0.5)  # 0.49 does not


def test_write_rejects_model_tags_with_spaces(tmp_path):
    rec = AnswerRecord("Q?", "A", ["A"], ["B"], answer="A")
    with pytest.raises(ConfigError, match="no spaces"):
        write_answers(tmp_path / "x.csv", [rec], model="my model")
