"""One fold of a run: fit (or reload) the method, run the task's protocols with the
edits installed (and without, for the baseline), judge, compute the fold's metrics and
write its files.

Per-item protocol outputs and judge scores are checkpointed to ``<prefix><key>.jsonl``
/ ``<prefix>judge.jsonl`` after every batch; fold-scope outputs to
``<prefix><key>.json``; a finished fold leaves ``fold.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import distributed
from ..config import PipelineConfig
from ..distributed import SharedCheckpoint
from ..errors import DataError
from ..overrides import apply_overrides
from ..pipeline import CONFIG_FILE, TENSORS_FILE, AlignmentPipeline
from .aggregate import fold_metrics, item_metric_values
from .judging import judge_items
from .plan import Plan, check_items
from .protocols import ProtocolContext
from .rundir import (
    FIT_INFO_FILE,
    FOLD_FILE,
    Checkpoint,
    chunks,
    now,
    progress_bar,
    read_json,
    seed_everything,
    slug,
    write_json,
)
from .specs import FoldView, ItemResult

__all__ = ["evaluate_items", "fit_or_load", "run_fold"]


def fit_or_load(
    plan: Plan, model: Any, tokenizer: Any, fold: Any, pipe_dir: Path, overrides: Mapping[str, Any] | None = None
) -> tuple[AlignmentPipeline, bool]:
    """The fold's fitted pipeline: reloaded from ``pipe_dir`` when saved, else fitted on
    the task's fitting data of the fold and saved. Returns ``(pipeline, fitted_now)``.

    A task that asks for it (a ``context`` keyword in ``fitting_data``) gets a
    :class:`~tae_framework.tasks.base.FittingContext` with the unedited model, the run's
    seed and judge, and ``<pipe_dir>/../fitting`` for resumable files. The fold's
    validation ids the fitting data kept rank the heads."""
    reg = plan.registry
    if not plan.method.refits:
        return plan.method.new_pipeline(reg), False
    if (pipe_dir / CONFIG_FILE).is_file() and (pipe_dir / TENSORS_FILE).is_file():
        return AlignmentPipeline.load(pipe_dir, reg), False
    assert plan.method.config is not None
    cfg = plan.method.config
    if overrides:
        cfg = PipelineConfig.parse(apply_overrides(cfg.model_dump(), overrides))
    pipe = AlignmentPipeline.from_config(cfg, reg)
    from ..tasks.base import FittingContext, fitting_data_for, validation_groups

    context = FittingContext(
        model=model, tokenizer=tokenizer, seed=plan.cfg.seed, judge=plan.judge,
        work_dir=pipe_dir.parent / "fitting" if distributed.is_main() else None,
        batch_size=plan.cfg.batch_size, progress=plan.cfg.progress,
    )  # fmt: skip
    data = fitting_data_for(plan.task, fold, context)
    val = validation_groups(plan.task_name, fold, data)
    pipe.fit(model, tokenizer, data, validation_groups=val)
    if not distributed.is_main():  # every rank fitted the same pipeline; the main rank saves it
        return pipe, True
    pipe.save(pipe_dir)
    write_json(
        pipe_dir / FIT_INFO_FILE,
        {
            "task": plan.cfg.task,
            "task_options": plan.cfg.task_options,
            "fold": fold.index,
            "question_ids": sorted({e.group for e in data.examples if e.group is not None}),
            "validation_ids": list(val or []),
            "created": now(),
        },
    )
    return pipe, True


def _checkpoint_names(plan: Plan, prefix: str) -> list[str]:
    names = [f"{prefix}{k}.jsonl" for k in plan.protocols] + [f"{prefix}{k}.json" for k in plan.protocols]
    return [*names, f"{prefix}judge.jsonl"]


def _check_rows(plan: Plan, key: str, rows: Any, items: Sequence[Any]) -> None:
    proto = plan.protocols[key]
    if not isinstance(rows, list) or len(rows) != len(items):
        raise DataError(
            f"protocol '{key}' ({proto.name}) of task '{plan.task_name}' returned "
            f"{len(rows) if isinstance(rows, list) else type(rows).__name__} row(s) for {len(items)} item(s); "
            "run() returns one dict per item"
        )
    for it, row in zip(items, rows):
        missing = [o for o in proto.outputs if not isinstance(row, Mapping) or o not in row]
        if missing:
            raise DataError(
                f"protocol '{key}' ({proto.name}) of task '{plan.task_name}' returned no '{missing[0]}' for "
                f"item {it.id!r}; it declares the outputs {list(proto.outputs)}"
            )


def _run_item_protocol(plan: Plan, ctx: ProtocolContext, key: str, items: Sequence[Any], out: Path, prefix: str, desc: str) -> Checkpoint:
    ck = SharedCheckpoint(out / f"{prefix}{key}.jsonl", "items", len(items))  # under torchrun: each rank its share
    todo = ck.share([it for it in items if it.id not in ck.done], plan.cfg.batch_size)
    with progress_bar(plan.cfg.progress, total=len(items), initial=len(items) - len(todo), desc=f"{desc} {key}", leave=False) as bar:
        for chunk in chunks(todo, plan.cfg.batch_size):
            rows = plan.protocols[key].run(ctx, chunk)
            _check_rows(plan, key, rows, chunk)
            ck.add([{"id": it.id, **{o: row[o] for o in plan.protocols[key].outputs}} for it, row in zip(chunk, rows)])
            bar.update(len(chunk))
    return ck.finish()


def _run_judge(plan: Plan, items: Sequence[Any], answers: Mapping[str, Sequence[str]], out: Path, prefix: str, desc: str) -> Checkpoint:
    ck = SharedCheckpoint(out / f"{prefix}judge.jsonl", "items", len(items))
    todo = ck.share([it for it in items if it.id not in ck.done], plan.cfg.batch_size)
    with progress_bar(plan.cfg.progress, total=len(items), initial=len(items) - len(todo), desc=f"{desc} judge", leave=False) as bar:
        for chunk in chunks(todo, plan.cfg.batch_size):
            scores = judge_items(plan.judge, plan.judge_name or "?", chunk, [answers[it.id] for it in chunk])
            ck.add([{"id": it.id, "scores": s} for it, s in zip(chunk, scores)])
            bar.update(len(chunk))
    return ck.finish()


def evaluate_items(
    plan: Plan, ctx: ProtocolContext, items: Sequence[Any], out: Path, prefix: str, desc: str
) -> tuple[list[ItemResult], dict[str, Any], dict[str, dict[str, Any]]]:
    """Run every active protocol (and the judge) on ``items``; checkpoints in ``out``.

    Returns ``(item results, fold-scope values "<key>.<output>", fold outputs by key)``.
    """
    values: dict[str, dict[str, Any]] = {it.id: {} for it in items}
    fold_values: dict[str, Any] = {}
    fold_outputs: dict[str, dict[str, Any]] = {}
    for key, proto in plan.protocols.items():
        if proto.scope == "fold":
            path = out / f"{prefix}{key}.json"
            doc = read_json(path, f"{key} output") if path.is_file() else None
            if doc is None:
                doc = proto.run_fold(ctx, items)
                missing = [o for o in proto.outputs if o not in doc]
                if missing:
                    raise DataError(f"protocol '{key}' ({proto.name}) of task '{plan.task_name}' returned no '{missing[0]}'")
                if distributed.is_main():
                    write_json(path, doc)
            fold_outputs[key] = dict(doc)
            fold_values.update({f"{key}.{o}": doc[o] for o in proto.outputs})
            continue
        ck = _run_item_protocol(plan, ctx, key, items, out, prefix, desc)
        for it in items:
            values[it.id].update({f"{key}.{o}": ck[it.id][o] for o in proto.outputs})
    if plan.judge is not None and plan.judged is not None:
        field = f"{plan.judged}.{plan.protocols[plan.judged].answers_output}"
        answers = {it.id: list(values[it.id][field]) for it in items}
        jk = _run_judge(plan, items, answers, out, prefix, desc)
        for it in items:
            values[it.id].update({f"judge.{m}": jk[it.id]["scores"][m] for m in plan.judge.metrics})
    results = [ItemResult(it, values[it.id]) for it in items]
    return results, fold_values, fold_outputs


def _evaluate_and_write(
    plan: Plan, ctx: ProtocolContext, items: Sequence[Any], out: Path, prefix: str, desc: str, csv_name: str, tag: str
) -> dict[str, Any]:
    results, fold_values, fold_outputs = evaluate_items(plan, ctx, items, out, prefix, desc)
    metrics, breakdown = fold_metrics(plan.metrics, FoldView(ctx.fold, results, fold_values), plan.task_name)
    per_item = item_metric_values(plan.metrics, results, plan.task_name)
    csv_path = out / csv_name
    if distributed.is_main():  # the other ranks of a distributed run write nothing
        write_json(
            out / f"{prefix}items.json",
            [{"id": r.id, "values": dict(r.values), "metrics": m} for r, m in zip(results, per_item)],
        )
        csv_path = plan.task.write_results(out / csv_name, results, tag=tag, judge=plan.judge_name)
    return {
        "metrics": metrics,
        "breakdown": breakdown,
        "fold_outputs": fold_outputs,
        "file": str(Path(csv_path).relative_to(plan.run_dir)),
    }


def _figures(plan: Plan, model: Any, tokenizer: Any, pipe: AlignmentPipeline, items: Sequence[Any], fold_dir: Path, k: int) -> dict[str, Any]:
    from ..viz import plot_head_scores, plot_token_strengths, strengths_html, trace_generation

    t = pipe.targets_
    selected = list(zip(t.layers.tolist(), t.units.tolist()))
    title = f"{plan.method.name}, fold {k}: {len(selected)} heads selected"
    files: dict[str, Any] = {
        "head_scores": str(plot_head_scores(t.scores, selected, fold_dir / "head_scores.png", title=title).relative_to(plan.run_dir)),
        "strengths": [],
    }
    max_new = plan.cfg.max_new_tokens or 50
    for it in [it for it in items if it.generation_prompt][: plan.cfg.strength_figures]:
        trace = trace_generation(pipe, model, tokenizer, it.generation_prompt, max_new_tokens=max_new)
        base = fold_dir / "strengths" / slug(it.id)
        png = plot_token_strengths(trace, base.with_suffix(".png"), title=f"{plan.method.name}, fold {k}, {it.id}: {it.question[:70]}")
        base.with_suffix(".html").write_text(strengths_html(trace), encoding="utf-8")
        write_json(base.with_suffix(".json"), {"id": it.id, "question": it.question, **trace.to_dict()})
        files["strengths"].append(str(png.relative_to(plan.run_dir)))
    return files


def _baseline(plan: Plan, ctx_args: dict[str, Any], items: Sequence[Any], fold: Any, baseline_dir: Path, fold_dir: Path, desc: str) -> dict[str, Any]:
    marker = baseline_dir / FOLD_FILE
    if marker.is_file() and baseline_dir != fold_dir:
        return read_json(marker, "baseline result")
    ctx = ProtocolContext(pipeline=None, **ctx_args)
    base = _evaluate_and_write(plan, ctx, items, baseline_dir, "baseline_", f"{desc} baseline", "baseline.csv", "baseline")
    doc = {"fold": fold.index, "n_questions": len(items), **base}
    if baseline_dir != fold_dir and distributed.is_main():
        write_json(marker, doc)
    distributed.barrier("the baseline")  # every rank sees the marker before it looks for it again
    return doc


def run_fold(
    plan: Plan,
    model: Any,
    tokenizer: Any,
    fold: Any,
    fold_dir: Path,
    *,
    pipe_factory: Callable[[], tuple[AlignmentPipeline, bool]],
    baseline_dir: Path | None,
    figures: bool,
    desc: str,
) -> dict[str, Any]:
    """Evaluate one fold (or one sweep cell) unless its ``fold.json`` exists."""
    marker = fold_dir / FOLD_FILE
    if marker.is_file():
        return {**read_json(marker, "fold result"), "resumed": True}
    start = time.perf_counter()
    seed_everything(plan.cfg.seed + fold.index)
    items = plan.task.eval_items(fold)
    if not items:
        raise DataError(f"fold {fold.index} of task '{plan.task_name}' has no evaluation items: use more questions or fewer folds")
    check_items(plan.task_name, items, plan.protocols)
    pipe, fitted_now = pipe_factory()
    if fitted_now:  # checkpoints left by an earlier fit of this fold are stale
        for name in _checkpoint_names(plan, ""):
            (fold_dir / name).unlink(missing_ok=True)
    ctx_args = dict(
        model=model, tokenizer=tokenizer, task=plan.task, batch_size=plan.cfg.batch_size,
        seed=plan.cfg.seed, fold=fold.index, progress=plan.cfg.progress,
    )  # fmt: skip
    res = _evaluate_and_write(plan, ProtocolContext(pipeline=pipe, **ctx_args), items, fold_dir, "", desc, "answers.csv", plan.tag)
    files: dict[str, Any] = {"answers": res["file"]}
    base = None
    if baseline_dir is not None:
        base = _baseline(plan, ctx_args, items, fold, baseline_dir, fold_dir, desc)
        files["baseline"] = base["file"]
    if figures and distributed.is_main():
        files.update(_figures(plan, model, tokenizer, pipe, items, fold_dir, fold.index))
    t = pipe.targets_
    doc = {
        "fold": fold.index,
        "n_questions": len(items),
        "test_ids": [it.id for it in items],
        "validation_ids": list(fold.val),
        "targets": [[int(a), int(b)] for a, b in zip(t.layers.tolist(), t.units.tolist())],
        "metrics": res["metrics"],
        "breakdown": res["breakdown"],
        "fold_outputs": res["fold_outputs"],
        "baseline": None if base is None else {k: base[k] for k in ("metrics", "breakdown", "fold_outputs")},
        "files": files,
        "fitted_now": fitted_now,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "finished": now(),
    }
    if distributed.is_main():
        write_json(marker, doc)
    return {**doc, "resumed": False}
