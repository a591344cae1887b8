"""``tae generate``: apply a saved pipeline to prompts (optionally per-token strengths)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TAEError
from ._common import (
    CommandParser,
    add_model_args,
    apply_verbosity,
    count,
    fail,
    load_model_from_args,
    parse_assignments,
)

__all__ = ["HELP", "build_parser", "main"]

HELP = "apply a saved pipeline to prompts"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="tae generate", description="Generate greedily with a saved pipeline's edits on the last position."
    )
    add_model_args(parser)
    parser.add_argument("--pipeline", required=True, help="a saved pipeline directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    parser.add_argument("--max-new-tokens", type=count(1), default=50, help="tokens generated per prompt")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="intervener.KEY=VALUE",
        help="change the intervener config, e.g. intervener.alpha=5",
    )  # fmt: skip
    parser.add_argument("--unedited", action="store_true", help="also print the unedited model's output")
    parser.add_argument("--show-strengths", action="store_true", help="print each token's edit strength (and p, u)")
    parser.add_argument("--figure", default=None, help="with --show-strengths: write the figure here (.png; .html also written)")
    return parser


def _strengths(args: argparse.Namespace, pipe: Any, model: Any, tok: Any, i: int, prompt: str) -> None:
    from ..viz import plot_token_strengths, strengths_html, trace_generation

    trace = trace_generation(pipe, model, tok, prompt, max_new_tokens=args.max_new_tokens)
    print(f"{'token':>16}  {'strength':>9}  {'p':>6}  {'u':>6}")
    for tok_text, s, p, u in zip(trace.tokens, trace.strength, trace.p, trace.u):
        ps = "-" if p is None else f"{p:.3f}"
        us = "-" if u is None else f"{u:.3f}"
        print(f"{tok_text!r:>16}  {s:9.3f}  {ps:>6}  {us:>6}")
    if args.figure:
        fig = Path(args.figure)
        if len(args.prompt) > 1:
            fig = fig.with_name(f"{fig.stem}-{i}{fig.suffix or '.png'}")
        png = plot_token_strengths(trace, fig)
        png.with_suffix(".html").write_text(strengths_html(trace), encoding="utf-8")
        print(f"figure: {png}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..evaluation.methods import resolve_method
    from ..plugins import default_registry

    try:
        if args.max_new_tokens < 1:
            raise ConfigError("--max-new-tokens must be at least 1")
        reg = default_registry()
        method = resolve_method(args.pipeline, parse_assignments(args.sets), reg)
        if method.kind != "saved":
            raise ConfigError(f"--pipeline {args.pipeline!r} is not a saved pipeline directory")
        pipe = method.new_pipeline(reg)
        model, tok = load_model_from_args(args)
        outputs = pipe.generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens)
        plain = pipe.generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, edit=False) if args.unedited else None
        for i, (prompt, text) in enumerate(zip(args.prompt, outputs)):
            print(f"=== prompt {i}: {prompt!r}")
            print(f"edited: {text}")
            if plain is not None:
                print(f"unedited: {plain[i]}")
            if args.show_strengths:
                _strengths(args, pipe, model, tok, i, prompt)
    except (TAEError, OSError) as exc:
        return fail("tae generate", exc)
    return 0
