"""The on-disk activation cache: one safetensors shard per batch, checksummed, in a folder
named by a fingerprint of the model, the inputs and the capture settings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..component import tensor_sha256
from ..errors import ConfigError
from ..models.base import model_fingerprint
from ..types import TextActivations
from .encoding import _Encoded
from .weights_digest import full_weights_digest

__all__ = ["CacheWarning"]

_CACHE_FORMAT = 2  # 2: checksums of every shard tensor, digest of every weight


class CacheWarning(UserWarning):
    """A cached shard was unusable and is being recomputed."""


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _cache_description(
    model, adapter, tokenizer, texts, spans, encoded, layer_ids, site, cfg
) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "model": model_fingerprint(model, adapter),
        "weights": full_weights_digest(model),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
            "vocab_size": len(tokenizer),
        },
        "site": site,
        "layers": list(layer_ids),
        "dtype": cfg.output_dtype,
        "batch_size": cfg.batch_size,
        "padding_side": cfg.padding_side,
        "max_length": cfg.max_length,
        "num_texts": len(texts),
        "texts": _sha(texts),
        "spans": _sha(None if spans is None else [list(s) for s in spans]),
        "inputs": _sha([encoded.ids, encoded.spans]),
    }


class _ShardStore:
    """One cache folder: ``manifest.json`` plus ``shard-NNNNN.safetensors`` per batch."""

    def __init__(self, folder: Path, description: dict[str, Any], num_shards: int):
        self.folder = folder
        self.description = description
        self.num_shards = num_shards

    @classmethod
    def open(cls, root: Path, description: dict[str, Any], num_shards: int) -> _ShardStore:
        key = _sha(description)[:32]
        folder = root / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the activation cache folder {folder}: {exc}") from None
        store = cls(folder, description, num_shards)
        manifest = {"format": _CACHE_FORMAT, "key": key, "num_shards": num_shards,
                    "description": description}
        path = folder / "manifest.json"
        current = None
        with contextlib.suppress(OSError, ValueError):
            current = json.loads(path.read_text())
        if current != manifest:
            atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return store

    def path(self, b: int) -> Path:
        return self.folder / f"shard-{b:05d}.safetensors"

    def save(self, b: int, acts: list[TextActivations]) -> None:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for k, a in enumerate(acts):
            tensors[f"acts.{k}"] = a.acts.detach().to("cpu").contiguous()
            tensors[f"ids.{k}"] = a.input_ids.detach().to("cpu").contiguous()
        meta = {
            "format": str(_CACHE_FORMAT),
            "indices": json.dumps([a.index for a in acts]),
            "spans": json.dumps([list(a.span) for a in acts]),
            "layers": json.dumps(list(acts[0].layers)),
            "sha256": json.dumps({k: tensor_sha256(t) for k, t in sorted(tensors.items())}),
        }
        atomic_write_bytes(self.path(b), save(tensors, metadata=meta))

    def load(self, b: int, indices: list[int], encoded: _Encoded, layer_ids: list[int]):
        path = self.path(b)
        if not path.exists():
            return None
        try:
            return self._read(path, indices, encoded, layer_ids)
        except Exception as exc:  # noqa: BLE001 - any unreadable shard is recomputed
            warnings.warn(
                f"activation cache shard {path} is unusable ({type(exc).__name__}: {exc}); "
                "recomputing it",
                CacheWarning,
                stacklevel=4,
            )
            return None

    def _read(self, path: Path, indices, encoded: _Encoded, layer_ids) -> list[TextActivations]:
        from safetensors.torch import load

        data = path.read_bytes()
        tensors = load(data)  # validates the whole file
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        sums = json.loads(meta.get("sha256", "null"))
        if not isinstance(sums, dict) or set(sums) != set(tensors):
            raise ValueError("has no checksums of its tensors (written by an older version, or edited)")
        bad = sorted(k for k, t in tensors.items() if tensor_sha256(t) != sums[k])
        if bad:
            raise ValueError(f"tensor(s) {bad[:4]} do not match their checksums (the file was altered)")
        if json.loads(meta.get("indices", "null")) != indices:
            raise ValueError(f"holds texts {meta.get('indices')}, expected {indices}")
        if json.loads(meta.get("layers", "null")) != list(layer_ids):
            raise ValueError(f"holds layers {meta.get('layers')}, expected {list(layer_ids)}")
        spans = json.loads(meta.get("spans", "null"))
        out = []
        for k, i in enumerate(indices):
            acts, ids = tensors[f"acts.{k}"], tensors[f"ids.{k}"]
            if ids.tolist() != encoded.ids[i] or tuple(spans[k]) != encoded.spans[i]:
                raise ValueError(f"text {i} has different tokens or span than requested")
            if acts.ndim != 3 or acts.shape[0] != len(layer_ids) or acts.shape[1] != len(ids):
                raise ValueError(f"text {i} has activations of shape {tuple(acts.shape)}")
            out.append(TextActivations(i, acts, ids, encoded.spans[i], tuple(layer_ids)))
        return out
