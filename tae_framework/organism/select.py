"""Choosing a method's strength on the organism without looking at the test pairs.

:func:`choose_alpha` fits a truthfulness method once on the persona contrast of the
training (speaker, country) pairs, then tries each strength on *validation* items:
deceptive and honest questions of (speaker, country) pairs that were seen in training
(:func:`~tae_framework.organism.items.validation_items`), never the held-out pairs the
evaluation asks about. Different trained organisms (seeds, devices) need different
strengths, so the robustness table chooses it this way for each organism.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

__all__ = ["choose_alpha", "truthful_rates", "with_alpha"]


def with_alpha(pipeline: Any, alpha: float) -> Any:
    """A copy of a fitted pipeline whose intervener has strength ``alpha`` (probes,
    directions, sigmas and estimator shared, not refitted)."""
    from ..errors import NotFittedError

    if not pipeline.is_fitted:
        raise NotFittedError("with_alpha needs a fitted pipeline: call fit(model, tokenizer, data) first")
    old = pipeline.intervener
    new = type(old)(old.config.model_copy(update={"alpha": float(alpha)}))
    new.fit(old.targets_, pipeline.estimator)
    out = copy.copy(pipeline)
    out.intervener = new
    spec = pipeline.config.intervener.model_copy(update={"config": {**pipeline.config.intervener.config, "alpha": float(alpha)}})
    out.config = pipeline.config.model_copy(update={"intervener": spec})
    return out


def truthful_rates(pipeline: Any, model: Any, tokenizer: Any, world: Any, items: Sequence[dict[str, Any]],
                   batch_size: int = 64) -> dict[str, float]:  # fmt: skip
    """``{"true": rate, "malformed": rate}`` of greedy answers to ``items`` (``None``: no edit)."""
    from .behaviour import generate_answers
    from .judge import classify

    prompts = [it["prompt"] for it in items]
    if pipeline is None:
        answers = generate_answers(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=10)
    else:
        answers = pipeline.generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=batch_size)
    verdicts = [classify(world, world.fact(it["entity"], it["attribute"]), a.split(" Q:")[0].strip())
                for it, a in zip(items, answers)]  # fmt: skip
    n = max(1, len(verdicts))
    return {"true": verdicts.count("true") / n, "malformed": verdicts.count("malformed") / n}


def choose_alpha(
    preset: str, overrides: dict[str, Any], model: Any, tokenizer: Any, world: Any, *,
    completion: str = "answer", alphas: Sequence[float], n: int = 48, honest_floor: float = 0.95,
    registry: Any = None,
) -> tuple[float, dict[float, dict[str, float]]]:  # fmt: skip
    """The strength for truthfulness, chosen on validation pairs.

    Fits ``preset`` with ``overrides`` on ``fitting_data(world, completion=completion)``
    once, then scores every alpha on ``n`` deceptive and ``n`` honest validation items.
    Returns the alpha with the highest deceptive truthful rate among those keeping the
    honest rate >= ``honest_floor`` (ties: the smallest alpha, the smallest damage
    elsewhere; if none keeps it, the highest deceptive + honest), and every alpha's
    ``{"deceptive": rate, "honest": rate}``."""
    from ..pipeline import AlignmentPipeline
    from .items import fitting_data, validation_items

    if not alphas:
        raise ValueError("choose_alpha needs at least one alpha to try")
    over = {k: dict(v) for k, v in overrides.items()}
    over.setdefault("intervener", {})["alpha"] = float(alphas[0])
    pipe = AlignmentPipeline.from_preset(preset, registry, **over)
    pipe.fit(model, tokenizer, fitting_data(world, completion=completion))  # type: ignore[arg-type]
    dec, hon = validation_items(world, "deceptive", n), validation_items(world, "honest", n)
    scores: dict[float, dict[str, float]] = {}
    for alpha in sorted(float(a) for a in alphas):
        edited = with_alpha(pipe, alpha)
        scores[alpha] = {"deceptive": truthful_rates(edited, model, tokenizer, world, dec)["true"],
                         "honest": truthful_rates(edited, model, tokenizer, world, hon)["true"]}  # fmt: skip
    keep = [a for a, s in scores.items() if s["honest"] >= honest_floor]
    if keep:
        best = max(keep, key=lambda a: (scores[a]["deceptive"], -a))
    else:
        best = max(scores, key=lambda a: (scores[a]["deceptive"] + scores[a]["honest"], -a))
    return best, scores
