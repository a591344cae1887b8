"""What a task declares about its evaluation: protocol specs, metric specs, and the
per-item / per-fold results metrics are computed from.

A task (:class:`~tae_framework.tasks.base.Task`) returns

* :meth:`~tae_framework.tasks.base.Task.protocols`: ``{key: ProtocolSpec}``; the key
  names the protocol's outputs (``"mc.true"``, ``"generation.answers"``) and its
  checkpoint file (``<key>.jsonl``);
* :meth:`~tae_framework.tasks.base.Task.metrics`: a list of :class:`MetricSpec`.

A metric reads an :class:`ItemResult` (one item: its :class:`EvalItem`, every protocol
output under ``"<key>.<output>"`` and the judge's raw scores under
``"judge.<metric>"``, one score per judged answer) or a :class:`FoldView` (the items of
one fold plus the fold-scope outputs such as ``"side_effects.kl"``).

How a metric becomes a number (see :mod:`tae_framework.evaluation.aggregate`):

1. items are filtered by ``subset`` (and, for the breakdown, grouped by ``by``);
2. per fold: ``per_item`` values reduced by ``over_items`` (``"mean"``, ``"sum"``,
   ``"max"``, ``"min"`` or a callable on the list of values), or ``fold_value(view)``
   for whole-set metrics (a ratio of counts, a fold-scope output); a fold with no
   item in the subset has no value (``None``);
3. over folds: ``over_folds`` (``"mean"``, ``"product"``, ``"sum"``, ``"max"``,
   ``"min"`` or a callable on the list of fold values; folds without a value are
   skipped);
4. a derived metric (``of`` + ``combine``) combines other metrics' values: per fold
   from their fold values, overall from their overall values (``True*Info`` = product
   of the True and Info means over folds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.base import EvalItem

__all__ = [
    "REDUCERS",
    "FoldView",
    "ItemResult",
    "MetricSpec",
    "ProtocolSpec",
    "reduce_values",
]

#: Named reductions accepted by ``over_items`` and ``over_folds``.
REDUCERS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda v: sum(v) / len(v),
    "sum": lambda v: float(sum(v)),
    "max": lambda v: float(max(v)),
    "min": lambda v: float(min(v)),
    "product": lambda v: float(math.prod(v)),
}

Reducer = Literal["mean", "sum", "max", "min", "product"] | Callable[[Sequence[float]], float]


def reduce_values(values: Sequence[float], how: Reducer, what: str) -> float:
    """Apply a named reducer (or a callable) to ``values`` (non-empty)."""
    if callable(how):
        return float(how(list(values)))
    try:
        fn = REDUCERS[how]
    except KeyError:
        raise ConfigError(
            f"{what}: unknown reduction {how!r}; use one of {', '.join(REDUCERS)} or a function"
        ) from None
    return float(fn(list(values)))


@dataclass(frozen=True)
class ProtocolSpec:
    """One protocol a task runs.

    Attributes:
        protocol: registry name of the :class:`~tae_framework.evaluation.protocols.Protocol`
            class (``"multiple_choice"``, ``"generation"``, ``"side_effects"``, or one a
            plugin registers with ``tae_register_protocols``).
        options: the protocol's options (validated by its ``Options`` model); a run can
            change them (``--protocol-option KEY.NAME=VALUE``).
        enabled: ``False``: run only when asked (``side_effects=True`` /
            ``--side-effects`` turns on the protocols of kind ``side_effects``).
        judged: the judge scores this protocol's answers (its ``answers_output``); at
            most one protocol of a task is judged.
    """

    protocol: str
    options: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    judged: bool = False


@dataclass(frozen=True)
class ItemResult:
    """Everything measured about one item.

    ``values`` maps ``"<protocol key>.<output>"`` to the protocol's output for this item
    and ``"judge.<metric>"`` to the judge's raw scores (a list: one probability per
    judged answer, so ``k`` values for ``k`` samples). ``result["mc.true"]`` reads one.
    """

    item: EvalItem
    values: Mapping[str, Any]

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.item.meta

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise KeyError(
                f"item {self.item.id!r} has no value {key!r} (it has: {', '.join(sorted(self.values))})"
            ) from None

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass(frozen=True)
class FoldView:
    """The results of one fold, as a whole-set metric sees them.

    ``items`` are already restricted to the metric's subset (and group); ``values``
    holds the fold-scope protocol outputs (``"side_effects.kl"``).
    """

    fold: int
    items: Sequence[ItemResult]
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise KeyError(
                f"fold {self.fold} has no fold-level value {key!r} (it has: {', '.join(sorted(self.values))})"
            ) from None

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric of a task.

    Give exactly one of ``per_item`` (a value per item, reduced by ``over_items``),
    ``fold_value`` (a whole-set value per fold) or ``of`` + ``combine`` (derived from
    other metrics of the task).

    Attributes:
        name: the reported name (table column, summary key).
        needs: the values read, ``"<protocol key>.<output>"`` or ``"judge.<metric>"``;
            checked against the task's protocols before anything runs, and a metric
            whose protocol is switched off for a run is left out of that run.
        per_item: ``f(ItemResult) -> float``; ``None`` returned means "no value for
            this item" (left out of the reduction).
        over_items: how a fold's per-item values become one number.
        fold_value: ``f(FoldView) -> float | None`` for whole-set metrics.
        over_folds: how fold values become the reported number.
        of, combine: a derived metric: ``combine(*values of the metrics in of)``.
        direction: ``"higher"`` or ``"lower"`` is better.
        percent: shown x100 with ``(%)`` in tables.
        subset: ``f(ItemResult) -> bool``: only these items count.
        by: an item ``meta`` key; the metric is also reported per value of that key
            (the breakdown table, ``summary["breakdown"][name][value]``).
        description: one line for the summary.
    """

    name: str
    needs: tuple[str, ...] = ()
    per_item: Callable[[ItemResult], float | None] | None = None
    over_items: Reducer = "mean"
    fold_value: Callable[[FoldView], float | None] | None = None
    over_folds: Reducer = "mean"
    of: tuple[str, ...] = ()
    combine: Callable[..., float] | None = None
    direction: Literal["higher", "lower"] = "higher"
    percent: bool = False
    subset: Callable[[ItemResult], bool] | None = None
    by: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a metric needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "needs", tuple(self.needs))
        object.__setattr__(self, "of", tuple(self.of))
        kinds = [self.per_item is not None, self.fold_value is not None, bool(self.of) or self.combine is not None]
        if sum(kinds) != 1:
            raise ConfigError(
                f"metric '{self.name}': give exactly one of per_item, fold_value or of + combine"
            )
        if (bool(self.of)) != (self.combine is not None):
            raise ConfigError(f"metric '{self.name}': a derived metric needs both `of` and `combine`")
        if self.direction not in ("higher", "lower"):
            raise ConfigError(
                f"metric '{self.name}': direction must be 'higher' or 'lower', got {self.direction!r}"
            )
        for what in ("over_items", "over_folds"):
            how = getattr(self, what)
            if not callable(how) and how not in REDUCERS:
                raise ConfigError(
                    f"metric '{self.name}': {what}={how!r} is not one of {', '.join(REDUCERS)} "
                    "or a function"
                )

    @property
    def derived(self) -> bool:
        return bool(self.of)
