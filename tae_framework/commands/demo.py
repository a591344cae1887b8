"""``tae demo``: TAE, ITI (and CAA) against no edit on the shipped organism
(:mod:`tae_framework.demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["HELP", "build_parser", "main"]

HELP = "fit TAE, ITI (and CAA) on the shipped organism and compare"


def build_parser() -> argparse.ArgumentParser:
    from ..demo import build_parser as demo_parser

    return demo_parser()


def main(argv: Sequence[str] | None = None) -> int:
    from ..demo import main as demo_main

    return demo_main(argv)
