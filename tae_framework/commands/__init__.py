"""The ``tae`` commands: one module per command, each exposing

* ``HELP``: the one-line summary ``tae --help`` shows;
* ``build_parser() -> argparse.ArgumentParser``: the command's own parser (its
  ``prog`` is the full command, e.g. ``"tae eval"``);
* ``main(argv) -> int``: parse ``argv`` and run.

:data:`COMMANDS` maps each command (a tuple of words) to its module;
:func:`parser_for` builds a command's parser without running it (the docs render and
check commands with it). :mod:`tae_framework.cli` only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

__all__ = ["COMMANDS", "load", "parser_for"]

#: Command words -> module implementing the command.
COMMANDS: dict[tuple[str, ...], str] = {
    ("plugins",): "tae_framework.commands.plugins",
    ("demo",): "tae_framework.commands.demo",
    ("eval",): "tae_framework.commands.eval",
    ("fit",): "tae_framework.commands.fit",
    ("generate",): "tae_framework.commands.generate",
    ("sweep",): "tae_framework.commands.sweep",
    ("organism", "train"): "tae_framework.commands.organism_train",
    ("truthfulqa", "rescore"): "tae_framework.commands.truthfulqa_rescore",
}

#: Help of the command groups (commands with sub-commands).
GROUPS: dict[str, str] = {"organism": "the truthfulness model organism", "truthfulqa": "TruthfulQA utilities"}


def load(command: tuple[str, ...] | str) -> ModuleType:
    """The module of a command (``("eval",)``, ``"organism train"`` or a module name)."""
    if isinstance(command, str):
        if command in COMMANDS.values():
            return importlib.import_module(command)
        command = tuple(command.split())
    try:
        return importlib.import_module(COMMANDS[tuple(command)])
    except KeyError:
        known = ", ".join(" ".join(c) for c in COMMANDS)
        raise KeyError(f"no tae command {' '.join(command)!r} (commands: {known})") from None


def parser_for(command: tuple[str, ...] | str) -> argparse.ArgumentParser:
    """The parser of a command, built without running it."""
    return load(command).build_parser()
