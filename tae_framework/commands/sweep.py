"""``tae sweep``: a K x alpha grid through the k-fold protocol
(:func:`~tae_framework.evaluation.sweep.run_sweep`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

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
    csv_list,
    eval_config_from_args,
    fail,
    load_model_from_args,
)

__all__ = ["HELP", "build_parser", "main"]

HELP = "grid over K and alpha"


def build_parser() -> argparse.ArgumentParser:
    from ..evaluation.sweep import REFERENCE_ALPHA, REFERENCE_K

    parser = CommandParser(
        prog="tae sweep",
        description="Evaluate a grid of K (heads edited, prober.top_k) and alpha (strength, "
        "intervener.alpha); every K is fitted once per fold and reused for every alpha. Writes "
        "results/<run>/sweep.csv and sweep.md.",
    )
    add_model_args(parser)
    add_method_args(parser)
    add_task_args(parser)
    add_eval_args(parser)
    parser.add_argument("--k", default=",".join(str(k) for k in REFERENCE_K), help="comma-separated K values")
    parser.add_argument("--alpha", default=",".join(f"{a:g}" for a in REFERENCE_ALPHA), help="comma-separated alpha values")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..evaluation.plan import prepare
    from ..evaluation.sweep import check_grid, grid_values, run_sweep
    from ..plugins import default_registry

    try:
        check_output_dir(args.out, "--out")
        ks = grid_values(csv_list(args.k, int, "--k"), "K", int)
        alphas = grid_values(csv_list(args.alpha, float, "--alpha"), "alpha", float)
        cfg = eval_config_from_args(args, 0)
        reg = default_registry()
        check_grid(prepare(cfg, reg, sweep=True))  # fail on bad settings before loading the model
        model, tok = load_model_from_args(args)
        result = run_sweep(
            model, tok, cfg, ks, alphas, reg, model_name=args.model, overwrite=args.overwrite,
            extra={"argv": argv_of("sweep", argv)},
        )  # fmt: skip
    except (TAEError, OSError) as exc:
        return fail("tae sweep", exc)
    if not distributed.is_main():  # under torchrun rank 0 wrote the table and prints it
        return 0
    run_dir = Path(cfg.out_dir).expanduser() / result["run"]
    print((run_dir / "sweep.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir}")
    return 0
