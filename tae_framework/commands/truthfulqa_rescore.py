"""``tae truthfulqa rescore``: recompute MC and True/Info metrics from TruthfulQA answer
files (:func:`~tae_framework.evaluation.results.rescore`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ..errors import TAEError
from ._common import CommandParser, apply_verbosity, fail

__all__ = ["HELP", "build_parser", "main"]

HELP = "recompute MC and True/Info metrics from answer CSVs"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="tae truthfulqa rescore",
        description="Recompute MC1/MC2/MC3, True, Info and True*Info from TruthfulQA answer files "
        "(the TruthfulQA tooling's CSV format); each file is one fold.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE.csv", help="answer files, one per fold")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", default=None, help="model tag when a file holds several models")
    parser.add_argument("--judge", default=None, help="judge name when a file holds several judges (e.g. GPT)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..evaluation.results import format_rescore, rescore

    try:
        result = rescore(args.files, model=args.model, judge=args.judge)
    except (TAEError, OSError) as exc:
        return fail("tae truthfulqa rescore", exc)
    print(json.dumps(result, indent=2) if args.json else format_rescore(result))
    return 0
