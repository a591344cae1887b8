"""``tae plugins``: list installed components, presets, tasks and protocols by role."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._common import CommandParser, apply_verbosity

__all__ = ["HELP", "build_parser", "main"]

HELP = "list installed components, presets, tasks and protocols by role"


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tae plugins", description="List installed components, presets, tasks and protocols by role.")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _rows(reg) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(kind, entries):
        for name, e in sorted(entries.items()):
            rows.append({"kind": kind, "name": name, "distribution": e.distribution, "version": e.version, "plugin": e.plugin})

    for role, table in reg.components.items():
        add(role, table)
    add("preset", reg.presets)
    add("task", reg.tasks)
    add("protocol", getattr(reg, "protocols", {}))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    apply_verbosity(args)
    from ..plugins import create_plugin_manager

    reg = create_plugin_manager().registry
    rows = _rows(reg)
    if args.json:
        print(json.dumps({"components": rows, "failed_plugins": reg.failed_plugins}, indent=2))
        return 0
    keys = ("kind", "name", "distribution", "version")
    widths = [max(len(r[k]) for r in rows) if rows else 4 for k in keys]
    print("  ".join(h.ljust(w) for h, w in zip(("role", "name", "distribution", "version"), widths)) + "  plugin")
    last = None
    for r in rows:
        if last is not None and r["kind"] != last:
            print()
        last = r["kind"]
        print("  ".join(r[k].ljust(w) for k, w in zip(keys, widths)) + "  " + r["plugin"])
    for name, why in reg.failed_plugins.items():
        print(f"\nplugin '{name}' failed and was skipped: {why}", file=sys.stderr)
    return 0
