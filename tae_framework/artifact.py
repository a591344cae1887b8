"""Saved pipelines on disk: ``config.json`` + ``tensors.safetensors`` (never pickle).

:meth:`AlignmentPipeline.save <tae_framework.pipeline.AlignmentPipeline.save>` writes an
artifact, :func:`load_pipeline` (behind ``AlignmentPipeline.load``) reads one back. Every
field of ``config.json`` is validated and every tensor checked against the SHA-256
checksum saved with it, so a damaged or hand-edited artifact is an
:class:`~tae_framework.errors.ArtifactError`, never a silently different pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ._io import atomic_save_safetensors, atomic_write_bytes
from ._version import __version__
from .component import tensor_sha256
from .errors import ArtifactError, ConfigError, UnknownComponentError

if TYPE_CHECKING:
    from .pipeline import AlignmentPipeline
    from .registry import Registry

__all__ = [
    "CONFIG_FILE",
    "FIT_INFO_FILE",
    "FORMAT_VERSION",
    "PIPELINE_FILES",
    "TENSORS_FILE",
    "check_artifact_doc",
    "check_save_target",
    "load_pipeline",
    "stale_framework_files",
    "state_sha256",
    "tensors_match",
    "write_pipeline",
]

CONFIG_FILE = "config.json"
TENSORS_FILE = "tensors.safetensors"
#: Written beside a saved pipeline by ``tae fit`` and the evaluation runner: what the
#: pipeline was fitted on (task, fold, question ids). It describes one fit only.
FIT_INFO_FILE = "fit_info.json"
#: Every file the framework writes into a pipeline directory. Overwriting a pipeline
#: replaces or removes all of them; any other file in the directory is left alone.
PIPELINE_FILES = (CONFIG_FILE, TENSORS_FILE, FIT_INFO_FILE)

#: Artifact format written by :meth:`AlignmentPipeline.save` (2: tensor checksums).
FORMAT_VERSION = 2


def load_pipeline(
    cls: type[AlignmentPipeline], directory: str | Path, registry: Registry | None = None
) -> AlignmentPipeline:
    """Build ``cls`` from the artifact in ``directory`` (the body of ``AlignmentPipeline.load``)."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(
            f"{directory} is a file, not a saved pipeline directory: pass the directory "
            f"holding {CONFIG_FILE} and {TENSORS_FILE}"
        )
    cfg_path, t_path = directory / CONFIG_FILE, directory / TENSORS_FILE
    for p in (cfg_path, t_path):
        if not p.is_file():
            raise ArtifactError(
                f"{p} is missing: a saved pipeline directory holds {CONFIG_FILE} and {TENSORS_FILE}; "
                "save the pipeline again with pipeline.save(dir)"
            )
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{cfg_path} is corrupted (not valid JSON: {exc}); save the pipeline again") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {cfg_path} ({exc.strerror or exc})") from None
    check_artifact_doc(doc, cfg_path)
    try:
        tensors = load_file(str(t_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{t_path} is corrupted ({exc}); save the pipeline again") from None
    missing = sorted(set(doc["tensor_keys"]) - set(tensors))
    if missing:
        raise ArtifactError(f"{t_path} lacks tensors {missing[:5]}: the artifact is incomplete; save it again")
    sums = doc.get("tensor_sha256")
    if sums is None:
        warnings.warn(
            f"{cfg_path} has no tensor checksums (artifact format {doc['format']}): its tensors "
            "cannot be verified; save the pipeline again to add them",
            stacklevel=2,
        )
    else:
        extra = sorted(set(tensors) - set(sums))
        if extra or set(sums) != set(doc["tensor_keys"]):
            raise ArtifactError(
                f"{t_path} and {cfg_path} list different tensors ({(extra or sorted(set(sums) ^ set(doc['tensor_keys'])))[:5]}): "
                "the files come from different saves; save the pipeline again"
            )
        bad = [key for key in sorted(sums) if tensor_sha256(tensors[key]) != sums[key]]
        if bad:
            raise ArtifactError(
                f"{t_path} is corrupted: tensor(s) {bad[:5]} do not match the checksums in "
                f"{CONFIG_FILE} (the file was altered or damaged after saving); save the pipeline again"
            )
    reg = registry if registry is not None else _default_registry()
    try:
        pipe = cls.from_config(doc["pipeline"], reg)
    except UnknownComponentError as exc:
        needs = {
            f"{c['type']} ({role}) from {c.get('distribution', 'unknown')} {c.get('version', '')}".strip()
            for role, c in doc["components"].items()
        }
        raise UnknownComponentError(
            f"{exc}\nthis artifact needs: {', '.join(sorted(needs))}"
        ) from None
    except ConfigError as exc:
        why = " ".join(line.strip(" -") for line in str(exc).splitlines())
        raise ArtifactError(f"{cfg_path}: the saved 'pipeline' config is invalid ({why}); save the pipeline again") from None
    for role, comp in pipe._roles().items():
        entry = doc["components"].get(role)
        if entry is None:
            continue
        if entry["type"] != comp.name:
            raise ArtifactError(
                f"{cfg_path}: components.{role}.type is {entry['type']!r} but pipeline.{role}.type is "
                f"{comp.name!r}: the file was edited; save the pipeline again"
            )
        prefix = f"{role}/"
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        comp.set_state(part, entry.get("state", {}))
    if pipe.estimator is not None and pipe.estimator.is_fitted:
        pipe.intervener.fit(pipe.intervener.targets_, pipe.estimator)
    pipe.fingerprint_ = doc["model"]
    pipe.adapter_name_ = doc["model"].get("adapter")
    return pipe


def check_save_target(directory: Path) -> None:
    """Refuse, before anything is written, a target that is a file or lies under one."""
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(
            f"cannot save the pipeline to {directory}: it is an existing file, not a directory "
            "(it was left untouched); choose a directory path"
        )
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArtifactError(
                    f"cannot save the pipeline to {directory}: {parent} is a file, not a directory "
                    "(it was left untouched); choose a path under a directory"
                )
            break


def stale_framework_files(directory: Path, written: set[str]) -> list[Path]:
    """The framework's files in ``directory`` that a save writing ``written`` leaves
    behind from the previous pipeline: :data:`PIPELINE_FILES` not rewritten, and
    temporary folders of an interrupted save (``.<name>.tmp-*``). Other files are the
    user's and are never listed."""
    stale = [directory / name for name in PIPELINE_FILES if name not in written and (directory / name).exists()]
    stale += sorted(p for p in directory.glob(f".{directory.name}.tmp-*") if p.is_dir())
    return stale



def write_pipeline(
    directory: Path, doc: dict[str, Any], tensors: dict[str, torch.Tensor], overwrite: bool
) -> Path:
    """Write a pipeline's ``config.json`` (``doc``) and ``tensors.safetensors`` to
    ``directory`` (see :meth:`~tae_framework.pipeline.AlignmentPipeline.save`): both files
    complete in a temporary folder first, then renamed into place; the previous
    pipeline's other framework files go, the user's files stay; the same pipeline saved
    again changes nothing."""
    payload = json.dumps(doc, indent=2, sort_keys=True)
    cfg_path = directory / CONFIG_FILE
    if directory.is_dir() and (cfg_path.exists() or (directory / TENSORS_FILE).exists()):
        same = False
        with contextlib.suppress(OSError, UnicodeDecodeError):
            same = cfg_path.read_text() == payload and tensors_match(directory / TENSORS_FILE, doc)
        if same:
            return directory  # this very pipeline is already saved there (its fit_info.json still holds)
        if not overwrite:
            raise ArtifactError(
                f"{directory} already holds a saved pipeline: nothing was written. Pass "
                "overwrite=True (tae fit --overwrite) to replace it, or save to another directory"
            )
    metadata = {"format": str(FORMAT_VERSION)}
    exists = directory.is_dir()
    try:
        # Both files are written completely in a temporary folder first: a failed write
        # (disk full, permissions) leaves any previous artifact as it was.
        parent = directory if exists else directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
        try:
            atomic_save_safetensors(tmp / TENSORS_FILE, tensors, metadata)
            atomic_write_bytes(tmp / CONFIG_FILE, payload.encode("utf-8"))
            if exists:
                # The previous pipeline's other framework files (fit_info.json, which
                # describes its fit, and folders of an interrupted save) go first; the
                # user's own files stay. Then the tensors: the checksums in the old
                # config.json make a crash between the two renames a load error, never
                # a wrong pipeline.
                for stale in stale_framework_files(directory, {CONFIG_FILE, TENSORS_FILE}):
                    if stale.is_dir():
                        if stale != tmp:
                            shutil.rmtree(stale)
                    else:
                        stale.unlink()
                os.replace(tmp / TENSORS_FILE, directory / TENSORS_FILE)
                os.replace(tmp / CONFIG_FILE, cfg_path)
            else:
                os.rename(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise ArtifactError(
            f"cannot save the pipeline to {directory} ({exc.strerror or exc}); choose a "
            "writable directory"
        ) from None
    return directory


def state_sha256(components: dict[str, Any]) -> str:
    """Checksum of the learned JSON values of every component (like the tensors', they
    are data written by fit, not settings meant to be edited by hand)."""
    states = {role: entry.get("state", {}) for role, entry in sorted(components.items())}
    return hashlib.sha256(json.dumps(states, sort_keys=True).encode("utf-8")).hexdigest()


def tensors_match(path: Path, doc: dict[str, Any]) -> bool:
    """Whether the tensors file at ``path`` holds exactly the checksummed tensors of ``doc``."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
    sums = doc["tensor_sha256"]
    return set(tensors) == set(sums) and all(tensor_sha256(t) == sums[k] for k, t in tensors.items())


_FINGERPRINT_FIELDS = {
    "model_type": str,
    "num_layers": int,
    "num_heads": int,
    "head_dim": int,
    "hidden_size": int,
    "vocab_size": int,
}


def check_artifact_doc(doc: Any, path: Path) -> None:
    """Validate the shape of a loaded ``config.json``; the error names the bad field."""

    def bad(field: str, want: str, got: Any) -> ArtifactError:
        shown = type(got).__name__ if isinstance(got, (dict, list)) else repr(got)
        return ArtifactError(
            f"{path}: field '{field}' should be {want}, got {shown}; the file was edited or "
            "was not written by AlignmentPipeline.save: save the pipeline again"
        )

    if not isinstance(doc, dict):
        raise bad("<root>", "a JSON object", doc)
    for key in ("format", "pipeline", "components", "model", "tensor_keys"):
        if key not in doc:
            raise ArtifactError(
                f"{path} lacks the '{key}' entry; it was not written by AlignmentPipeline.save: "
                "save the pipeline again"
            )
    version = doc["format"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad("format", "an integer artifact format version", version)
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format {version}, newer than this tae-framework {__version__} "
            f"reads (up to {FORMAT_VERSION}): upgrade tae-framework"
        )
    if version < 1:
        raise bad("format", f"an artifact format version between 1 and {FORMAT_VERSION}", version)
    if not isinstance(doc["pipeline"], dict):
        raise bad("pipeline", "an object (the pipeline config)", doc["pipeline"])
    comps = doc["components"]
    if not isinstance(comps, dict):
        raise bad("components", "an object with one entry per role", comps)
    for role, entry in comps.items():
        if not isinstance(entry, dict):
            raise bad(f"components.{role}", "an object", entry)
        if not isinstance(entry.get("type"), str):
            raise bad(f"components.{role}.type", "a component name (string)", entry.get("type"))
        if not isinstance(entry.get("state", {}), dict):
            raise bad(f"components.{role}.state", "an object", entry.get("state"))
    model = doc["model"]
    if not isinstance(model, dict):
        raise bad("model", "an object (the model fingerprint)", model)
    for key, kind in _FINGERPRINT_FIELDS.items():
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise bad(f"model.{key}", "a string" if kind is str else "an integer", value)
    keys = doc["tensor_keys"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise bad("tensor_keys", "a list of tensor names", keys)
    sums = doc.get("tensor_sha256")
    if version >= 2 and sums is None:
        raise ArtifactError(
            f"{path} lacks the 'tensor_sha256' entry (required from artifact format 2); the file "
            "was edited: save the pipeline again"
        )
    if sums is not None and (
        not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values())
    ):
        raise bad("tensor_sha256", "an object mapping tensor names to checksums", sums)
    if version >= 2:
        if not isinstance(doc.get("state_sha256"), str):
            raise bad("state_sha256", "the checksum of the learned values (a string)", doc.get("state_sha256"))
        if state_sha256(comps) != doc["state_sha256"]:
            raise ArtifactError(
                f"{path}: the learned values under 'components.*.state' do not match their checksum "
                "(the file was edited or damaged after saving); save the pipeline again. Settings "
                "under 'pipeline' (e.g. the intervener's alpha) may be edited, learned values may not"
            )


def _default_registry() -> Registry:
    from .plugins import default_registry

    return default_registry()
