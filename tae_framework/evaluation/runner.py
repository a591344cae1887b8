"""The evaluation runner: ``tae eval``, ``tae fit``, ``tae generate`` and ``tae sweep``.

:func:`run_eval` runs one method through a task's k-fold protocol on one model:

1. for every fold ``k``: build the method (a preset, a pipeline config, or a saved
   pipeline), fit it on the fold's fitting data with the fold's own validation
   questions (``validation_groups=task.fold(k).val``), save it to
   ``<out>/<run>/fold<k>/pipeline/``;
2. evaluate the fold's test questions: multiple-choice log-probabilities with the
   edits on the answer tokens (MC1/MC2/MC3), greedy generations with the edits on the
   last position, cut with :func:`~tae_framework.evaluation.metrics.cut_answer` and
   scored by a judge (True / Info), and optionally the side effects on held-out text
   with every position edited (CE loss, KL to the unedited model);
3. write the fold's per-question CSV in the TruthfulQA tooling format
   (``fold<k>/answers.csv``, ``fold<k>/baseline.csv`` with ``baseline``), a head
   accuracy heatmap (``fold<k>/head_scores.png``) and per-token strength figures of a
   few answers (``fold<k>/strengths/<id>.png`` / ``.html`` / ``.json``);
4. aggregate with :func:`~tae_framework.evaluation.metrics.aggregate_folds` into
   ``summary.json`` (numbers, configuration, versions, provenance) and
   ``summary.md`` (a table, one row per method, plus one per fold).

Runs resume: a finished fold (``fold<k>/fold.json``) is skipped; within a fold the
fitted pipeline is reloaded instead of refitted, and multiple-choice scores,
generations and judge scores are checkpointed to JSONL files after every batch, so
an interrupted run continues where it stopped. A run directory remembers its
configuration and model (``run.json``); resuming with different settings is refused.

:func:`run_sweep` evaluates a grid of K (number of edited heads) and alpha (edit
strength): every K is fitted once per fold and every alpha reuses that fit (only the
intervener is rebuilt), and the grid is written as one table (``sweep.csv``,
``sweep.md``).

Example:
    >>> from tae_framework.evaluation.runner import EvalConfig, run_eval    # doctest: +SKIP
    >>> from tae_framework.models.loading import load_model                 # doctest: +SKIP
    >>> model, tok = load_model("meta-llama/Meta-Llama-3-8B-Instruct", dtype="bfloat16",
    ...                         device="cuda")                              # doctest: +SKIP
    >>> summary = run_eval(model, tok, EvalConfig(method="tae", run="tae-llama3",
    ...                    task_options={"source": "truthfulqa/truthful_qa"}))  # doctest: +SKIP
    >>> summary["metrics"]["True*Info"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._version import __version__
from ..config import ROLES, ComponentSpec, PipelineConfig, format_validation_error
from ..errors import ArtifactError, ConfigError, DataError, TAEError, UnknownComponentError
from ..pipeline import CONFIG_FILE, TENSORS_FILE, AlignmentPipeline
from ..registry import Registry
from .metrics import aggregate_folds, cut_answer, mc_scores
from .results import AnswerRecord, write_answers
from .scoring import DEFAULT_HELDOUT

__all__ = [
    "REFERENCE_ALPHA",
    "REFERENCE_K",
    "EvalConfig",
    "apply_overrides",
    "eval_main",
    "fit_main",
    "generate_main",
    "parse_assignments",
    "resolve_method",
    "run_eval",
    "run_sweep",
    "sweep_main",
]

#: The reference grid of ``tae sweep``: number of edited heads K ...
REFERENCE_K: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
#: ... and edit strength alpha.
REFERENCE_ALPHA: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)

RUN_FILE = "run.json"
FOLD_FILE = "fold.json"
FIT_INFO_FILE = "fit_info.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# Settings that do not change results: a run may resume with other values.
_NOT_COMPARED = ("folds", "progress", "out_dir", "run", "batch_size", "strength_figures")
# Columns of summary.md / sweep.md: (metric, header, percent?)
_TABLE = (
    ("MC1", "MC1", True),
    ("MC2", "MC2", True),
    ("MC3", "MC3", True),
    ("True", "True", True),
    ("Info", "Info", True),
    ("True*Info", "True*Info", True),
    ("True&Info", "True&Info", True),
    ("CE", "CE", False),
    ("KL", "KL", False),
)
_SWEEP_METRICS = ("MC1", "MC2", "True", "Info", "True*Info", "CE", "KL")


# ====================================================================================
# configuration
# ====================================================================================
class EvalConfig(BaseModel):
    """What ``tae eval`` (and :func:`run_eval`) runs. Frozen; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(default="truthfulqa", description="Registry name of the task.")
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the task factory, e.g. `{source: ..., limit: 20}` for truthfulqa.",
    )
    method: str | dict[str, Any] = Field(
        default="tae",
        description="A preset name, a saved pipeline directory, a pipeline config JSON file, or a "
        "pipeline config dict.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-role config updates, e.g. `{prober: {top_k: 8}, intervener: {alpha: 5}}`; "
        "`seed` and `validation_fraction` set the pipeline's own keys; `{role: {type: NAME}}` "
        "swaps a component.",
    )
    refit: bool = Field(
        default=False,
        description="With a saved pipeline as `method`: refit its config on every fold (True) "
        "instead of evaluating its fitted state as is (False).",
    )
    judge: ComponentSpec | None = Field(
        default_factory=lambda: ComponentSpec(type="hf"),
        description="Judge of the generations (`{type, config}`; a name is enough); None or "
        "`none`: generations are written but not judged.",
    )
    mc: bool = Field(default=True, description="Score the multiple-choice answers (MC1/2/3).")
    generation: bool = Field(default=True, description="Generate and judge answers.")
    max_new_tokens: int = Field(default=50, ge=1, description="Generation length (greedy).")
    side_effects: bool = Field(
        default=False,
        description="Measure CE loss and KL on held-out texts (every position edited).",
    )
    side_effects_texts: str = Field(
        default=DEFAULT_HELDOUT,
        description="Held-out texts: a hub dataset id or a .txt/.jsonl/.csv/.parquet file.",
    )
    side_effects_n: int = Field(default=100, ge=1, description="Number of held-out texts.")
    side_effects_max_tokens: int = Field(
        default=128, ge=2, description="Tokens kept of each held-out text."
    )
    folds: list[int] | None = Field(default=None, description="Folds to run; None: all.")
    batch_size: int = Field(default=8, ge=1, description="Texts per forward pass.")
    seed: int = Field(
        default=42,
        description="Seeds Python, NumPy and torch at the start of every fold (seed + k).",
    )
    out_dir: str = Field(default="results", description="Parent folder of run directories.")
    run: str | None = Field(
        default=None, description="Run directory name; None: `<method>-<task>`."
    )
    tag: str | None = Field(
        default=None, description="Model tag in the answer CSVs (no spaces); None: the method name."
    )
    baseline: bool = Field(default=False, description="Also evaluate the unedited model.")
    strength_figures: int = Field(
        default=3,
        ge=0,
        description="Per-token strength figures for this many test questions per fold.",
    )
    progress: bool = Field(default=True, description="Show progress bars.")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_name(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        if isinstance(value, str):
            return {"type": value.strip()}
        return value

    @field_validator("run", "tag")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() or re.search(r"[\s/\\]", value) or value in (".", ".."):
            raise ValueError(
                f"{value!r} must be a non-empty name without spaces or path separators"
            )
        return value

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("folds is empty: list fold indices, or leave it unset for all folds")
        if len(set(value)) != len(value):
            raise ValueError(f"fold indices must be unique, got {value}")
        return sorted(value)

    @classmethod
    def parse(cls, data: EvalConfig | Mapping[str, Any]) -> EvalConfig:
        """Validate a dict, raising :class:`ConfigError` with a readable message."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "eval config")) from None


# ====================================================================================
# methods
# ====================================================================================
def apply_overrides(
    pipeline_config: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """A pipeline config dict with ``overrides`` applied (the input is not modified).

    ``overrides`` maps a role to config updates (``{"prober": {"top_k": 8}}``), or a
    pipeline key (``seed``, ``validation_fraction``) to its value. ``{"role": {"type":
    NAME, ...}}`` replaces the role's component (its config starts empty unless the
    type is unchanged); ``{"estimator": None}`` removes the estimator.
    """
    out = copy.deepcopy(dict(pipeline_config))
    for role, update in overrides.items():
        if role in ("seed", "validation_fraction"):
            out[role] = update
            continue
        if role not in ROLES:
            raise ConfigError(
                f"unknown role {role!r} in the overrides: roles are {', '.join(ROLES)} (plus the "
                f"pipeline keys seed and validation_fraction), e.g. --set prober.top_k=8"
            )
        if update is None:
            if role != "estimator":
                raise ConfigError(f"the {role} cannot be removed: every method needs one")
            out[role] = None
            continue
        if not isinstance(update, Mapping):
            raise ConfigError(
                f"the override of {role!r} must map its config keys to values (--set "
                f"{role}.KEY=VALUE), got {update!r}"
            )
        spec = out.get(role)
        update = dict(update)
        if "type" in update:
            new_type = update.pop("type")
            base = spec["config"] if spec is not None and spec.get("type") == new_type else {}
            out[role] = {"type": new_type, "config": {**base, **update}}
            continue
        if spec is None:
            present = [r for r in ROLES if out.get(r)]
            raise ConfigError(
                f"the method has no {role} to override (its roles: {', '.join(present)}); set "
                f"{role}.type=NAME to add one"
            )
        out[role] = {"type": spec["type"], "config": {**spec.get("config", {}), **update}}
    return out


@dataclass
class Method:
    """A resolved ``method``: how to obtain the pipeline of each fold."""

    name: str
    kind: str  # "preset", "config", "saved"
    config: PipelineConfig | None = None
    saved: Path | None = None
    intervener_overrides: dict[str, Any] = field(default_factory=dict)
    fit_info: dict[str, Any] | None = None

    @property
    def refits(self) -> bool:
        return self.kind != "saved"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.config is not None:
            out["pipeline"] = self.config.model_dump(mode="json")
        if self.saved is not None:
            out["saved"] = str(self.saved)
            out["intervener_overrides"] = self.intervener_overrides
        return out

    def new_pipeline(self, registry: Registry) -> AlignmentPipeline:
        """An unfitted pipeline (refitting kinds) or the saved, fitted one."""
        if self.kind == "saved":
            assert self.saved is not None
            pipe = AlignmentPipeline.load(self.saved, registry)
            if self.intervener_overrides:
                pipe = with_intervener(pipe, self.intervener_overrides, registry)
            return pipe
        assert self.config is not None
        return AlignmentPipeline.from_config(self.config, registry)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {what} {path} ({exc})") from None


def resolve_method(
    method: str | Mapping[str, Any] | PipelineConfig,
    overrides: Mapping[str, Any] | None,
    registry: Registry,
    refit: bool = False,
) -> Method:
    """Resolve a preset name, a saved pipeline directory, a pipeline config JSON file or
    a config dict (with ``overrides``) and validate it by building the pipeline once.

    Raises:
        UnknownComponentError: an unknown preset (the message lists the known ones) or
            component.
        ConfigError: a bad override (unknown role or key, invalid value).
    """
    overrides = dict(overrides or {})
    if isinstance(method, (PipelineConfig, Mapping)):
        raw = method.model_dump() if isinstance(method, PipelineConfig) else dict(method)
        cfg = PipelineConfig.parse(
            apply_overrides(PipelineConfig.parse(raw).model_dump(), overrides)
        )
        out = Method("custom", "config", config=cfg)
    else:
        text = str(method).strip()
        if not text:
            raise ConfigError(
                "no method given: pass a preset name (e.g. 'tae'), a saved pipeline directory or a "
                "pipeline config JSON file"
            )
        path = Path(text).expanduser()
        if path.is_dir():
            cfg_file = path / CONFIG_FILE
            if not cfg_file.is_file():
                raise ArtifactError(
                    f"{path} is not a saved pipeline (no {CONFIG_FILE}): pass a directory written by "
                    "`tae fit` / AlignmentPipeline.save, or a preset name"
                )
            doc = _read_json(cfg_file, "pipeline config")
            if not isinstance(doc, dict) or "pipeline" not in doc:
                raise ArtifactError(
                    f"{cfg_file} lacks the 'pipeline' entry: save the pipeline again"
                )
            info_file = path / FIT_INFO_FILE
            fit_info = _read_json(info_file, "fit info") if info_file.is_file() else None
            if refit:
                cfg = PipelineConfig.parse(apply_overrides(doc["pipeline"], overrides))
                out = Method(path.name, "config", config=cfg, fit_info=fit_info)
            else:
                other = sorted(set(overrides) - {"intervener"})
                if other:
                    raise ConfigError(
                        f"a saved pipeline is evaluated as fitted, so only the intervener can be "
                        f"changed; overriding {', '.join(other)} needs refitting: pass refit=True "
                        "(--refit) to refit its config on every fold"
                    )
                out = Method(
                    path.name,
                    "saved",
                    saved=path,
                    intervener_overrides=dict(overrides.get("intervener") or {}),
                    fit_info=fit_info,
                )
        elif path.suffix.lower() == ".json" and path.is_file():
            doc = _read_json(path, "pipeline config")
            raw = doc.get("pipeline", doc) if isinstance(doc, dict) else doc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path} does not hold a pipeline config (a JSON object)")
            cfg = PipelineConfig.parse(
                apply_overrides(PipelineConfig.parse(raw).model_dump(), overrides)
            )
            out = Method(path.stem, "config", config=cfg)
        elif path.suffix.lower() == ".json" or text.startswith((".", "/", "~")):
            raise ConfigError(
                f"method {text!r} does not exist: pass a preset name, a saved pipeline directory or "
                "a pipeline config JSON file"
            )
        else:
            try:
                preset = registry.preset(text)
            except UnknownComponentError as exc:
                raise UnknownComponentError(
                    f"{exc}. A method may also be a saved pipeline directory or a pipeline config "
                    f"JSON file; {text!r} is neither"
                ) from None
            cfg = PipelineConfig.parse(apply_overrides(preset.model_dump(), overrides))
            out = Method(text, "preset", config=cfg)
    out.new_pipeline(registry)  # validate every component config now, before any work
    return out


def with_intervener(
    pipe: AlignmentPipeline, updates: Mapping[str, Any], registry: Registry
) -> AlignmentPipeline:
    """A fitted pipeline whose intervener config is updated (e.g. ``{"alpha": 5.0}``).

    The probes, directions and estimator are shared with ``pipe``; only the intervener
    is rebuilt and re-fitted on the same targets (a cheap operation).
    """
    cur = pipe.intervener
    updates = dict(updates)
    new_type = updates.pop("type", cur.name)
    cls = registry.get("intervener", new_type)
    base = cur.config.model_dump() if new_type == cur.name else {}
    unknown = sorted(set(updates) - set(cls.Config.model_fields))
    if unknown:
        raise ConfigError(
            f"intervener '{new_type}' has no config key(s) {', '.join(unknown)} (its keys: "
            f"{', '.join(cls.Config.model_fields)})"
        )
    new = cls({**base, **updates})
    new.fit(pipe.targets_, pipe.estimator)
    out = AlignmentPipeline(
        source=pipe.source,
        aggregator=pipe.aggregator,
        prober=pipe.prober,
        estimator=pipe.estimator,
        intervener=new,
        seed=pipe.config.seed,
        validation_fraction=pipe.config.validation_fraction,
        registry=registry,
    )
    out.fingerprint_ = pipe.fingerprint_
    out.adapter_name_ = pipe.adapter_name_
    out.provenance = dict(pipe.provenance)
    entry = registry.entry("intervener", new_type)
    out.provenance["intervener"] = {"distribution": entry.distribution, "version": entry.version}
    return out


# ====================================================================================
# small helpers
# ====================================================================================
def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return s or "method"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, doc: Any) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(doc, indent=2, sort_keys=False, default=_json_default), encoding="utf-8"
    )
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _chunks(seq: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def _tqdm(enabled: bool, **kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


class _Checkpoint:
    """Per-question rows appended to a JSONL file as soon as they are computed.

    A line cut short by an interruption is dropped (and the file rewritten without
    it) when the checkpoint is opened again.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return
        text = path.read_text(encoding="utf-8")
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
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(
                "".join(json.dumps(r) + "\n" for r in self.rows.values()), encoding="utf-8"
            )
            tmp.replace(path)

    def __contains__(self, qid: str) -> bool:
        return qid in self.rows

    def __getitem__(self, qid: str) -> dict[str, Any]:
        return self.rows[qid]

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()
        for row in rows:
            self.rows[str(row["id"])] = row


# ====================================================================================
# the plan: everything checked before the model is touched
# ====================================================================================
@dataclass
class _Plan:
    cfg: EvalConfig
    registry: Registry
    task: Any
    folds: list[Any]
    method: Method
    judge: Any
    judge_name: str | None
    run_name: str
    tag: str
    run_dir: Path
    _texts: list[str] | None = None

    def texts(self) -> list[str]:
        if self._texts is None:
            from .scoring import load_heldout_texts

            self._texts = load_heldout_texts(
                self.cfg.side_effects_texts, n=self.cfg.side_effects_n, seed=self.cfg.seed
            )
        return self._texts


def _prepare(cfg: EvalConfig, registry: Registry, *, sweep: bool = False) -> _Plan:
    try:
        task = registry.task(cfg.task, **cfg.task_options)
    except TypeError as exc:  # a task factory that does not take an option
        raise ConfigError(
            f"task '{cfg.task}' does not accept the options {sorted(cfg.task_options)} ({exc})"
        ) from None
    all_folds = task.folds()
    if not all_folds:
        raise DataError(f"task '{cfg.task}' has no folds: it needs questions to evaluate")
    wanted = cfg.folds if cfg.folds is not None else list(range(len(all_folds)))
    bad = [k for k in wanted if not 0 <= k < len(all_folds)]
    if bad:
        raise DataError(
            f"fold(s) {bad} do not exist: task '{cfg.task}' has {len(all_folds)} folds "
            f"(0..{len(all_folds) - 1})"
        )
    folds = [all_folds[k] for k in wanted]
    for f in folds:
        if not f.test:
            raise DataError(
                f"fold {f.index} of task '{cfg.task}' has no test questions (test={len(f.test)}, "
                f"train={len(f.train)}, val={len(f.val)}): use more questions or fewer folds"
            )
    if not cfg.mc and not cfg.generation and not cfg.side_effects:
        raise ConfigError(
            "nothing to evaluate: mc, generation and side_effects are all off; enable at least one"
        )
    method = resolve_method(cfg.method, cfg.overrides, registry, refit=cfg.refit or sweep)
    if method.kind == "saved" and method.fit_info is not None:
        _check_no_leak(method, task, folds, cfg.task)
    elif method.kind == "saved":
        warnings.warn(
            f"the saved pipeline {method.saved} carries no {FIT_INFO_FILE}, so the runner cannot "
            "check that it was not fitted on the evaluated questions; make sure it was not "
            "(or pass refit=True / --refit to fit it on every fold)",
            stacklevel=3,
        )
    judge, judge_name = None, None
    if cfg.generation and cfg.judge is not None:
        judge = registry.build("judge", cfg.judge)
        judge_name = cfg.judge.type
        if not judge.metrics:
            raise ConfigError(f"judge '{judge_name}' declares no metrics (its `metrics` is empty)")
        needed = set(getattr(task, "judge_metrics", ()) or ())
        missing = needed - set(judge.metrics)
        if missing:
            warnings.warn(
                f"task '{cfg.task}' is scored with judge metric(s) {sorted(needed)}, but judge "
                f"'{judge_name}' gives {list(judge.metrics)}: {sorted(missing)} will be missing",
                stacklevel=3,
            )
    run_name = cfg.run or f"{_slug(method.name)}-{_slug(cfg.task)}" + ("-sweep" if sweep else "")
    tag = cfg.tag or _slug(method.name)
    return _Plan(
        cfg=cfg,
        registry=registry,
        task=task,
        folds=folds,
        method=method,
        judge=judge,
        judge_name=judge_name,
        run_name=run_name,
        tag=tag,
        run_dir=Path(cfg.out_dir).expanduser() / run_name,
    )


def _check_no_leak(method: Method, task: Any, folds: Sequence[Any], task_name: str) -> None:
    info = method.fit_info or {}
    fitted_on = set(info.get("question_ids") or ())
    if info.get("task") != task_name or not fitted_on:
        return
    for f in folds:
        shared = sorted(fitted_on & set(f.test))
        if shared:
            raise DataError(
                f"the saved pipeline {method.saved} was fitted on {len(shared)} question(s) of fold "
                f"{f.index}'s test set (e.g. {shared[:3]}; it was fitted on fold "
                f"{info.get('fold')}): evaluating it there would leak. Evaluate other folds "
                "(--folds), or pass refit=True (--refit) to fit it on every fold"
            )


# ====================================================================================
# run directory
# ====================================================================================
def _model_identity(model: Any, registry: Registry) -> dict[str, Any]:
    from ..models.base import weights_digest

    adapter = registry.adapter_for(model)
    ident = dict(adapter.fingerprint(model))
    ident["weights_digest"] = weights_digest(model)
    return ident


def _comparable(cfg: EvalConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_COMPARED}


def _open_run_dir(plan: _Plan, identity: dict[str, Any], kind: str, overwrite: bool) -> None:
    run_dir = plan.run_dir
    marker = run_dir / RUN_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory: choose another run name")
    if overwrite and marker.is_file():
        shutil.rmtree(run_dir)
    elif marker.is_file():
        doc = _read_json(marker, "run file")
        diffs = []
        if doc.get("kind") != kind:
            diffs.append(f"kind ({doc.get('kind')} vs {kind})")
        old = doc.get("config", {})
        new = _comparable(plan.cfg)
        diffs += [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        old_model = doc.get("model", {})
        model_diffs = [
            k
            for k in ("model_type", "num_layers", "num_heads", "hidden_size", "weights_digest")
            if old_model.get(k) != identity.get(k)
        ]
        if model_diffs:
            diffs.append("model (" + ", ".join(model_diffs) + ")")
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
    _write_json(
        marker,
        {
            "kind": kind,
            "framework_version": __version__,
            "created": _now(),
            "config": _comparable(plan.cfg),
            "model": identity,
        },
    )


# ====================================================================================
# one fold
# ====================================================================================
def _fit_or_load(
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    fold: Any,
    pipe_dir: Path,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[AlignmentPipeline, bool]:
    """The fold's fitted pipeline: reloaded from ``pipe_dir`` when saved, else fitted and
    saved. Returns ``(pipeline, fitted_now)``."""
    reg = plan.registry
    if not plan.method.refits:
        return plan.method.new_pipeline(reg), False
    if (pipe_dir / CONFIG_FILE).is_file() and (pipe_dir / TENSORS_FILE).is_file():
        return AlignmentPipeline.load(pipe_dir, reg), False
    assert plan.method.config is not None
    cfg = plan.method.config
    if overrides:
        cfg = PipelineConfig.parse(apply_overrides(cfg.model_dump(), overrides))
    pipe = AlignmentPipeline.from_config(cfg, reg)
    data = plan.task.fitting_data(fold)
    pipe.fit(model, tokenizer, data, validation_groups=list(fold.val))
    pipe.save(pipe_dir)
    _write_json(
        pipe_dir / FIT_INFO_FILE,
        {
            "task": plan.cfg.task,
            "task_options": plan.cfg.task_options,
            "fold": fold.index,
            "question_ids": sorted({e.group for e in data.examples}),
            "validation_ids": list(fold.val),
            "created": _now(),
        },
    )
    return pipe, True


_CHECKPOINTS = ("mc.jsonl", "generations.jsonl", "judge.jsonl", "side_effects.json")


def _clear_checkpoints(directory: Path, prefix: str) -> None:
    for name in _CHECKPOINTS:
        (directory / f"{prefix}{name}").unlink(missing_ok=True)


def _items(plan: _Plan, fold: Any) -> list[Any]:
    items = plan.task.eval_items(fold)
    if not items:
        raise DataError(
            f"fold {fold.index} of task '{plan.cfg.task}' has no evaluation items: use more "
            "questions or fewer folds"
        )
    if plan.cfg.mc:
        lacking = [it.id for it in items if not it.has_mc]
        if lacking:
            raise DataError(
                f"task '{plan.cfg.task}': question(s) {lacking[:5]} have no multiple-choice "
                "completions; run without MC scoring (mc=False, --no-mc)"
            )
    if plan.cfg.generation:
        lacking = [it.id for it in items if not it.generation_prompt]
        if lacking:
            raise DataError(
                f"task '{plan.cfg.task}': question(s) {lacking[:5]} have no generation prompt; run "
                "without generation (generation=False, --no-generation)"
            )
    return items


def _evaluate(
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    pipe: AlignmentPipeline | None,
    items: Sequence[Any],
    out: Path,
    prefix: str,
    desc: str,
) -> dict[str, Any]:
    """Evaluate ``pipe`` (None: the unedited model) on ``items``; checkpoints in ``out``.

    Returns ``{"metrics": {name: per-question list or fold-level number}, "records":
    [AnswerRecord], "side_effects": {...} or None}``.
    """
    from .scoring import answer_logprobs, greedy_generate, side_effects

    cfg = plan.cfg
    bs = cfg.batch_size
    metrics: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {it.id: {} for it in items}
    if cfg.mc:
        ck = _Checkpoint(out / f"{prefix}mc.jsonl")
        todo = [it for it in items if it.id not in ck]
        with _tqdm(
            cfg.progress,
            total=len(items),
            initial=len(items) - len(todo),
            desc=f"{desc} MC",
            leave=False,
        ) as bar:
            for chunk in _chunks(todo, bs):
                prompts = [it.mc_prompt for it in chunk for _ in (*it.mc_true, *it.mc_false)]
                comps = [c for it in chunk for c in (*it.mc_true, *it.mc_false)]
                if pipe is not None:
                    scores = pipe.score(model, tokenizer, prompts, comps, batch_size=bs)
                else:
                    scores = answer_logprobs(model, tokenizer, prompts, comps, batch_size=bs)
                flat = scores.tolist()
                rows, pos = [], 0
                for it in chunk:
                    nt, nf = len(it.mc_true), len(it.mc_false)
                    rows.append(
                        {
                            "id": it.id,
                            "true": flat[pos : pos + nt],
                            "false": flat[pos + nt : pos + nt + nf],
                        }
                    )
                    pos += nt + nf
                ck.add(rows)
                bar.update(len(chunk))
        for name in ("MC1", "MC2", "MC3"):
            metrics[name] = []
        for it in items:
            row = ck[it.id]
            for name, v in mc_scores(row["true"], row["false"], it.best_index).items():
                metrics[name].append(v)
            values[it.id].update(scores_true=row["true"], scores_false=row["false"])
    if cfg.generation:
        ck = _Checkpoint(out / f"{prefix}generations.jsonl")
        todo = [it for it in items if it.id not in ck]
        with _tqdm(
            cfg.progress,
            total=len(items),
            initial=len(items) - len(todo),
            desc=f"{desc} generate",
            leave=False,
        ) as bar:
            for chunk in _chunks(todo, bs):
                prompts = [it.generation_prompt for it in chunk]
                if pipe is not None:
                    raw = pipe.generate(
                        model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=bs
                    )
                else:
                    raw = greedy_generate(
                        model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=bs
                    )
                ck.add(
                    [{"id": it.id, "raw": r, "answer": cut_answer(r)} for it, r in zip(chunk, raw)]
                )
                bar.update(len(chunk))
        for it in items:
            values[it.id]["answer"] = ck[it.id]["answer"]
        if plan.judge is not None:
            jk = _Checkpoint(out / f"{prefix}judge.jsonl")
            todo = [it for it in items if it.id not in jk]
            with _tqdm(
                cfg.progress,
                total=len(items),
                initial=len(items) - len(todo),
                desc=f"{desc} judge",
                leave=False,
            ) as bar:
                for chunk in _chunks(todo, bs):
                    probs = plan.judge.score(
                        [it.question for it in chunk], [values[it.id]["answer"] for it in chunk]
                    )
                    rows = []
                    for j, it in enumerate(chunk):
                        rows.append(
                            {
                                "id": it.id,
                                "probs": {m: float(probs[m][j]) for m in plan.judge.metrics},
                            }
                        )
                    jk.add(rows)
                    bar.update(len(chunk))
            threshold = float(plan.judge.threshold)
            for m in plan.judge.metrics:
                metrics[m] = [1.0 if jk[it.id]["probs"][m] >= threshold else 0.0 for it in items]
            for it in items:
                values[it.id]["judge_probs"] = dict(jk[it.id]["probs"])
    se = None
    if cfg.side_effects:
        se_file = out / f"{prefix}side_effects.json"
        if se_file.is_file():
            se = _read_json(se_file, "side effects")
        else:
            edit = (lambda mask: pipe.apply(model, "all")) if pipe is not None else None
            se = side_effects(
                model,
                tokenizer,
                plan.texts(),
                edit=edit,
                max_tokens=cfg.side_effects_max_tokens,
                batch_size=bs,
            )
            _write_json(se_file, se)
        metrics["CE"] = float(se["ce_loss"])
        metrics["KL"] = float(se["kl"])
    records = [AnswerRecord.from_item(it, **values[it.id]) for it in items]
    return {"metrics": metrics, "records": records, "side_effects": se}


def _write_csv(
    path: Path, items: Sequence[Any], records: Sequence[AnswerRecord], tag: str, judge: str | None
) -> Path:
    """The TruthfulQA answer file, or a plain per-question CSV for other tasks."""
    if all("best_answer" in it.meta and "correct_answers" in it.meta for it in items):
        return write_answers(path, records, model=tag, judge=judge or "none")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        metrics = sorted({m for r in records for m in r.judge_probs})
        writer.writerow(["id", "question", "answer", "scores-true", "scores-false", *metrics])
        for it, r in zip(items, records):
            writer.writerow(
                [
                    it.id,
                    it.question,
                    r.answer if r.answer is not None else "",
                    ", ".join(repr(float(x)) for x in (r.scores_true or [])),
                    ", ".join(repr(float(x)) for x in (r.scores_false or [])),
                    *(repr(float(r.judge_probs[m])) if m in r.judge_probs else "" for m in metrics),
                ]
            )
    return path


def _figures(
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    pipe: AlignmentPipeline,
    items: Sequence[Any],
    fold_dir: Path,
    k: int,
) -> dict[str, Any]:
    from ..viz import plot_head_scores, plot_token_strengths, strengths_html, trace_generation

    t = pipe.targets_
    selected = list(zip(t.layers.tolist(), t.units.tolist()))
    files: dict[str, Any] = {}
    files["head_scores"] = str(
        plot_head_scores(
            t.scores,
            selected,
            fold_dir / "head_scores.png",
            title=f"{plan.method.name}, fold {k}: {len(selected)} heads selected",
        ).relative_to(plan.run_dir)
    )
    n = plan.cfg.strength_figures
    chosen = [it for it in items if it.generation_prompt][:n]
    files["strengths"] = []
    for it in chosen:
        trace = trace_generation(
            pipe, model, tokenizer, it.generation_prompt, max_new_tokens=plan.cfg.max_new_tokens
        )
        base = fold_dir / "strengths" / _slug(it.id)
        png = plot_token_strengths(
            trace,
            base.with_suffix(".png"),
            title=f"{plan.method.name}, fold {k}, {it.id}: {it.question[:70]}",
        )
        base.with_suffix(".html").write_text(strengths_html(trace), encoding="utf-8")
        _write_json(
            base.with_suffix(".json"), {"id": it.id, "question": it.question, **trace.to_dict()}
        )
        files["strengths"].append(str(png.relative_to(plan.run_dir)))
    return files


def _run_fold(
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    fold: Any,
    fold_dir: Path,
    *,
    pipe_factory: Callable[[], tuple[AlignmentPipeline, bool]],
    baseline_dir: Path | None,
    figures: bool,
    desc: str,
) -> dict[str, Any]:
    """Evaluate one fold (or one sweep cell) unless its ``fold.json`` exists."""
    marker = fold_dir / FOLD_FILE
    if marker.is_file():
        doc = _read_json(marker, "fold result")
        doc["resumed"] = True
        return doc
    start = time.perf_counter()
    _seed_everything(plan.cfg.seed + fold.index)
    items = _items(plan, fold)
    pipe, fitted_now = pipe_factory()
    if fitted_now:  # checkpoints left by an earlier fit of this fold are stale
        _clear_checkpoints(fold_dir, "")
    result = _evaluate(plan, model, tokenizer, pipe, items, fold_dir, "", desc)
    files: dict[str, Any] = {}
    csv_path = _write_csv(
        fold_dir / "answers.csv", items, result["records"], plan.tag, plan.judge_name
    )
    files["answers"] = str(csv_path.relative_to(plan.run_dir))
    base_metrics = None
    if baseline_dir is not None:
        base_marker = baseline_dir / FOLD_FILE
        if base_marker.is_file() and baseline_dir != fold_dir:
            base_metrics = _read_json(base_marker, "baseline result")["metrics"]
        else:
            base = _evaluate(
                plan, model, tokenizer, None, items, baseline_dir, "baseline_", f"{desc} baseline"
            )
            path = _write_csv(
                baseline_dir / "baseline.csv", items, base["records"], "baseline", plan.judge_name
            )
            files["baseline"] = str(path.relative_to(plan.run_dir))
            base_metrics = base["metrics"]
            if baseline_dir != fold_dir:
                _write_json(
                    base_marker,
                    {
                        "fold": fold.index,
                        "n_questions": len(items),
                        "metrics": base_metrics,
                        "files": files["baseline"],
                    },
                )
    if figures:
        files.update(_figures(plan, model, tokenizer, pipe, items, fold_dir, fold.index))
    t = pipe.targets_
    doc = {
        "fold": fold.index,
        "n_questions": len(items),
        "test_ids": [it.id for it in items],
        "validation_ids": list(fold.val),
        "targets": [[int(a), int(b)] for a, b in zip(t.layers.tolist(), t.units.tolist())],
        "metrics": result["metrics"],
        "baseline": base_metrics,
        "side_effects": result["side_effects"],
        "files": files,
        "fitted_now": fitted_now,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "finished": _now(),
    }
    _write_json(marker, doc)
    doc["resumed"] = False
    return doc


def _aggregate(per_fold: Sequence[Mapping[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """:func:`aggregate_folds`, also when a fold has only fold-level numbers (CE, KL) or
    nothing at all (answers generated but not judged)."""
    if any(isinstance(v, list) for f in per_fold for v in f.values()):
        agg = aggregate_folds(per_fold)
        folds = agg.pop("folds")
        return {"metrics": agg, "folds": folds}
    folds = [
        {**{k: float(v) for k, v in f.items()}, "n_questions": n} for f, n in zip(per_fold, sizes)
    ]
    keys = [k for k in per_fold[0]] if per_fold else []
    metrics: dict[str, Any] = {k: sum(f[k] for f in folds) / len(folds) for k in keys}
    metrics["n_questions"] = int(sum(sizes))
    return {"metrics": metrics, "folds": folds}


# ====================================================================================
# tables
# ====================================================================================
def _cell(value: Any, percent: bool) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4g}"


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]], first: str = "method") -> list[str]:
    cols = [c for c in _TABLE if any(c[0] in m for _, m in rows)]
    head = [first, *(f"{h} (%)" if pct else h for _, h, pct in cols), "questions"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, m in rows:
        cells = [_cell(m.get(key), pct) for key, _, pct in cols]
        lines.append("| " + " | ".join([name, *cells, str(m.get("n_questions", "-"))]) + " |")
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the method (and baseline) table, then one table per fold."""
    model = summary.get("model", {})
    folds = [f["fold"] for f in summary["folds"]]
    lines = [
        f"# {summary['run']}: {summary['method']['name']} on {summary['task']['name']}",
        "",
        (
            f"- model: `{model.get('name') or model.get('name_or_path') or model.get('model_type')}` "
            f"({model.get('model_type')}, {model.get('num_layers')} layers x "
            f"{model.get('num_heads')} heads)"
        ),
        f"- folds: {', '.join(str(k) for k in folds)} ({summary['metrics'].get('n_questions')} test questions)",
        f"- judge: {summary['judge'] or 'none'}; tae-framework {summary['framework_version']}",
        (
            "- MC/True/Info in %, means over folds of per-fold means; True*Info is the product "
            "of the True and Info means; CE/KL on held-out text with every position edited"
        ),
        "",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if summary.get("baseline"):
        rows.append(("baseline (unedited)", summary["baseline"]["metrics"]))
    rows.append((summary["method"]["name"], summary["metrics"]))
    lines += _table(rows)
    lines += ["", "## Per fold", ""]
    fold_rows: list[tuple[str, Mapping[str, Any]]] = []
    for i, f in enumerate(summary["folds"]):
        if summary.get("baseline"):
            fold_rows.append((f"fold {f['fold']} baseline", summary["baseline"]["folds"][i]))
        fold_rows.append((f"fold {f['fold']} {summary['method']['name']}", f["metrics"]))
    lines += _table(fold_rows, first="fold")
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    import transformers

    return {
        "tae_framework": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _model_info(model: Any, identity: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    dtype = None
    try:
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError, TypeError):
        pass
    return {
        "name": name or getattr(cfg, "_name_or_path", "") or None,
        **identity,
        "dtype": dtype,
    }


# ====================================================================================
# run_eval
# ====================================================================================
def run_eval(
    model: Any,
    tokenizer: Any,
    config: EvalConfig | Mapping[str, Any],
    registry: Registry | None = None,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a method through the task's k-fold protocol; write ``<out_dir>/<run>/``.

    Args:
        model, tokenizer: the model to edit and its (fast) tokenizer.
        config: an :class:`EvalConfig` or a dict of its fields.
        registry: components, presets, tasks and judges (default: the installed ones).
        model_name: the model's hub id or path, recorded in the summary.
        overwrite: delete an existing run directory of the same name first.
        extra: more provenance to record (e.g. the command line).

    Returns:
        The summary written to ``summary.json``: ``metrics`` (aggregated), ``folds``
        (per-fold means), ``baseline`` (same, or None), the configuration, versions and
        provenance.
    """
    from ..plugins import default_registry

    cfg = EvalConfig.parse(config)
    reg = registry if registry is not None else default_registry()
    plan = _prepare(cfg, reg)
    return _execute_eval(
        plan, model, tokenizer, model_name=model_name, overwrite=overwrite, extra=extra
    )


def _execute_eval(
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    *,
    model_name: str | None,
    overwrite: bool,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    cfg = plan.cfg
    started = _now()
    identity = _model_identity(model, plan.registry)
    _open_run_dir(plan, identity, "eval", overwrite)
    docs = []
    with _tqdm(cfg.progress, total=len(plan.folds), desc=f"{plan.run_name} folds") as bar:
        for fold in plan.folds:
            fold_dir = plan.run_dir / f"fold{fold.index}"
            pipe_dir = fold_dir / "pipeline"

            def factory(fold=fold, pipe_dir=pipe_dir):
                return _fit_or_load(plan, model, tokenizer, fold, pipe_dir)

            doc = _run_fold(
                plan,
                model,
                tokenizer,
                fold,
                fold_dir,
                pipe_factory=factory,
                baseline_dir=fold_dir if cfg.baseline else None,
                figures=True,
                desc=f"fold {fold.index}",
            )
            bar.set_postfix_str("resumed" if doc["resumed"] else f"{doc['elapsed_s']:.0f}s")
            bar.update(1)
            docs.append(doc)
    sizes = [d["n_questions"] for d in docs]
    method_agg = _aggregate([d["metrics"] for d in docs], sizes)
    baseline = _aggregate([d["baseline"] for d in docs], sizes) if cfg.baseline else None
    summary = {
        "run": plan.run_name,
        "framework_version": __version__,
        "method": plan.method.describe(),
        "task": {"name": cfg.task, "options": cfg.task_options, "n_folds": len(plan.task.folds())},
        "judge": plan.judge_name,
        "model": _model_info(model, identity, model_name),
        "metrics": method_agg["metrics"],
        "folds": [
            {
                "fold": d["fold"],
                "metrics": m,
                "test_ids": d["test_ids"],
                "targets": d["targets"],
                "files": d["files"],
                "resumed": d["resumed"],
            }
            for d, m in zip(docs, method_agg["folds"])
        ],
        "baseline": baseline,
        "config": cfg.model_dump(mode="json"),
        "provenance": {
            "versions": _versions(),
            "pipeline_components": _components_of(plan, docs),
            "judge": _judge_provenance(plan),
            "started": started,
            "finished": _now(),
            **dict(extra or {}),
        },
    }
    _write_json(plan.run_dir / SUMMARY_JSON, summary)
    (plan.run_dir / SUMMARY_MD).write_text(format_summary(summary), encoding="utf-8")
    return summary


def _components_of(plan: _Plan, docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    for d in docs:
        rel = d["files"].get("answers")
        if rel is None:
            continue
        pipe_cfg = plan.run_dir / Path(rel).parent / "pipeline" / CONFIG_FILE
        if pipe_cfg.is_file():
            comps = _read_json(pipe_cfg, "pipeline config").get("components", {})
            return {
                r: {k: c.get(k) for k in ("type", "distribution", "version")}
                for r, c in comps.items()
            }
    if plan.method.saved is not None:
        comps = _read_json(plan.method.saved / CONFIG_FILE, "pipeline config").get("components", {})
        return {
            r: {k: c.get(k) for k in ("type", "distribution", "version")} for r, c in comps.items()
        }
    return {}


def _judge_provenance(plan: _Plan) -> dict[str, Any] | None:
    if plan.judge is None or plan.cfg.judge is None:
        return None
    e = plan.registry.entry("judge", plan.cfg.judge.type)
    return {
        "type": e.name,
        "distribution": e.distribution,
        "version": e.version,
        "config": plan.judge.config.model_dump(mode="json"),
        "metrics": list(plan.judge.metrics),
    }


# ====================================================================================
# run_sweep
# ====================================================================================
def _grid_values(values: Sequence[Any], what: str, cast: Callable[[Any], Any]) -> list[Any]:
    out = []
    for v in values:
        try:
            x = cast(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} value {v!r} is not a number") from None
        if x <= 0:
            raise ConfigError(f"{what} values must be positive, got {v!r}")
        out.append(x)
    if not out:
        raise ConfigError(f"the {what} grid is empty: give at least one value")
    if len(set(out)) != len(out):
        raise ConfigError(f"the {what} grid lists a value twice: {list(values)}")
    return out


def _alpha_name(alpha: float) -> str:
    return f"{alpha:g}"


def run_sweep(
    model: Any,
    tokenizer: Any,
    config: EvalConfig | Mapping[str, Any],
    ks: Sequence[int] = REFERENCE_K,
    alphas: Sequence[float] = REFERENCE_ALPHA,
    registry: Registry | None = None,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every (K, alpha) of a grid through the k-fold protocol; one table.

    K sets ``prober.top_k`` and alpha ``intervener.alpha``. Every K is fitted once per
    fold (saved under ``K<K>/fold<k>/pipeline``); every alpha reuses that fit with a
    rebuilt intervener. Cells are ``K<K>/alpha<a>/fold<k>/`` (answer CSV and fold
    JSON, resumable like :func:`run_eval`); the table is ``sweep.csv`` / ``sweep.md``
    (``sweep.json`` holds every number). Per-token strength figures are not drawn.

    Returns:
        ``{"rows": [{"K", "alpha", metric...}], "baseline": {...} or None, ...}``.
    """
    from ..plugins import default_registry

    cfg = EvalConfig.parse(config)
    reg = registry if registry is not None else default_registry()
    ks = _grid_values(ks, "K", int)
    alphas = _grid_values(alphas, "alpha", float)
    plan = _prepare(cfg, reg, sweep=True)
    base_cfg = plan.method.config
    assert base_cfg is not None
    prober_cls = reg.get("prober", base_cfg.prober.type)
    inter_cls = reg.get("intervener", base_cfg.intervener.type)
    if "top_k" not in prober_cls.Config.model_fields:
        raise ConfigError(
            f"the sweep sets prober.top_k, but prober '{base_cfg.prober.type}' has no top_k "
            f"(its keys: {', '.join(prober_cls.Config.model_fields)})"
        )
    if "alpha" not in inter_cls.Config.model_fields:
        raise ConfigError(
            f"the sweep sets intervener.alpha, but intervener '{base_cfg.intervener.type}' has no "
            f"alpha (its keys: {', '.join(inter_cls.Config.model_fields)})"
        )
    started = _now()
    identity = _model_identity(model, reg)
    _open_run_dir(plan, identity, "sweep", overwrite)
    cells: dict[tuple[int, float], list[dict[str, Any]]] = {(k, a): [] for k in ks for a in alphas}
    baseline_docs: list[dict[str, Any]] = []
    fits = 0
    total = len(plan.folds) * len(ks) * len(alphas)
    with _tqdm(cfg.progress, total=total, desc=f"{plan.run_name} cells") as bar:
        for fold in plan.folds:
            for K in ks:
                fitted: dict[str, AlignmentPipeline] = {}
                pipe_dir = plan.run_dir / f"K{K}" / f"fold{fold.index}" / "pipeline"

                def fitted_pipe(
                    fold=fold, K=K, pipe_dir=pipe_dir, fitted=fitted
                ) -> tuple[AlignmentPipeline, bool]:
                    nonlocal fits
                    if "pipe" not in fitted:
                        pipe, now = _fit_or_load(
                            plan, model, tokenizer, fold, pipe_dir, {"prober": {"top_k": K}}
                        )
                        fits += int(now)
                        fitted["pipe"], fitted["now"] = pipe, now
                    return fitted["pipe"], fitted["now"]

                for alpha in alphas:
                    cell_dir = (
                        plan.run_dir / f"K{K}" / f"alpha{_alpha_name(alpha)}" / f"fold{fold.index}"
                    )

                    def factory(alpha=alpha, fitted_pipe=fitted_pipe):
                        pipe, now = fitted_pipe()  # `now`: a new fit, so old checkpoints are stale
                        return with_intervener(pipe, {"alpha": alpha}, reg), now

                    base_dir = None
                    if cfg.baseline:
                        base_dir = plan.run_dir / "baseline" / f"fold{fold.index}"
                    doc = _run_fold(
                        plan,
                        model,
                        tokenizer,
                        fold,
                        cell_dir,
                        pipe_factory=factory,
                        baseline_dir=base_dir,
                        figures=False,
                        desc=f"fold {fold.index} K={K} alpha={_alpha_name(alpha)}",
                    )
                    cells[(K, alpha)].append(doc)
                    bar.update(1)
            if cfg.baseline:
                baseline_docs.append(
                    _read_json(
                        plan.run_dir / "baseline" / f"fold{fold.index}" / FOLD_FILE,
                        "baseline result",
                    )
                )
    rows = []
    for (K, alpha), docs in cells.items():
        agg = _aggregate([d["metrics"] for d in docs], [d["n_questions"] for d in docs])["metrics"]
        rows.append(
            {
                "K": K,
                "alpha": alpha,
                **{m: agg.get(m) for m in _SWEEP_METRICS},
                "n_questions": agg["n_questions"],
            }
        )
    baseline = (
        _aggregate(
            [d["metrics"] for d in baseline_docs], [d["n_questions"] for d in baseline_docs]
        )["metrics"]
        if cfg.baseline
        else None
    )
    _write_sweep_tables(plan, rows, baseline)
    summary = {
        "run": plan.run_name,
        "framework_version": __version__,
        "method": plan.method.describe(),
        "task": {"name": cfg.task, "options": cfg.task_options},
        "judge": plan.judge_name,
        "model": _model_info(model, identity, model_name),
        "grid": {"K": ks, "alpha": alphas},
        "folds": [f.index for f in plan.folds],
        "rows": rows,
        "baseline": baseline,
        "fits": fits,
        "config": cfg.model_dump(mode="json"),
        "provenance": {
            "versions": _versions(),
            "judge": _judge_provenance(plan),
            "started": started,
            "finished": _now(),
            **dict(extra or {}),
        },
    }
    _write_json(plan.run_dir / "sweep.json", summary)
    return summary


def _write_sweep_tables(
    plan: _Plan, rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None
) -> None:
    cols = ["K", "alpha", *_SWEEP_METRICS, "n_questions"]
    with (plan.run_dir / "sweep.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    pct = {name: p for name, _, p in _TABLE}
    present = [m for m in _SWEEP_METRICS if any(r.get(m) is not None for r in rows)]
    head = ["K", "alpha", *(f"{m} (%)" if pct[m] else m for m in present)]
    lines = [
        f"# {plan.run_name}: K x alpha sweep of {plan.method.name} on {plan.cfg.task}",
        "",
        f"folds: {', '.join(str(f.index) for f in plan.folds)}; MC/True/Info in %",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:"] * len(head)) + "|",
    ]
    if baseline is not None:
        lines.append(
            "| "
            + " | ".join(["-", "0 (baseline)", *(_cell(baseline.get(m), pct[m]) for m in present)])
            + " |"
        )
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [str(r["K"]), _alpha_name(r["alpha"]), *(_cell(r.get(m), pct[m]) for m in present)]
            )
            + " |"
        )
    (plan.run_dir / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ====================================================================================
# command line
# ====================================================================================
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_assignments(
    items: Sequence[str], what: str = "--set", dotted: bool = True
) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` (``role.key=value`` when ``dotted``) into a nested dict.

    Values are parsed as JSON when possible (``8``, ``0.5``, ``true``, ``[1, 2]``,
    ``{"a": 1}``), else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE (e.g. {what} prober.top_k=8)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{what} {item!r} has an empty key")
        value = _parse_value(raw)
        parts = key.split(".") if dotted else [key]
        if any(not p for p in parts):
            raise ConfigError(f"{what} {item!r}: the key {key!r} has an empty part")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{what} {item!r} conflicts with an earlier value of {p!r}")
            node = nxt
        node[parts[-1]] = value
    return out


def _csv_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [cast(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be a comma-separated list of numbers") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="hub id or local directory of a causal LM")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (device_map)")
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model repository's code"
    )


def _add_method_args(p: argparse.ArgumentParser, saved: bool = True) -> None:
    g = p.add_argument_group("method")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--preset", default=None, help="preset name (default: tae)")
    if saved:
        m.add_argument("--pipeline", default=None, help="a saved pipeline directory")
    m.add_argument("--config", default=None, help="a pipeline config JSON file")
    g.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="ROLE.KEY=VALUE",
        help="override a component config value (JSON values), e.g. prober.top_k=8; repeatable",
    )


def _add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", default="truthfulqa", help="task name (default: truthfulqa)")
    g.add_argument(
        "--task-option",
        dest="task_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option, e.g. source=../shared/data/truthful_qa or limit=20; repeatable",
    )


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--judge", default="hf", help="judge name, or 'none' to skip judging (default: hf)"
    )
    g.add_argument(
        "--judge-option",
        dest="judge_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge config value, e.g. dtype=float16; repeatable",
    )
    g.add_argument("--no-mc", action="store_true", help="skip multiple-choice scoring")
    g.add_argument("--no-generation", action="store_true", help="skip generation and judging")
    g.add_argument("--max-new-tokens", type=int, default=50)
    g.add_argument("--side-effects", action="store_true", help="measure CE/KL on held-out texts")
    g.add_argument(
        "--side-effects-texts",
        default=None,
        help="file or hub id of held-out texts (implies --side-effects)",
    )
    g.add_argument("--side-effects-n", type=int, default=100)
    g.add_argument("--side-effects-max-tokens", type=int, default=128)
    g.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", default="results", help="parent folder of run directories")
    g.add_argument("--run", default=None, help="run name (default: <method>-<task>)")
    g.add_argument("--tag", default=None, help="model tag in the answer CSVs")
    g.add_argument("--baseline", action="store_true", help="also evaluate the unedited model")
    g.add_argument("--overwrite", action="store_true", help="start the run directory again")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _method_from_args(args: argparse.Namespace) -> str:
    if getattr(args, "pipeline", None):
        return args.pipeline
    if args.config:
        return args.config
    return args.preset or "tae"


def _eval_config_from_args(args: argparse.Namespace, strength_figures: int) -> EvalConfig:
    judge: Any = args.judge
    if judge.strip().lower() != "none":
        judge = {
            "type": judge,
            "config": parse_assignments(args.judge_options, "--judge-option", dotted=False),
        }
    elif args.judge_options:
        raise ConfigError("--judge-option was given with --judge none")
    side = args.side_effects or args.side_effects_texts is not None
    data: dict[str, Any] = {
        "task": args.task,
        "task_options": parse_assignments(args.task_options, "--task-option", dotted=False),
        "method": _method_from_args(args),
        "overrides": parse_assignments(args.sets),
        "refit": bool(getattr(args, "refit", False)),
        "judge": judge,
        "mc": not args.no_mc,
        "generation": not args.no_generation,
        "max_new_tokens": args.max_new_tokens,
        "side_effects": side,
        "side_effects_n": args.side_effects_n,
        "side_effects_max_tokens": args.side_effects_max_tokens,
        "folds": _csv_list(args.folds, int, "--folds") if args.folds else None,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "out_dir": args.out,
        "run": args.run,
        "tag": args.tag,
        "baseline": args.baseline,
        "strength_figures": strength_figures,
        "progress": not args.no_progress,
    }
    if args.side_effects_texts is not None:
        data["side_effects_texts"] = args.side_effects_texts
    return EvalConfig.parse(data)


def _load(args: argparse.Namespace):
    from ..models.loading import load_model

    return load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )


def _fail(prog: str, exc: BaseException) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``tae eval``: run a method through the k-fold protocol (see :func:`run_eval`)."""
    parser = argparse.ArgumentParser(
        prog="tae eval",
        description="Fit a method on every fold of a task, evaluate it on the fold's test "
        "questions and write results/<run>/ (answer CSVs, summary.json, summary.md, figures). "
        "An interrupted run resumes when started again with the same arguments.",
    )
    _add_model_args(parser)
    _add_method_args(parser)
    parser.add_argument(
        "--refit", action="store_true", help="with --pipeline: refit its config on every fold"
    )
    _add_task_args(parser)
    _add_eval_args(parser)
    parser.add_argument(
        "--strength-figures", type=int, default=3, help="per-token figures per fold (default 3)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print summary.json instead of the table"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    from ..plugins import default_registry

    try:
        cfg = _eval_config_from_args(args, args.strength_figures)
        reg = default_registry()
        plan = _prepare(cfg, reg)
        model, tok = _load(args)
        summary = _execute_eval(
            plan,
            model,
            tok,
            model_name=args.model,
            overwrite=args.overwrite,
            extra={"argv": ["tae", "eval", *argv] if argv is not None else list(sys.argv)},
        )
    except TAEError as exc:
        return _fail("tae eval", exc)
    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
    else:
        print((plan.run_dir / SUMMARY_MD).read_text(encoding="utf-8"))
        print(f"results: {plan.run_dir}")
    return 0


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``tae sweep``: a K x alpha grid through the k-fold protocol (see :func:`run_sweep`)."""
    parser = argparse.ArgumentParser(
        prog="tae sweep",
        description="Evaluate a grid of K (heads edited, prober.top_k) and alpha (strength, "
        "intervener.alpha); every K is fitted once per fold and reused for every alpha. Writes "
        "results/<run>/sweep.csv and sweep.md.",
    )
    _add_model_args(parser)
    _add_method_args(parser)
    _add_task_args(parser)
    _add_eval_args(parser)
    parser.add_argument(
        "--k", default=",".join(str(k) for k in REFERENCE_K), help="comma-separated K values"
    )
    parser.add_argument(
        "--alpha",
        default=",".join(f"{a:g}" for a in REFERENCE_ALPHA),
        help="comma-separated alpha values",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    from ..plugins import default_registry

    try:
        ks = _csv_list(args.k, int, "--k")
        alphas = _csv_list(args.alpha, float, "--alpha")
        cfg = _eval_config_from_args(args, 0)
        reg = default_registry()
        _grid_values(ks, "K", int)
        _grid_values(alphas, "alpha", float)
        _prepare(cfg, reg, sweep=True)  # fail on bad settings before loading the model
        model, tok = _load(args)
        result = run_sweep(
            model,
            tok,
            cfg,
            ks,
            alphas,
            reg,
            model_name=args.model,
            overwrite=args.overwrite,
            extra={"argv": ["tae", "sweep", *argv] if argv is not None else list(sys.argv)},
        )
    except TAEError as exc:
        return _fail("tae sweep", exc)
    run_dir = Path(cfg.out_dir).expanduser() / result["run"]
    print((run_dir / "sweep.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir}")
    return 0


def fit_main(argv: Sequence[str] | None = None) -> int:
    """``tae fit``: fit a preset or config on a model and data; save the pipeline."""
    parser = argparse.ArgumentParser(
        prog="tae fit",
        description="Fit a method on contrast data (a JSONL/CSV file) or on one fold of a task, "
        "and save the fitted pipeline (config.json + tensors.safetensors).",
    )
    _add_model_args(parser)
    _add_method_args(parser, saved=False)
    src = parser.add_argument_group("data").add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        default=None,
        help="contrast data: .jsonl / .csv with prompt, completion, label[, group]",
    )
    src.add_argument("--task", default=None, help="fit on a task's fold (e.g. truthfulqa)")
    parser.add_argument(
        "--task-option",
        dest="task_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option, e.g. source=../shared/data/truthful_qa; repeatable",
    )
    parser.add_argument(
        "--fold", type=int, default=0, help="with --task: the fold to fit on (default 0)"
    )
    parser.add_argument("--out", required=True, help="directory to save the pipeline to")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing pipeline in --out"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    from ..plugins import default_registry

    try:
        reg = default_registry()
        out = Path(args.out).expanduser()
        if (out / CONFIG_FILE).exists() and not args.overwrite:
            raise ConfigError(f"{out} already holds a pipeline: pass --overwrite or another --out")
        method = resolve_method(_method_from_args(args), parse_assignments(args.sets), reg)
        options = parse_assignments(args.task_options, "--task-option", dotted=False)
        if options and args.task is None:
            raise ConfigError("--task-option needs --task")
        task = fold = None
        if args.task is not None:
            task = reg.task(args.task, **options)
            fold = task.fold(args.fold)
            data = task.fitting_data(fold)
        else:
            from ..data import ContrastDataset

            data = ContrastDataset.load(args.data)
        model, tok = _load(args)
        pipe = method.new_pipeline(reg)
        _seed_everything(pipe.config.seed)
        start = time.perf_counter()
        if fold is not None:
            pipe.fit(model, tok, data, validation_groups=list(fold.val))
        else:
            pipe.fit(model, tok, data)
        pipe.save(out)
        _write_json(
            out / FIT_INFO_FILE,
            {
                "task": args.task,
                "task_options": options,
                "fold": None if fold is None else fold.index,
                "data": args.data,
                "question_ids": sorted({e.group for e in data.examples if e.group is not None})
                if fold is not None
                else [],
                "validation_ids": [] if fold is None else list(fold.val),
                "model": args.model,
                "created": _now(),
            },
        )
    except TAEError as exc:
        return _fail("tae fit", exc)
    t = pipe.targets_
    heads = ", ".join(f"L{a}H{b}" for a, b in zip(t.layers.tolist(), t.units.tolist()))
    print(f"fitted {method.name} on {len(data)} examples in {time.perf_counter() - start:.1f}s")
    print(f"edited heads ({t.num_targets}): {heads}")
    print(f"saved to {out}")
    return 0


def generate_main(argv: Sequence[str] | None = None) -> int:
    """``tae generate``: apply a saved pipeline to prompts (optionally per-token strengths)."""
    parser = argparse.ArgumentParser(
        prog="tae generate",
        description="Generate greedily with a saved pipeline's edits on the last position.",
    )
    _add_model_args(parser)
    parser.add_argument("--pipeline", required=True, help="a saved pipeline directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="intervener.KEY=VALUE",
        help="change the intervener config, e.g. intervener.alpha=5",
    )
    parser.add_argument(
        "--unedited", action="store_true", help="also print the unedited model's output"
    )
    parser.add_argument(
        "--show-strengths", action="store_true", help="print each token's edit strength (and p, u)"
    )
    parser.add_argument(
        "--figure",
        default=None,
        help="with --show-strengths: write the figure here (.png; .html also written)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    from ..plugins import default_registry
    from ..viz import plot_token_strengths, strengths_html, trace_generation

    try:
        if args.max_new_tokens < 1:
            raise ConfigError("--max-new-tokens must be at least 1")
        reg = default_registry()
        method = resolve_method(args.pipeline, parse_assignments(args.sets), reg)
        if method.kind != "saved":
            raise ConfigError(f"--pipeline {args.pipeline!r} is not a saved pipeline directory")
        pipe = method.new_pipeline(reg)
        model, tok = _load(args)
        outputs = pipe.generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens)
        plain = (
            pipe.generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, edit=False)
            if args.unedited
            else None
        )
        for i, (prompt, text) in enumerate(zip(args.prompt, outputs)):
            print(f"=== prompt {i}: {prompt!r}")
            print(f"edited: {text}")
            if plain is not None:
                print(f"unedited: {plain[i]}")
            if args.show_strengths:
                trace = trace_generation(
                    pipe, model, tok, prompt, max_new_tokens=args.max_new_tokens
                )
                print(f"{'token':>16}  {'strength':>9}  {'p':>6}  {'u':>6}")
                for tok_text, s, p, u in zip(trace.tokens, trace.strength, trace.p, trace.u):
                    ps = "-" if p is None else f"{p:.3f}"
                    us = "-" if u is None else f"{u:.3f}"
                    print(f"{tok_text!r:>16}  {s:9.3f}  {ps:>6}  {us:>6}")
                if args.figure:
                    fig = Path(args.figure)
                    if len(args.prompt) > 1:
                        fig = fig.with_name(f"{fig.stem}-{i}{fig.suffix or '.png'}")
                    png = plot_token_strengths(trace, fig)
                    png.with_suffix(".html").write_text(strengths_html(trace), encoding="utf-8")
                    print(f"figure: {png}")
    except TAEError as exc:
        return _fail("tae generate", exc)
    return 0
