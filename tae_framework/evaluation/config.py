"""What a run evaluates: :class:`EvalConfig` (``tae eval`` / ``tae sweep`` options)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import ComponentSpec, format_validation_error
from ..errors import ConfigError

__all__ = ["NOT_COMPARED", "EvalConfig"]

#: Settings that do not change results: a run may resume with other values.
NOT_COMPARED = ("folds", "progress", "out_dir", "run", "batch_size", "strength_figures")


class EvalConfig(BaseModel):
    """What ``tae eval`` (and :func:`~tae_framework.evaluation.runner.run_eval`) runs.
    Frozen; unknown keys are errors.

    The task decides what is measured (its protocols) and reported (its metrics); the
    switches here turn protocol kinds on or off and change protocol options.
    """

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
    judge: ComponentSpec | None | str = Field(
        default="task",
        description="Judge of the generations (`{type, config}`; a name is enough); `task`: the "
        "task's default judge; None or `none`: generations are written but not judged.",
    )
    mc: bool = Field(default=True, description="Run the task's multiple-choice protocols.")
    generation: bool = Field(default=True, description="Run the task's generation protocols and judge them.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Generation length of every generation protocol; None: the task's."
    )
    side_effects: bool = Field(
        default=False,
        description="Also run the task's side-effect protocols (CE loss and KL on held-out text).",
    )
    side_effects_texts: str | None = Field(
        default=None,
        description="Held-out texts: a hub dataset id or a .txt/.jsonl/.csv/.parquet file; None: "
        "the task's own, else the reference's OpenWebText sample.",
    )
    side_effects_n: int | None = Field(default=None, ge=1, description="Number of held-out texts (default 100).")
    side_effects_max_tokens: int | None = Field(
        default=None, ge=2, description="Tokens kept of each held-out text (default 128)."
    )
    protocol_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per protocol key of the task, e.g. `{generation: {num_samples: 25}}`; "
        "the key `*` applies to every protocol that has the option.",
    )
    folds: list[int] | None = Field(default=None, description="Folds to run; None: all.")
    batch_size: int = Field(default=8, ge=1, description="Texts per forward pass (and items per checkpoint).")
    seed: int = Field(
        default=42,
        description="Seeds Python, NumPy and torch at the start of every fold (seed + k); "
        "sampled generations are seeded per item from it.",
    )
    out_dir: str = Field(default="results", description="Parent folder of run directories.")
    run: str | None = Field(default=None, description="Run directory name; None: `<method>-<task>`.")
    tag: str | None = Field(
        default=None, description="Model tag in the answer files (no spaces); None: the method name."
    )
    baseline: bool = Field(default=False, description="Also evaluate the unedited model.")
    strength_figures: int = Field(
        default=3,
        ge=0,
        description="Per-token strength figures for this many test items per fold.",
    )
    progress: bool = Field(default=True, description="Show progress bars.")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_name(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        if isinstance(value, str) and value.strip() == "task":
            return "task"
        if isinstance(value, str):
            return {"type": value.strip()}
        return value

    @field_validator("run", "tag")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() or re.search(r"[\s/\\]", value) or value in (".", ".."):
            raise ValueError(f"{value!r} must be a non-empty name without spaces or path separators")
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

    def comparable(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it resumes."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_COMPARED}
