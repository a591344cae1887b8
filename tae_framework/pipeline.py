"""``AlignmentPipeline``: the object that fits a method on a model and applies it.

The pipeline owns the data path of the design guide::

    texts + labels -> ActivationSource -> token activations
                   -> GraphAggregator  -> one feature per text and layer
                   -> Prober           -> top-K (layer, unit) targets, directions, sigma
                   -> MisalignmentEstimator (optional) -> per-token signals
                   -> Intervener       -> edits on the live model

``fit`` runs the path once; ``apply`` is a context manager installing the edits;
``generate`` and ``score`` are conveniences; ``save``/``load`` round-trip the fitted
state through ``config.json`` + ``tensors.safetensors`` (never pickle; reading and
validating artifacts lives in :mod:`tae_framework.artifact`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._log import get_logger
from ._version import __version__
from .aggregators.base import GraphAggregator
from .artifact import (
    CONFIG_FILE,
    FORMAT_VERSION,
    TENSORS_FILE,
    check_save_target,
    state_sha256,
    write_pipeline,
)
from .component import Component, tensor_sha256
from .config import ComponentSpec, PipelineConfig
from .data import ContrastDataset
from .editing import EditScope, EditSession, is_installed
from .errors import ConfigError, DataError, TAEError
from .estimators.base import MisalignmentEstimator
from .interveners.base import Intervener
from .models.base import ModelAdapter, check_fingerprint
from .models.loading import check_prompts
from .probers.base import Prober
from .registry import Registry
from .sources.base import ActivationSource
from .types import EditTargets, EstimatorInputs, ProbeInputs, TokenSequence

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "TENSORS_FILE", "AlignmentPipeline", "split_groups"]

log = get_logger(__name__)



def split_groups(groups: torch.Tensor, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split texts into train / validation masks by group, with a seeded permutation.

    Every group lands wholly on one side. At least one group goes to each side.
    """
    unique = torch.unique(groups).numpy()
    if unique.size < 2:
        raise DataError(
            f"fitting needs at least 2 groups (questions) to hold some out for validation; got {unique.size}. "
            "Give examples distinct `group` values (or leave group empty: the completions of each prompt are then one group)"
        )
    rng = np.random.RandomState(seed)
    order = rng.permutation(unique)
    n_val = min(max(1, int(round(validation_fraction * unique.size))), unique.size - 1)
    val_groups = torch.as_tensor(np.sort(order[:n_val]))
    val = torch.isin(groups, val_groups)
    return ~val, val


class AlignmentPipeline:
    """A method = one component per role, fitted on one model.

    Build it from a preset (``AlignmentPipeline.from_preset("tae")``), from a
    :class:`~tae_framework.config.PipelineConfig` or dict, or from component objects.

    Example:
        >>> from tae_framework import AlignmentPipeline               # doctest: +SKIP
        >>> pipe = AlignmentPipeline.from_preset("tae")                # doctest: +SKIP
        >>> pipe.fit(model, tokenizer, "contrast.jsonl")               # doctest: +SKIP
        >>> pipe.generate(model, tokenizer, ["Q: ... A:"])             # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        source: ActivationSource,
        aggregator: GraphAggregator,
        prober: Prober,
        intervener: Intervener,
        estimator: MisalignmentEstimator | None = None,
        seed: int = 42,
        validation_fraction: float = 0.2,
        registry: Registry | None = None,
    ):
        checks = [
            ("source", source, ActivationSource),
            ("aggregator", aggregator, GraphAggregator),
            ("prober", prober, Prober),
            ("intervener", intervener, Intervener),
        ]
        if estimator is not None:
            checks.append(("estimator", estimator, MisalignmentEstimator))
        for role, obj, base in checks:
            if not isinstance(obj, base):
                raise ConfigError(f"{role} must be a {base.__name__}, got {type(obj).__name__}")
        site = getattr(source.config, "site", "heads")
        if prober.required_site is not None and prober.required_site != site:
            raise ConfigError(
                f"prober '{prober.name}' works on the {prober.required_site} site but the source captures "
                f"'{site}': set the source config's site to '{prober.required_site}'"
            )
        self.source, self.aggregator, self.prober = source, aggregator, prober
        self.estimator, self.intervener = estimator, intervener
        self.config = PipelineConfig(
            source=_spec_of(source),
            aggregator=_spec_of(aggregator),
            prober=_spec_of(prober),
            estimator=_spec_of(estimator) if estimator is not None else None,
            intervener=_spec_of(intervener),
            seed=seed,
            validation_fraction=validation_fraction,
        )
        self._registry = registry
        self.fingerprint_: dict[str, Any] | None = None
        self.adapter_name_: str | None = None
        self.provenance: dict[str, dict[str, str]] = {}
        self._edit_key_cache: tuple[tuple[Any, ...], tuple[str, str]] | None = None

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PipelineConfig | dict[str, Any], registry: Registry | None = None) -> AlignmentPipeline:
        """Build from a pipeline config (validated in two steps: shape, then each component)."""
        reg = registry if registry is not None else _default_registry()
        cfg = PipelineConfig.parse(config)
        parts: dict[str, Any] = {}
        for role in ("source", "aggregator", "prober", "estimator", "intervener"):
            spec = getattr(cfg, role)
            parts[role] = None if spec is None else reg.build(role, spec)
        pipe = cls(**parts, seed=cfg.seed, validation_fraction=cfg.validation_fraction, registry=reg)
        pipe.provenance = {
            role: _provenance(reg, role, getattr(cfg, role).type)
            for role in ("source", "aggregator", "prober", "estimator", "intervener")
            if getattr(cfg, role) is not None
        }
        return pipe

    @classmethod
    def from_preset(
        cls, name: str, registry: Registry | None = None, **overrides: dict[str, Any]
    ) -> AlignmentPipeline:
        """Build a named preset; ``overrides`` update a role's config, e.g.
        ``from_preset("tae", prober={"top_k": 8}, intervener={"alpha": 5})``.
        """
        from .overrides import apply_overrides

        reg = registry if registry is not None else _default_registry()
        cfg = apply_overrides(reg.preset(name).model_dump(), overrides)
        return cls.from_config(cfg, reg)

    def _adapter(self, model) -> ModelAdapter:
        reg = self._registry if self._registry is not None else _default_registry()
        return reg.adapter_for(model)

    # -- fit -------------------------------------------------------------------------
    def fit(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: ContrastDataset | Any,
        tuning: Sequence[str] | None = None,
        *,
        validation_groups: Sequence[Any] | None = None,
    ) -> AlignmentPipeline:
        """Fit every role on ``data`` (a :class:`ContrastDataset`, path, records or
        ``datasets.Dataset``). ``tuning`` texts set the sigmas (default: the data's
        tuning texts, else its full texts). ``validation_groups`` fixes which groups rank
        the heads (default: a seeded split by ``validation_fraction``).
        """
        data = ContrastDataset.load(data, tuning)
        data.validate_for_fit()
        self._edit_key_cache = None
        adapter = self._adapter(model)
        site = getattr(self.source.config, "site", "heads")
        shape = adapter.shape(model)
        info = adapter.site_info(model, site)
        labels, groups = data.labels, data.groups
        if validation_groups is not None:
            val = data.validation_mask(validation_groups)
            train = ~val
        else:
            train, val = split_groups(groups, self.config.validation_fraction, self.config.seed)
        data.warn_duplicates_across(train, val)
        torch.manual_seed(self.config.seed)

        # Pass 1: features of every text (+ token-level validation activations).
        log.info("fit: capturing %d texts at the %s site", len(data), site)
        want_tokens = self.prober.needs_token_validation
        feats = torch.empty(len(data), shape.num_layers, info.num_units, info.unit_dim)
        val_tokens: list[torch.Tensor] = []
        val_token_labels: list[torch.Tensor] = []
        for batch in self.source.capture(model, tokenizer, data.texts, data.spans, None, site, adapter):
            pooled = self.aggregator.aggregate(batch)
            for j, t in enumerate(batch):
                feats[t.index] = pooled[j].reshape(shape.num_layers, info.num_units, info.unit_dim)
                if want_tokens and bool(val[t.index]):
                    ans = t.answer.transpose(0, 1).reshape(-1, shape.num_layers, info.num_units, info.unit_dim)
                    val_tokens.append(ans.float())
                    val_token_labels.append(torch.full((ans.shape[0],), int(labels[t.index])))
        inputs = ProbeInputs(
            features=feats,
            labels=labels,
            groups=groups,
            train_mask=train,
            val_mask=val,
            val_tokens=torch.cat(val_tokens) if val_tokens else None,
            val_token_labels=torch.cat(val_token_labels) if val_token_labels else None,
            seed=self.config.seed,
        )
        log.info("fit: probing %d layers x %d units", shape.num_layers, info.num_units)
        self.prober.fit(inputs)
        targets: EditTargets = self.prober.targets_
        targets.site = site
        layers = targets.edited_layers()

        # Pass 2: sigma from the tuning texts' last token at the selected targets.
        tune_texts = data.tuning if data.tuning else data.texts
        tune = []
        for batch in self.source.capture(model, tokenizer, tune_texts, None, layers, site, adapter):
            for t in batch:
                tune.append(_gather_targets(t.last[:, None], t.layers, targets, info)[0])
        self.prober.calibrate(torch.stack(tune))
        targets = self.prober.targets_
        targets.site = site

        # Pass 3: token-level data for the estimator (train texts only).
        if self.estimator is not None:
            log.info("fit: fitting the estimator on %d training texts", int(train.sum()))
            idx = torch.nonzero(train).flatten().tolist()
            sub = data.subset(idx)
            seqs: list[TokenSequence] = []
            for batch in self.source.capture(model, tokenizer, sub.texts, sub.spans, layers, site, adapter):
                for t in batch:
                    s, e = t.span
                    ids = t.input_ids[s:e]
                    label = int(labels[idx[t.index]])
                    feat = None
                    if label == 0:
                        lo = max(s - 1, 0)
                        window = t.acts[:, lo : e - 1]  # state before each answer token
                        feat = _gather_targets(window, t.layers, targets, info)
                        if s == 0:  # the first token has no preceding state
                            ids = ids[1:]
                    seqs.append(TokenSequence(ids, label, int(groups[idx[t.index]]), feat))
            self.estimator.fit(EstimatorInputs(targets, seqs, seed=self.config.seed))

        self.intervener.fit(targets, self.estimator)
        self.fingerprint_ = adapter.fingerprint(model)
        self.adapter_name_ = adapter.name
        if (memo := getattr(self.source, "memo", None)) is not None:
            memo.clear()  # activations kept for the fit's later captures: not needed after it
        return self

    # -- apply -----------------------------------------------------------------------
    @property
    def targets_(self) -> EditTargets:
        return self.intervener.targets_

    @property
    def is_fitted(self) -> bool:
        return self.fingerprint_ is not None

    def _check_model(self, model) -> ModelAdapter:
        if self.fingerprint_ is None:
            from .errors import NotFittedError

            raise NotFittedError("this pipeline is not fitted: call fit(model, tokenizer, data) or load(dir)")
        adapter = self._adapter(model)
        check_fingerprint(self.fingerprint_, adapter.fingerprint(model))
        return adapter

    def apply(
        self, model: PreTrainedModel, scope: EditScope | str = "last", span: torch.Tensor | None = None, record: bool = False
    ) -> EditSession:
        """A context manager that installs the fitted edits on ``model``.

        Args:
            scope: ``"last"`` (generation), ``"span"`` (positions of ``span``) or ``"all"``.
            span: ``[B, T]`` bool mask of positions for the ``span`` scope (can also be
                set later with ``session.set_span``).
            record: keep each edited layer's per-token multipliers in ``session.trace``.

        Entering the session while this pipeline's edits are already installed on
        ``model`` (a nested ``with pipe.apply(model)``, or :meth:`generate` / :meth:`score`
        inside one) raises :class:`~tae_framework.errors.TAEError` instead of adding the
        edit twice; so does installing an identical pipeline (another load of the same
        artifact). Different pipelines may be stacked on one model.
        """
        adapter = self._check_model(model)
        session = self.intervener.install(model, adapter, EditScope.coerce(scope), record=record)
        # Entering it while this pipeline's edit (or an identical one) is active is an error.
        session.owner = self._edit_key()
        session.owner_label = f"the edit of {self!r} (or of an identical pipeline)"
        if span is not None:
            session.set_span(span)
        return session

    def is_applied(self, model: PreTrainedModel) -> bool:
        """Whether this pipeline's edit (or an identical pipeline's) is installed on ``model``
        by an active :meth:`apply` session."""
        return self.is_fitted and is_installed(model, self._edit_key())

    def _edit_key(self) -> tuple[str, str]:
        """Identifies the edit this pipeline installs: its config, the intervener's config
        and fitted targets. Two pipelines with equal keys (the same object, or two loads of
        one artifact) add the same edit, so they are never installed on one model at the
        same time.

        Hashing the target tensors costs a pass over their bytes, so the key is computed
        once and reused while the state it was computed from is unchanged: the same config,
        intervener, estimator and targets objects, the same non-tensor target values, and
        no tensor replaced or modified in place (PyTorch's per-tensor version counter).
        :meth:`fit` and :meth:`load` start afresh; ``set_state``, a replaced intervener or
        intervener config, or an in-place edit of a target tensor is seen on the next call.
        """
        token = self._edit_key_token()
        cached = self._edit_key_cache
        if cached is not None and _same_token(cached[0], token):
            return cached[1]
        h = hashlib.sha256(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
        h.update(self.intervener.name.encode())
        h.update(json.dumps(self.intervener.config.model_dump(mode="json"), sort_keys=True).encode())
        targets = self.intervener.targets_
        for f in dataclasses.fields(targets):
            value = getattr(targets, f.name)
            h.update(f.name.encode())
            h.update((tensor_sha256(value) if isinstance(value, torch.Tensor) else repr(value)).encode())
        key = ("tae-edit", h.hexdigest())
        self._edit_key_cache = (token, key)
        return key

    def _edit_key_token(self) -> tuple[Any, ...]:
        """What :meth:`_edit_key` depends on, cheap to compare (no tensor bytes read)."""
        targets = self.intervener.targets_
        values = []
        for f in dataclasses.fields(targets):
            value = getattr(targets, f.name)
            if isinstance(value, torch.Tensor):
                # Inference tensors keep no version counter (and cannot be changed outside
                # inference mode): their identity stands for them.
                values.append((value, None if value.is_inference() else value._version))
            else:
                values.append(repr(value))
        return (self.config, self.intervener, self.intervener.config, self.estimator, targets, tuple(values))

    def _check_run(self, model, batch_size: Any, edit: bool, what: str) -> None:
        """Checks shared by :meth:`generate` and :meth:`score`, before any forward pass
        (the texts themselves are checked by :mod:`tae_framework.generation`)."""
        _check_count("batch_size", batch_size)
        if edit:
            self._check_model(model)
        elif is_installed(model, self._edit_key()):
            raise TAEError(
                f"{what} with edit=False inside `with pipe.apply(model)`: this pipeline's edits are "
                "installed, so the results would be edited; call it outside the `with` block"
            )

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        max_new_tokens: int = 50,
        batch_size: int = 8,
        edit: bool = True,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy generation (left padding, KV cache) with the edits on the last position.

        Raises:
            DataError: ``prompts`` is a single string (wrap it in a list) or holds a
                non-string; a prompt plus ``max_new_tokens`` exceeds the model's positions.
            ConfigError: ``max_new_tokens`` / ``batch_size`` is not a positive integer;
                the tokenizer produces ids outside the model's embedding.
            TAEError: called inside ``with pipe.apply(model)`` (the edit would be
                added twice, or ``edit=False`` would still be edited).
        """
        from .generation import greedy_generate

        prompts = check_prompts(prompts, "prompts")
        _check_count("max_new_tokens", max_new_tokens)
        self._check_run(model, batch_size, edit, "generation")
        return greedy_generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            edit=(lambda: self.apply(model, "last")) if edit else None,
            **generate_kwargs,
        )

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 8, edit: bool = True
    ) -> torch.Tensor:
        """Summed log-probability of each completion given its prompt, edits on the completion tokens.

        Raises the same errors as :meth:`generate` for bad prompts, completions (one per
        prompt) and models.
        """
        from .generation import answer_logprobs

        prompts = check_prompts(prompts, "prompts")
        completions = check_prompts(completions, "completions")
        if len(prompts) != len(completions):
            raise DataError(
                f"got {len(prompts)} prompts and {len(completions)} completions: give one completion per prompt"
            )
        self._check_run(model, batch_size, edit, "scoring")
        return answer_logprobs(
            model,
            tokenizer,
            prompts,
            completions,
            batch_size=batch_size,
            edit=(lambda mask: self.apply(model, "span", span=mask)) if edit else None,
        )

    # -- persistence -------------------------------------------------------------------
    def _roles(self) -> dict[str, Component]:
        roles = {
            "source": self.source,
            "aggregator": self.aggregator,
            "prober": self.prober,
            "estimator": self.estimator,
            "intervener": self.intervener,
        }
        return {k: v for k, v in roles.items() if v is not None}

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``tensors.safetensors`` to ``directory``.

        Both files are written completely to a temporary folder, then renamed into place:
        a failed save leaves a previous artifact as it was and never a half-written file. ``config.json``
        records a SHA-256 checksum of every tensor, verified by :meth:`load`.

        Args:
            directory: the artifact folder (created with its parents when missing). Files
                in it that the framework did not write are never touched.
            overwrite: replace a different pipeline already saved in ``directory``: every
                file the framework wrote for the previous one goes (``config.json``,
                ``tensors.safetensors``, and ``fit_info.json``, which described the old
                fit); files it did not write stay. Without ``overwrite`` that is an
                :class:`~tae_framework.errors.ArtifactError` and nothing is written.
                Saving the same fitted pipeline again is allowed and changes nothing.

        Raises:
            NotFittedError: the pipeline is not fitted.
            ArtifactError: ``directory`` is a file, sits under a file, holds another
                pipeline (without ``overwrite``) or cannot be written.
        """
        if not self.is_fitted:
            from .errors import NotFittedError

            raise NotFittedError("cannot save an unfitted pipeline: call fit(...) first")
        directory = Path(directory).expanduser()
        check_save_target(directory)
        tensors: dict[str, torch.Tensor] = {}
        components: dict[str, Any] = {}
        for role, comp in self._roles().items():
            t, meta = comp.get_state()
            for key, value in t.items():
                tensors[f"{role}/{key}"] = value.clone()  # roles may share tensors (targets)
            components[role] = {
                "type": comp.name,
                **self.provenance.get(role, {"distribution": "unknown", "version": "unknown"}),
                "state": meta,
            }
        doc = {
            "format": FORMAT_VERSION,
            "framework_version": __version__,
            "pipeline": self.config.model_dump(mode="json"),
            "components": components,
            "model": self.fingerprint_,
            "tensor_keys": sorted(tensors),
            "tensor_sha256": {key: tensor_sha256(value) for key, value in sorted(tensors.items())},
            "state_sha256": state_sha256(components),
        }
        return write_pipeline(directory, doc, tensors, overwrite)

    @classmethod
    def load(cls, directory: str | Path, registry: Registry | None = None) -> AlignmentPipeline:
        """Load a pipeline saved by :meth:`save`.

        Every field of ``config.json`` is checked, and every tensor against the checksum
        saved with it: a damaged or edited artifact is an
        :class:`~tae_framework.errors.ArtifactError`, never a silently different pipeline.
        """
        from .artifact import load_pipeline

        return load_pipeline(cls, directory, registry)

    def __repr__(self) -> str:
        parts = ", ".join(f"{r}={c.name}" for r, c in self._roles().items())
        return f"AlignmentPipeline({parts}, fitted={self.is_fitted})"


def _same_token(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """Whether two :meth:`AlignmentPipeline._edit_key_token` results describe the same state:
    the same objects (``is``), tensors with unchanged version counters, equal target values."""
    *objects, values = old
    *new_objects, new_values = new
    if len(values) != len(new_values) or any(a is not b for a, b in zip(objects, new_objects)):
        return False
    for a, b in zip(values, new_values):
        if isinstance(a, tuple):
            if not isinstance(b, tuple) or a[0] is not b[0] or a[1] != b[1]:
                return False
        elif a != b:
            return False
    return True


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not hasattr(value, "__index__") or value.__index__() < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _gather_targets(acts: torch.Tensor, layers: Sequence[int], targets: EditTargets, info) -> torch.Tensor:
    """``[L_captured, n, D]`` -> ``[n, K, d]`` activations of the K targets."""
    pos = {layer: i for i, layer in enumerate(layers)}
    li = torch.tensor([pos[int(layer)] for layer in targets.layers.tolist()], dtype=torch.long)
    n = acts.shape[1]
    view = acts.reshape(acts.shape[0], n, info.num_units, info.unit_dim)
    return view[li, :, targets.units].transpose(0, 1).float()


def _spec_of(comp: Component) -> ComponentSpec:
    return ComponentSpec(type=comp.name, config=comp.config.model_dump(mode="json"))


def _provenance(reg: Registry, role: str, name: str) -> dict[str, str]:
    e = reg.entry(role, name)
    return {"distribution": e.distribution, "version": e.version}


def _default_registry() -> Registry:
    from .plugins import default_registry

    return default_registry()
