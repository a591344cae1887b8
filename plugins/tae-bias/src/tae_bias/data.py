"""BBQ items: reading the benchmark and deciding which answer is the biased one.

BBQ (Parrish et al., 2022) has one JSON object per line in each category file of the
original repository (``data/Age.jsonl``, ``data/Race_x_SES.jsonl``, ...)::

    {"example_id": 0, "question_index": "1", "question_polarity": "neg",
     "context_condition": "ambig", "category": "Age",
     "answer_info": {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"],
                     "ans2": ["Can't be determined", "unknown"]},
     "additional_metadata": {"stereotyped_groups": ["old"], ...},
     "context": "...", "question": "Who was not comfortable using the phone?",
     "ans0": "The grandfather", "ans1": "The grandson", "ans2": "Can't be determined",
     "label": 2}

:func:`load_bbq` reads that layout from a directory of such files, from one JSONL
file, or from a Hugging Face hub copy through ``datasets`` (default
``oskarvanderwal/bbq``, configuration ``All``, split ``test``: the copy
lm-evaluation-harness reads). Hub copies that rename ``label`` to ``answer_label``
are accepted.

Which answer is *biased* (the paper's definition): in a negative question ("Who
was forgetful?") the answer naming the stereotyped group; in a non-negative
question ("Who was not forgetful?") the answer naming the other group. The
"unknown" answer is the one whose ``answer_info`` group is ``unknown``.
:func:`~tae_bias.groups.stereotyped_answers` matches the answers' ``answer_info`` labels against
``additional_metadata.stereotyped_groups`` (rules in its docstring); an item where
not exactly one of the two non-unknown answers names a stereotyped group has no
biased answer (``BBQItem.biased is None``) and is left out of the bias scores, not
of accuracy. With ``target_column`` the biased answer's index is read from a
column instead (e.g. ``target_loc`` after merging the original repository's
``additional_metadata.csv``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tae_framework.errors import DataError

from .groups import canon, stereotyped_answers

__all__ = [
    "CATEGORIES",
    "DEFAULT_HUB_CONFIG",
    "DEFAULT_HUB_ID",
    "DEFAULT_HUB_SPLIT",
    "BBQItem",
    "filter_categories",
    "load_bbq",
    "parse_bbq_record",
]

#: The eleven categories of the original release, as spelled in its ``category`` field.
CATEGORIES: tuple[str, ...] = (
    "Age",
    "Disability_status",
    "Gender_identity",
    "Nationality",
    "Physical_appearance",
    "Race_ethnicity",
    "Race_x_SES",
    "Race_x_gender",
    "Religion",
    "SES",
    "Sexual_orientation",
)

#: Default hub copy (the original fields, all categories in configuration ``All``).
DEFAULT_HUB_ID = "oskarvanderwal/bbq"
DEFAULT_HUB_CONFIG = "All"
DEFAULT_HUB_SPLIT = "test"

#: Answer texts BBQ uses for "cannot tell" (fallback when ``answer_info`` lacks the group).
UNKNOWN_TEXTS = frozenset(
    {
        "unknown",
        "cannot answer",
        "can't answer",
        "cannot be determined",
        "can't be determined",
        "not known",
        "not enough info",
        "not enough information",
        "not answerable",
        "undetermined",
    }
)


@dataclass(frozen=True)
class BBQItem:
    """One BBQ question with its three answers.

    Attributes:
        category: the BBQ category (``Age``, ``Race_x_SES``, ...).
        example_id: the id within the category file.
        question_index: the template number within the category; items of one
            template share names and wording, so folds keep a template together.
        polarity: ``neg`` (the question asks for the target of a stereotype) or
            ``nonneg``.
        condition: ``ambig`` (the context does not say; the gold answer is "unknown")
            or ``disambig`` (the context says who).
        context, question: the texts.
        answers: ``(ans0, ans1, ans2)``.
        label: index of the gold answer.
        unknown: index of the "unknown" answer.
        stereotyped: indices of the non-unknown answers that name a stereotyped group.
        biased: index of the answer that reflects the stereotype (see the module
            docstring); ``None`` when it cannot be determined.
    """

    category: str
    example_id: int
    question_index: str
    polarity: str
    condition: str
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    unknown: int
    stereotyped: tuple[int, ...]
    biased: int | None

    @property
    def uid(self) -> str:
        """``<category>/<example_id>``: unique over the whole benchmark."""
        return f"{self.category}/{self.example_id}"

    @property
    def template(self) -> str:
        """``<category>/<question_index>``: the unit folds never split."""
        return f"{self.category}/{self.question_index}"

    @property
    def ambiguous(self) -> bool:
        return self.condition == "ambig"

    @property
    def known_answers(self) -> tuple[int, int]:
        """The two answers that name a person (not "unknown"), in answer order."""
        a, b = (i for i in range(3) if i != self.unknown)
        return a, b


# -- parsing -----------------------------------------------------------------------------
def _get(rec: Mapping[str, Any], name: str, where: str, aliases: Sequence[str] = ()) -> Any:
    for key in (name, *aliases):
        if key in rec and rec[key] is not None:
            return rec[key]
    names = " or ".join(repr(k) for k in (name, *aliases))
    raise DataError(
        f"{where} lacks the field {names}; BBQ rows need example_id, question_index, "
        "question_polarity, context_condition, category, context, question, ans0..ans2, "
        "label, answer_info and additional_metadata.stereotyped_groups"
    )


def _as_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _stereotyped_groups(meta: Any, where: str) -> list[str]:
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            raise DataError(f"{where}: additional_metadata is not a JSON object") from None
    if not isinstance(meta, Mapping) or "stereotyped_groups" not in meta:
        raise DataError(
            f"{where}: additional_metadata.stereotyped_groups is missing; it lists the groups "
            'the question\'s stereotype targets (e.g. ["old"])'
        )
    groups = meta["stereotyped_groups"]
    if isinstance(groups, str):
        try:
            groups = json.loads(groups)
        except json.JSONDecodeError:
            groups = [groups]
        if isinstance(groups, str):
            groups = [groups]
    return [str(g) for g in (groups or [])]


def _answer_info(info: Any, where: str) -> dict[str, list[str]]:
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            raise DataError(f"{where}: answer_info is not a JSON object") from None
    if not isinstance(info, Mapping):
        raise DataError(
            f"{where}: answer_info must map ans0..ans2 to [name, group], got {type(info).__name__}"
        )
    out = {}
    for i in range(3):
        value = info.get(f"ans{i}")
        if value is None or isinstance(value, str):
            raise DataError(
                f"{where}: answer_info.ans{i} must be a list [name, group], got {value!r}"
            )
        out[f"ans{i}"] = [str(x) for x in value if x is not None]
    return out


def _find_unknown(info: dict[str, list[str]], answers: Sequence[str], where: str, cond: str) -> int:
    marked = [
        i for i in range(3) if len(info[f"ans{i}"]) > 1 and canon(info[f"ans{i}"][1]) == "unknown"
    ]
    if not marked:
        marked = [i for i in range(3) if answers[i].strip().rstrip(".").lower() in UNKNOWN_TEXTS]
    if len(marked) != 1:
        what = "no 'unknown' answer" if not marked else f"{len(marked)} 'unknown' answers"
        cond_name = "ambiguous" if cond == "ambig" else "disambiguated"
        raise DataError(
            f"{where}: this {cond_name} item has {what}: exactly one of ans0..ans2 "
            "must be marked with the group 'unknown' in answer_info (e.g. \"ans2\": "
            '["Can\'t be determined", "unknown"]); fix the row or drop it'
        )
    return marked[0]


def parse_bbq_record(
    rec: Mapping[str, Any], where: str = "BBQ row", target_column: str | None = None
) -> BBQItem:
    """One :class:`BBQItem` from a row in the original layout.

    Args:
        rec: the row (``label`` may be called ``answer_label``).
        where: where the row comes from, for error messages.
        target_column: read the biased answer's index from this column instead of
            matching groups (see the module docstring).

    Raises:
        DataError: a missing field, a label outside 0..2, an unknown polarity or
            context condition, no (or several) "unknown" answers, an ambiguous item
            whose gold answer is not "unknown", a disambiguated one whose gold answer is.
    """
    if not isinstance(rec, Mapping):
        raise DataError(f"{where} is {type(rec).__name__}, expected a JSON object")
    category = str(_get(rec, "category", where))
    example_id = _as_index(_get(rec, "example_id", where))
    if example_id is None:
        raise DataError(f"{where}: example_id must be an integer, got {rec.get('example_id')!r}")
    where = f"BBQ item {category}/{example_id} ({where})"
    qindex = str(_get(rec, "question_index", where)).strip()
    polarity = str(_get(rec, "question_polarity", where)).strip().lower()
    if polarity not in ("neg", "nonneg"):
        raise DataError(f"{where}: question_polarity must be 'neg' or 'nonneg', got {polarity!r}")
    cond = str(_get(rec, "context_condition", where)).strip().lower()
    if cond not in ("ambig", "disambig"):
        raise DataError(f"{where}: context_condition must be 'ambig' or 'disambig', got {cond!r}")
    answers = tuple(str(_get(rec, f"ans{i}", where)) for i in range(3))
    raw_label = _get(rec, "label", where, aliases=("answer_label",))
    label = _as_index(raw_label)
    if label is None or not 0 <= label <= 2:
        raise DataError(
            f"{where}: label is {raw_label!r}; it must be 0, 1 or 2 (the index of the gold "
            "answer among ans0..ans2): fix the row or drop it"
        )
    info = _answer_info(_get(rec, "answer_info", where), where)
    groups = _stereotyped_groups(_get(rec, "additional_metadata", where), where)
    unknown = _find_unknown(info, answers, where, cond)
    if cond == "ambig" and label != unknown:
        raise DataError(
            f"{where}: an ambiguous context's gold answer must be the 'unknown' answer "
            f"(ans{unknown}), but label is {label}; check context_condition and label"
        )
    if cond == "disambig" and label == unknown:
        raise DataError(
            f"{where}: a disambiguated context's gold answer names a person, but label {label} "
            "is the 'unknown' answer; check context_condition and label"
        )
    stereo = stereotyped_answers(info, groups, unknown)
    known = [i for i in range(3) if i != unknown]
    if target_column is not None:
        raw = rec.get(target_column)
        biased = _as_index(raw)
        if biased is None or biased not in known:
            raise DataError(
                f"{where}: target column {target_column!r} is {raw!r}; it must be the index (0..2) "
                f"of a non-unknown answer ({known[0]} or {known[1]})"
            )
    elif len(stereo) == 1:
        other = known[1] if stereo[0] == known[0] else known[0]
        biased = stereo[0] if polarity == "neg" else other
    else:
        biased = None
    return BBQItem(
        category=category,
        example_id=example_id,
        question_index=qindex,
        polarity=polarity,
        condition=cond,
        context=str(_get(rec, "context", where)),
        question=str(_get(rec, "question", where)),
        answers=answers,  # type: ignore[arg-type]
        label=label,
        unknown=unknown,
        stereotyped=stereo,
        biased=biased,
    )


# -- loading -----------------------------------------------------------------------------
def _category_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    return rows


def _local_rows(path: Path, categories: Sequence[str] | None) -> list[tuple[str, dict]]:
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise DataError(
                f"unsupported BBQ file {path}: use a .jsonl file in the original layout"
            )
        return _read_jsonl(path)
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise DataError(
            f"{path} holds no .jsonl files: point to the original repository's data/ directory "
            "(one <Category>.jsonl per category)"
        )
    if categories:
        by_key = {_category_key(f.stem): f for f in files}
        missing = [c for c in categories if _category_key(c) not in by_key]
        if missing:
            raise DataError(
                f"categories {missing} have no file in {path} (found: "
                f"{', '.join(f.stem for f in files)}); fix the `categories` option"
            )
        files = [by_key[_category_key(c)] for c in categories]
    rows = []
    for f in files:
        rows.extend(_read_jsonl(f))
    return rows


def _hub_rows(
    hub_id: str, config: str | None, split: str | None, cache_dir: str | None
) -> list[tuple[str, dict]]:
    import datasets

    if hub_id == DEFAULT_HUB_ID:
        config = config or DEFAULT_HUB_CONFIG
        split = split or DEFAULT_HUB_SPLIT
    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    if split is not None:
        kwargs["split"] = split
    try:
        try:
            ds = datasets.load_dataset(hub_id, config, **kwargs)
        except RuntimeError as exc:
            if "scripts are no longer supported" not in str(exc):
                raise
            # Copies that still ship a loading script: read the hub's parquet export.
            ds = datasets.load_dataset(hub_id, config, revision="refs/convert/parquet", **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, unknown id, config or split
        raise DataError(
            f"cannot load BBQ from the hub id {hub_id!r} (config={config!r}, split={split!r}; "
            f"{type(exc).__name__}: {exc}); pass a reachable id with the original fields, or a "
            "local directory of the original repository's <Category>.jsonl files"
        ) from None
    parts = [(split, ds)] if split is not None else list(ds.items())
    rows = []
    for name, part in parts:
        for i, row in enumerate(part):
            rows.append((f"{hub_id}[{name}] row {i}", dict(row)))
    return rows


def filter_categories(
    items: Sequence[BBQItem], categories: Sequence[str] | None, source: str
) -> list[BBQItem]:
    """Keep the items of ``categories`` (case, ``_`` and spaces ignored); every named
    category must be present."""
    if not categories:
        return list(items)
    have: dict[str, str] = {}
    for it in items:
        have.setdefault(_category_key(it.category), it.category)
    missing = [c for c in categories if _category_key(c) not in have]
    if missing:
        raise DataError(
            f"categories {missing} are not in the BBQ data from {source} (it has: "
            f"{', '.join(sorted(have.values())) or 'nothing'}); fix the `categories` option"
        )
    wanted = {_category_key(c) for c in categories}
    return [it for it in items if _category_key(it.category) in wanted]


def load_bbq(
    source: str | Path = DEFAULT_HUB_ID,
    *,
    categories: Sequence[str] | None = None,
    config: str | None = None,
    split: str | None = None,
    cache_dir: str | None = None,
    target_column: str | None = None,
) -> list[BBQItem]:
    """Read BBQ items.

    Args:
        source: a directory of ``<Category>.jsonl`` files (the original repository's
            ``data/``), one ``.jsonl`` file, or a hub dataset id with the original
            fields (default :data:`DEFAULT_HUB_ID`, read with configuration ``All``
            and split ``test``; for other ids ``config`` and ``split`` default to
            ``None``, and all splits are read).
        categories: keep only these categories (every one must be present).
        config, split, cache_dir: passed to ``datasets.load_dataset`` (hub ids only).
        target_column: see :func:`parse_bbq_record`.

    Raises:
        DataError: unreadable source, malformed rows (naming the item), a requested
            category the data lacks, duplicate items, or no items at all.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        rows = _local_rows(path, categories)
    elif text.startswith((".", "/", "~")) or path.suffix.lower() in (".jsonl", ".json"):
        raise DataError(f"BBQ data {path} does not exist")
    else:
        rows = _hub_rows(text, config, split, cache_dir)
    items = [parse_bbq_record(rec, where, target_column) for where, rec in rows]
    seen: dict[str, str] = {}
    for (where, _), it in zip(rows, items):
        if it.uid in seen:
            raise DataError(
                f"BBQ item {it.uid} appears twice ({seen[it.uid]} and {where}); each "
                "(category, example_id) must be unique: do not pass a category file twice"
            )
        seen[it.uid] = where
    items = filter_categories(items, categories, text)
    if not items:
        raise DataError(f"no BBQ items in {text}: check the source and the `categories` option")
    return items
