"""``tae organism train``: train the model organism from scratch
(:mod:`tae_framework.organism.train`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import TAEError
from ._common import CommandParser, apply_verbosity, count, fail

__all__ = ["HELP", "build_parser", "main"]

HELP = "train the organism from scratch"

#: Options that are counts: anything below 1 is refused before training starts.
_COUNTS = ("threads", "steps", "stop_after")


def build_parser() -> argparse.ArgumentParser:
    from ..organism.train import add_arguments

    parser = add_arguments(
        CommandParser(
            prog="tae organism train",
            description="Train the model organism from scratch with the pinned, seeded recipe.",
        )
    )
    for action in parser._actions:
        if action.dest in _COUNTS:
            action.type = count(1)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..organism.train import train_cli

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    try:
        return int(train_cli(args) or 0)
    except (TAEError, OSError) as exc:
        return fail("tae organism train", exc)
