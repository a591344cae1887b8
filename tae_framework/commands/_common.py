"""Options shared by the evaluation commands, and turning them into an :class:`EvalConfig`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError

__all__ = [
    "CommandParser",
    "add_eval_args",
    "add_verbosity_args",
    "apply_verbosity",
    "count",
    "check_output_dir",
    "one_line",
    "add_method_args",
    "add_model_args",
    "add_task_args",
    "csv_list",
    "eval_config_from_args",
    "fail",
    "load_model_from_args",
    "method_from_args",
    "parse_assignments",
]


class CommandParser(argparse.ArgumentParser):
    """The parser of every ``tae`` command.

    * ``-v``/``-q`` (:func:`add_verbosity_args`) unless ``verbosity=False``;
    * the help shows every option's default: an option with a default other than
      ``None``/``False``/empty whose help does not already say it gets ``(default: X)``;
    * a usage error is one line on stderr, ``PROG: error: MESSAGE (see PROG --help)``,
      with exit code 2, like every other error of the command line.
    """

    def __init__(self, *args: Any, verbosity: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if verbosity:
            add_verbosity_args(self)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        show_defaults(self)
        return super().format_help()


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of ``parser`` whose default is
    worth showing and whose help does not mention its default already (idempotent)."""
    for action in parser._actions:
        default = action.default
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._CountAction):
            continue
        if default is None or default is False or default is argparse.SUPPRESS or default in ([], ""):
            continue
        text = action.help or ""
        if "default" in text.lower():
            continue
        action.help = f"{text} (default: %(default)s)".lstrip()


def add_verbosity_args(p: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` (both repeatable counts); see
    :func:`apply_verbosity`."""
    g = p.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log messages (debug level)")
    g.add_argument(
        "-q", "--quiet", action="count", default=0,
        help="only warnings and errors on stderr, no progress bars (results still go to stdout)",
    )  # fmt: skip


def apply_verbosity(args: argparse.Namespace) -> None:
    """Set the library's verbosity from ``-v``/``-q``
    (:func:`tae_framework._log.set_verbosity`)."""
    from .._log import set_verbosity

    set_verbosity(int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0))


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number of at least ``minimum``: anything else is a
    one-line usage error naming the option and the value, before any work is done."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            what = "positive" if minimum == 1 else ("0 or more" if minimum == 0 else f"at least {minimum}")
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    parse.__name__ = "positive integer" if minimum == 1 else f"integer >= {minimum}"
    return parse


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_assignments(items: Sequence[str], what: str = "--set", dotted: bool = True) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` (``role.key=value`` when ``dotted``) into a nested dict.

    Values are parsed as JSON when possible (``8``, ``0.5``, ``true``, ``[1, 2]``,
    ``{"a": 1}``), else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE (e.g. {what} prober.top_k=8)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{what} {item!r} has an empty key")
        value = _parse_value(raw)
        parts = key.split(".") if dotted else [key]
        if any(not p for p in parts):
            raise ConfigError(f"{what} {item!r}: the key {key!r} has an empty part")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{what} {item!r} conflicts with an earlier value of {p!r}")
            node = nxt
        node[parts[-1]] = value
    return out


def parse_protocol_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--protocol-option KEY.NAME=VALUE`` (one protocol of the task) or ``NAME=VALUE``
    (every protocol that has the option) -> ``{key or "*": {name: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep:
            raise ConfigError(f"--protocol-option {item!r} is not [KEY.]NAME=VALUE (e.g. generation.num_samples=25)")
        scoped = "." in key
        parsed = parse_assignments([item if scoped else f"*.{item}"], "--protocol-option")
        for proto, opts in parsed.items():
            if not isinstance(opts, dict) or any(isinstance(v, dict) for v in opts.values()):
                raise ConfigError(f"--protocol-option {item!r}: use KEY.NAME=VALUE with one dot")
            out.setdefault(proto, {}).update(opts)
    return out


def csv_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [cast(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be a comma-separated list of numbers") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="hub id or local directory of a causal LM")
    g.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype ('auto': the checkpoint's)",
    )  # fmt: skip
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (device_map)")
    g.add_argument(
        "--offload-folder", default=None,
        help="with --device auto: folder for the layers offloaded to disk when the model fits "
        "neither on the GPUs nor in CPU memory",
    )  # fmt: skip
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's code")


def add_method_args(p: argparse.ArgumentParser, saved: bool = True) -> None:
    g = p.add_argument_group("method")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--preset", default=None, help="preset name (default: tae)")
    if saved:
        m.add_argument("--pipeline", default=None, help="a saved pipeline directory")
    m.add_argument("--config", default=None, help="a pipeline config JSON file")
    g.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="ROLE.KEY=VALUE",
        help="override a component config value (JSON values), e.g. prober.top_k=8; repeatable",
    )  # fmt: skip


def add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", default="truthfulqa", help="task name (default: truthfulqa)")
    g.add_argument(
        "--task-option", dest="task_options", action="append", default=[], metavar="KEY=VALUE",
        help="task option, e.g. source=../shared/data/truthful_qa or limit=20; repeatable",
    )  # fmt: skip


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--judge", default=None, help="judge name, or 'none' to skip judging (default: the task's)")
    g.add_argument(
        "--judge-option", dest="judge_options", action="append", default=[], metavar="KEY=VALUE",
        help="judge config value, e.g. dtype=float16; repeatable",
    )  # fmt: skip
    g.add_argument(
        "--protocol-option", dest="protocol_options", action="append", default=[], metavar="[KEY.]NAME=VALUE",
        help="option of one of the task's protocols (KEY.NAME=VALUE, e.g. generation.num_samples=25) or of "
        "every protocol that has it (NAME=VALUE); repeatable",
    )  # fmt: skip
    g.add_argument("--no-mc", action="store_true", help="skip the multiple-choice protocols")
    g.add_argument("--no-generation", action="store_true", help="skip generation and judging")
    g.add_argument("--max-new-tokens", type=count(1), default=None, help="generation length (default: the task's)")
    g.add_argument("--side-effects", action="store_true", help="measure CE/KL on held-out texts")
    g.add_argument("--side-effects-texts", default=None, help="file or hub id of held-out texts (implies --side-effects)")
    g.add_argument("--side-effects-n", type=count(1), default=None, help="number of held-out texts (default 100)")
    g.add_argument("--side-effects-max-tokens", type=count(1), default=None, help="tokens per held-out text (default 128)")
    g.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    g.add_argument("--batch-size", type=count(1), default=8, help="texts per forward pass (and items per checkpoint)")
    g.add_argument("--seed", type=int, default=42, help="seeds every fold (seed + k) and each item's sampled answers")
    g.add_argument("--out", default="results", help="parent folder of run directories")
    g.add_argument(
        "--run", "--run-name", dest="run", default=None,
        help="run name (default: <method>-<task>); under torchrun write --run-name (torchrun reads --run as its own option)",
    )  # fmt: skip
    g.add_argument("--tag", default=None, help="model tag in the answer files")
    g.add_argument("--baseline", action="store_true", help="also evaluate the unedited model")
    g.add_argument("--overwrite", action="store_true", help="start the run directory again")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def method_from_args(args: argparse.Namespace) -> str:
    if getattr(args, "pipeline", None):
        return args.pipeline
    if args.config:
        return args.config
    return args.preset or "tae"


def _judge_from_args(args: argparse.Namespace) -> Any:
    if args.judge is None:
        if args.judge_options:
            raise ConfigError("--judge-option needs --judge NAME")
        return "task"
    if args.judge.strip().lower() == "none":
        if args.judge_options:
            raise ConfigError("--judge-option was given with --judge none")
        return None
    return {"type": args.judge, "config": parse_assignments(args.judge_options, "--judge-option", dotted=False)}


def eval_config_from_args(args: argparse.Namespace, strength_figures: int) -> Any:
    from ..evaluation.config import EvalConfig

    data: dict[str, Any] = {
        "task": args.task,
        "task_options": parse_assignments(args.task_options, "--task-option", dotted=False),
        "method": method_from_args(args),
        "overrides": parse_assignments(args.sets),
        "refit": bool(getattr(args, "refit", False)),
        "judge": _judge_from_args(args),
        "mc": not args.no_mc,
        "generation": not args.no_generation,
        "max_new_tokens": args.max_new_tokens,
        "side_effects": args.side_effects or args.side_effects_texts is not None,
        "side_effects_texts": args.side_effects_texts,
        "side_effects_n": args.side_effects_n,
        "side_effects_max_tokens": args.side_effects_max_tokens,
        "protocol_options": parse_protocol_options(args.protocol_options),
        "folds": csv_list(args.folds, int, "--folds") if args.folds else None,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "out_dir": args.out,
        "run": args.run,
        "tag": args.tag,
        "baseline": args.baseline,
        "strength_figures": strength_figures,
        "progress": not args.no_progress,
    }
    return EvalConfig.parse(data)


def load_model_from_args(args: argparse.Namespace):
    from ..models.loading import load_model

    return load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        offload_folder=getattr(args, "offload_folder", None),
    )  # fmt: skip


def one_line(exc: BaseException) -> str:
    """An error as one line: a multi-line message is joined, an ``OSError`` outside the
    framework's own errors names the path and what is wrong with it."""
    from ..errors import TAEError

    if isinstance(exc, OSError) and not isinstance(exc, TAEError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror} (check the paths given on the command line)"
    parts = [line.strip().removeprefix("- ") for line in str(exc).splitlines()]
    return " ".join(p for p in parts if p) or type(exc).__name__


def fail(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: <one line>`` to stderr and return the exit code 2."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return 2


def check_output_dir(path: str | None, option: str) -> None:
    """Refuse an output directory that is a file or lies under one, before any work."""
    from pathlib import Path

    if path is None:
        return
    target = Path(path).expanduser()
    for p in (target, *target.parents):
        if p.exists():
            if not p.is_dir():
                where = "is" if p == target else f"is under {p}, which is"
                raise ConfigError(
                    f"{option} {path} {where} a file, not a directory (it was left untouched): "
                    f"give {option} a directory path"
                )
            return


def argv_of(command: str, argv: Sequence[str] | None) -> list[str]:
    return ["tae", command, *argv] if argv is not None else list(sys.argv)
