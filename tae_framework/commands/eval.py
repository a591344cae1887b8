"""``tae eval``: run a method through a task's k-fold protocol
(:func:`~tae_framework.evaluation.runner.run_eval`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .. import distributed
from ..errors import TAEError
from ._common import (
    CommandParser,
    add_eval_args,
    add_method_args,
    add_model_args,
    add_task_args,
    apply_verbosity,
    argv_of,
    check_output_dir,
    count,
    eval_config_from_args,
    fail,
    load_model_from_args,
)

__all__ = ["HELP", "build_parser", "main"]

HELP = "run a method through the k-fold protocol"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="tae eval",
        description="Fit a method on every fold of a task, run the task's protocols on the fold's test "
        "items and write results/<run>/ (per-item results, summary.json, summary.md, figures). An "
        "interrupted run resumes when started again with the same arguments.",
    )
    add_model_args(parser)
    add_method_args(parser)
    parser.add_argument("--refit", action="store_true", help="with --pipeline: refit its config on every fold")
    add_task_args(parser)
    add_eval_args(parser)
    parser.add_argument("--strength-figures", type=count(0), default=3, help="per-token figures per fold (default 3)")
    parser.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..evaluation.plan import prepare
    from ..evaluation.rundir import SUMMARY_MD, json_default
    from ..evaluation.runner import execute_eval
    from ..plugins import default_registry

    try:
        check_output_dir(args.out, "--out")
        cfg = eval_config_from_args(args, args.strength_figures)
        plan = prepare(cfg, default_registry())  # fail on bad settings before loading the model
        model, tok = load_model_from_args(args)
        summary = execute_eval(
            plan, model, tok, model_name=args.model, overwrite=args.overwrite, extra={"argv": argv_of("eval", argv)}
        )
    except (TAEError, OSError) as exc:
        return fail("tae eval", exc)
    if not distributed.is_main():  # under torchrun rank 0 wrote the results and prints them
        return 0
    if args.json:
        print(json.dumps(summary, indent=2, default=json_default))
    else:
        print((plan.run_dir / SUMMARY_MD).read_text(encoding="utf-8"))
        print(f"results: {plan.run_dir}")
    return 0
