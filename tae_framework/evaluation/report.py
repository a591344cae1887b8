"""Human-readable results: ``summary.md`` (method and baseline, per fold, per-group
breakdowns), the sweep tables, and the generic per-item CSV.

Columns are the task's metrics in the order it declares them, as recorded in
``summary["columns"]`` (name, percent, direction), so a summary can be formatted again
without the task.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .specs import ItemResult, MetricSpec

__all__ = ["columns_of", "format_summary", "format_sweep", "write_items_csv", "write_sweep_csv"]


def columns_of(metrics: Sequence[MetricSpec]) -> list[dict[str, Any]]:
    """The table columns of a list of metric specs."""
    return [{"name": m.name, "percent": m.percent, "direction": m.direction} for m in metrics]


def _cell(value: Any, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4g}"


def _header(col: Mapping[str, Any]) -> str:
    arrow = "" if col.get("direction", "higher") == "higher" else " ↓"
    return f"{col['name']} (%){arrow}" if col["percent"] else f"{col['name']}{arrow}"


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]], columns: Sequence[Mapping[str, Any]], first: str = "method") -> list[str]:
    cols = [c for c in columns if any(c["name"] in m for _, m in rows)]
    head = [first, *(_header(c) for c in cols), "questions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, m in rows:
        cells = [_cell(m.get(c["name"]), c["percent"]) for c in cols]
        lines.append("| " + " | ".join([name, *cells, str(m.get("n_questions", "-"))]) + " |")
    return lines


def _breakdown_tables(summary: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    percent = {c["name"]: c["percent"] for c in summary.get("columns", [])}
    for name, groups in (summary.get("breakdown") or {}).items():
        pct = percent.get(name, False)
        base = ((summary.get("baseline") or {}).get("breakdown") or {}).get(name, {})
        unit = " (%)" if pct else ""
        head = ["group", summary["method"]["name"] + unit] + ([f"baseline{unit}"] if base else [])
        lines += ["", f"## {name} by group", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for g, v in groups.items():
            cells = [g, _cell(v, pct)] + ([_cell(base.get(g), pct)] if base else [])
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the method (and baseline) table, per-fold rows, breakdowns."""
    model = summary.get("model", {})
    columns = summary.get("columns") or [{"name": k, "percent": False} for k in summary["metrics"] if k != "n_questions"]
    folds = [f["fold"] for f in summary["folds"]]
    lower = [c["name"] for c in columns if c.get("direction") == "lower"]
    lines = [
        f"# {summary['run']}: {summary['method']['name']} on {summary['task']['name']}",
        "",
        (
            f"- model: `{model.get('name') or model.get('name_or_path') or model.get('model_type')}` "
            f"({model.get('model_type')}, {model.get('num_layers')} layers x {model.get('num_heads')} heads)"
        ),
        f"- folds: {', '.join(str(k) for k in folds)} ({summary['metrics'].get('n_questions')} test questions)",
        f"- judge: {summary['judge'] or 'none'}; tae-framework {summary['framework_version']}",
        "- metrics as the task defines them (aggregated over items, then over folds); "
        + (f"lower is better for {', '.join(lower)} (↓)" if lower else "higher is better for every metric"),
        "",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if summary.get("baseline"):
        rows.append(("baseline (unedited)", summary["baseline"]["metrics"]))
    rows.append((summary["method"]["name"], summary["metrics"]))
    lines += _table(rows, columns)
    lines += ["", "## Per fold", ""]
    fold_rows: list[tuple[str, Mapping[str, Any]]] = []
    for i, f in enumerate(summary["folds"]):
        if summary.get("baseline"):
            fold_rows.append((f"fold {f['fold']} baseline", summary["baseline"]["folds"][i]))
        fold_rows.append((f"fold {f['fold']} {summary['method']['name']}", f["metrics"]))
    lines += _table(fold_rows, columns, first="fold")
    lines += _breakdown_tables(summary)
    return "\n".join(lines) + "\n"


def _alpha(alpha: float) -> str:
    return f"{alpha:g}"


def write_sweep_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]]) -> None:
    names = ["K", "alpha", *(c["name"] for c in columns), "n_questions"]
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in names})


def format_sweep(
    title: str, folds: Sequence[int], rows: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any] | None,
) -> str:
    """``sweep.md``: one row per (K, alpha), the baseline first."""
    present = [c for c in columns if any(r.get(c["name"]) is not None for r in rows)]
    head = ["K", "alpha", *(_header(c) for c in present)]
    lines = [
        f"# {title}", "", f"folds: {', '.join(str(f) for f in folds)}", "",
        "| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|",
    ]  # fmt: skip
    if baseline is not None:
        cells = ["-", "0 (baseline)", *(_cell(baseline.get(c["name"]), c["percent"]) for c in present)]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        cells = [str(r["K"]), _alpha(r["alpha"]), *(_cell(r.get(c["name"]), c["percent"]) for c in present)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "; ".join(_flat(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def write_items_csv(path: Path, results: Sequence[ItemResult]) -> Path:
    """One row per item: id, question, scalar meta fields, then every value (lists
    joined with ``"; "``). The generic :meth:`~tae_framework.tasks.base.Task.write_results`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_keys = [k for k in dict.fromkeys(k for r in results for k in r.meta) if all(
        isinstance(r.meta.get(k), (str, int, float, bool, type(None))) for r in results)]
    value_keys = list(dict.fromkeys(k for r in results for k in r.values))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "question", *meta_keys, *value_keys])
        for r in results:
            writer.writerow([r.id, r.item.question, *(_flat(r.meta.get(k)) for k in meta_keys), *(_flat(r.values.get(k)) for k in value_keys)])
    return path
