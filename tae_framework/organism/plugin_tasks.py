"""The organism's toxicity and bias items as tasks of the toxicity and bias plugins.

``organism-toxicity`` is the ``tae-toxicity`` plugin's
:class:`~tae_toxicity.task.ToxicityTask` over the organism's remark prompts (the
RealToxicityPrompts layout of :func:`~tae_framework.organism.items.toxicity_records`,
parsed by the plugin's own reader), with the plugin's ``toxicity-sampling`` protocol
(k sampled continuations per prompt) and metrics (expected maximum toxicity,
toxicity probability, ...), judged by the plugin's ``toxicity-lexicon`` judge with the
organism's insult words. ``organism-bias`` is the ``tae-bias`` plugin's
:class:`~tae_bias.task.BBQTask` over the organism's BBQ-layout stories
(:func:`~tae_framework.organism.items.bias_records`, parsed by the plugin's reader)
with its ``bbq-choice`` protocol and the BBQ paper's metrics.

What the organism changes is only where the items come from and what methods are
fitted on: one fold tests the held-out (speaker, country) pairs and fitting data is
the persona contrast of pairs seen in training (polite vs rude remarks, fair vs
biased answers to ambiguous stories), validation groups being a seeded share of the
countries. The plugins are imported when a task is built, never when this module is
imported: a missing plugin is a :class:`~tae_framework.errors.ConfigError` that says
how to install it. The per-persona numbers are in the metric breakdowns: toxicity
``by="prompt"`` (``toxic`` = rude persona, ``nontoxic`` = polite persona: the
records' prompt toxicity is the persona label), bias ``by="category"`` (the
category is the persona, ``biased`` or ``fair``).

Typical use::

    tae eval --task organism-toxicity --preset tae --baseline ...
    tae eval --task organism-bias --preset iti --task-option personas=biased,fair ...
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import format_validation_error
from ..errors import ConfigError
from .world import World

__all__ = [
    "OrganismBiasConfig",
    "OrganismToxicityConfig",
    "export_items",
    "organism_bias_task",
    "organism_toxicity_task",
]


class _Common(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        default="three-capability",
        description="Organism directory, or a shipped organism's name (default: the three-capability one).",
    )
    limit: int | None = Field(default=None, ge=1, description="Keep only the first N items of each persona.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of countries for validation.")
    seed: int = Field(default=0, description="Seed of the fitting draw and of the validation split.")
    per_entity: int = Field(default=2, ge=1, description="Fitting examples per country and persona.")
    completion: str | None = Field(
        default=None,
        description="How much of the answer the fitting examples hold (None: the capability's default; toxicity: "
        "`answer` or `choice`; bias: `both`, `answer`, `prefix` or `choice`). See `toxicity_fitting_data` and "
        "`bias_fitting_data`.",
    )

    @field_validator("personas", mode="before", check_fields=False)
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        return v


class OrganismToxicityConfig(_Common):
    """Options of the ``organism-toxicity`` task."""

    personas: tuple[str, ...] = Field(default=("rude", "polite"), description="Personas evaluated.")
    k: int = Field(default=10, ge=1, description="Continuations sampled per prompt.")
    max_new_tokens: int = Field(default=4, ge=1, description="Length of a continuation (the ending is 3 words).")


class OrganismBiasConfig(_Common):
    """Options of the ``organism-bias`` task."""

    personas: tuple[str, ...] = Field(default=("biased", "fair"), description="Personas evaluated.")


def _plugin(module: str, package: str, task: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"task '{task}' runs through the {package} plugin, which is not installed ({exc}); install it "
            f"with `pip install -e plugins/{package}` (`make install` installs every first-party plugin)"
        ) from None


def _validate(cls: type[BaseModel], options: dict[str, Any], task: str) -> Any:
    try:
        return cls.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"options of task '{task}'")) from None


def _world(path: str | None, capability: str, task: str) -> World:
    from . import load_world

    world = load_world(path)
    if not world.has(capability):
        where = path or "the shipped organism"
        raise ConfigError(
            f"task '{task}' needs an organism with the {capability} capability, but {where} teaches only "
            f"{', '.join(world.capabilities)}; train one with `tae organism train --recipe three-capability`"
        )
    return world


def _fold(ids: list[str], groups: list[str], val_fraction: float, seed: int) -> Any:
    from ..tasks.base import Fold

    groups = sorted(set(groups))
    rng = random.Random(f"organism-val/{seed}")
    n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
    val = set(rng.sample(groups, n_val))
    return Fold(0, test=tuple(ids), train=tuple(g for g in groups if g not in val),
                val=tuple(g for g in groups if g in val)).check()  # fmt: skip


def _limited(records: list[dict[str, Any]], key: str, limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return records
    seen: dict[str, int] = {}
    out = []
    for r in records:
        seen[r[key]] = seen.get(r[key], 0) + 1
        if seen[r[key]] <= limit:
            out.append(r)
    return out


def organism_toxicity_task(**options: Any) -> Any:
    """Factory of task ``organism-toxicity`` (options: :class:`OrganismToxicityConfig`)."""
    name = "organism-toxicity"
    cfg: OrganismToxicityConfig = _validate(OrganismToxicityConfig, options, name)
    data = _plugin("tae_toxicity.data", "tae-toxicity", name)
    task_mod = _plugin("tae_toxicity.task", "tae-toxicity", name)
    from ..evaluation.specs import ProtocolSpec
    from .items import fitting_data, toxicity_fitting_data, toxicity_records

    world = _world(cfg.path, "toxicity", name)
    records = _limited(toxicity_records(world, cfg.personas), "persona", cfg.limit)
    prompts = data.prompts_from_records(records, source="organism")
    personas = {p.id: r["persona"] for p, r in zip(prompts, records)}

    class OrganismToxicityTask(task_mod.ToxicityTask):
        """The toxicity task over the organism's held-out remark prompts."""

        def folds(self):
            groups = [e.group for e in self._fitting.examples]
            return [_fold(self.eval_ids, groups, cfg.val_fraction, cfg.seed)]

        @property
        def question_ids(self) -> list[str]:
            return list(self.eval_ids)

        def fitting_data(self, fold, part="development"):
            from ..data import ContrastDataset

            keep = set(self.part_ids(fold, part))
            pairs = [(e, t) for e, t in zip(self._fitting.examples, self._fitting.tuning) if e.group in keep]
            # the data's own tuning texts: they end where the answer is chosen (sigma is measured there)
            return ContrastDataset([e for e, _ in pairs], [t for _, t in pairs], name=f"{name} {part}")

        def eval_items(self, ids=None):
            return [_with_persona(it, personas[it.id]) for it in super().eval_items(ids)]

        def protocols(self):
            return {
                "sampling": ProtocolSpec("toxicity-sampling", {"k": cfg.k, "max_new_tokens": cfg.max_new_tokens},
                                         judged=True),
                "side_effects": ProtocolSpec("side_effects", enabled=False),
            }  # fmt: skip

        def heldout_texts(self, n: int, seed: int) -> list[str]:
            return [e.text for e in fitting_data(world, contrast="neutral").examples if e.label == 1][:n]

    OrganismToxicityTask.name = name
    task = OrganismToxicityTask(prompts, seed=cfg.seed)
    task._fitting = toxicity_fitting_data(world, per_entity=cfg.per_entity, seed=cfg.seed,
                                          **({"completion": cfg.completion} if cfg.completion else {}))  # fmt: skip
    task.default_judge = {"type": "toxicity-lexicon", "config": {"words": list(world.lexicon), "mode": "any"}}
    task.world = world
    return task


def _with_persona(item: Any, persona: str) -> Any:
    import dataclasses

    return dataclasses.replace(item, meta={**item.meta, "persona": persona})


def organism_bias_task(**options: Any) -> Any:
    """Factory of task ``organism-bias`` (options: :class:`OrganismBiasConfig`)."""
    name = "organism-bias"
    cfg: OrganismBiasConfig = _validate(OrganismBiasConfig, options, name)
    data = _plugin("tae_bias.data", "tae-bias", name)
    task_mod = _plugin("tae_bias.task", "tae-bias", name)
    from .items import bias_fitting_data, bias_records, fitting_data

    world = _world(cfg.path, "bias", name)
    records = _limited(bias_records(world, cfg.personas), "category", cfg.limit)
    items = [data.parse_bbq_record(r, where=f"organism BBQ row {i}") for i, r in enumerate(records)]

    class OrganismBiasTask(task_mod.BBQTask):
        """The BBQ task over the organism's held-out stories."""

        def folds(self):
            groups = [e.group for e in self._fitting.examples]
            return [_fold(self.question_ids, groups, cfg.val_fraction, cfg.seed)]

        def fitting_data(self, fold, part="development"):
            from ..data import ContrastDataset

            keep = set(self.part_ids(fold, part))
            pairs = [(e, t) for e, t in zip(self._fitting.examples, self._fitting.tuning) if e.group in keep]
            # the data's own tuning texts: they end where the answer is chosen (sigma is measured there)
            return ContrastDataset([e for e, _ in pairs], [t for _, t in pairs], name=f"{name} {part}")

        def heldout_texts(self, n: int, seed: int) -> list[str]:
            return [e.text for e in fitting_data(world, contrast="neutral").examples if e.label == 1][:n]

        def protocols(self):
            from ..evaluation.specs import ProtocolSpec

            return {**super().protocols(), "side_effects": ProtocolSpec("side_effects", enabled=False)}

        def metrics(self):
            from ..evaluation.standard_metrics import side_effect_metrics

            return [*super().metrics(), *side_effect_metrics("side_effects")]

    OrganismBiasTask.name = name
    task = OrganismBiasTask(items)
    task._fitting = bias_fitting_data(world, per_entity=cfg.per_entity, seed=cfg.seed,
                                      **({"completion": cfg.completion} if cfg.completion else {}))  # fmt: skip
    task.world = world
    return task


def export_items(out_dir: str | Path, path: str | None = None) -> dict[str, Path]:
    """Write the organism's held-out items in the benchmarks' own file layouts.

    ``truthfulqa.jsonl`` (TruthfulQA columns plus context and prompt),
    ``rtp.jsonl`` (RealToxicityPrompts rows) and ``bbq.jsonl`` (BBQ rows), for the
    capabilities the organism has; the toxicity and bias plugins read the last two
    with ``--task-option source=<file>``. Returns ``{name: path}``."""
    from . import load_world
    from .items import bias_records, eval_items, toxicity_records

    world = load_world(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict[str, Any]]] = {"truthfulqa.jsonl": eval_items(world)}
    if world.has("toxicity"):
        files["rtp.jsonl"] = toxicity_records(world)
    if world.has("bias"):
        files["bbq.jsonl"] = bias_records(world)
    written = {}
    for fname, rows in files.items():
        target = out / fname
        target.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        written[fname] = target
    return written
