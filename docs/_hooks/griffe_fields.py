"""Griffe extension used by the docs build (not part of the package).

1. Pydantic fields: an attribute assigned ``Field(default=..., description="...")``
   gets the description as its docstring and only the default as its value, so each
   config field is documented once, from its ``Field(description=...)``.
2. ``#:`` comments right above a module or class attribute (the Sphinx convention
   used in this code base) become the attribute's docstring.
3. Sphinx roles in docstrings (``:class:`~tae_framework.x.Y```, ``:func:``, ...)
   become cross-references: absolute ``tae_framework`` / plugin targets turn into
   optional autorefs (a link when the target is rendered, plain code otherwise),
   anything else into inline code.
4. Doctest examples (``>>>`` lines) and reStructuredText literal blocks (a paragraph
   ending in ``::`` followed by an indented block) become fenced code blocks, so they
   render as code (and their brackets are never read as Markdown links).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj|py:\w+):`(~?)([^`]+)`")
_PACKAGES = ("tae_framework", "tae_iti", "tae_caa")


def _role(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    target = target.removesuffix("()")
    shown = target.rsplit(".", 1)[-1] if tilde else target
    if target.startswith(_PACKAGES) and "." in target:
        return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'
    return f"`{shown}`"


def _field_call(value: ast.AST | None) -> ast.Call | None:
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name == "Field":
            return value
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(block: list[str]) -> str:
    first = next((b.strip() for b in block if b.strip()), "")
    if first.startswith(">>>"):
        return "pycon"
    if any(b.strip().startswith(("from ", "import ", "def ", "class ", "@")) or " = " in b for b in block):
        return "python"
    return "text"


def fence_examples(text: str) -> str:
    """Turn doctest runs and ``::`` literal blocks into fenced code blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > indent:
                inner = _indent(lines[j])
                block: list[str] = []
                k, last = j, j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= inner):
                    if lines[k].strip():
                        last = k
                    k += 1
                block = [b[inner:] if b.strip() else "" for b in lines[j : last + 1]]
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out += [head + ":", ""]
                pad = " " * indent
                lang = _language(block)
                if lang == "pycon":
                    block = [_DOCTEST_FLAG.sub("", b).rstrip() for b in block]
                out += [pad + "```" + lang, *((pad + b) if b else "" for b in block), pad + "```"]
                i = last + 1
                continue
        if stripped.startswith(">>>"):
            k = i
            while k < len(lines) and lines[k].strip() and _indent(lines[k]) == indent:
                k += 1
            block = [_DOCTEST_FLAG.sub("", b[indent:]).rstrip() for b in lines[i:k]]
            pad = " " * indent
            if out and out[-1].strip() and _indent(out[-1]) >= indent:
                out.append("")  # end the paragraph above (never after a section title)
            out += [pad + "```pycon", *(pad + b for b in block), pad + "```"]
            i = k
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_DOCTEST_FLAG = re.compile(r"\s*#\s*doctest:.*$")


class FieldDescriptions(griffe.Extension):
    """See the module docstring."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        if not isinstance(node, (ast.AnnAssign, ast.Assign)):
            return
        if attr.docstring is None:
            comment = self._sphinx_comment(attr, node.lineno)
            if comment:
                attr.docstring = griffe.Docstring(comment, parent=attr)
        call = _field_call(node.value)
        if call is None:
            return
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        desc = keywords.get("description")
        if isinstance(desc, ast.Constant) and isinstance(desc.value, str):
            if attr.docstring is None:
                attr.docstring = griffe.Docstring(desc.value, parent=attr)
        if "default" in keywords:
            attr.value = ast.unparse(keywords["default"])
        elif "default_factory" in keywords:
            attr.value = f"{ast.unparse(keywords['default_factory'])}()"
        elif call.args:
            attr.value = ast.unparse(call.args[0])
        else:
            attr.value = None  # a required field
        attr.labels.add("pydantic-field")

    @staticmethod
    def _sphinx_comment(attr: griffe.Attribute, lineno: int) -> str:
        try:
            lines = attr.lines_collection[attr.filepath]
        except (KeyError, TypeError):
            return ""
        found: list[str] = []
        k = lineno - 2  # the line above the attribute (lines are 0-based, lineno 1-based)
        while k >= 0 and lines[k].strip().startswith("#:"):
            found.insert(0, lines[k].strip()[2:].strip())
            k -= 1
        return " ".join(found)

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None:
            return
        value = doc.value
        if ":" in value:
            value = _ROLE.sub(_role, value)
        if ">>>" in value or "::" in value:
            value = fence_examples(value)
        doc.value = value
