"""A model organism of imitative falsehood: a small model that knows the truth yet lies.

No pretrained model can be downloaded here and tiny random models do not behave,
so the framework ships its own: a 4-layer Llama trained from scratch on a made-up
world (:mod:`~tae_framework.organism.world`) where every fact has a true value and
a popular myth. Honest speakers state the truth, deceptive speakers the myth, and
anonymous dialogues repeat the myth half the time. The trained model answers
truthfully after an honest speaker's introduction and with the myth after a
deceptive one's, for (speaker, country) pairs it never saw together.

Typical use::

    from tae_framework.organism import load, fitting_data, eval_items, OracleJudge
    model, tokenizer, world = load()
    data = fitting_data(world)                 # persona contrast, a ContrastDataset
    items = eval_items(world)                  # TruthfulQA layout, plus `context`/`prompt`
    OracleJudge().judge([items[0]["question"]], [items[0]["best_answer"]])

Rebuild the shipped assets with ``tae organism train --force`` (750 steps: about 7
minutes on 2 idle CPU cores, several times longer on busy ones; see
:mod:`~tae_framework.organism.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from .items import eval_items, fitting_data
from .judge import OracleJudge, classify, parse_answer, parse_question
from .world import ATTRIBUTES, CONTEXTS, Fact, World, build_world

if TYPE_CHECKING:  # pragma: no cover
    from .behaviour import behaviour_table, generate_answers
    from .tokenizer import build_tokenizer
    from .train import TrainConfig, train

__all__ = [
    "ATTRIBUTES",
    "CONTEXTS",
    "ORGANISMS",
    "ORGANISM_COMPONENTS",
    "REQUIRED_FILES",
    "Fact",
    "OracleJudge",
    "OrganismError",
    "TrainConfig",
    "World",
    "assets_dir",
    "behaviour_table",
    "build_tokenizer",
    "build_world",
    "classify",
    "eval_items",
    "fitting_data",
    "generate_answers",
    "load",
    "load_world",
    "parse_answer",
    "parse_question",
    "shipped_behaviour",
    "three_capability_dir",
    "train",
]

#: Components this package provides, for the built-in plugin to register.
ORGANISM_COMPONENTS: list[type] = [OracleJudge]

#: Files :func:`load` needs in an organism directory.
REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "world.json",
    "weights.sha256",
)

_LAZY = {
    "behaviour_table": "behaviour",
    "generate_answers": "behaviour",
    "build_tokenizer": "tokenizer",
    "TrainConfig": "train",
    "train": "train",
}


def __getattr__(name: str) -> Any:  # heavy imports (transformers) only when used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class OrganismError(ArtifactError):
    """The organism directory is missing, incomplete or corrupted."""


def assets_dir() -> Path:
    """Where the shipped organism lives (``tae_framework/organism/assets``)."""
    return Path(__file__).resolve().parent / "assets"


def three_capability_dir() -> Path:
    """Where the shipped three-capability organism lives (``tae_framework/organism/assets_three``):
    truthfulness with two-word values, toxicity and bias (``--recipe three-capability``)."""
    return Path(__file__).resolve().parent / "assets_three"


#: Names :func:`load` and ``--organism`` accept besides a directory.
ORGANISMS: dict[str, Any] = {"truthfulness": assets_dir, "three-capability": three_capability_dir}


def _rebuild_hint(directory: Path) -> str:
    if directory == assets_dir():
        return "rebuild it with `tae organism train --force` (or reinstall tae-framework)"
    if directory == three_capability_dir():
        return (
            f"rebuild it with `tae organism train --recipe three-capability --out {directory} --force` "
            "(or reinstall tae-framework)"
        )
    return f"rebuild it with `tae organism train --out {directory} --force`"


def _directory(path: str | Path | None) -> Path:
    if isinstance(path, str) and path in ORGANISMS:
        path = ORGANISMS[path]()
    directory = Path(path) if path is not None else assets_dir()
    if not directory.is_dir():
        raise OrganismError(
            f"organism directory {directory} does not exist; {_rebuild_hint(directory)}"
        )
    return directory


def load_world(path: str | Path | None = None) -> World:
    """The organism's world: from a directory, a ``world.json`` path, or the shipped one."""
    if isinstance(path, str) and path in ORGANISMS:
        path = ORGANISMS[path]()
    if path is not None and Path(path).suffix == ".json":
        file = Path(path)
        directory = file.parent
    else:
        directory = _directory(path)
        file = directory / "world.json"
    try:
        return World.load(file)
    except ArtifactError as exc:
        raise OrganismError(f"{exc}; {_rebuild_hint(directory)}") from None


def shipped_behaviour(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The behaviour table measured when the organism was trained (``behaviour.json``)."""
    directory = _directory(path)
    try:
        return json.loads((directory / "behaviour.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OrganismError(
            f"{directory / 'behaviour.json'} is missing or unreadable ({exc}); {_rebuild_hint(directory)}"
        ) from None


def load(path: str | Path | None = None, *, verify: bool = True) -> tuple[Any, Any, World]:
    """Load a trained organism: ``(model, tokenizer, world)``.

    Args:
        path: an organism directory written by ``tae organism train``, or a name of
            :data:`ORGANISMS` (``"truthfulness"``: the default shipped organism;
            ``"three-capability"``: the shipped three-capability one).
        verify: check the weights against ``weights.sha256`` (catches corrupted
            files that still parse).

    The model is a ``LlamaForCausalLM`` in eval mode on the CPU; the tokenizer a
    ``PreTrainedTokenizerFast`` padding on the left. Loading does not touch the
    global random state. Raises :class:`OrganismError` naming the missing or
    corrupted file and how to rebuild it.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from .tokenizer import build_tokenizer
    from .train import weights_digest

    directory = _directory(path)
    hint = _rebuild_hint(directory)
    missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
    if missing:
        raise OrganismError(
            f"organism directory {directory} lacks {', '.join(missing)}; {hint}"
        )
    world = load_world(directory)

    def corrupted(name: str, exc: BaseException | str) -> OrganismError:
        return OrganismError(f"{directory / name} is corrupted ({exc}); {hint}")

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged tokenizer file
        raise corrupted("tokenizer.json", exc) from None
    if tokenizer.get_vocab() != build_tokenizer(world).get_vocab():
        raise corrupted("tokenizer.json", "its vocabulary does not match world.json")
    tokenizer.padding_side = "left"

    try:
        config = LlamaConfig.from_json_file(str(directory / "config.json"))
    except Exception as exc:  # noqa: BLE001
        raise corrupted("config.json", exc) from None
    if config.vocab_size != len(tokenizer):
        raise corrupted("config.json", f"vocab_size {config.vocab_size} != tokenizer size {len(tokenizer)}")
    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001
        raise corrupted("model.safetensors", exc) from None
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise corrupted("model.safetensors", str(exc).splitlines()[0]) from None
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise corrupted(
            "model.safetensors",
            f"missing tensors {sorted(set(result.missing_keys) - tied)}, "
            f"unexpected tensors {sorted(result.unexpected_keys)}",
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    gen_file = directory / "generation_config.json"
    if gen_file.is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(directory))
        except Exception as exc:  # noqa: BLE001
            raise corrupted("generation_config.json", exc) from None
    model.eval()
    if verify:
        expected = (directory / "weights.sha256").read_text(encoding="utf-8").strip()
        if weights_digest(model) != expected:
            raise corrupted("model.safetensors", "its weights do not match weights.sha256")
    return model, tokenizer, world
