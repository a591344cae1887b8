"""Cross-validation folds over BBQ templates.

Items built from one template (same ``category`` and ``question_index``) share
wording and names, so a method fitted on some of them would be tested on near
copies. Folds are therefore drawn over template ids ``<category>/<question_index>``:
no template is ever in both the fitting (train / validation) and the test part of
a fold. A :class:`~tae_framework.tasks.base.Fold` lists item ids
(``<category>/<example_id>``, the ``group`` of the fitting data), all the items of
a template in the same part.

Templates are assigned per category, so every fold tests every category that has
at least ``num_folds`` templates: within a category the templates are shuffled with
``seed`` and dealt to the folds in turn. The development templates of each fold are
then split into train and validation with the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tae_framework.errors import DataError
from tae_framework.tasks.base import Fold

from .data import BBQItem

__all__ = ["check_folds", "items_of", "subsample_development", "template_folds", "templates"]


def templates(items: Sequence[BBQItem]) -> list[str]:
    """Template ids in order of first appearance."""
    return list(dict.fromkeys(it.template for it in items))


def items_of(items: Sequence[BBQItem], uids: Sequence[str]) -> list[BBQItem]:
    """The items with these ids, in data order."""
    wanted = set(uids)
    return [it for it in items if it.uid in wanted]


def _uids(items: Sequence[BBQItem], template_ids) -> tuple[str, ...]:
    wanted = set(template_ids)
    return tuple(it.uid for it in items if it.template in wanted)


def template_folds(
    items: Sequence[BBQItem], num_folds: int = 2, val_fraction: float = 0.2, seed: int = 42
) -> list[Fold]:
    """Folds of item ids drawn over templates (see the module docstring).

    Raises:
        DataError: fewer templates than folds, or a development set too small to give
            both a train and a validation template.
    """
    if num_folds < 2:
        raise DataError(f"num_folds must be at least 2, got {num_folds}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    ids = templates(items)
    if len(ids) < num_folds:
        raise DataError(
            f"{len(ids)} BBQ template(s) cannot make {num_folds} folds (the fold unit is the "
            f"template, category/question_index): use more data or fewer folds"
        )
    rng = np.random.RandomState(seed)
    by_cat: dict[str, list[str]] = {}
    for t in ids:
        by_cat.setdefault(t.split("/", 1)[0], []).append(t)
    test: list[list[str]] = [[] for _ in range(num_folds)]
    offset = 0
    for cat in sorted(by_cat):
        ts = by_cat[cat]
        for j, pos in enumerate(rng.permutation(len(ts))):
            test[(offset + j) % num_folds].append(ts[pos])
        offset += len(ts)  # the next category starts where this one stopped
    folds = []
    for k in range(num_folds):
        held = set(test[k])
        dev = [t for t in ids if t not in held]
        n_train = int(len(dev) * (1 - val_fraction))
        if n_train < 1 or n_train >= len(dev):
            raise DataError(
                f"fold {k}: {len(dev)} development template(s) cannot be split into train and "
                f"validation with val_fraction={val_fraction}; use more templates"
            )
        train = set(rng.choice(len(dev), size=n_train, replace=False).tolist())
        folds.append(
            Fold(
                index=k,
                test=_uids(items, test[k]),
                train=_uids(items, (t for i, t in enumerate(dev) if i in train)),
                val=_uids(items, (t for i, t in enumerate(dev) if i not in train)),
            ).check()
        )
    return folds


def check_folds(folds: Sequence[Fold], items: Sequence[BBQItem]) -> None:
    """Raise :class:`DataError` unless every item is tested exactly once and no fold
    fits on a template it tests (fitting parts may hold a subset of the development
    items, see :func:`subsample_development`)."""
    template = {it.uid: it.template for it in items}
    tested: dict[str, int] = {}
    for f in folds:
        for uid in (*f.test, *f.development):
            if uid not in template:
                raise DataError(f"fold {f.index} names item {uid!r}, which is not in the BBQ data")
        leak = {template[u] for u in f.test} & {template[u] for u in f.development}
        if leak:
            raise DataError(
                f"fold {f.index}: template(s) {sorted(leak)[:5]} are both tested and fitted on; "
                "build folds with template_folds"
            )
        for uid in f.test:
            if uid in tested:
                raise DataError(f"item {uid!r} is tested in folds {tested[uid]} and {f.index}")
            tested[uid] = f.index
    missing = set(template) - set(tested)
    if missing:
        raise DataError(f"item(s) {sorted(missing)[:5]} are tested in no fold")


def subsample_development(
    folds: Sequence[Fold], items: Sequence[BBQItem], per_template: int, seed: int = 42
) -> list[Fold]:
    """The same folds with at most ``per_template`` fitting items per development
    template (the test parts are unchanged).

    BBQ has tens to hundreds of items per template (Age: about 150); a method needs far
    fewer to fit, and fitting cost grows with the number of texts. Within a template the items are shuffled with
    ``seed`` per (context condition, polarity) and taken in turn from each, so ambiguous
    and disambiguated, negative and non-negative items stay balanced. An item kept for
    one fold is kept for every fold whose development set holds its template.
    """
    if per_template < 1:
        raise DataError(f"per_template must be at least 1, got {per_template}")
    rng = np.random.RandomState(seed)
    by_template: dict[str, dict[tuple[str, str], list[str]]] = {}
    for it in items:
        strata = by_template.setdefault(it.template, {})
        strata.setdefault((it.condition, it.polarity), []).append(it.uid)
    keep: set[str] = set()
    for template in sorted(by_template):
        strata = [s for _, s in sorted(by_template[template].items())]
        shuffled = [[s[i] for i in rng.permutation(len(s))] for s in strata]
        turn = [u for row in _zip_longest(shuffled) for u in row]
        keep.update(turn[:per_template])
    return [
        Fold(
            index=f.index,
            test=f.test,
            train=tuple(u for u in f.train if u in keep),
            val=tuple(u for u in f.val if u in keep),
        ).check()
        for f in folds
    ]


def _zip_longest(rows: list[list[str]]) -> list[list[str]]:
    width = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(width)]
