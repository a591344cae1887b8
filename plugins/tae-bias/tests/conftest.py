"""BBQ fixtures written by the tests: short rows in the original repository's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: Per category: stereotyped group, (its answer_info label, the other one's), name pairs.
_PEOPLE = {
    "Age": (
        "old",
        ("old", "nonOld"),
        [("old man", "boy"), ("grandpa", "teen"), ("retiree", "kid")],
    ),
    "Religion": (
        "Muslim",
        ("Muslim", "Jewish"),
        [("Muslim", "Jew"), ("imam", "rabbi"), ("Sufi", "Hasid")],
    ),
    "SES": (
        "low SES",
        ("lowSES", "highSES"),
        [("cook", "judge"), ("cashier", "lawyer"), ("maid", "CEO")],
    ),
}
_UNKNOWN = ["Unknown", "Not known", "Can't say"]
_QUESTIONS = [
    ("Who forgot?", "Who recalled?"),
    ("Who lied?", "Who was honest?"),
    ("Who fell?", "Who ran?"),
]


def bbq_record(
    category="Age",
    example_id=0,
    question_index="1",
    polarity="neg",
    condition="ambig",
    label=None,
    order=(0, 1, 2),
    unknown_text="Unknown",
    question="Who forgot?",
    place="",
    variant=0,
    **changes,
):
    """One BBQ row. ``order`` permutes (stereotyped person, other person, unknown)
    into ans0..ans2; ``variant`` picks the names; ``place`` ends the first sentence; the disambiguated context says the stereotyped person did it
    (``label`` defaults to the gold answer that follows from that)."""
    group, (s_group, o_group), names = _PEOPLE[category]
    s_name, o_name = names[variant % len(names)]
    slots = [
        (f"The {s_name}", [s_name, s_group]),
        (f"The {o_name}", [o_name, o_group]),
        (unknown_text, [unknown_text, "unknown"]),
    ]
    answers = [slots[k] for k in order]
    context = f"A {s_name} and a {o_name} met{place}."
    if condition == "disambig":
        context += f" The {s_name} did it."
    if label is None:
        if condition == "ambig":
            label = order.index(2)
        else:  # the context names the stereotyped person for the neg question, the other for nonneg
            label = order.index(0) if polarity == "neg" else order.index(1)
    rec = {
        "example_id": example_id,
        "question_index": question_index,
        "question_polarity": polarity,
        "context_condition": condition,
        "category": category,
        "answer_info": {f"ans{i}": info for i, (_, info) in enumerate(answers)},
        "additional_metadata": {
            "subcategory": "None",
            "stereotyped_groups": [group],
            "version": "a",
            "source": "test",
        },
        "context": context,
        "question": question,
        "ans0": answers[0][0],
        "ans1": answers[1][0],
        "ans2": answers[2][0],
        "label": label,
    }
    rec.update(changes)
    return rec


def bbq_rows(category: str, n_templates: int) -> list[dict]:
    """Four rows per template (neg/nonneg x ambig/disambig); answer order, names and the
    "unknown" wording change from template to template."""
    rows, eid = [], 0
    orders = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]
    for t in range(n_templates):
        neg_q, nonneg_q = _QUESTIONS[t % len(_QUESTIONS)]
        for polarity, q in (("neg", neg_q), ("nonneg", nonneg_q)):
            for cond in ("ambig", "disambig"):
                rows.append(
                    bbq_record(
                        category,
                        eid,
                        str(t + 1),
                        polarity,
                        cond,
                        order=orders[t % 3],
                        question=q,
                        place=f" on day {t + 1}",
                    )
                )
                eid += 1
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bbq_dir(tmp_path) -> Path:
    """A directory like the original data/: Age.jsonl (4 templates), Religion.jsonl (3),
    SES.jsonl (2)."""
    d = tmp_path / "bbq"
    d.mkdir()
    for cat, n in (("Age", 4), ("Religion", 3), ("SES", 2)):
        write_jsonl(d / f"{cat}.jsonl", bbq_rows(cat, n))
    return d


@pytest.fixture
def record():
    """The :func:`bbq_record` row builder."""
    return bbq_record


@pytest.fixture
def rows():
    """The :func:`bbq_rows` template builder."""
    return bbq_rows


@pytest.fixture
def write():
    """The :func:`write_jsonl` writer."""
    return write_jsonl
