"""The evaluation runner: :func:`run_eval` (``tae eval``).

:func:`run_eval` runs one method through a task's k-fold protocol on one model:

1. for every fold ``k``: build the method (a preset, a pipeline config, or a saved
   pipeline; :mod:`~tae_framework.evaluation.methods`), fit it on the task's fitting
   data of the fold with the fold's own validation questions, save it to
   ``<out>/<run>/fold<k>/pipeline/``;
2. run the task's protocols on the fold's test items with the edits installed
   (:mod:`~tae_framework.evaluation.protocols`: multiple choice, generation, side
   effects, or a plugin's own), judge the answers, and compute the task's metrics
   (:mod:`~tae_framework.evaluation.aggregate`);
3. write the fold's per-item results (``fold<k>/items.json`` and the task's own file,
   ``fold<k>/answers.csv``; ``baseline.csv`` with ``baseline``), a head accuracy
   heatmap and per-token strength figures of a few answers;
4. aggregate over folds as each metric says into ``summary.json`` (numbers,
   configuration, versions, provenance) and ``summary.md``
   (:mod:`~tae_framework.evaluation.report`).

Runs resume (:mod:`~tae_framework.evaluation.rundir`): a finished fold
(``fold<k>/fold.json``) is skipped; within a fold the fitted pipeline is reloaded and
every protocol's per-item outputs and the judge's scores are checkpointed after every
batch. A run directory remembers its configuration and model; resuming with different
settings is refused. :func:`~tae_framework.evaluation.sweep.run_sweep` evaluates a
K x alpha grid the same way.

The runner knows no task by name: everything task-specific comes from the task's
:meth:`~tae_framework.tasks.base.Task.protocols`, :meth:`~tae_framework.tasks.base.Task.metrics`
and :meth:`~tae_framework.tasks.base.Task.write_results`.

Example:
    >>> from tae_framework.evaluation.runner import run_eval                 # doctest: +SKIP
    >>> from tae_framework.models.loading import load_model                 # doctest: +SKIP
    >>> model, tok = load_model("meta-llama/Meta-Llama-3-8B-Instruct", dtype="bfloat16",
    ...                         device="cuda")                              # doctest: +SKIP
    >>> summary = run_eval(model, tok, {"method": "tae", "run": "tae-llama3",
    ...                    "task_options": {"source": "truthfulqa/truthful_qa"}})  # doctest: +SKIP
    >>> summary["metrics"]["True*Info"]                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import distributed
from .._log import get_logger
from .._version import __version__
from ..pipeline import CONFIG_FILE
from ..registry import Registry
from .aggregate import over_folds
from .config import EvalConfig
from .execute import fit_or_load, run_fold
from .methods import apply_overrides, resolve_method, with_intervener
from .plan import Plan, prepare
from .report import columns_of, format_summary
from .rundir import (
    SUMMARY_JSON,
    SUMMARY_MD,
    model_identity,
    model_info,
    now,
    open_run_dir,
    progress_bar,
    read_json,
    versions,
    write_json,
)

log = get_logger(__name__)

__all__ = [
    "EvalConfig",
    "aggregate_docs",
    "apply_overrides",
    "execute_eval",
    "resolve_method",
    "run_eval",
    "with_intervener",
]


def run_eval(
    model: Any,
    tokenizer: Any,
    config: EvalConfig | Mapping[str, Any],
    registry: Registry | None = None,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a method through the task's k-fold protocol; write ``<out_dir>/<run>/``.

    Args:
        model, tokenizer: the model to edit and its (fast) tokenizer.
        config: an :class:`EvalConfig` or a dict of its fields.
        registry: components, presets, tasks, protocols and judges (default: the installed ones).
        model_name: the model's hub id or path, recorded in the summary.
        overwrite: delete an existing run directory of the same name first.
        extra: more provenance to record (e.g. the command line).

    Returns:
        The summary written to ``summary.json``: ``metrics`` (aggregated as each metric
        says), ``breakdown`` (per-group values of metrics with ``by``), ``folds``
        (per-fold values), ``baseline`` (same, or None), ``columns`` (name, percent,
        direction of every metric), the configuration, versions and provenance.
    """
    from ..plugins import default_registry

    cfg = EvalConfig.parse(config)
    reg = registry if registry is not None else default_registry()
    plan = prepare(cfg, reg)
    return execute_eval(plan, model, tokenizer, model_name=model_name, overwrite=overwrite, extra=extra)


def aggregate_docs(plan: Plan, docs: Sequence[Mapping[str, Any]], part: str | None = None) -> dict[str, Any]:
    """Aggregate fold documents (``part="baseline"``: their baselines) over folds."""
    parts = [d[part] if part else d for d in docs]
    metrics, breakdown = over_folds(plan.metrics, [p["metrics"] for p in parts], [p.get("breakdown") or {} for p in parts])
    n = int(sum(d["n_questions"] for d in docs))
    folds = [{**p["metrics"], "n_questions": d["n_questions"]} for p, d in zip(parts, docs)]
    return {"metrics": {**metrics, "n_questions": n}, "breakdown": breakdown, "folds": folds}


def _run_folds(plan: Plan, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    docs = []
    with progress_bar(plan.cfg.progress, total=len(plan.folds), desc=f"{plan.run_name} folds") as bar:
        for fold in plan.folds:
            fold_dir = plan.run_dir / f"fold{fold.index}"

            def factory(fold=fold, pipe_dir=fold_dir / "pipeline"):
                return fit_or_load(plan, model, tokenizer, fold, pipe_dir)

            log.info(
                "%s: fold %d (%d of %d), %d test items", plan.run_name, fold.index, len(docs) + 1, len(plan.folds),
                len(fold.test),
            )  # fmt: skip
            doc = run_fold(
                plan, model, tokenizer, fold, fold_dir, pipe_factory=factory,
                baseline_dir=fold_dir if plan.cfg.baseline else None, figures=True, desc=f"fold {fold.index}",
            )  # fmt: skip
            log.info("%s: fold %d %s", plan.run_name, fold.index,
                     "resumed from its files" if doc["resumed"] else f"done in {doc['elapsed_s']:.1f} s")  # fmt: skip
            bar.set_postfix_str("resumed" if doc["resumed"] else f"{doc['elapsed_s']:.0f}s")
            bar.update(1)
            docs.append(doc)
    return docs


def execute_eval(
    plan: Plan, model: Any, tokenizer: Any, *, model_name: str | None, overwrite: bool, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Run a prepared plan (see :func:`~tae_framework.evaluation.plan.prepare`)."""
    cfg = plan.cfg
    started = now()
    distributed.refuse_tensor_parallel(model, "tae eval")
    identity = model_identity(model, plan.registry)
    with distributed.main_first("opening the run directory"):  # under torchrun: rank 0 creates it
        open_run_dir(plan.run_dir, cfg.comparable(), identity, "eval", overwrite and distributed.is_main())
    docs = _run_folds(plan, model, tokenizer)
    method = aggregate_docs(plan, docs)
    baseline = aggregate_docs(plan, docs, "baseline") if cfg.baseline else None
    summary = {
        "run": plan.run_name,
        "framework_version": __version__,
        "method": plan.method.describe(),
        "task": {"name": cfg.task, "options": cfg.task_options, "n_folds": len(plan.task.folds())},
        "protocols": {k: p.describe() for k, p in plan.protocols.items()},
        "judge": plan.judge_name,
        "model": model_info(model, identity, model_name),
        "columns": columns_of(plan.metrics),
        "metrics": method["metrics"],
        "breakdown": method["breakdown"],
        "folds": [
            {"fold": d["fold"], "metrics": m, **{k: d[k] for k in ("test_ids", "targets", "files", "resumed")}}
            for d, m in zip(docs, method["folds"])
        ],
        "baseline": baseline,
        "config": cfg.model_dump(mode="json"),
        "provenance": {
            "versions": versions(),
            "pipeline_components": _components_of(plan, docs),
            "judge": judge_provenance(plan),
            "started": started,
            "finished": now(),
            **dict(extra or {}),
        },
    }
    if distributed.is_main():
        write_json(plan.run_dir / SUMMARY_JSON, summary)
        (plan.run_dir / SUMMARY_MD).write_text(format_summary(summary), encoding="utf-8")
    return summary


def _components(doc: Mapping[str, Any]) -> dict[str, Any]:
    comps = doc.get("components", {})
    return {r: {k: c.get(k) for k in ("type", "distribution", "version")} for r, c in comps.items()}


def _components_of(plan: Plan, docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    for d in docs:
        rel = d["files"].get("answers")
        pipe_cfg = plan.run_dir / Path(rel).parent / "pipeline" / CONFIG_FILE if rel else None
        if pipe_cfg is not None and pipe_cfg.is_file():
            return _components(read_json(pipe_cfg, "pipeline config"))
    if plan.method.saved is not None:
        return _components(read_json(plan.method.saved / CONFIG_FILE, "pipeline config"))
    return {}


def judge_provenance(plan: Plan) -> dict[str, Any] | None:
    if plan.judge is None or plan.judge_name is None:
        return None
    e = plan.registry.entry("judge", plan.judge_name)
    return {
        "type": e.name,
        "distribution": e.distribution,
        "version": e.version,
        "config": plan.judge.config.model_dump(mode="json"),
        "metrics": list(plan.judge.metrics),
    }


def __getattr__(name: str) -> Any:  # the sweep moved to its own module
    if name in ("run_sweep", "REFERENCE_K", "REFERENCE_ALPHA"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
