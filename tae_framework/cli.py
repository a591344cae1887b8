"""The ``tae`` command line: dispatch to the command modules of
:mod:`tae_framework.commands` (each parses its own options).

Every error is one line on stderr with exit code 2 (a bad option, a bad value, a
damaged file). ``-v``/``-q`` go before or after the command (``tae -q eval ...`` is
``tae eval -q ...``). When the reader of the output goes away (``tae plugins | head``),
the command stops quietly with the exit status of a broken pipe (141).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per entry of
    :data:`~tae_framework.commands.COMMANDS`; each records its module in
    ``command_module`` and its arguments in ``rest``."""
    from ._version import __version__
    from .commands import COMMANDS, GROUPS, load
    from .commands._common import CommandParser

    parser = CommandParser(
        prog="tae",
        description="Token-Aware Editing framework. `tae COMMAND --help` shows a command's options and their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"tae-framework {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module in COMMANDS.items():
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=GROUPS.get(words[0], ""), verbosity=False)
                groups[words[0]] = g.add_subparsers(dest=f"{words[0]}_command", required=True)
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=load(module).HELP, add_help=False, verbosity=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(command_module=module)
    return parser


#: Exit status after the reader of stdout went away (128 + SIGPIPE, as a shell reports it).
BROKEN_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tae ARGV``; returns the exit status."""
    from ._log import logger

    level, handlers = logger.level, list(logger.handlers)
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    finally:  # -v/-q last for this command only (the CLI may be called from Python)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of the broken
    pipe does not print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


def _main(argv: Sequence[str] | None) -> int:
    from .commands import load
    from .errors import TAEError

    parser = build_parser()
    # Commands take their own options: argparse.REMAINDER does not capture a first
    # argument that starts with '-', so hand every unknown argument to them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    # -v/-q given before the command go to the command
    args.rest = ["-v"] * args.verbose + ["-q"] * args.quiet + list(args.rest)
    try:
        if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # started by torchrun / accelerate
            from .distributed import init

            init()  # join the process group, check every rank's versions
        return int(load(args.command_module).main(args.rest) or 0)
    except BrokenPipeError:
        raise
    except (TAEError, OSError) as exc:  # one line, exit code 2, no traceback
        from .commands._common import one_line

        print(f"tae: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
