"""Meta test: the hook reference page documents every hook specification.

For every ``tae_*`` function of :mod:`tae_framework.hookspecs`, ``docs/plugins/hooks.md``
must have a section titled with the hook's name, show its signature (the name followed
by its parameters, in order) and mention each parameter. A new or renamed hook, or a
changed parameter list, fails this test until the page is updated.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tae_framework import hookspecs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins" / "hooks.md"
HOOKS = sorted(
    name for name, obj in vars(hookspecs).items() if name.startswith("tae_") and inspect.isfunction(obj)
)


def test_there_are_hooks_to_document():
    assert HOOKS, "no tae_* hook specifications found in tae_framework.hookspecs"
    for name in HOOKS:
        assert hasattr(getattr(hookspecs, name), "tae_framework_spec"), f"{name} is not marked with @hookspec"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_its_signature(name: str):
    text = PAGE.read_text(encoding="utf-8")
    assert re.search(rf"^#+ `{name}`\s*$", text, re.MULTILINE), f"{PAGE.name} has no section titled `{name}`"
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    shown = re.search(rf"^{name}\((.*)\)\s*->", text, re.MULTILINE)
    assert shown, f"{PAGE.name} does not show the signature line `{name}(...) -> ...`"
    listed = re.findall(r"(\w+)\s*:", shown.group(1))  # every parameter is annotated on the page
    assert listed == params, f"{PAGE.name} shows {name}({', '.join(listed)}), the spec is {name}({', '.join(params)})"
    section = text.split(f"`{name}`", 1)[1]
    for param in params:
        assert f"`{param}`" in section, f"{PAGE.name}: parameter `{param}` of {name} is not described"


def test_page_lists_no_hook_that_does_not_exist():
    text = PAGE.read_text(encoding="utf-8")
    titled = set(re.findall(r"^#+ `(tae_\w+)`", text, re.MULTILINE))
    assert titled <= set(HOOKS), f"{PAGE.name} documents hooks that do not exist: {sorted(titled - set(HOOKS))}"
