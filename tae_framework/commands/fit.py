"""``tae fit``: fit a preset or config on contrast data or on one fold of a task, and
save the fitted pipeline."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import ConfigError, TAEError
from ._common import (
    CommandParser,
    add_method_args,
    add_model_args,
    apply_verbosity,
    check_output_dir,
    count,
    fail,
    load_model_from_args,
    method_from_args,
    parse_assignments,
)

__all__ = ["HELP", "build_parser", "main"]

HELP = "fit a preset or config and save the pipeline"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="tae fit",
        description="Fit a method on contrast data (a JSONL/CSV file) or on one fold of a task, "
        "and save the fitted pipeline (config.json + tensors.safetensors).",
    )
    add_model_args(parser)
    add_method_args(parser, saved=False)
    src = parser.add_argument_group("data").add_mutually_exclusive_group(required=True)
    src.add_argument("--data", default=None, help="contrast data: .jsonl / .csv with prompt, completion, label[, group]")
    src.add_argument("--task", default=None, help="fit on a task's fold (e.g. truthfulqa)")
    parser.add_argument(
        "--task-option", dest="task_options", action="append", default=[], metavar="KEY=VALUE",
        help="task option, e.g. source=../shared/data/truthful_qa; repeatable",
    )  # fmt: skip
    parser.add_argument("--fold", type=count(0), default=0, help="with --task: the fold to fit on (default 0)")
    parser.add_argument("--out", required=True, help="directory to save the pipeline to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pipeline in --out")
    return parser


def _source(args: argparse.Namespace, reg: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(contrast data, task, fold, task options)``: the ``--data`` file read, or the task
    and its fold built (data ``None``), before the model loads so bad input fails at once."""
    options = parse_assignments(args.task_options, "--task-option", dotted=False)
    if options and args.task is None:
        raise ConfigError("--task-option needs --task")
    if args.task is None:
        from ..data import ContrastDataset

        return ContrastDataset.load(args.data), None, None, options
    task = reg.task(args.task, **options)
    return None, task, task.fold(args.fold), options


def _task_data(args: argparse.Namespace, task: Any, fold: Any, model: Any, tok: Any, seed: int) -> tuple[Any, Any]:
    """``(fitting data, validation groups)`` of the task's fold. A task that asks for the
    model (a ``context`` keyword in ``fitting_data``) gets it, with the pipeline's seed."""
    from ..tasks.base import FittingContext, fitting_data_for, validation_groups

    context = FittingContext(model=model, tokenizer=tok, seed=seed, progress=not getattr(args, "quiet", 0))
    data = fitting_data_for(task, fold, context)
    return data, validation_groups(args.task, fold, data)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..evaluation.methods import resolve_method
    from ..evaluation.rundir import FIT_INFO_FILE, now, seed_everything, write_json
    from ..pipeline import CONFIG_FILE
    from ..plugins import default_registry

    try:
        reg = default_registry()
        out = Path(args.out).expanduser()
        check_output_dir(args.out, "--out")
        if (out / CONFIG_FILE).exists() and not args.overwrite:
            raise ConfigError(f"{out} already holds a pipeline: pass --overwrite or another --out")
        method = resolve_method(method_from_args(args), parse_assignments(args.sets), reg)
        data, task, fold, options = _source(args, reg)
        model, tok = load_model_from_args(args)
        pipe = method.new_pipeline(reg)
        seed_everything(pipe.config.seed)
        start = time.perf_counter()
        val = None
        if task is not None:
            data, val = _task_data(args, task, fold, model, tok, pipe.config.seed)
        pipe.fit(model, tok, data, validation_groups=val)
        if not distributed.is_main():  # under torchrun every rank fitted the same; rank 0 saves
            return 0
        pipe.save(out, overwrite=args.overwrite)
        write_json(
            out / FIT_INFO_FILE,
            {
                "task": args.task,
                "task_options": options,
                "fold": None if fold is None else fold.index,
                "data": args.data,
                "question_ids": sorted({e.group for e in data.examples if e.group is not None}) if fold is not None else [],
                "validation_ids": list(val or []),
                "model": args.model,
                "created": now(),
            },
        )
    except (TAEError, OSError) as exc:
        return fail("tae fit", exc)
    t = pipe.targets_
    heads = ", ".join(f"L{a}H{b}" for a, b in zip(t.layers.tolist(), t.units.tolist()))
    print(f"fitted {method.name} on {len(data)} examples in {time.perf_counter() - start:.1f}s")
    print(f"edited heads ({t.num_targets}): {heads}")
    print(f"saved to {out}")
    return 0
