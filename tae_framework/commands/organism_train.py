"""``tae organism train``: train the model organism from scratch
(:mod:`tae_framework.organism.train`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["HELP", "build_parser", "main"]

HELP = "train the organism from scratch"


def build_parser() -> argparse.ArgumentParser:
    from ..organism.train import add_arguments

    return add_arguments(
        argparse.ArgumentParser(
            prog="tae organism train",
            description="Train the model organism from scratch with the pinned, seeded recipe.",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    from ..organism.train import main_train

    build_parser().parse_args(list(argv) if argv is not None else None)  # --help and errors here
    return main_train(argv)
