"""The evaluation package stays split by responsibility: no module over 500 lines and no
function over 80 lines (counted from ``def`` to the function's last line, docstring
included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tae_framework" / "evaluation"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def test_the_package_has_modules():
    assert len(MODULES) >= 10  # the runner was split by responsibility


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_and_function_sizes(path: Path):
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n") + (0 if source.endswith("\n") else 1)
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (limit {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = node.end_lineno - start + 1
            if size > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({size} lines, line {start})")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
