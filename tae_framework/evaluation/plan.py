"""The plan of a run: everything checked before the model is touched.

:func:`prepare` builds the task, checks its folds (leak-free, the requested ones
exist), its protocol and metric specs (every metric names an output some protocol
declares), resolves the method and the judge, and applies the run's protocol options.
Errors name the task, and the item, fold, protocol or metric at fault.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..tasks.base import check_folds
from .aggregate import active_metrics
from .config import EvalConfig
from .methods import Method, resolve_method
from .protocols import Protocol, item_field
from .rundir import FIT_INFO_FILE, slug
from .specs import MetricSpec, ProtocolSpec

__all__ = ["Plan", "check_items", "check_metric_specs", "prepare", "select_folds"]

# EvalConfig conveniences -> (protocol kind, option name)
_CONVENIENCE = {
    "max_new_tokens": ("generation", "max_new_tokens"),
    "side_effects_texts": ("side_effects", "texts"),
    "side_effects_n": ("side_effects", "n"),
    "side_effects_max_tokens": ("side_effects", "max_tokens"),
}


@dataclass
class Plan:
    cfg: EvalConfig
    registry: Registry
    task: Any
    folds: list[Any]
    method: Method
    protocols: dict[str, Protocol]
    judged: str | None
    judge: Any
    judge_name: str | None
    metrics: list[MetricSpec]
    run_name: str
    tag: str
    run_dir: Path

    @property
    def task_name(self) -> str:
        return self.cfg.task


def build_task(cfg: EvalConfig, registry: Registry) -> Any:
    try:
        return registry.task(cfg.task, **cfg.task_options)
    except TypeError as exc:  # a task factory that does not take an option
        raise ConfigError(f"task '{cfg.task}' does not accept the options {sorted(cfg.task_options)} ({exc})") from None


def select_folds(task: Any, name: str, wanted: Sequence[int] | None) -> list[Any]:
    """The task's folds (checked leak-free) restricted to ``wanted``."""
    try:
        all_folds = list(task.folds())
    except DataError as exc:
        raise DataError(f"task '{name}': {exc}") from None
    if not all_folds:
        raise DataError(f"task '{name}' has no folds: it needs questions to evaluate")
    check_folds(name, all_folds, list(task.question_ids))
    wanted = list(wanted) if wanted is not None else list(range(len(all_folds)))
    bad = [k for k in wanted if not 0 <= k < len(all_folds)]
    if bad:
        raise DataError(
            f"fold(s) {bad} do not exist: task '{name}' has {len(all_folds)} folds (0..{len(all_folds) - 1})"
        )
    folds = [all_folds[k] for k in wanted]
    for f in folds:
        if not f.test:
            raise DataError(
                f"fold {f.index} of task '{name}' has no test questions (test={len(f.test)}, "
                f"train={len(f.train)}, val={len(f.val)}): use more questions or fewer folds"
            )
    return folds


def check_metric_specs(
    name: str, metrics: Sequence[MetricSpec], outputs: Mapping[str, Sequence[str]], judge_metrics: Sequence[str]
) -> None:
    """Every metric names existing outputs (``"<key>.<output>"`` of a protocol of the
    task, or ``"judge.<metric>"`` of its judge metrics); derived metrics name earlier ones."""
    seen: set[str] = set()
    for spec in metrics:
        if not isinstance(spec, MetricSpec):
            raise ConfigError(f"task '{name}': metrics() must return MetricSpec objects, got {spec!r}")
        if spec.name in seen:
            raise ConfigError(f"task '{name}' declares metric '{spec.name}' twice")
        for need in spec.needs:
            key, _, out = need.partition(".")
            if key == "judge":
                if out not in judge_metrics:
                    raise ConfigError(
                        f"task '{name}': metric '{spec.name}' needs '{need}', but the task's judge "
                        f"metrics are {list(judge_metrics)} (Task.judge_metrics)"
                    )
            elif key not in outputs:
                raise ConfigError(
                    f"task '{name}': metric '{spec.name}' needs '{need}', but the task has no protocol "
                    f"'{key}' (its protocols: {', '.join(outputs) or 'none'})"
                )
            elif out not in outputs[key]:
                raise ConfigError(
                    f"task '{name}': metric '{spec.name}' needs '{need}', but protocol '{key}' has no "
                    f"output '{out}' (its outputs: {', '.join(outputs[key])})"
                )
        for other in spec.of:
            if other not in seen:
                raise ConfigError(
                    f"task '{name}': derived metric '{spec.name}' uses '{other}', which is not a metric "
                    "declared before it"
                )
        seen.add(spec.name)


def check_items(name: str, items: Sequence[Any], protocols: Mapping[str, Protocol]) -> None:
    """Every item has every field its protocols need (named: task, item, field)."""
    for key, proto in protocols.items():
        for it in items:
            for fld in proto.requires:
                value = item_field(it, fld)
                if value is None or (hasattr(value, "__len__") and len(value) == 0):
                    raise DataError(
                        f"task '{name}': item {it.id!r} has no '{fld}', which protocol '{key}' "
                        f"({proto.name}) needs; give every item a {fld}, or switch the protocol off"
                    )


def _options(cfg: EvalConfig, key: str, spec: ProtocolSpec, cls: type[Protocol]) -> dict[str, Any]:
    fields = cls.Options.model_fields
    opts = dict(spec.options)
    for cfg_key, (kind, opt) in _CONVENIENCE.items():
        value = getattr(cfg, cfg_key)
        if value is not None and cls.kind == kind and opt in fields:
            opts[opt] = value
    opts.update({k: v for k, v in cfg.protocol_options.get("*", {}).items() if k in fields})
    opts.update(cfg.protocol_options.get(key, {}))
    return opts


def _enabled(cfg: EvalConfig, spec: ProtocolSpec, cls: type[Protocol]) -> bool:
    if cls.kind == "multiple_choice":
        return cfg.mc and spec.enabled
    if cls.kind == "generation":
        return cfg.generation and spec.enabled
    if cls.kind == "side_effects":
        return cfg.side_effects or spec.enabled
    return spec.enabled


def build_protocols(cfg: EvalConfig, task: Any, registry: Registry) -> tuple[dict[str, Protocol], dict[str, Sequence[str]], str | None]:
    """``(active protocols, outputs of every declared protocol, judged key)``."""
    specs = dict(task.protocols())
    unknown = sorted(set(cfg.protocol_options) - set(specs) - {"*"})
    if unknown:
        raise ConfigError(
            f"task '{cfg.task}' has no protocol {unknown[0]!r} (its protocols: {', '.join(specs)}); "
            "--protocol-option KEY.NAME=VALUE names one of them, or NAME=VALUE sets every protocol that has NAME"
        )
    star = cfg.protocol_options.get("*", {})
    for opt in star:
        if not any(opt in registry.protocol(s.protocol).Options.model_fields for s in specs.values()):
            raise ConfigError(f"no protocol of task '{cfg.task}' has an option '{opt}'")
    active: dict[str, Protocol] = {}
    outputs: dict[str, Sequence[str]] = {}
    judged = [k for k, s in specs.items() if s.judged]
    if len(judged) > 1:
        raise ConfigError(f"task '{cfg.task}' marks several protocols as judged ({judged}); mark at most one")
    for key, spec in specs.items():
        cls = registry.protocol(spec.protocol)
        outputs[key] = tuple(cls.outputs)
        if spec.judged and cls.answers_output is None:
            raise ConfigError(
                f"task '{cfg.task}': protocol '{key}' ({cls.name}) is marked judged but produces no answers"
            )
        if not _enabled(cfg, spec, cls):
            continue
        try:
            active[key] = cls(_options(cfg, key, spec, cls))
        except ConfigError as exc:
            raise ConfigError(f"task '{cfg.task}', protocol '{key}': {exc}") from None
    if not active:
        raise ConfigError(
            f"nothing to evaluate: every protocol of task '{cfg.task}' is off ({', '.join(specs)}); "
            "enable at least one (mc, generation, side_effects)"
        )
    return active, outputs, (judged[0] if judged and judged[0] in active else None)


def _judge(cfg: EvalConfig, task: Any, registry: Registry, judged: str | None) -> tuple[Any, str | None]:
    spec = cfg.judge
    if spec == "task":
        spec = getattr(task, "default_judge", None)
    if judged is None or spec is None:
        return None, None
    judge = registry.build("judge", {"type": spec} if isinstance(spec, str) else spec)
    name = judge.name
    if not judge.metrics:
        raise ConfigError(f"judge '{name}' declares no metrics (its `metrics` is empty)")
    missing = set(getattr(task, "judge_metrics", ()) or ()) - set(judge.metrics)
    if missing:
        warnings.warn(
            f"task '{cfg.task}' is scored with judge metric(s) {sorted(task.judge_metrics)}, but judge "
            f"'{name}' gives {list(judge.metrics)}: {sorted(missing)} will be missing",
            stacklevel=4,
        )
    return judge, name


def _check_no_leak(method: Method, folds: Sequence[Any], task_name: str) -> None:
    if method.kind != "saved":
        return
    if method.fit_info is None:
        warnings.warn(
            f"the saved pipeline {method.saved} carries no {FIT_INFO_FILE}, so the runner cannot "
            "check that it was not fitted on the evaluated questions; make sure it was not "
            "(or pass refit=True / --refit to fit it on every fold)",
            stacklevel=4,
        )
        return
    info = method.fit_info
    fitted_on = set(info.get("question_ids") or ())
    if info.get("task") != task_name or not fitted_on:
        return
    for f in folds:
        shared = sorted(fitted_on & set(f.test))
        if shared:
            raise DataError(
                f"the saved pipeline {method.saved} was fitted on {len(shared)} question(s) of fold "
                f"{f.index}'s test set (e.g. {shared[:3]}; it was fitted on fold "
                f"{info.get('fold')}): evaluating it there would leak. Evaluate other folds "
                "(--folds), or pass refit=True (--refit) to fit it on every fold"
            )


def prepare(cfg: EvalConfig, registry: Registry, *, sweep: bool = False) -> Plan:
    """Check everything a run needs, in order, before touching the model."""
    task = build_task(cfg, registry)
    folds = select_folds(task, cfg.task, cfg.folds)
    protocols, outputs, judged = build_protocols(cfg, task, registry)
    declared = list(task.metrics())
    judge_metrics = tuple(getattr(task, "judge_metrics", ()) or ())
    check_metric_specs(cfg.task, declared, outputs, judge_metrics)
    method = resolve_method(cfg.method, cfg.overrides, registry, refit=cfg.refit or sweep)
    _check_no_leak(method, folds, cfg.task)
    judge, judge_name = _judge(cfg, task, registry, judged)
    available = {f"{k}.{o}" for k, p in protocols.items() for o in p.outputs}
    if judge is not None:
        available |= {f"judge.{m}" for m in judge.metrics}
    run_name = cfg.run or f"{slug(method.name)}-{slug(cfg.task)}" + ("-sweep" if sweep else "")
    return Plan(
        cfg=cfg,
        registry=registry,
        task=task,
        folds=folds,
        method=method,
        protocols=protocols,
        judged=judged if judge is not None else None,
        judge=judge,
        judge_name=judge_name,
        metrics=active_metrics(declared, available),
        run_name=run_name,
        tag=cfg.tag or slug(method.name),
        run_dir=Path(cfg.out_dir).expanduser() / run_name,
    )
