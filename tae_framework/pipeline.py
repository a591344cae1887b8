"""``AlignmentPipeline``: the object that fits a method on a model and applies it.

The pipeline owns the data path of the design guide::

    texts + labels -> ActivationSource -> token activations
                   -> GraphAggregator  -> one feature per text and layer
                   -> Prober           -> top-K (layer, unit) targets, directions, sigma
                   -> MisalignmentEstimator (optional) -> per-token signals
                   -> Intervener       -> edits on the live model

``fit`` runs the path once; ``apply`` is a context manager installing the edits;
``generate`` and ``score`` are conveniences; ``save``/``load`` round-trip the fitted
state through ``config.json`` + ``tensors.safetensors`` (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .aggregators.base import GraphAggregator
from .component import Component
from .config import ComponentSpec, PipelineConfig
from .data import ContrastDataset
from .editing import EditScope, EditSession
from .errors import ArtifactError, ConfigError, DataError, UnknownComponentError
from .estimators.base import MisalignmentEstimator
from .interveners.base import Intervener
from .models.base import ModelAdapter, check_fingerprint
from .probers.base import Prober
from .registry import Registry
from .sources.base import ActivationSource
from .types import EditTargets, EstimatorInputs, ProbeInputs, TokenSequence

__all__ = ["CONFIG_FILE", "TENSORS_FILE", "AlignmentPipeline", "split_groups"]

CONFIG_FILE = "config.json"
TENSORS_FILE = "tensors.safetensors"
FORMAT_VERSION = 1


def split_groups(groups: torch.Tensor, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split texts into train / validation masks by group, with a seeded permutation.

    Every group lands wholly on one side. At least one group goes to each side.
    """
    unique = torch.unique(groups).numpy()
    if unique.size < 2:
        raise DataError(
            f"fitting needs at least 2 groups (questions) to hold some out for validation; got {unique.size}. "
            "Give examples distinct `group` values (or leave group empty: each example is then its own group)"
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
        model,
        tokenizer,
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
        adapter = self._adapter(model)
        site = getattr(self.source.config, "site", "heads")
        shape = adapter.shape(model)
        info = shape.site(site)
        labels, groups = data.labels, data.groups
        if validation_groups is not None:
            names = [e.group for e in data.examples]
            wanted = {str(g) for g in validation_groups}
            val = torch.tensor([n in wanted for n in names])
            if not bool(val.any()) or bool(val.all()):
                raise DataError("validation_groups must select some but not all groups of the data")
            train = ~val
        else:
            train, val = split_groups(groups, self.config.validation_fraction, self.config.seed)
        torch.manual_seed(self.config.seed)

        # Pass 1: features of every text (+ token-level validation activations).
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
        self, model, scope: EditScope | str = "last", span: torch.Tensor | None = None, record: bool = False
    ) -> EditSession:
        """A context manager that installs the fitted edits on ``model``.

        Args:
            scope: ``"last"`` (generation), ``"span"`` (positions of ``span``) or ``"all"``.
            span: ``[B, T]`` bool mask of positions for the ``span`` scope (can also be
                set later with ``session.set_span``).
            record: keep each edited layer's per-token multipliers in ``session.trace``.
        """
        adapter = self._check_model(model)
        session = self.intervener.install(model, adapter, EditScope.coerce(scope), record=record)
        if span is not None:
            session.set_span(span)
        return session

    def generate(
        self,
        model,
        tokenizer,
        prompts: Sequence[str],
        max_new_tokens: int = 50,
        batch_size: int = 8,
        edit: bool = True,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy generation (left padding, KV cache) with the edits on the last position."""
        from .generation import greedy_generate

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
        self, model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 8, edit: bool = True
    ) -> torch.Tensor:
        """Summed log-probability of each completion given its prompt, edits on the completion tokens."""
        from .generation import answer_logprobs

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

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``tensors.safetensors`` to ``directory``."""
        if not self.is_fitted:
            from .errors import NotFittedError

            raise NotFittedError("cannot save an unfitted pipeline: call fit(...) first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
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
        }
        tmp_cfg = directory / (CONFIG_FILE + ".tmp")
        tmp_cfg.write_text(json.dumps(doc, indent=2, sort_keys=True))
        save_file(tensors, str(directory / (TENSORS_FILE + ".tmp")), metadata={"format": str(FORMAT_VERSION)})
        (directory / (TENSORS_FILE + ".tmp")).replace(directory / TENSORS_FILE)
        tmp_cfg.replace(directory / CONFIG_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, registry: Registry | None = None) -> AlignmentPipeline:
        """Load a pipeline saved by :meth:`save`."""
        directory = Path(directory)
        cfg_path, t_path = directory / CONFIG_FILE, directory / TENSORS_FILE
        for p in (cfg_path, t_path):
            if not p.is_file():
                raise ArtifactError(
                    f"{p} is missing: a saved pipeline directory holds {CONFIG_FILE} and {TENSORS_FILE}; "
                    "save the pipeline again with pipeline.save(dir)"
                )
        try:
            doc = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{cfg_path} is corrupted (not valid JSON: {exc}); save the pipeline again") from None
        for key in ("pipeline", "components", "model"):
            if key not in doc:
                raise ArtifactError(f"{cfg_path} lacks the '{key}' entry; it was not written by AlignmentPipeline.save")
        try:
            tensors = load_file(str(t_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{t_path} is corrupted ({exc}); save the pipeline again") from None
        missing = sorted(set(doc.get("tensor_keys", [])) - set(tensors))
        if missing:
            raise ArtifactError(f"{t_path} lacks tensors {missing[:5]}: the artifact is incomplete; save it again")
        reg = registry if registry is not None else _default_registry()
        try:
            pipe = cls.from_config(doc["pipeline"], reg)
        except UnknownComponentError as exc:
            needs = {
                f"{c['type']} ({role}) from {c.get('distribution', 'unknown')} {c.get('version', '')}".strip()
                for role, c in doc["components"].items()
            }
            raise UnknownComponentError(
                f"{exc}\nthis artifact needs: {', '.join(sorted(needs))}"
            ) from None
        for role, comp in pipe._roles().items():
            entry = doc["components"].get(role)
            if entry is None:
                continue
            prefix = f"{role}/"
            part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            comp.set_state(part, entry.get("state", {}))
        if pipe.estimator is not None and pipe.estimator.is_fitted:
            pipe.intervener.fit(pipe.intervener.targets_, pipe.estimator)
        pipe.fingerprint_ = doc["model"]
        pipe.adapter_name_ = doc["model"].get("adapter") if isinstance(doc["model"], dict) else None
        return pipe

    def __repr__(self) -> str:
        parts = ", ".join(f"{r}={c.name}" for r, c in self._roles().items())
        return f"AlignmentPipeline({parts}, fitted={self.is_fitted})"


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
