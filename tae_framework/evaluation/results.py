"""Per-question answer files in the TruthfulQA tooling's CSV format, and rescoring.

The format is the one written by the TruthfulQA code (``sylinrl/TruthfulQA``) and
by the ITI and TAE reference code built on it, e.g. the answer files published
with TAE. One row per question; ``<model>`` is a tag without spaces:

* ``Type``, ``Category``, ``Question``, ``Best Answer``, ``Correct Answers``,
  ``Incorrect Answers``, ``Source``: the question's fields, as in ``TruthfulQA.csv``
  (answers joined with ``"; "``; the tooling appends the periods when it splits);
* ``<model>``: the generated answer (cut at the next ``Q:``);
* ``<model> lprob max``: max of the true answers' log-probabilities;
  ``<model> lprob diff``: max true minus max false;
* ``<model> lprob scores-true``: the true answers' summed log-probabilities,
  ``", "``-separated, in ``Correct Answers`` order (one number: no comma);
  ``<model> lprob scores-false``: the same for ``Incorrect Answers``;
* ``<model> MC1``, ``<model> MC2``, ``<model> MC3``: per-question MC metrics;
* ``<model> <judge>-judge`` and ``<model> <judge>-info``: the truth / info judges'
  probabilities (e.g. ``GPT-judge``, ``Llama3-info``), each followed by an ``... acc``
  column with the 0/1 decision at 0.5.

:func:`rescore` recomputes MC1/MC2/MC3 from the score columns (the best answer's
index found as the tooling does) and reads True / Info from the ``acc`` columns;
each file is one fold (see :func:`~tae_framework.evaluation.metrics.aggregate_folds`).
``tae truthfulqa rescore FILE.csv [FILE.csv ...] [--json]`` runs it
(:func:`rescore_main`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .metrics import aggregate_folds, find_best_index, mc_scores, split_multi_answer

__all__ = [
    "BASE_COLUMNS",
    "AnswerRecord",
    "format_rescore",
    "judge_column",
    "read_answer_file",
    "rescore",
    "rescore_main",
    "write_answers",
]

#: Question columns of ``TruthfulQA.csv``, first in every answer file.
BASE_COLUMNS: tuple[str, ...] = (
    "Type",
    "Category",
    "Question",
    "Best Answer",
    "Correct Answers",
    "Incorrect Answers",
    "Source",
)

_SCORES_TRUE = " lprob scores-true"
_SCORES_FALSE = " lprob scores-false"


def judge_column(model: str, judge: str, metric: str) -> str:
    """Column of a judge's probability: ``"<model> <judge>-judge"`` for the truth metric
    (``"true"``), ``"<model> <judge>-info"`` for ``"info"``, ``"<model> <judge>-<metric>"``
    otherwise. Append ``" acc"`` for the thresholded 0/1 column."""
    suffix = "judge" if metric == "true" else metric
    return f"{model} {judge}-{suffix}"


@dataclass
class AnswerRecord:
    """Everything the answer file holds about one question (optional parts may be None)."""

    question: str
    best_answer: str
    correct_answers: Sequence[str]
    incorrect_answers: Sequence[str]
    type: str = ""
    category: str = ""
    source: str = ""
    answer: str | None = None
    scores_true: Sequence[float] | None = None
    scores_false: Sequence[float] | None = None
    judge_probs: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_item(cls, item: Any, **values: Any) -> AnswerRecord:
        """From a task's :class:`~tae_framework.tasks.base.EvalItem` (TruthfulQA meta fields)."""
        meta = dict(item.meta)
        return cls(
            question=item.question,
            best_answer=meta.get("best_answer", ""),
            correct_answers=list(meta.get("correct_answers", [])),
            incorrect_answers=list(meta.get("incorrect_answers", [])),
            type=meta.get("type", ""),
            category=meta.get("category", ""),
            source=meta.get("source", ""),
            **values,
        )


def _num(x: float) -> str:
    return repr(float(x))


def write_answers(
    path: str | Path, records: Sequence[AnswerRecord], model: str, judge: str = "hf"
) -> Path:
    """Write per-question results in the TruthfulQA tooling format; returns the path.

    MC columns are written when every record has scores, the answer column when
    every record has an answer, and one probability + ``acc`` column pair per judge
    metric present in every record.
    """
    if not model or any(c.isspace() for c in model):
        raise ConfigError(
            f"model tag {model!r} must be non-empty and contain no spaces: the TruthfulQA tooling "
            "splits column names at the first space"
        )
    if not records:
        raise DataError("no answer records to write")
    has_mc = all(r.scores_true is not None and r.scores_false is not None for r in records)
    has_answer = all(r.answer is not None for r in records)
    metrics = [m for m in records[0].judge_probs if all(m in r.judge_probs for r in records)]
    columns = list(BASE_COLUMNS)
    if has_answer:
        columns.append(model)
    if has_mc:
        columns += [f"{model} lprob {c}" for c in ("max", "diff", "scores-true", "scores-false")]
        columns += [f"{model} MC{k}" for k in (1, 2, 3)]
    for m in metrics:
        col = judge_column(model, judge, m)
        columns += [col, f"{col} acc"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row: dict[str, Any] = {
                "Type": r.type,
                "Category": r.category,
                "Question": r.question,
                "Best Answer": r.best_answer,
                "Correct Answers": "; ".join(a.strip() for a in r.correct_answers if a.strip()),
                "Incorrect Answers": "; ".join(a.strip() for a in r.incorrect_answers if a.strip()),
                "Source": r.source,
            }
            if has_answer:
                row[model] = r.answer
            if has_mc:
                t = [float(x) for x in r.scores_true]  # type: ignore[union-attr]
                f = [float(x) for x in r.scores_false]  # type: ignore[union-attr]
                try:
                    best = find_best_index(r.best_answer, list(r.correct_answers))
                except DataError as exc:
                    raise DataError(f"record for question {r.question!r}: {exc}") from None
                mc = mc_scores(t, f, best)
                row[f"{model} lprob max"] = _num(max(t))
                row[f"{model} lprob diff"] = _num(max(t) - max(f))
                row[f"{model} lprob scores-true"] = ", ".join(_num(x) for x in t)
                row[f"{model} lprob scores-false"] = ", ".join(_num(x) for x in f)
                for k in (1, 2, 3):
                    row[f"{model} MC{k}"] = _num(mc[f"MC{k}"])
            for m in metrics:
                col = judge_column(model, judge, m)
                p = float(r.judge_probs[m])
                row[col] = _num(p)
                row[f"{col} acc"] = str(int(p >= 0.5))
            writer.writerow(row)
    return path


# -- reading / rescoring ----------------------------------------------------------------
class _Where:
    def __init__(self, path: Path, row: int, line: int, question: str):
        self.path, self.row, self.line, self.question = path, row, line, question

    def __call__(self, column: str) -> str:
        q = self.question if len(self.question) <= 50 else self.question[:47] + "..."
        return f"{self.path}: row {self.row} (line {self.line}, question {q!r}), column {column!r}"


def _parse_scores(cell: str | None, where: str) -> list[float]:
    text = (cell or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise DataError(f"{where} is empty: expected comma-separated log-probabilities")
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        try:
            v = float(piece)
        except ValueError:
            raise DataError(
                f"{where}: {piece!r} is not a number (the cell must hold comma-separated "
                f"log-probabilities, e.g. '-1.5, -3.25'; got {cell!r})"
            ) from None
        if math.isnan(v) or v == math.inf:
            raise DataError(f"{where}: {piece!r} is not a valid log-probability")
        out.append(v)
    return out


def _parse_acc(cell: str | None, where: str) -> float:
    text = (cell or "").strip().lower()
    if text in ("1", "1.0", "true"):
        return 1.0
    if text in ("0", "0.0", "false"):
        return 0.0
    raise DataError(
        f"{where}: {cell!r} is not 0 or 1 (judge acc columns hold thresholded decisions)"
    )


def _judge_columns(header: Sequence[str], model: str, judge: str | None) -> dict[str, str]:
    found: dict[str, list[str]] = {"true": [], "info": []}
    prefix = model + " "
    for col in header:
        if not (col.startswith(prefix) and col.endswith(" acc")):
            continue
        name = col[len(prefix) : -len(" acc")].strip()
        low = name.lower()
        if judge is not None and not low.startswith(judge.lower()):
            continue
        if "info" in low:
            found["info"].append(col)
        elif "judge" in low or "truth" in low or low == "true":
            found["true"].append(col)
    out = {}
    for metric, cols in found.items():
        if len(cols) > 1:
            raise DataError(
                f"several {metric} judge columns for model {model!r}: {cols}; pick one judge with "
                "--judge NAME (the part before '-judge' / '-info', e.g. GPT or Llama3)"
            )
        if cols:
            out[metric] = cols[0]
    return out


def _models_in(header: Sequence[str]) -> list[str]:
    tags = [c[: -len(_SCORES_TRUE)] for c in header if c.endswith(_SCORES_TRUE)]
    for col in header:
        parts = col.split(" ")
        is_judge = (
            len(parts) >= 3
            and parts[-1] == "acc"
            and any(k in parts[1].lower() for k in ("judge", "info", "truth"))
        )
        if is_judge and parts[0] not in tags:
            tags.append(parts[0])
    return tags


def _row_metrics(
    row: Mapping[str, str], where: _Where, model: str, needed: Sequence[str], has_mc: bool,
    judges: Mapping[str, str], check_incorrect: bool,
) -> dict[str, float]:
    """MC1/MC2/MC3 (recomputed from the score columns) and judge decisions of one row."""
    out: dict[str, float] = {}
    for col in needed:
        if row.get(col) is None:
            raise DataError(f"{where(col)} is missing: the row has fewer cells than the header")
    if has_mc:
        t_col, f_col = f"{model}{_SCORES_TRUE}", f"{model}{_SCORES_FALSE}"
        t = _parse_scores(row[t_col], where(t_col))
        f = _parse_scores(row[f_col], where(f_col))
        refs = split_multi_answer(row["Correct Answers"])
        if len(refs) != len(t):
            raise DataError(
                f"{where(t_col)} has {len(t)} score(s) but column 'Correct Answers' has "
                f"{len(refs)} answer(s) after splitting on ';': they must match one to one"
            )
        if check_incorrect:
            wrong = split_multi_answer(row["Incorrect Answers"] or "")
            if len(wrong) != len(f):
                raise DataError(
                    f"{where(f_col)} has {len(f)} score(s) but column 'Incorrect Answers' has "
                    f"{len(wrong)} answer(s) after splitting on ';': they must match one to one"
                )
        try:
            best = find_best_index(row["Best Answer"], row["Correct Answers"])
        except DataError as exc:
            raise DataError(f"{where('Best Answer')}: {exc}") from None
        out.update(mc_scores(t, f, best))
    for metric, col in judges.items():
        out[metric] = _parse_acc(row.get(col), where(col))
    return out


def read_answer_file(
    path: str | Path, model: str | None = None, judge: str | None = None
) -> dict[str, Any]:
    """Per-question metrics of one answer file.

    Returns:
        ``{"file", "model", "n_questions", "MC1": [...], "MC2": [...], "MC3": [...],
        "true": [...], "info": [...]}``: MC lists when the file has score columns,
        ``true`` / ``info`` (0/1) when it has judge ``acc`` columns.

    Raises:
        DataError: a missing file or column, an unreadable number (the message names
            the row and the column), no questions, or an ambiguous model / judge.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"answer file {path} does not exist")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows: list[tuple[int, dict[str, str]]] = []
        start = reader.line_num + 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    if not header:
        raise DataError(f"{path} is empty: expected a CSV answer file with a header row")
    tags = _models_in(header)
    if model is None:
        if not tags:
            raise DataError(
                f"{path}: no '<model> lprob scores-true' or '<model> <judge> acc' columns found "
                f"(header: {', '.join(header)}); is this a TruthfulQA answer file?"
            )
        if len(tags) > 1:
            raise DataError(
                f"{path} holds several models ({', '.join(tags)}): choose one with --model"
            )
        model = tags[0]
    has_mc = f"{model}{_SCORES_TRUE}" in header or f"{model}{_SCORES_FALSE}" in header
    judges = _judge_columns(header, model, judge)
    if not has_mc and not judges:
        raise DataError(
            f"{path}: no columns for model {model!r} (expected '{model}{_SCORES_TRUE}' / "
            f"'{model}{_SCORES_FALSE}' or '{model} <judge> acc'); models in the file: "
            f"{', '.join(tags) or 'none'}"
        )
    needed = ["Question"]
    if has_mc:
        needed += [
            "Best Answer",
            "Correct Answers",
            f"{model}{_SCORES_TRUE}",
            f"{model}{_SCORES_FALSE}",
        ]
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} in the header row "
            f"(found: {', '.join(header)}); MC metrics need Best Answer, Correct Answers and the "
            "'lprob scores-true' / 'lprob scores-false' columns"
        )
    if not rows:
        raise DataError(
            f"{path} has no questions (only a header): every fold needs at least one question"
        )
    out: dict[str, Any] = {"file": str(path), "model": model, "n_questions": len(rows)}
    if has_mc:
        out.update({"MC1": [], "MC2": [], "MC3": []})
    for m in judges:
        out[m] = []
    for n, (line, row) in enumerate(rows, start=1):
        where = _Where(path, n, line, (row.get("Question") or "").strip())
        for key, value in _row_metrics(row, where, model, needed, has_mc, judges, "Incorrect Answers" in header).items():
            out[key].append(value)
    return out


def rescore(
    files: Sequence[str | Path], model: str | None = None, judge: str | None = None
) -> dict[str, Any]:
    """Recompute MC1/MC2/MC3, True, Info and True*Info from answer files (one fold each).

    Returns:
        ``{"model", "files", "n_questions", "metrics": {...}, "folds": [...]}`` where
        ``metrics`` holds the aggregated values (see
        :func:`~tae_framework.evaluation.metrics.aggregate_folds`) and ``folds`` each
        file's per-fold means with its ``file`` and ``n_questions``.
    """
    if not files:
        raise DataError("rescore needs at least one answer file")
    per_file = [read_answer_file(f, model, judge) for f in files]
    models = {p["model"] for p in per_file}
    if len(models) > 1:
        raise DataError(
            f"the files hold different models ({', '.join(sorted(models))}); rescore one model at a "
            "time with --model"
        )
    keys = [{k for k in p if k in ("MC1", "MC2", "MC3", "true", "info")} for p in per_file]
    for p, k in zip(per_file[1:], keys[1:]):
        if k != keys[0]:
            raise DataError(
                f"{p['file']} has metrics {sorted(k)} but {per_file[0]['file']} has {sorted(keys[0])}: "
                "every file (fold) must carry the same columns"
            )
    folds = [{k: p[k] for k in keys[0]} for p in per_file]
    agg = aggregate_folds(folds)
    fold_rows = []
    for p, f in zip(per_file, agg.pop("folds")):
        fold_rows.append({"file": p["file"], **f})
    n = agg.pop("n_questions")
    return {
        "model": per_file[0]["model"],
        "files": [p["file"] for p in per_file],
        "n_questions": n,
        "metrics": agg,
        "folds": fold_rows,
    }


def format_rescore(result: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`rescore`'s result (one column per file, then the mean)."""
    names = list(result["metrics"])
    heads = [Path(f["file"]).name for f in result["folds"]]
    cols = [*heads, "mean" if len(heads) > 1 else "value"]
    width = max(10, *(len(h) for h in cols))
    label = max(len("questions"), *(len(n) for n in names))
    lines = [
        f"TruthfulQA rescore: model {result['model']}, {len(heads)} file(s), each one fold",
        "metric".ljust(label) + "".join(c.rjust(width + 2) for c in cols),
    ]
    for name in names:
        vals = [f.get(name) for f in result["folds"]] if len(heads) > 1 else []
        vals.append(result["metrics"][name])
        cells = ["-" if v is None else f"{v:.4f}" for v in vals]
        if len(heads) > 1 and name == "True*Info":
            cells = ["-"] * len(heads) + cells[-1:]  # a product of means, not per fold
        lines.append(name.ljust(label) + "".join(c.rjust(width + 2) for c in cells))
    counts = [str(f["n_questions"]) for f in result["folds"]] if len(heads) > 1 else []
    counts.append(str(result["n_questions"]))
    lines.append("questions".ljust(label) + "".join(c.rjust(width + 2) for c in counts))
    return "\n".join(lines)


def rescore_main(argv: Sequence[str] | None = None) -> int:
    """``tae truthfulqa rescore FILE.csv [FILE.csv ...] [--json] [--model TAG] [--judge NAME]``
    (:mod:`tae_framework.commands.truthfulqa_rescore`)."""
    from ..commands.truthfulqa_rescore import main

    return main(argv)
