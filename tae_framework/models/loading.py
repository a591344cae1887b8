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
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["DTYPES", "load_model", "resolve_dtype"]

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


def _device_kwargs(device: str) -> tuple[dict[str, Any], str | None]:
    """``from_pretrained`` keyword arguments and the device to move to afterwards."""
    if device == "auto":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ConfigError(
                "device='auto' spreads the model over the available devices with accelerate's "
                "device_map, but accelerate is not installed: `pip install accelerate`, or pass "
                "device='cpu' / 'cuda'"
            ) from None
        return {"device_map": "auto"}, None
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
):
    """Load ``(model, tokenizer)`` with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Args:
        name_or_path: a hub id (read from the local cache when offline) or a local
            directory holding ``config.json``, the weights and the tokenizer files.
        dtype: ``"auto"`` (the dtype stored in the checkpoint), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` to split the model over
            the available devices (``device_map="auto"``, needs accelerate).
        trust_remote_code: allow the model repository's own code (off by default).

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
    device_kwargs, move_to = _device_kwargs(device)
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
