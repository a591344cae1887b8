"""``tae sweep``: a K (edited heads) x alpha (edit strength) grid through the k-fold
protocol, every K fitted once per fold and reused for every alpha."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import distributed
from .._version import __version__
from ..errors import ConfigError
from ..pipeline import AlignmentPipeline
from ..registry import Registry
from .config import EvalConfig
from .execute import fit_or_load, run_fold
from .methods import with_intervener
from .plan import Plan, prepare
from .report import columns_of, format_sweep, write_sweep_csv
from .rundir import (
    model_identity,
    model_info,
    now,
    open_run_dir,
    progress_bar,
    read_json,
    versions,
    write_json,
)
from .runner import aggregate_docs, judge_provenance

__all__ = ["REFERENCE_ALPHA", "REFERENCE_K", "check_grid", "grid_values", "run_sweep"]

#: The reference grid of ``tae sweep``: number of edited heads K ...
REFERENCE_K: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
#: ... and edit strength alpha.
REFERENCE_ALPHA: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


def grid_values(values: Sequence[Any], what: str, cast: Callable[[Any], Any]) -> list[Any]:
    """Positive, distinct grid values (``ConfigError`` otherwise)."""
    out = []
    for v in values:
        try:
            x = cast(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} value {v!r} is not a number") from None
        if x <= 0:
            raise ConfigError(f"{what} values must be positive, got {v!r}")
        out.append(x)
    if not out:
        raise ConfigError(f"the {what} grid is empty: give at least one value")
    if len(set(out)) != len(out):
        raise ConfigError(f"the {what} grid lists a value twice: {list(values)}")
    return out


def check_grid(plan: Plan) -> None:
    """The method's prober has ``top_k`` and its intervener ``alpha``."""
    base = plan.method.config
    assert base is not None
    reg = plan.registry
    for role, key in (("prober", "top_k"), ("intervener", "alpha")):
        spec = getattr(base, role)
        fields = reg.get(role, spec.type).Config.model_fields
        if key not in fields:
            raise ConfigError(
                f"the sweep sets {role}.{key}, but {role} '{spec.type}' has no {key} (its keys: {', '.join(fields)})"
            )


def _alpha(alpha: float) -> str:
    return f"{alpha:g}"


def _sweep_cells(plan: Plan, model: Any, tok: Any, ks: list[int], alphas: list[float]) -> tuple[dict, list, int]:
    cells: dict[tuple[int, float], list[dict[str, Any]]] = {(k, a): [] for k in ks for a in alphas}
    baseline_docs: list[dict[str, Any]] = []
    fits = 0
    with progress_bar(plan.cfg.progress, total=len(plan.folds) * len(ks) * len(alphas), desc=f"{plan.run_name} cells") as bar:
        for fold in plan.folds:
            base_dir = plan.run_dir / "baseline" / f"fold{fold.index}" if plan.cfg.baseline else None
            for K in ks:
                fitted: dict[str, Any] = {}

                def fitted_pipe(fold=fold, K=K, fitted=fitted) -> tuple[AlignmentPipeline, bool]:
                    nonlocal fits
                    if "pipe" not in fitted:
                        pipe_dir = plan.run_dir / f"K{K}" / f"fold{fold.index}" / "pipeline"
                        fitted["pipe"], fitted["now"] = fit_or_load(plan, model, tok, fold, pipe_dir, {"prober": {"top_k": K}})
                        fits += int(fitted["now"])
                    return fitted["pipe"], fitted["now"]

                for alpha in alphas:

                    def factory(alpha=alpha, fitted_pipe=fitted_pipe):
                        pipe, fresh = fitted_pipe()  # a new fit makes old checkpoints stale
                        return with_intervener(pipe, {"alpha": alpha}, plan.registry), fresh

                    cell_dir = plan.run_dir / f"K{K}" / f"alpha{_alpha(alpha)}" / f"fold{fold.index}"
                    desc = f"fold {fold.index} K={K} alpha={_alpha(alpha)}"
                    doc = run_fold(plan, model, tok, fold, cell_dir, pipe_factory=factory, baseline_dir=base_dir, figures=False, desc=desc)
                    cells[(K, alpha)].append(doc)
                    bar.update(1)
            if base_dir is not None:
                baseline_docs.append(read_json(base_dir / "fold.json", "baseline result"))
    return cells, baseline_docs, fits


def run_sweep(
    model: Any,
    tokenizer: Any,
    config: EvalConfig | Mapping[str, Any],
    ks: Sequence[int] = REFERENCE_K,
    alphas: Sequence[float] = REFERENCE_ALPHA,
    registry: Registry | None = None,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every (K, alpha) of a grid through the k-fold protocol; one table.

    K sets ``prober.top_k`` and alpha ``intervener.alpha``. Every K is fitted once per
    fold (saved under ``K<K>/fold<k>/pipeline``); every alpha reuses that fit with a
    rebuilt intervener. Cells are ``K<K>/alpha<a>/fold<k>/`` (per-item results and fold
    JSON, resumable like :func:`~tae_framework.evaluation.runner.run_eval`); the table is
    ``sweep.csv`` / ``sweep.md`` (``sweep.json`` holds every number), one column per
    metric of the task. Per-token strength figures are not drawn.

    Returns:
        ``{"rows": [{"K", "alpha", metric...}], "baseline": {...} or None, "fits", ...}``.
    """
    from ..plugins import default_registry

    cfg = EvalConfig.parse(config)
    reg = registry if registry is not None else default_registry()
    ks = grid_values(ks, "K", int)
    alphas = grid_values(alphas, "alpha", float)
    plan = prepare(cfg, reg, sweep=True)
    check_grid(plan)
    started = now()
    distributed.refuse_tensor_parallel(model, "tae sweep")
    identity = model_identity(model, reg)
    with distributed.main_first("opening the run directory"):  # under torchrun: rank 0 creates it
        open_run_dir(plan.run_dir, cfg.comparable(), identity, "sweep", overwrite and distributed.is_main())
    cells, baseline_docs, fits = _sweep_cells(plan, model, tokenizer, ks, alphas)
    rows = [{"K": K, "alpha": a, **aggregate_docs(plan, docs)["metrics"]} for (K, a), docs in cells.items()]
    baseline = aggregate_docs(plan, baseline_docs)["metrics"] if cfg.baseline else None
    columns = columns_of(plan.metrics)
    if not distributed.is_main():  # under torchrun rank 0 writes the tables
        return {"run": plan.run_name, "rows": rows, "baseline": baseline, "fits": fits}
    write_sweep_csv(plan.run_dir / "sweep.csv", rows, columns)
    title = f"{plan.run_name}: K x alpha sweep of {plan.method.name} on {cfg.task}"
    md = format_sweep(title, [f.index for f in plan.folds], rows, columns, baseline)
    (plan.run_dir / "sweep.md").write_text(md, encoding="utf-8")
    summary = {
        "run": plan.run_name,
        "framework_version": __version__,
        "method": plan.method.describe(),
        "task": {"name": cfg.task, "options": cfg.task_options},
        "judge": plan.judge_name,
        "model": model_info(model, identity, model_name),
        "grid": {"K": ks, "alpha": alphas},
        "folds": [f.index for f in plan.folds],
        "columns": columns,
        "rows": rows,
        "baseline": baseline,
        "fits": fits,
        "config": cfg.model_dump(mode="json"),
        "provenance": {"versions": versions(), "judge": judge_provenance(plan), "started": started, "finished": now(), **dict(extra or {})},
    }
    write_json(plan.run_dir / "sweep.json", summary)
    return summary
