"""The ``tae`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "forwarded_parser", "main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import create_plugin_manager

    pm = create_plugin_manager()
    reg = pm.registry
    rows: list[dict[str, str]] = []
    for role, table in reg.components.items():
        for name, e in sorted(table.items()):
            rows.append({"kind": role, "name": name, "distribution": e.distribution, "version": e.version, "plugin": e.plugin})
    for name, e in sorted(reg.presets.items()):
        rows.append({"kind": "preset", "name": name, "distribution": e.distribution, "version": e.version, "plugin": e.plugin})
    for name, e in sorted(reg.tasks.items()):
        rows.append({"kind": "task", "name": name, "distribution": e.distribution, "version": e.version, "plugin": e.plugin})
    if args.json:
        print(json.dumps({"components": rows, "failed_plugins": reg.failed_plugins}, indent=2))
        return 0
    widths = [max(len(r[k]) for r in rows) if rows else 4 for k in ("kind", "name", "distribution", "version")]
    header = ("role", "name", "distribution", "version")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  plugin")
    last = None
    for r in rows:
        if last is not None and r["kind"] != last:
            print()
        last = r["kind"]
        print("  ".join(r[k].ljust(w) for k, w in zip(("kind", "name", "distribution", "version"), widths)) + "  " + r["plugin"])
    for name, why in reg.failed_plugins.items():
        print(f"\nplugin '{name}' failed and was skipped: {why}", file=sys.stderr)
    return 0


def forwarded_parser(module, func_name: str) -> argparse.ArgumentParser | None:
    """The parser factory a forwarded subcommand's module exposes, called, if any.

    Looks for ``<base>_parser``, ``build_<base>_parser``, ``_parser`` or ``build_parser``
    (``<base>`` = ``func_name`` without ``_main``/``main_``). Used by the docs to render
    and check commands without running them.
    """
    base = func_name.removesuffix("_main").removeprefix("main_")
    for name in (f"{base}_parser", f"build_{base}_parser", "_parser", "build_parser"):
        factory = getattr(module, name, None)
        if callable(factory):
            try:
                parser = factory()
            except TypeError:
                continue
            if isinstance(parser, argparse.ArgumentParser):
                return parser
    return None


def _forward(module: str, func: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), func)(args.rest) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="tae", description="Token-Aware Editing framework")
    parser.add_argument("--version", action="version", version=f"tae-framework {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed components, presets and tasks by role")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_plugins)

    forwards = {
        "demo": ("tae_framework.demo", "main", "fit TAE, ITI (and CAA) on the shipped organism and compare"),
        "eval": ("tae_framework.evaluation.runner", "eval_main", "run a method through the k-fold protocol"),
        "fit": ("tae_framework.evaluation.runner", "fit_main", "fit a preset or config and save the pipeline"),
        "generate": ("tae_framework.evaluation.runner", "generate_main", "apply a saved pipeline to prompts"),
        "sweep": ("tae_framework.evaluation.runner", "sweep_main", "grid over K and alpha"),
    }
    for name, (module, func, help_) in forwards.items():
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_forward(module, func))

    p = sub.add_parser("organism", help="the truthfulness model organism")
    osub = p.add_subparsers(dest="organism_command", required=True)
    q = osub.add_parser("train", help="train the organism from scratch", add_help=False)
    q.add_argument("rest", nargs=argparse.REMAINDER)
    q.set_defaults(func=_forward("tae_framework.organism.train", "train_main"))

    p = sub.add_parser("truthfulqa", help="TruthfulQA utilities")
    tsub = p.add_subparsers(dest="truthfulqa_command", required=True)
    q = tsub.add_parser("rescore", help="recompute MC and True/Info metrics from answer CSVs", add_help=False)
    q.add_argument("rest", nargs=argparse.REMAINDER)
    q.set_defaults(func=_forward("tae_framework.evaluation.results", "rescore_main"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import TAEError

    parser = build_parser()
    # Forwarded commands take their own options: argparse.REMAINDER does not capture a
    # first argument that starts with '-', so hand every unknown argument to them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    try:
        return args.func(args)
    except TAEError as exc:
        print(f"tae: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
