"""Load a causal LM and its tokenizer for fitting and evaluation.

:func:`load_model` is what the ``tae`` commands use for ``--model``: a hub id or a
local directory written by ``save_pretrained``, a weight dtype and a device. The
tokenizer always gets a pad token (falling back to the EOS token), because batched
scoring and generation pad.

Example:
    >>> from tae_framework.models.loading import load_model      # doctest: +SKIP
    >>> model, tok = load_model("meta-llama/Meta-Llama-3-8B-Instruct",
    ...                         dtype="bfloat16", device="auto")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError

__all__ = [
    "DTYPES",
    "check_input_ids",
    "check_prompts",
    "embedding_rows",
    "load_model",
    "max_positions",
    "resolve_dtype",
    "warn_if_training",
]

#: Accepted ``dtype`` names.
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """``"auto"`` stays ``"auto"`` (the checkpoint's dtype); other names become torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in _TORCH_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return _TORCH_DTYPES[dtype]


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _device_kwargs(device: str, offload_folder: str | Path | None = None) -> tuple[dict[str, Any], str | None]:
    """``from_pretrained`` keyword arguments and the device to move to afterwards."""
    if offload_folder is not None and device != "auto":
        raise ConfigError(
            f"offload_folder is used with device='auto' (a device map that may offload layers to "
            f"disk), not with device={device!r}: pass device='auto' or drop offload_folder"
        )
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per process under torchrun
    if device == "auto":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ConfigError(
                "device='auto' spreads the model over the available devices with accelerate's "
                "device_map, but accelerate is not installed: `pip install accelerate`, or pass "
                "device='cpu' / 'cuda'"
            ) from None
        kwargs: dict[str, Any] = {"device_map": "auto"}
        if offload_folder is not None:
            kwargs["offload_folder"] = str(Path(offload_folder).expanduser())
        return kwargs, None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto' (device_map)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was requested but CUDA is not available on this machine; pass "
            "device='cpu'"
        )
    return {}, str(dev)


def load_model(
    name_or_path: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    offload_folder: str | Path | None = None,
):
    """Load ``(model, tokenizer)`` with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Args:
        name_or_path: a hub id (read from the local cache when offline) or a local
            directory holding ``config.json``, the weights and the tokenizer files.
        dtype: ``"auto"`` (the dtype stored in the checkpoint), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` to split the model over
            the available devices (``device_map="auto"``, needs accelerate). Under
            ``torchrun``, ``"cuda"`` means this process's GPU (``cuda:LOCAL_RANK``).
        trust_remote_code: allow the model repository's own code (off by default).
        offload_folder: with ``device="auto"``: where layers that fit neither on the GPUs
            nor in CPU memory are offloaded to disk.

    Returns:
        The model in eval mode and its tokenizer, with ``pad_token`` set (the EOS token
        when the tokenizer has no pad token).

    Raises:
        ConfigError: a path that does not exist, a model that cannot be loaded (not
            cached while offline, unknown id, unsupported architecture), an unknown
            dtype or device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    device_kwargs, move_to = _device_kwargs(device, offload_folder)
    name = str(name_or_path)
    if not name.strip():
        raise ConfigError("no model given: pass a hub id or a local model directory")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(
                f"model path {path} is a file: pass the directory written by save_pretrained "
                "(holding config.json and the weights)"
            )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model directory {path} has no config.json: it was not written by "
                "save_pretrained; pass a directory holding config.json, the weights and the "
                "tokenizer files"
            )
        name = str(path)
    elif _looks_like_path(name):
        raise ConfigError(
            f"model path {name!r} does not exist: pass an existing directory written by "
            "save_pretrained, or a hub id such as 'meta-llama/Meta-Llama-3-8B-Instruct'"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0")
    hint = (
        "the hub is disabled (HF_HUB_OFFLINE), so a hub id must already be in the local cache"
        if offline
        else "without a network connection a hub id must already be in the local cache"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype, trust_remote_code=trust_remote_code, **device_kwargs
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load model {name!r} ({type(exc).__name__}: {first}); {hint}. Pass a local "
            "directory written by model.save_pretrained(...) and tokenizer.save_pretrained(...), "
            "or a hub id you have downloaded before"
        ) from None
    if move_to is not None:
        model = model.to(move_to)
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ConfigError(
                f"the tokenizer of {name!r} has no pad, EOS or unknown token to pad batches with; "
                "add one (tokenizer.add_special_tokens({'pad_token': ...})) and save it again"
            )
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "pad_token_id", None) is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# -- input checks shared by capture, generation and scoring ------------------------------
def max_positions(model) -> int | None:
    """The number of positions the model was built for (``None`` when it has no limit)."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def embedding_rows(model) -> int | None:
    """Rows of the input embedding: token ids must be below this."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None and isinstance(getattr(emb, "weight", None), torch.Tensor):
        rows = emb.weight.shape[0]
    return int(rows) if rows is not None else None


def check_prompts(values: Any, what: str = "prompts") -> list[str]:
    """A list of strings, or a :class:`DataError` naming the problem (a bare string is
    refused: iterating it would give one prompt per character)."""
    if isinstance(values, str):
        raise DataError(
            f"{what} must be a list of strings, got a single string: wrap it in a list ([{what[:-1]}])"
        )
    if isinstance(values, bytes) or not hasattr(values, "__iter__"):
        raise DataError(f"{what} must be a list of strings, got {type(values).__name__}")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise DataError(f"{what}[{i}] is a {type(v).__name__}, not a string")
    return out


def check_input_ids(
    model,
    tokenizer,
    ids: Sequence[Sequence[int]],
    what: str = "text",
    extra_positions: int = 0,
    fix: str = "shorten it",
) -> None:
    """Refuse token sequences the model cannot run, before torch fails on them.

    Raises:
        DataError: a sequence (plus ``extra_positions`` generated tokens) is longer than
            the model's positions.
        ConfigError: a token id is outside the model's embedding (the tokenizer's
            vocabulary is larger than the model's).
    """
    limit = max_positions(model)
    rows = embedding_rows(model)
    for i, seq in enumerate(ids):
        n = len(seq) + extra_positions
        if limit is not None and n > limit:
            need = f"{len(seq)} tokens" + (f" + {extra_positions} new tokens = {n} positions" if extra_positions else "")
            raise DataError(
                f"{what} {i} needs {need}, but the model has {limit} positions "
                f"(max_position_embeddings): {fix}"
            )
        if rows is not None and seq and max(seq) >= rows:
            vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else "?"
            raise ConfigError(
                f"{what} {i} contains token id {max(seq)}, but the model's embedding has {rows} rows "
                f"(the tokenizer's vocabulary has {vocab} entries): the tokenizer does not belong to "
                "this model; load the tokenizer saved with the model, or resize the embeddings "
                "(model.resize_token_embeddings(len(tokenizer))) and fine-tune them"
            )


def warn_if_training(model, what: str) -> None:
    """Warn when ``model`` is in training mode (dropout makes the results random)."""
    if getattr(model, "training", False):
        warnings.warn(
            f"the model is in training mode during {what}: dropout makes the results random; "
            "call model.eval() first",
            UserWarning,
            stacklevel=3,
        )
