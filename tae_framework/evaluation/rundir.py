"""Run directories and checkpoints.

A run directory (``<out_dir>/<run>/``) remembers its settings and model in
``run.json``; resuming it with other settings or another model is refused. Per-item
protocol outputs are appended to JSON-lines checkpoints (:class:`Checkpoint`) after
every batch; finished folds leave ``fold.json``. Every JSON file is written atomically
(:func:`tae_framework._io.atomic_write_json`).
"""

from __future__ import annotations

import json
import platform
import random
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes
from .._version import __version__
from ..artifact import FIT_INFO_FILE  # written beside a saved pipeline; save() knows it
from ..errors import ArtifactError, ConfigError
from ..registry import Registry

__all__ = [
    "FIT_INFO_FILE",
    "FOLD_FILE",
    "RUN_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "Checkpoint",
    "chunks",
    "json_default",
    "model_identity",
    "model_info",
    "now",
    "open_run_dir",
    "progress_bar",
    "read_json",
    "seed_everything",
    "slug",
    "versions",
    "write_json",
]

RUN_FILE = "run.json"
FOLD_FILE = "fold.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return s or "method"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: NumPy scalars, tensors and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON, atomically (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, sort_keys=False, default=json_default)
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {what} {path} ({exc})") from None


def chunks(seq: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def progress_bar(enabled: bool, **kwargs: Any):
    """The library's progress bar (:func:`tae_framework.progress.progress`): shown on
    terminals unless ``enabled`` is False (the run's ``progress`` option) or the library
    is quiet (``tae ... -q``)."""
    from ..progress import progress

    return progress(enabled=None if enabled else False, **kwargs)


class Checkpoint:
    """Per-item rows appended to a JSONL file as soon as they are computed.

    A line cut short by an interruption is dropped (and the file rewritten without
    it) when the checkpoint is opened again.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        clean = True
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                clean = False
                continue
            if isinstance(row, dict) and "id" in row:
                self.rows[str(row["id"])] = row
            else:
                clean = False
        if not clean or (text and not text.endswith("\n")):
            body = "".join(json.dumps(r, default=json_default) + "\n" for r in self.rows.values())
            atomic_write_bytes(self.path, body.encode("utf-8"))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.rows

    def __getitem__(self, item_id: str) -> dict[str, Any]:
        return self.rows[item_id]

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=json_default) + "\n")
            fh.flush()
        for row in rows:
            self.rows[str(row["id"])] = row


def model_identity(model: Any, registry: Registry) -> dict[str, Any]:
    # Every weight byte, not a sample: a run resumed after an in-place ablation (one
    # head's o_proj columns zeroed, say) must not reuse the unablated model's results.
    from ..sources.hf import full_weights_digest

    adapter = registry.adapter_for(model)
    ident = dict(adapter.fingerprint(model))
    ident["weights_digest"] = full_weights_digest(model)
    return ident


def _differences(doc: Mapping[str, Any], kind: str, settings: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    diffs = []
    if doc.get("kind") != kind:
        diffs.append(f"kind ({doc.get('kind')} vs {kind})")
    old = doc.get("config", {})
    diffs += [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    old_model = doc.get("model", {})
    model_diffs = [
        k
        for k in ("model_type", "num_layers", "num_heads", "hidden_size", "weights_digest")
        if old_model.get(k) != identity.get(k)
    ]
    if model_diffs:
        diffs.append("model (" + ", ".join(model_diffs) + ")")
    return diffs


def open_run_dir(
    run_dir: Path, settings: Mapping[str, Any], identity: Mapping[str, Any], kind: str, overwrite: bool
) -> None:
    """Create ``run_dir`` (with ``run.json``) or check that it holds the same run."""
    marker = run_dir / RUN_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory: choose another run name")
    if overwrite and marker.is_file():
        shutil.rmtree(run_dir)
    elif marker.is_file():
        diffs = _differences(read_json(marker, "run file"), kind, settings, identity)
        if diffs:
            raise ConfigError(
                f"{run_dir} holds a run with different settings (differing: {', '.join(diffs)}); a "
                "run resumes only with the same settings and model. Use another run name (--run), "
                "or overwrite=True (--overwrite) to start it again"
            )
        return
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(
            f"{run_dir} exists, is not empty and is not a tae run directory (no {RUN_FILE}): choose "
            "another run name (--run) or output folder (--out)"
        )
    write_json(
        marker,
        {
            "kind": kind,
            "framework_version": __version__,
            "created": now(),
            "config": dict(settings),
            "model": dict(identity),
        },
    )


def versions() -> dict[str, str]:
    import transformers

    return {
        "tae_framework": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def model_info(model: Any, identity: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    dtype = None
    try:
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError, TypeError):
        pass
    return {"name": name or getattr(cfg, "_name_or_path", "") or None, **identity, "dtype": dtype}
