"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each helper writes to a temporary file in the destination folder, flushes it to disk,
then renames it over the destination (``os.replace``, atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_save_safetensors", "atomic_write_bytes", "atomic_write_json"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (``indent=2, sort_keys=True`` unless given) atomically."""
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("sort_keys", True)
    return atomic_write_bytes(path, json.dumps(obj, **dumps_kwargs).encode("utf-8"))


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save torch ``tensors`` as a safetensors file atomically."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save(tensors, metadata=metadata))
