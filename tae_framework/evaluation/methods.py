"""Methods: what is fitted (or loaded) on every fold.

A method is a preset name, a saved pipeline directory, a pipeline config JSON file or
a config dict; :func:`resolve_method` turns it into a :class:`Method` and validates it
by building the pipeline once. Overrides (``--set ROLE.KEY=VALUE``) are merged with
:func:`~tae_framework.overrides.apply_overrides`, the rule
:meth:`~tae_framework.pipeline.AlignmentPipeline.from_preset` uses too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import ArtifactError, ConfigError, UnknownComponentError
from ..overrides import apply_overrides
from ..pipeline import CONFIG_FILE, AlignmentPipeline
from ..registry import Registry
from .rundir import FIT_INFO_FILE, read_json

__all__ = ["Method", "apply_overrides", "resolve_method", "with_intervener"]


@dataclass
class Method:
    """A resolved ``method``: how to obtain the pipeline of each fold."""

    name: str
    kind: str  # "preset", "config", "saved"
    config: PipelineConfig | None = None
    saved: Path | None = None
    intervener_overrides: dict[str, Any] = field(default_factory=dict)
    fit_info: dict[str, Any] | None = None

    @property
    def refits(self) -> bool:
        return self.kind != "saved"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.config is not None:
            out["pipeline"] = self.config.model_dump(mode="json")
        if self.saved is not None:
            out["saved"] = str(self.saved)
            out["intervener_overrides"] = self.intervener_overrides
        return out

    def new_pipeline(self, registry: Registry) -> AlignmentPipeline:
        """An unfitted pipeline (refitting kinds) or the saved, fitted one."""
        if self.kind == "saved":
            assert self.saved is not None
            pipe = AlignmentPipeline.load(self.saved, registry)
            if self.intervener_overrides:
                pipe = with_intervener(pipe, self.intervener_overrides, registry)
            return pipe
        assert self.config is not None
        return AlignmentPipeline.from_config(self.config, registry)


def _saved_method(path: Path, overrides: Mapping[str, Any], refit: bool) -> Method:
    """A saved pipeline directory as a method: evaluated as fitted, or its config refitted."""
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise ArtifactError(
            f"{path} is not a saved pipeline (no {CONFIG_FILE}): pass a directory written by "
            "`tae fit` / AlignmentPipeline.save, or a preset name"
        )
    doc = read_json(cfg_file, "pipeline config")
    if not isinstance(doc, dict) or "pipeline" not in doc:
        raise ArtifactError(
            f"{cfg_file} lacks the 'pipeline' entry: save the pipeline again"
        )
    info_file = path / FIT_INFO_FILE
    fit_info = read_json(info_file, "fit info") if info_file.is_file() else None
    if refit:
        cfg = PipelineConfig.parse(apply_overrides(doc["pipeline"], overrides))
        return Method(path.name, "config", config=cfg, fit_info=fit_info)
    else:
        other = sorted(set(overrides) - {"intervener"})
        if other:
            raise ConfigError(
                f"a saved pipeline is evaluated as fitted, so only the intervener can be "
                f"changed; overriding {', '.join(other)} needs refitting: pass refit=True "
                "(--refit) to refit its config on every fold"
            )
        return Method(
            path.name,
            "saved",
            saved=path,
            intervener_overrides=dict(overrides.get("intervener") or {}),
            fit_info=fit_info,
        )


def resolve_method(
    method: str | Mapping[str, Any] | PipelineConfig,
    overrides: Mapping[str, Any] | None,
    registry: Registry,
    refit: bool = False,
) -> Method:
    """Resolve a preset name, a saved pipeline directory, a pipeline config JSON file or
    a config dict (with ``overrides``) and validate it by building the pipeline once.

    Raises:
        UnknownComponentError: an unknown preset (the message lists the known ones) or
            component.
        ConfigError: a bad override (unknown role or key, invalid value).
    """
    overrides = dict(overrides or {})
    if isinstance(method, (PipelineConfig, Mapping)):
        raw = method.model_dump() if isinstance(method, PipelineConfig) else dict(method)
        cfg = PipelineConfig.parse(
            apply_overrides(PipelineConfig.parse(raw).model_dump(), overrides)
        )
        out = Method("custom", "config", config=cfg)
    else:
        text = str(method).strip()
        if not text:
            raise ConfigError(
                "no method given: pass a preset name (e.g. 'tae'), a saved pipeline directory or a "
                "pipeline config JSON file"
            )
        path = Path(text).expanduser()
        if path.is_dir():
            out = _saved_method(path, overrides, refit)
        elif path.suffix.lower() == ".json" and path.is_file():
            doc = read_json(path, "pipeline config")
            raw = doc.get("pipeline", doc) if isinstance(doc, dict) else doc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path} does not hold a pipeline config (a JSON object)")
            cfg = PipelineConfig.parse(
                apply_overrides(PipelineConfig.parse(raw).model_dump(), overrides)
            )
            out = Method(path.stem, "config", config=cfg)
        elif path.is_file():
            hint = (
                f"the saved pipeline directory holding it ({path.parent})"
                if (path.parent / CONFIG_FILE).is_file()
                else "a saved pipeline directory or a pipeline config .json file"
            )
            raise ConfigError(
                f"method {text!r} is a file but neither a saved pipeline directory nor a pipeline "
                f"config JSON file: pass {hint}"
            )
        elif path.suffix.lower() == ".json" or text.startswith((".", "/", "~")):
            raise ConfigError(
                f"method {text!r} does not exist: pass a preset name, a saved pipeline directory or "
                "a pipeline config JSON file"
            )
        else:
            try:
                preset = registry.preset(text)
            except UnknownComponentError as exc:
                raise UnknownComponentError(
                    f"{exc}. A method may also be a saved pipeline directory or a pipeline config "
                    f"JSON file; {text!r} is neither"
                ) from None
            cfg = PipelineConfig.parse(apply_overrides(preset.model_dump(), overrides))
            out = Method(text, "preset", config=cfg)
    out.new_pipeline(registry)  # validate every component config now, before any work
    return out


def with_intervener(
    pipe: AlignmentPipeline, updates: Mapping[str, Any], registry: Registry
) -> AlignmentPipeline:
    """A fitted pipeline whose intervener config is updated (e.g. ``{"alpha": 5.0}``).

    The probes, directions and estimator are shared with ``pipe``; only the intervener
    is rebuilt and re-fitted on the same targets (a cheap operation).
    """
    cur = pipe.intervener
    updates = dict(updates)
    new_type = updates.pop("type", cur.name)
    cls = registry.get("intervener", new_type)
    base = cur.config.model_dump() if new_type == cur.name else {}
    unknown = sorted(set(updates) - set(cls.Config.model_fields))
    if unknown:
        raise ConfigError(
            f"intervener '{new_type}' has no config key(s) {', '.join(unknown)} (its keys: "
            f"{', '.join(cls.Config.model_fields)})"
        )
    new = cls({**base, **updates})
    new.fit(pipe.targets_, pipe.estimator)
    out = AlignmentPipeline(
        source=pipe.source,
        aggregator=pipe.aggregator,
        prober=pipe.prober,
        estimator=pipe.estimator,
        intervener=new,
        seed=pipe.config.seed,
        validation_fraction=pipe.config.validation_fraction,
        registry=registry,
    )
    out.fingerprint_ = pipe.fingerprint_
    out.adapter_name_ = pipe.adapter_name_
    out.provenance = dict(pipe.provenance)
    entry = registry.entry("intervener", new_type)
    out.provenance["intervener"] = {"distribution": entry.distribution, "version": entry.version}
    return out
