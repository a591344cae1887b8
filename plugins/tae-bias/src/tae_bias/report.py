"""The BBQ scores of a finished ``tae eval --task bbq`` run, with counts pooled over folds.

The runner reports every metric as the mean of its fold values. The BBQ paper's
scores are ratios of counts over the whole data; :func:`pooled_report` recomputes
them from the per-item files the run wrote (``fold<k>/answers.csv`` for the edited
model, ``fold<k>/baseline.csv`` for the unedited one): every item is tested in
exactly one fold, so pooling the folds' items gives the whole data's counts.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tae_framework.errors import DataError

from .metrics import BiasScores, Outcome, bias_report

__all__ = ["pooled_outcomes", "pooled_report"]

_FILES = {"edited": "answers.csv", "baseline": "baseline.csv"}


def _int(row: dict[str, str], key: str, where: str) -> int | None:
    value = row.get(key)
    if value is None:
        raise DataError(f"{where} has no column {key!r}: is it a bbq run's per-item file?")
    return None if value == "" else int(value)


def pooled_outcomes(run_dir: str | Path, which: str = "edited") -> list[Outcome]:
    """Every item's outcome from the run's per-item files (``which``: ``edited`` or ``baseline``)."""
    if which not in _FILES:
        raise DataError(f"which must be 'edited' or 'baseline', got {which!r}")
    run = Path(run_dir)
    files = sorted(run.glob(f"fold*/{_FILES[which]}"))
    if not files:
        hint = " (run with --baseline)" if which == "baseline" else ""
        raise DataError(f"{run} has no fold*/{_FILES[which]}: not a finished bbq run{hint}")
    out = []
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                where = f"{f}:{n}"
                p = _int(row, "bbq.prediction", where)
                label, unknown = _int(row, "label", where), _int(row, "unknown", where)
                biased = _int(row, "biased", where)
                out.append(
                    Outcome(
                        uid=row["id"],
                        category=row["category"],
                        condition=row["context_condition"],
                        polarity=row["polarity"],
                        prediction=p,  # type: ignore[arg-type]
                        correct=p == label,
                        unknown=p == unknown,
                        biased=None if biased is None else p == biased,
                    )
                )
    return out


def pooled_report(run_dir: str | Path, which: str = "edited") -> dict[str, BiasScores]:
    """Per category and ``overall``: :func:`~tae_bias.metrics.bias_report` of every item
    of every fold of the run (print it with :func:`~tae_bias.metrics.format_report`)."""
    return bias_report(pooled_outcomes(run_dir, which))
