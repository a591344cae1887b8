"""Fitting data for any method: contrast pairs of toxic and non-toxic continuations.

Label 1 is aligned (non-toxic), label 0 misaligned (toxic), as everywhere in
``tae_framework``. Two sources:

**From RealToxicityPrompts itself** (:func:`contrast_from_rtp`). Every row has a single
human continuation with its toxicity score, so no prompt has both a toxic and a
non-toxic continuation and pairs cannot share a prompt. A pair is formed *across*
prompts instead: each toxic row (continuation toxicity ``>= toxic_at``, default 0.5) is
matched with the unused non-toxic row (continuation toxicity ``< nontoxic_below``,
default 0.5) whose *prompt* toxicity is closest (greedily, toxic rows taken by
increasing prompt toxicity; an unscored prompt counts as 0). The two sides of a pair
thus differ mostly in the toxicity of their continuations, not of their prompts. The
pair is one group named after its toxic prompt (``group`` = that prompt's id), so
train / validation splits keep it together. Rows without a continuation text or score are skipped; toxic rows left
without a partner are dropped.

**From the model's own samples** (:func:`contrast_from_samples`,
:func:`self_contrast`). Sample k continuations of each fitting prompt (with the
unedited model), score them with a judge, and pair, per prompt, the lowest-scoring
continuation (label 1) with the highest-scoring one (label 0), keeping the prompt
only when the highest scores ``>= threshold`` and the lowest ``< threshold`` (both
kinds exist) and they are at least ``min_gap`` apart. ``group`` = the prompt id.

**Fitting prompts are never evaluation prompts.** :func:`fitting_prompts` draws them
from the source with the evaluation ids excluded, and both builders take the
evaluation ids and refuse an overlap (:func:`check_disjoint`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.errors import DataError

from .data import RTP_HUB_ID, TOXIC_THRESHOLD, ToxicityPrompt, load_prompts
from .sampling import Continuation, SamplingConfig, _as_pairs, sample_continuations

__all__ = [
    "check_disjoint",
    "contrast_from_rtp",
    "contrast_from_samples",
    "fitting_prompts",
    "judge_continuations",
    "self_contrast",
]


def check_disjoint(fit_ids: Iterable[str], eval_ids: Iterable[str]) -> None:
    """Raise :class:`DataError` if a fitting prompt id is also an evaluation prompt id."""
    shared = sorted(set(map(str, fit_ids)) & set(map(str, eval_ids)))
    if shared:
        raise DataError(
            f"{len(shared)} fitting prompt(s) are also evaluation prompts (ids {shared[:5]}): "
            "draw fitting prompts with the evaluation ids excluded (fitting_prompts(...))"
        )


def fitting_prompts(
    source: str | Path = RTP_HUB_ID,
    eval_ids: Iterable[str] = (),
    *,
    n: int | None = None,
    seed: int = 43,
    challenging: bool = False,
) -> list[ToxicityPrompt]:
    """A seeded sample of ``n`` prompts of ``source`` that are not evaluation prompts."""
    return load_prompts(source, challenging=challenging, n=n, seed=seed, exclude=eval_ids)


def contrast_from_rtp(
    prompts: Sequence[ToxicityPrompt],
    *,
    eval_ids: Iterable[str] = (),
    toxic_at: float = TOXIC_THRESHOLD,
    nontoxic_below: float = TOXIC_THRESHOLD,
    max_pairs: int | None = None,
    seed: int = 42,
) -> ContrastDataset:
    """Cross-prompt pairs of human continuations (see the module docstring).

    Raises:
        DataError: a prompt is an evaluation prompt, the thresholds overlap, or no
            pair can be formed.
    """
    check_disjoint((p.id for p in prompts), eval_ids)
    if nontoxic_below > toxic_at:
        raise DataError(
            f"nontoxic_below ({nontoxic_below}) is above toxic_at ({toxic_at}): a continuation "
            "would be both toxic and non-toxic; use nontoxic_below <= toxic_at"
        )
    usable = [
        p for p in prompts
        if p.continuation and p.continuation.strip() and p.continuation_toxicity is not None
    ]
    toxic = [p for p in usable if p.continuation_toxicity >= toxic_at]
    clean = [p for p in usable if p.continuation_toxicity < nontoxic_below]
    if not toxic or not clean:
        raise DataError(
            f"cannot pair RealToxicityPrompts continuations: {len(toxic)} toxic (>= {toxic_at}) and "
            f"{len(clean)} non-toxic (< {nontoxic_below}) among {len(prompts)} prompts "
            f"({len(prompts) - len(usable)} without a scored continuation); both kinds are needed: "
            "use more prompts or other thresholds"
        )

    def key(p: ToxicityPrompt) -> float:
        return p.toxicity if p.toxicity is not None else 0.0

    clean.sort(key=lambda p: (key(p), int(p.id) if p.id.isdigit() else p.id))
    keys = [key(p) for p in clean]
    pairs: list[tuple[ToxicityPrompt, ToxicityPrompt]] = []
    for t in sorted(toxic, key=lambda p: (key(p), p.id)):
        if not clean:
            break
        j = bisect.bisect_left(keys, key(t))
        cands = [c for c in (j - 1, j) if 0 <= c < len(clean)]
        best = min(cands, key=lambda c: abs(keys[c] - key(t)))
        pairs.append((t, clean.pop(best)))
        keys.pop(best)
    if max_pairs is not None and max_pairs < len(pairs):
        keep = np.sort(np.random.RandomState(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs = [pairs[i] for i in keep.tolist()]
    examples = []
    for t, c in pairs:
        group = t.id
        examples.append(ContrastExample(prompt=t.text, completion=t.continuation, label=0, group=group))
        examples.append(ContrastExample(prompt=c.text, completion=c.continuation, label=1, group=group))
    return ContrastDataset(examples, name="rtp-contrast")


def contrast_from_samples(
    prompts: Sequence[ToxicityPrompt | tuple[str, str]],
    continuations: Mapping[str, Sequence[Continuation | str]],
    scores: Mapping[str, Sequence[float]],
    *,
    eval_ids: Iterable[str] = (),
    threshold: float = TOXIC_THRESHOLD,
    min_gap: float = 0.0,
) -> ContrastDataset:
    """Per prompt, its least toxic sample (label 1) against its most toxic (label 0).

    Raises:
        DataError: a prompt is an evaluation prompt, scores and continuations do not
            match, or no prompt has both a toxic and a non-toxic sample.
    """
    pairs = _as_pairs(prompts)
    check_disjoint((pid for pid, _ in pairs), eval_ids)
    examples = []
    for pid, text in pairs:
        conts = [c.text if isinstance(c, Continuation) else c for c in continuations.get(pid, [])]
        vals = [float(v) for v in scores.get(pid, [])]
        if len(conts) != len(vals):
            raise DataError(
                f"prompt {pid!r} has {len(conts)} continuations but {len(vals)} scores; "
                "score every continuation once"
            )
        ok = [i for i, c in enumerate(conts) if c.strip()]
        if len(ok) < 2:
            continue
        lo = min(ok, key=lambda i: (vals[i], i))
        hi = max(ok, key=lambda i: (vals[i], -i))
        if vals[hi] >= threshold > vals[lo] and vals[hi] - vals[lo] >= min_gap:
            examples.append(ContrastExample(prompt=text, completion=conts[lo], label=1, group=pid))
            examples.append(ContrastExample(prompt=text, completion=conts[hi], label=0, group=pid))
    if not examples:
        raise DataError(
            f"none of the {len(pairs)} fitting prompts has both a toxic (>= {threshold}) and a "
            f"non-toxic sample{f' {min_gap} apart' if min_gap else ''}: sample more prompts or more "
            "continuations per prompt (k), or build the data from RealToxicityPrompts (contrast_from_rtp)"
        )
    return ContrastDataset(examples, name="self-contrast")


def judge_continuations(
    judge: Any,
    prompts: Sequence[ToxicityPrompt | tuple[str, str]],
    continuations: Mapping[str, Sequence[Continuation]],
) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """Score every continuation with ``judge`` in one call.

    Returns:
        ``(scores, truncated)``: per prompt id, one toxicity score and one
        "truncated by the judge" flag per continuation.
    """
    pairs = _as_pairs(prompts)
    qs, ans, where = [], [], []
    for pid, text in pairs:
        for c in continuations[pid]:
            qs.append(text)
            ans.append(c.text)
            where.append(pid)
    if hasattr(judge, "score_details"):
        values, flags = judge.score_details(qs, ans)
    else:
        out = judge.score(qs, ans)
        if "toxic" not in out:
            raise DataError(
                f"judge '{getattr(judge, 'name', type(judge).__name__)}' scores {sorted(out)}, not "
                "'toxic': use a toxicity judge (toxicity-classifier, toxicity-lexicon)"
            )
        values, flags = out["toxic"], [False] * len(qs)
    scores: dict[str, list[float]] = {pid: [] for pid, _ in pairs}
    truncated: dict[str, list[bool]] = {pid: [] for pid, _ in pairs}
    for pid, v, f in zip(where, [float(x) for x in values], [bool(x) for x in flags]):
        scores[pid].append(v)
        truncated[pid].append(f)
    return scores, truncated


def self_contrast(
    model,
    tokenizer,
    prompts: Sequence[ToxicityPrompt | tuple[str, str]],
    judge: Any,
    config: SamplingConfig | None = None,
    *,
    eval_ids: Iterable[str] = (),
    threshold: float = TOXIC_THRESHOLD,
    min_gap: float = 0.0,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> ContrastDataset:
    """Sample from the unedited model, judge, and pair (see :func:`contrast_from_samples`)."""
    check_disjoint((pid for pid, _ in _as_pairs(prompts)), eval_ids)
    conts = sample_continuations(model, tokenizer, prompts, config, checkpoint=checkpoint, progress=progress)
    scores, _ = judge_continuations(judge, prompts, conts)
    return contrast_from_samples(prompts, conts, scores, threshold=threshold, min_gap=min_gap)
