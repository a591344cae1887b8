"""Generic contrast data: what every method fits on, for any task.

A :class:`ContrastExample` is one ``prompt`` + ``completion`` with a ``label``
(1 = aligned, e.g. a true answer; 0 = misaligned) and an optional ``group`` (the
question id: folds and train/validation splits never separate a group). Without a
``group``, the completions of one prompt form a group, which is what a contrast pair
written as one prompt with an aligned and a misaligned completion needs. The text
the model sees is ``prompt + completion``; the answer span is the completion.

Loaders accept JSONL, CSV, a list of dicts, or a :class:`datasets.Dataset` with the
columns ``prompt``, ``completion``, ``label`` and optionally ``group``.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DataError

__all__ = ["REQUIRED_COLUMNS", "ContrastDataset", "ContrastExample", "DataLeakWarning"]

REQUIRED_COLUMNS = ("prompt", "completion", "label")


def _tuning_list(tuning: Any) -> list[str] | None:
    if tuning is None:
        return None
    if isinstance(tuning, (str, bytes)):
        raise DataError("tuning texts must be a list of strings, got a single string: wrap it in a list")
    return list(tuning)


class DataLeakWarning(UserWarning):
    """The same example is on both sides of a train / validation split."""


class ContrastExample(BaseModel):
    """One labelled completion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(description="Context shown before the answer, e.g. `Q: ... A:`.")
    completion: str = Field(description="The answer; its tokens are the answer span.")
    label: int = Field(description="1 = aligned (true, harmless, fair), 0 = misaligned.")
    group: str | None = Field(default=None, description="Group id (question id) for splits.")

    @field_validator("label", mode="before")
    @classmethod
    def _binary(cls, v: Any) -> int:
        if isinstance(v, str) and v.strip() in ("0", "1"):
            v = int(v.strip())
        if isinstance(v, float) and v in (0.0, 1.0):
            v = int(v)
        if isinstance(v, bool) or v not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {v!r}")
        return int(v)

    @field_validator("group", mode="before")
    @classmethod
    def _group_str(cls, v: Any) -> str | None:
        if v is None or (isinstance(v, str) and v == ""):
            return None
        return str(v)

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @property
    def span(self) -> tuple[int, int]:
        """Character span of the completion inside :attr:`text`."""
        return len(self.prompt), len(self.prompt) + len(self.completion)


@dataclass
class ContrastDataset:
    """A list of :class:`ContrastExample` plus optional tuning texts.

    ``tuning`` texts (optional) are only used to measure the spread (sigma) of
    activations along each direction, at their last token; when absent, the full
    texts of the examples are used.
    """

    examples: list[ContrastExample]
    tuning: list[str] | None = None
    name: str = "contrast"
    _group_ids: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.examples = list(self.examples)
        if self.tuning is not None:
            if isinstance(self.tuning, (str, bytes)):
                raise DataError("tuning texts must be a list of strings, got a single string: wrap it in a list")
            self.tuning = list(self.tuning)
            bad = [i for i, t in enumerate(self.tuning) if not isinstance(t, str)]
            if bad:
                raise DataError(f"tuning text {bad[0]} is a {type(self.tuning[bad[0]]).__name__}, not a string")

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def from_records(
        cls, records: Iterable[dict[str, Any]], tuning: Sequence[str] | None = None, source: str = "records"
    ) -> ContrastDataset:
        examples = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise DataError(f"{source}: row {i} is {type(rec).__name__}, expected an object with columns")
            missing = [c for c in REQUIRED_COLUMNS if c not in rec or rec[c] is None]
            if missing:
                raise DataError(
                    f"{source}: row {i} is missing column(s) {', '.join(missing)}; every row needs "
                    f"{', '.join(REQUIRED_COLUMNS)} (and optionally group)"
                )
            extra = set(rec) - {*REQUIRED_COLUMNS, "group"}
            row = {k: rec[k] for k in (*REQUIRED_COLUMNS, "group") if k in rec}
            try:
                examples.append(ContrastExample.model_validate(row))
            except ValidationError as exc:
                errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise DataError(f"{source}: row {i} is invalid ({errs})") from None
            del extra  # extra columns are allowed and ignored
        return cls(examples, _tuning_list(tuning), name=source)

    @classmethod
    def from_jsonl(cls, path: str | Path, tuning: Sequence[str] | None = None) -> ContrastDataset:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"contrast file {path} does not exist")
        records = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
        return cls.from_records(records, tuning, source=str(path))

    @classmethod
    def from_csv(cls, path: str | Path, tuning: Sequence[str] | None = None) -> ContrastDataset:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"contrast file {path} does not exist")
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{path}: header lacks column(s) {', '.join(missing)}; found {reader.fieldnames}"
                )
            return cls.from_records(list(reader), tuning, source=str(path))

    @classmethod
    def from_hf(cls, dataset: Any, tuning: Sequence[str] | None = None) -> ContrastDataset:
        """From a :class:`datasets.Dataset` (or anything iterable over dict rows)."""
        names = getattr(dataset, "column_names", None)
        if names is not None:
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise DataError(
                    f"dataset lacks column(s) {', '.join(missing)}; found {list(names)}"
                )
        return cls.from_records(iter(dataset), tuning, source="datasets.Dataset")

    @classmethod
    def load(cls, source: Any, tuning: Sequence[str] | None = None) -> ContrastDataset:
        """Dispatch on the argument: a dataset object, a path (.jsonl/.json/.csv) or records."""
        if isinstance(source, ContrastDataset):
            return source
        if isinstance(source, (str, Path)):
            suffix = Path(source).suffix.lower()
            if suffix in (".jsonl", ".json"):
                return cls.from_jsonl(source, tuning)
            if suffix == ".csv":
                return cls.from_csv(source, tuning)
            raise DataError(f"unsupported contrast file {source}: use .jsonl or .csv")
        if hasattr(source, "column_names"):
            return cls.from_hf(source, tuning)
        if isinstance(source, (list, tuple)):
            if source and isinstance(source[0], ContrastExample):
                return cls(list(source), _tuning_list(tuning))
            return cls.from_records(source, tuning)
        raise DataError(
            f"cannot read contrast data from {type(source).__name__}: pass a ContrastDataset, "
            "a .jsonl/.csv path, a datasets.Dataset or a list of dicts"
        )

    # -- views -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> ContrastExample:
        return self.examples[i]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def spans(self) -> list[tuple[int, int]]:
        return [e.span for e in self.examples]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    @property
    def groups(self) -> torch.Tensor:
        """Integer group ids; examples without a ``group`` are grouped by their prompt
        (the completions of one prompt are one group)."""
        ids: dict[tuple[str, str], int] = {}
        out = []
        for e in self.examples:
            key = ("group", e.group) if e.group is not None else ("prompt", e.prompt)
            out.append(ids.setdefault(key, len(ids)))
        return torch.tensor(out, dtype=torch.long)

    def subset(self, indices: Sequence[int]) -> ContrastDataset:
        return ContrastDataset([self.examples[i] for i in indices], self.tuning, self.name)

    def validation_mask(self, validation_groups: Any) -> torch.Tensor:
        """``[N]`` bool mask of the examples in ``validation_groups`` (group ids).

        Raises:
            DataError: ``validation_groups`` is a bare string, names groups the data does
                not have, or selects none or all of the groups.
        """
        if isinstance(validation_groups, (str, bytes)) or not hasattr(validation_groups, "__iter__"):
            raise DataError(
                f"validation_groups must be a list of group ids, got {validation_groups!r}: "
                "wrap a single id in a list"
            )
        wanted = [str(g) for g in validation_groups]
        present = {e.group for e in self.examples if e.group is not None}
        unknown = sorted(set(wanted) - present)
        if unknown:
            shown = ", ".join(repr(g) for g in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            known = ", ".join(repr(g) for g in sorted(present)[:5]) + (" ..." if len(present) > 5 else "")
            raise DataError(
                f"validation_groups names {len(unknown)} group(s) the data does not have ({shown}); "
                f"the data's groups are {known or 'none (no example has a group)'}: fix the ids"
            )
        chosen = set(wanted)
        val = torch.tensor([e.group in chosen for e in self.examples])
        if not bool(val.any()) or bool(val.all()):
            raise DataError(
                "validation_groups must select some but not all groups of the data: leave at least "
                "one group for training"
            )
        return val

    def warn_duplicates_across(self, train: torch.Tensor, val: torch.Tensor) -> int:
        """Warn (:class:`DataLeakWarning`) when an identical example (same prompt and
        completion) is on both sides of a split; returns how many texts are shared."""
        seen_train = {self.examples[i].text for i in torch.nonzero(train).flatten().tolist()}
        shared = sorted({
            self.examples[i].text for i in torch.nonzero(val).flatten().tolist()
        } & seen_train)
        if shared:
            warnings.warn(
                f"{len(shared)} example text(s) appear in both the training and the validation "
                f"groups (e.g. {shared[0][:80]!r}): head ranking is then measured on training "
                "data. Give duplicates the same group id, or remove them",
                DataLeakWarning,
                stacklevel=3,
            )
        return len(shared)

    def validate_for_fit(self) -> None:
        """Raise :class:`DataError` unless this dataset can fit a method."""
        if len(self.examples) == 0:
            raise DataError("the fitting dataset is empty: pass at least one aligned and one misaligned example")
        labels = set(self.labels.tolist())
        if labels != {0, 1}:
            only = "aligned (1)" if labels == {1} else "misaligned (0)"
            raise DataError(
                f"the fitting dataset has only {only} examples: probes need both labels 0 and 1"
            )
        for i, e in enumerate(self.examples):
            if not e.completion.strip():
                raise DataError(
                    f"example {i} has an empty completion: every example needs answer text to probe "
                    f"(prompt={e.prompt[:60]!r})"
                )
