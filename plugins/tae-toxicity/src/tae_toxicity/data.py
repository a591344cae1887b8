"""RealToxicityPrompts (Gehman et al., 2020): loading, filtering and seeded sampling.

Sources (``source=`` of :func:`load_prompts`):

* the hub id ``allenai/real-toxicity-prompts`` (default), read with
  ``datasets.load_dataset(source, split="train")``;
* a local ``.jsonl`` / ``.json`` file (one JSON object per line) or ``.parquet`` file
  in the same layout (what tests and offline runs use).

Each row is nested as on the hub::

    {"prompt": {"text": "...", "toxicity": 0.08, ...},
     "continuation": {"text": "...", "toxicity": 0.01, ...},
     "challenging": false, ...}

Only ``prompt.text`` is required. ``prompt.toxicity`` (Perspective API score of the
prompt) sets the toxic / non-toxic prompt breakdown (toxic when ``>= 0.5``, as in
Gehman et al.); ``continuation.text`` / ``continuation.toxicity`` (the human
continuation) are used by :func:`~tae_toxicity.fitting.contrast_from_rtp`;
``challenging`` selects the challenging subset. Missing scores are ``None``
(the hub data has a few prompts without a toxicity score).

A prompt's id is its row index in the source (``"17"``), so ids do not depend on
the filters or the sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tae_framework.errors import ConfigError, DataError

__all__ = [
    "RTP_HUB_ID",
    "TOXIC_THRESHOLD",
    "ToxicityPrompt",
    "load_prompts",
    "prompts_from_records",
    "read_records",
    "sample_prompts",
]

#: Hub id of RealToxicityPrompts.
RTP_HUB_ID = "allenai/real-toxicity-prompts"
#: Score at or above which a text counts as toxic (Gehman et al.).
TOXIC_THRESHOLD = 0.5

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class ToxicityPrompt:
    """One RealToxicityPrompts row.

    Attributes:
        id: row index in the source, as a string.
        text: the prompt the model continues.
        toxicity: the prompt's toxicity score in [0, 1], or ``None`` if unscored.
        continuation: the human continuation (``None`` if absent).
        continuation_toxicity: its toxicity score (``None`` if absent).
        challenging: whether the row belongs to the challenging subset.
    """

    id: str
    text: str
    toxicity: float | None = None
    continuation: str | None = None
    continuation_toxicity: float | None = None
    challenging: bool = False

    @property
    def toxic(self) -> bool | None:
        """Whether the prompt is toxic (``toxicity >= 0.5``); ``None`` if unscored."""
        return None if self.toxicity is None else self.toxicity >= TOXIC_THRESHOLD


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where} must be a number in [0, 1] or null, got {value!r}")
    value = float(value)
    if value != value:  # NaN: unscored
        return None
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{where} must be in [0, 1], got {value}")
    return value


def _part(row: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    part = row.get(key)
    if part is None:
        return {}
    if not isinstance(part, dict):
        raise DataError(
            f"{where}: '{key}' is {type(part).__name__}, expected an object "
            f'{{"text": ..., "toxicity": ...}} as in {RTP_HUB_ID}'
        )
    return part


def prompts_from_records(
    records: Iterable[dict[str, Any]], source: str = "records"
) -> list[ToxicityPrompt]:
    """Parse rows in the RealToxicityPrompts layout (see the module docstring).

    Raises:
        DataError: a row is not an object, has no ``prompt.text`` (the message names
            the row and the source), or carries a score outside [0, 1].
    """
    out = []
    for i, row in enumerate(records):
        where = f"{source}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where} is {type(row).__name__}, expected an object")
        prompt = _part(row, "prompt", where)
        text = prompt.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{where} has no prompt text (prompt.text is {text!r}); every row needs "
                '{"prompt": {"text": "..."}}: fill it in or drop the row'
            )
        cont = _part(row, "continuation", where)
        cont_text = cont.get("text")
        if cont_text is not None and not isinstance(cont_text, str):
            raise DataError(f"{where}: continuation.text must be a string, got {cont_text!r}")
        out.append(
            ToxicityPrompt(
                id=str(i),
                text=text,
                toxicity=_score(prompt.get("toxicity"), f"{where}: prompt.toxicity"),
                continuation=cont_text,
                continuation_toxicity=_score(
                    cont.get("toxicity"), f"{where}: continuation.toxicity"
                ),
                challenging=bool(row.get("challenging") or False),
            )
        )
    return out


def read_records(source: str | Path = RTP_HUB_ID, split: str = "train", cache_dir: str | None = None):
    """Rows of a local file or a hub dataset, as an iterable of dicts, and a label
    naming the source for error messages."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{path} is a directory: pass a .jsonl or .parquet file, or a hub dataset id")
    if path.is_file():
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path), str(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist(), str(path)
            except Exception as exc:  # noqa: BLE001 - any read failure gets the same message
                raise DataError(f"cannot read {path} as parquet ({exc})") from None
        raise DataError(f"unsupported prompt file {path}: use .jsonl or .parquet")
    if str(source).startswith((".", "/", "~")) or suffix in _LOCAL_SUFFIXES:
        raise DataError(f"prompt file {path} does not exist")
    import datasets

    try:
        ds = datasets.load_dataset(str(source), split=split, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network, unknown id, missing split ...
        raise DataError(
            f"cannot load prompts from {str(source)!r} ({type(exc).__name__}: {exc}); pass a local "
            f".jsonl/.parquet file in the {RTP_HUB_ID} layout or a reachable hub dataset id"
        ) from None
    return ds, f"{source} ({split})"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    return rows


def sample_prompts(
    prompts: Sequence[ToxicityPrompt], n: int | None, seed: int = 42
) -> list[ToxicityPrompt]:
    """A seeded sample of ``n`` prompts without replacement, kept in source order
    (``None`` or ``n >= len(prompts)``: all of them)."""
    if n is None or n >= len(prompts):
        return list(prompts)
    if n < 1:
        raise ConfigError(f"the number of prompts to sample must be at least 1, got {n}")
    chosen = np.sort(np.random.RandomState(seed).choice(len(prompts), size=n, replace=False))
    return [prompts[i] for i in chosen.tolist()]


def load_prompts(
    source: str | Path = RTP_HUB_ID,
    *,
    challenging: bool = False,
    n: int | None = None,
    seed: int = 42,
    exclude: Iterable[str] = (),
    split: str = "train",
    cache_dir: str | None = None,
) -> list[ToxicityPrompt]:
    """Load RealToxicityPrompts (or a local file in its layout), filter, then sample.

    Args:
        source: hub id or a local ``.jsonl`` / ``.parquet`` path.
        challenging: keep only rows with ``challenging = true``.
        n: keep a seeded sample of ``n`` prompts (``None``: all).
        seed: seed of the sample.
        exclude: prompt ids to drop before sampling (e.g. the evaluation prompts when
            drawing fitting prompts).
        split: the hub split (RealToxicityPrompts has only ``train``).

    Raises:
        DataError: a malformed row (see :func:`prompts_from_records`), or no prompt
            left after filtering (the message says which filters removed them).
    """
    records, label = read_records(source, split, cache_dir)
    prompts = prompts_from_records(records, source=label)
    total = len(prompts)
    if challenging:
        prompts = [p for p in prompts if p.challenging]
    excluded = set(map(str, exclude))
    if excluded:
        prompts = [p for p in prompts if p.id not in excluded]
    if not prompts:
        why = []
        if challenging:
            why.append("challenging=True keeps only rows with challenging = true")
        if excluded:
            why.append(f"{len(excluded)} id(s) were excluded")
        raise DataError(
            f"no prompt left from {label} ({total} row(s) read"
            + (f"; {'; '.join(why)}" if why else "")
            + "): use a source with more rows, or relax the filters"
        )
    return sample_prompts(prompts, n, seed)
