"""Metric values from results: per item, per fold (with per-group breakdowns) and over folds.

See :mod:`tae_framework.evaluation.specs` for the rules. Everything here is pure Python
on :class:`~tae_framework.evaluation.specs.ItemResult` /
:class:`~tae_framework.evaluation.specs.FoldView`; nothing touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DataError
from .specs import FoldView, ItemResult, MetricSpec, reduce_values

__all__ = ["active_metrics", "fold_metrics", "item_metric_values", "over_folds"]


def active_metrics(specs: Sequence[MetricSpec], available: set[str]) -> list[MetricSpec]:
    """The metrics computable from ``available`` values (``"mc.true"``, ``"judge.true"``):
    a metric whose protocol or judge is off for this run is left out, and so is a
    derived metric built on one that is left out."""
    out: list[MetricSpec] = []
    names: set[str] = set()
    for spec in specs:
        if spec.derived:
            ok = all(o in names for o in spec.of)
        else:
            ok = all(n in available for n in spec.needs)
        if ok:
            out.append(spec)
            names.add(spec.name)
    return out


def _number(value: Any, task: str, metric: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"task '{task}': metric '{metric}' returned {value!r} {where}; a metric value is a number or None"
        ) from None
    if math.isnan(x):
        return None
    return x


def _per_item(spec: MetricSpec, r: ItemResult, task: str) -> float | None:
    try:
        value = spec.per_item(r)  # type: ignore[misc]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise DataError(f"task '{task}': metric '{spec.name}' failed on item {r.id!r}: {exc}") from None
    return _number(value, task, spec.name, f"for item {r.id!r}")


def item_metric_values(specs: Sequence[MetricSpec], results: Sequence[ItemResult], task: str) -> list[dict[str, float]]:
    """Every per-item metric of every item (items outside a metric's subset get none)."""
    rows = []
    for r in results:
        row = {}
        for spec in specs:
            if spec.per_item is None or (spec.subset is not None and not spec.subset(r)):
                continue
            v = _per_item(spec, r, task)
            if v is not None:
                row[spec.name] = v
        rows.append(row)
    return rows


def _fold_value(spec: MetricSpec, view: FoldView, task: str) -> float | None:
    items = [r for r in view.items if spec.subset is None or spec.subset(r)]
    if spec.per_item is not None:
        vals = [v for r in items if (v := _per_item(spec, r, task)) is not None]
        if not vals:
            return None
        return reduce_values(vals, spec.over_items, f"metric '{spec.name}'")
    try:
        value = spec.fold_value(FoldView(view.fold, items, view.values))  # type: ignore[misc]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise DataError(f"task '{task}': metric '{spec.name}' failed on fold {view.fold}: {exc}") from None
    return _number(value, task, spec.name, f"on fold {view.fold}")


def _combine(spec: MetricSpec, parts: Sequence[float | None]) -> float | None:
    if any(p is None for p in parts):
        return None
    try:
        return float(spec.combine(*parts))  # type: ignore[misc]
    except ZeroDivisionError:
        return None


def _derived_breakdown(spec: MetricSpec, breakdown: dict[str, dict[str, float | None]]) -> None:
    """A derived metric is broken down too when every metric it combines is (same groups)."""
    if not all(o in breakdown for o in spec.of):
        return
    groups = [g for g in breakdown[spec.of[0]] if all(g in breakdown[o] for o in spec.of)]
    breakdown[spec.name] = {g: _combine(spec, [breakdown[o][g] for o in spec.of]) for g in groups}


def _groups(spec: MetricSpec, items: Sequence[ItemResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in items:
        seen.setdefault(str(r.meta.get(spec.by)), None)
    return list(seen)


def fold_metrics(
    specs: Sequence[MetricSpec], view: FoldView, task: str
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """``(values, breakdown)`` of one fold: ``values[name]`` and, for metrics with
    ``by``, ``breakdown[name][group]``."""
    values: dict[str, float | None] = {}
    breakdown: dict[str, dict[str, float | None]] = {}
    for spec in specs:
        if spec.derived:
            values[spec.name] = _combine(spec, [values.get(o) for o in spec.of])
            _derived_breakdown(spec, breakdown)
            continue
        values[spec.name] = _fold_value(spec, view, task)
        if spec.by is not None:
            breakdown[spec.name] = {
                g: _fold_value(spec, FoldView(view.fold, [r for r in view.items if str(r.meta.get(spec.by)) == g], view.values), task)
                for g in _groups(spec, view.items)
            }
    return values, breakdown


def _over(spec: MetricSpec, vals: Sequence[float | None]) -> float | None:
    present = [v for v in vals if v is not None]
    if not present:
        return None
    return reduce_values(present, spec.over_folds, f"metric '{spec.name}'")


def over_folds(
    specs: Sequence[MetricSpec],
    folds: Sequence[Mapping[str, float | None]],
    breakdowns: Sequence[Mapping[str, Mapping[str, float | None]]] = (),
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """Aggregate fold values (and breakdowns) over folds; derived metrics last."""
    out: dict[str, float | None] = {}
    breakdown: dict[str, dict[str, float | None]] = {}
    for spec in specs:
        if spec.derived:
            out[spec.name] = _combine(spec, [out.get(o) for o in spec.of])
            _derived_breakdown(spec, breakdown)
            continue
        out[spec.name] = _over(spec, [f.get(spec.name) for f in folds])
        if spec.by is not None:
            groups: dict[str, None] = {}
            for b in breakdowns:
                groups.update(dict.fromkeys(b.get(spec.name, {})))
            breakdown[spec.name] = {
                g: _over(spec, [b.get(spec.name, {}).get(g) for b in breakdowns]) for g in groups
            }
    return out, breakdown
