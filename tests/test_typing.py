"""The package is typed: ``py.typed`` ships, every public name is visible to type checkers
(not only through the lazy ``__getattr__``) and imports, and the model/tokenizer
parameters of the public API carry the transformers types."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import typing
from importlib import resources
from pathlib import Path

import pytest

import tae_framework

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_marker_ships():
    assert resources.files("tae_framework").joinpath("py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in doc["tool"]["setuptools"]["package-data"]["tae_framework"]


def _type_checking_imports() -> dict[str, str]:
    """name -> absolute module of the ``if TYPE_CHECKING:`` re-exports of __init__.py."""
    tree = ast.parse(Path(tae_framework.__file__).read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1
                for alias in imp.names:
                    # "X as X" is the explicit re-export form type checkers honour
                    assert alias.asname == alias.name, f"re-export {alias.name} as itself"
                    out[alias.name] = f"tae_framework.{imp.module}"
    return out


def test_every_lazy_name_is_visible_to_type_checkers():
    assert _type_checking_imports() == tae_framework._EXPORTS


@pytest.mark.parametrize("name", sorted(tae_framework._EXPORTS))
def test_public_name_imports_from_its_module(name):
    value = getattr(tae_framework, name)
    module = importlib.import_module(tae_framework._EXPORTS[name])
    assert value is getattr(module, name)
    assert name in dir(tae_framework)


def test_import_stays_cheap():
    code = "import sys, tae_framework; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _annotation(fn, param: str) -> str:
    return inspect.signature(fn).parameters[param].annotation


@pytest.mark.parametrize(
    "path, params",
    [
        ("tae_framework.pipeline:AlignmentPipeline.fit", {"model": "PreTrainedModel", "tokenizer": "PreTrainedTokenizerBase"}),
        ("tae_framework.pipeline:AlignmentPipeline.apply", {"model": "PreTrainedModel"}),
        ("tae_framework.pipeline:AlignmentPipeline.generate", {"model": "PreTrainedModel", "tokenizer": "PreTrainedTokenizerBase"}),
        ("tae_framework.pipeline:AlignmentPipeline.score", {"model": "PreTrainedModel", "tokenizer": "PreTrainedTokenizerBase"}),
        ("tae_framework.sources.base:ActivationSource.capture", {"model": "PreTrainedModel", "tokenizer": "PreTrainedTokenizerBase"}),
        ("tae_framework.interveners.base:Intervener.install", {"model": "PreTrainedModel"}),
        ("tae_framework.estimators.base:MisalignmentEstimator.bind", {"model": "PreTrainedModel"}),
    ],
)
def test_model_and_tokenizer_carry_transformers_types(path, params):
    import transformers

    module_name, attr = path.split(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    # resolve the annotations as a type checker would: the module's names plus what it
    # imports from transformers under TYPE_CHECKING
    tree = ast.parse(inspect.getsource(module))
    checking = {}
    for block in tree.body:
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING":
            for node in block.body:
                source = importlib.import_module(
                    "." * node.level + (node.module or ""), package=module.__package__
                )
                for alias in node.names:
                    checking[alias.asname or alias.name] = getattr(source, alias.name)
    hints = typing.get_type_hints(obj, globalns={**vars(module), **checking})
    for param, want in params.items():
        assert _annotation(obj, param) == want
        assert hints[param] is getattr(transformers, want)
