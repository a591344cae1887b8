"""MkDocs hooks of the tae_framework docs (build helpers, not pages).

Pages may hold markers that are replaced at build time by content generated from the
installed code, so the reference pages cannot drift from it:

* ``<!-- tae:config-reference -->``: one table per registered component (every role,
  every installed plugin) listing its config fields: name, type, default, constraints
  and the ``Field(description=...)`` text; then the presets and the task options.
* ``<!-- tae:cli-reference -->``: the ``--help`` text of ``tae`` and of every
  subcommand, taken from the real argparse parsers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import typing
from typing import Any

CONFIG_MARKER = "<!-- tae:config-reference -->"
CLI_MARKER = "<!-- tae:cli-reference -->"

ROLE_TITLES = {
    "source": "Activation sources",
    "aggregator": "Aggregators",
    "prober": "Probers",
    "estimator": "Misalignment estimators",
    "intervener": "Interveners",
    "judge": "Judges",
    "adapter": "Model adapters",
}


# ---------------------------------------------------------------------------------------
# configuration reference
# ---------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is not PydanticUndefined:
        return f"`{json.dumps(field.default) if field.default is not None else 'None'}`"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        return f"`{json.dumps(value)}`"
    return "**required**"


def _constraints(field: Any) -> str:
    out = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sym} {value}")
    return ", ".join(out)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_table(config_cls: Any) -> str:
    fields = config_cls.model_fields
    if not fields:
        return "*No options.*\n"
    rows = ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in fields.items():
        rows.append(
            f"| `{name}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} | "
            f"{_cell(_constraints(field))} | {_cell(field.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def config_reference() -> str:
    from tae_framework.config import ComponentSpec, PipelineConfig
    from tae_framework.plugins import create_plugin_manager

    reg = create_plugin_manager().registry
    out: list[str] = []
    out.append("## Pipeline config\n")
    out.append(
        "A [`PipelineConfig`][tae_framework.config.PipelineConfig] holds one spec per role "
        "and the global settings:\n"
    )
    out.append(config_table(PipelineConfig))
    out.append(
        "\nEach role is a [`ComponentSpec`][tae_framework.config.ComponentSpec]:\n"
    )
    out.append(config_table(ComponentSpec))
    for role, table in reg.components.items():
        out.append(f"\n## {ROLE_TITLES.get(role, role)} (`{role}`)\n")
        if not table:
            out.append("*None installed.*\n")
        for name, entry in sorted(table.items()):
            cls = entry.obj
            doc = inspect.getdoc(cls) or ""
            summary = doc.split("\n\n", 1)[0].replace("\n", " ")
            out.append(f"\n### `{name}`\n")
            out.append(
                f"`{_qualname(cls)}` from the distribution **{entry.distribution}** "
                f"{entry.version} (plugin `{entry.plugin}`).\n"
            )
            if summary:
                out.append(f"\n{summary}\n")
            out.append("\n" + config_table(cls.Config))
    out.append("\n## Presets\n")
    out.append(
        "Presets are named pipeline configs; "
        "`AlignmentPipeline.from_preset(name, role={...})` overrides single fields.\n"
    )
    for name, entry in sorted(reg.presets.items()):
        cfg = reg.preset(name).model_dump(mode="json")
        out.append(f"\n### `{name}`\n")
        out.append(f"From **{entry.distribution}** {entry.version} (plugin `{entry.plugin}`).\n")
        out.append("\n```json\n" + json.dumps(cfg, indent=2) + "\n```\n")
    out.append("\n## Task options\n")
    for name, entry in sorted(reg.tasks.items()):
        out.append(f"\n### `{name}`\n")
        out.append(f"From **{entry.distribution}** {entry.version}.\n")
        module = importlib.import_module(entry.obj.__module__)
        cfg_cls = next(
            (
                v
                for v in vars(module).values()
                if isinstance(v, type) and v.__name__.lower() == f"{name}config"
            ),
            None,
        )
        if cfg_cls is not None:
            out.append("\n" + config_table(cfg_cls))
        else:
            out.append("\nSee the factory's docstring for its options.\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# command line reference
# ---------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_module(parser: argparse.ArgumentParser) -> str | None:
    """The module a ``tae`` sub-command dispatches to (see ``tae_framework.commands``)."""
    return parser.get_default("command_module")


def _help(parser: argparse.ArgumentParser) -> str:
    os.environ.setdefault("COLUMNS", "100")
    return parser.format_help().rstrip()


def cli_reference() -> str:
    from tae_framework.cli import build_parser

    top = build_parser()
    out = ["## `tae`\n", "```text\n" + _help(top) + "\n```\n"]

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for name, sub in _subparsers(parser).items():
            command = f"{prefix} {name}"
            children = _subparsers(sub)
            if children:
                out.append(f"\n## `{command}`\n")
                out.append("```text\n" + _help(sub) + "\n```\n")
                walk(command, sub)
                continue
            out.append(f"\n## `{command}`\n")
            module = _command_module(sub)
            if module is None:
                out.append("```text\n" + _help(sub) + "\n```\n")
                continue
            from tae_framework.commands import parser_for

            real = parser_for(module)
            real.prog = command
            out.append(f"Implemented by `{module}`.\n")
            out.append("```text\n" + _help(real) + "\n```\n")

    with contextlib.redirect_stdout(io.StringIO()):
        walk("tae", top)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# mkdocs events
# ---------------------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
