"""``logistic``: one logistic-regression probe per (layer, unit), top-K by accuracy.

This is the head selection of ITI and TAE (method page, section 3):

1. For every (layer, unit), an L2 logistic regression on the unit's slice of the
   train texts' features (label 1 = aligned / true answer).
2. Every probe is scored by its accuracy on the validation set: on the validation
   answers' token-level activations (``rank_on="tokens"``, TAE's reference) or on
   the validation features (``rank_on="features"``, ITI).
3. The K best (layer, unit) pairs are edited, each along a unit direction: the
   "center of mass" (mean feature of aligned texts minus mean of misaligned texts,
   over train + validation texts) or the probe's normalised weight vector.

Ranking is deterministic: higher accuracy first; ties (common: many heads reach
accuracy 1.0 on easy data) are broken by the validation separation d' of the probe's
decision values (``tie_break="separation"``), then by the lower (layer, unit) index.
The reference code instead orders ties by an unstable argsort; we document ours.

The two solvers (scikit-learn's lbfgs per unit, exactly the reference, or a batched
Newton solver in torch) and their speed are described in
:mod:`tae_framework.probers.solvers`.

Learned state is plain tensors (no sklearn objects): see :class:`LogisticProber`.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from ..config import ComponentConfig
from ..errors import ConfigError, DataError
from ..types import EditTargets, ProbeInputs, check_finite
from .base import Prober
from .solvers import fit_probes_sklearn, fit_probes_torch

__all__ = ["LogisticConfig", "LogisticProber", "fit_probes_sklearn", "fit_probes_torch"]


class LogisticConfig(ComponentConfig):
    """Options of the ``logistic`` prober."""

    top_k: int = Field(
        default=16,
        ge=1,
        description="Number K of (layer, unit) pairs to edit: the K best-ranked probes. "
        "TAE uses 16 on Llama-3-8B, ITI 48 on 7B models. Must not exceed layers x units.",
    )
    rank_on: Literal["tokens", "features"] = Field(
        default="tokens",
        description="What the probes' validation accuracy is measured on: `tokens` = every "
        "answer token of the validation texts, labelled with its answer's label (TAE's "
        "reference; the pipeline then captures token-level validation activations); "
        "`features` = the validation texts' aggregated features (ITI).",
    )
    direction: Literal["center_of_mass", "probe"] = Field(
        default="center_of_mass",
        description="Edit direction of a selected unit: `center_of_mass` = mean feature of "
        "aligned texts minus mean of misaligned texts over train + validation texts; `probe` "
        "= the probe's weight vector. Either is normalised to unit length.",
    )
    solver: Literal["sklearn", "torch"] = Field(
        default="sklearn",
        description="`sklearn`: scikit-learn LogisticRegression (lbfgs) per unit, as the "
        "reference; `torch`: batched Newton solver for many units at once on the features' "
        "device (fast on a GPU). Both minimise the same L2-regularised log-loss.",
    )
    max_iter: int = Field(
        default=1000,
        ge=1,
        description="Iteration cap of each probe's solver (lbfgs iterations for `sklearn`, "
        "Newton iterations for `torch`).",
    )
    C: float = Field(
        default=1.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Inverse L2 regularisation strength, as scikit-learn's `C`: the objective "
        "is C * sum(log-loss) + ||w||^2 / 2 (intercept not penalised).",
    )
    n_jobs: int = Field(
        default=-1,
        description="joblib workers for the `sklearn` solver (-1 = all CPUs, 1 = serial; "
        "fewer than 64 units are always fitted serially). Ignored by `torch`.",
    )
    parallel_backend: Literal["loky", "threading"] = Field(
        default="loky",
        description="joblib backend for the `sklearn` solver. `loky` (processes) runs lbfgs "
        "truly in parallel; `threading` avoids process start-up but lbfgs holds the GIL most "
        "of the time, so it rarely helps.",
    )
    torch_units_per_batch: int = Field(
        default=256,
        ge=1,
        description="`torch` solver: units solved together in one batch. Memory is about "
        "12 * units * n_train * (d + 1) bytes plus 12 * units * (d + 1)^2 for the Hessians.",
    )
    tie_break: Literal["separation", "none"] = Field(
        default="separation",
        description="How probes with equal validation accuracy are ordered: `separation` = "
        "larger validation d' first (|mean1 - mean0| / pooled std of the probe's decision "
        "values on the ranking data), then lower (layer, unit); `none` = lower (layer, unit).",
    )
    seed: int | None = Field(
        default=None,
        description="Seed passed to every probe (`random_state`); `None` uses the "
        "pipeline's seed (ProbeInputs.seed).",
    )

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("n_jobs=0 is not a number of workers: use 1 (serial) or -1 (all CPUs)")
        return value


# --------------------------------------------------------------------------------------
# the prober
# --------------------------------------------------------------------------------------


def _labels(t: torch.Tensor, what: str, length: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != length:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"{what} must be a 1-d tensor of length {length} (one per row), got {got}")
    if t.is_floating_point():
        check_finite(t, what)
    values = t.to(torch.float64)
    if not bool(((values == 0) | (values == 1)).all()):
        bad = sorted(
            {float(v) for v in values[(values != 0) & (values != 1)].unique()[:5].tolist()}
        )
        raise DataError(f"{what} must be 0 (misaligned) or 1 (aligned), found values {bad}")
    return values.to(torch.int64).cpu()


def _mask(t: torch.Tensor, what: str, length: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != length:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"{what} must be a 1-d boolean tensor of length {length}, got {got}")
    if t.dtype != torch.bool:
        raise DataError(f"{what} must be a boolean tensor (got dtype {t.dtype}); use `mask.bool()`")
    return t.cpu()


def _separation(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d' of decision values ``z [M, H]`` between labels ``y [M]``: ``[H]`` float64.

    ``|mean1 - mean0| / sqrt((n1 var1 + n0 var0) / (n1 + n0))`` (population variances).
    Zero spread with distinct means gives +inf; both zero give 0.
    """
    pos, neg = z[y == 1], z[y == 0]
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        return torch.zeros(z.shape[1], dtype=torch.float64)
    diff = (pos.mean(0) - neg.mean(0)).abs()
    pooled = pos.var(0, unbiased=False) * pos.shape[0] + neg.var(0, unbiased=False) * neg.shape[0]
    std = (pooled / z.shape[0]).sqrt()
    sep = diff / std
    sep = torch.where(std > 0, sep, torch.where(diff > 0, math.inf, 0.0))
    return sep


class LogisticProber(Prober):
    """Logistic-regression probes per (layer, unit); top-K by validation accuracy.

    Learned attributes (all tensors on the CPU, saved without pickle):
        ``feature_accuracy_`` ``[L, U]``: each probe's accuracy on the validation features.
        ``token_accuracy_`` ``[L, U]``: accuracy on the validation tokens, or ``None``
            when no token-level activations were given.
        ``separation_`` ``[L, U]``: validation d' of each probe on the ranking data.
        ``scores_`` ``[L, U]``: the ranking metric used (one of the accuracies).
        ``ranking_`` ``[L * U, 2]``: every (layer, unit), best first.
        ``probe_coef_`` ``[K, d]`` and ``probe_intercept_`` ``[K]``: the selected probes,
            in target order (decision value ``x @ coef + intercept``, > 0 = aligned).
        ``targets_``: :class:`~tae_framework.types.EditTargets` with unit directions and
            ``sigmas = 1`` until :meth:`calibrate`. Its ``site`` is ``"heads"``; the
            pipeline, which knows the capture site, overwrites it.

    Example:
        >>> import torch
        >>> from tae_framework.probers.logistic import LogisticProber
        >>> from tae_framework.types import ProbeInputs
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> x = torch.randn(40, 2, 3, 4, generator=g)
        >>> x[:, 1, 2, 0] += 4 * y  # layer 1, unit 2 carries the label
        >>> train = torch.arange(40) < 30
        >>> inputs = ProbeInputs(x, y, torch.arange(40), train, ~train)
        >>> prober = LogisticProber(top_k=1, rank_on="features").fit(inputs)
        >>> prober.targets_.layers.tolist(), prober.targets_.units.tolist()
        ([1], [2])
    """

    name: ClassVar[str] = "logistic"
    Config: ClassVar[type[ComponentConfig]] = LogisticConfig

    @property
    def needs_token_validation(self) -> bool:
        return self.config.rank_on == "tokens"

    # -- fit ---------------------------------------------------------------------------
    def fit(self, inputs: ProbeInputs) -> LogisticProber:
        cfg: LogisticConfig = self.config  # type: ignore[assignment]
        feats, labels, train, val = self._check_inputs(inputs)
        _, num_layers, num_units, dim = feats.shape
        heads = num_layers * num_units
        if cfg.top_k > heads:
            raise ConfigError(
                f"logistic prober: top_k={cfg.top_k} exceeds the {heads} (layer, unit) pairs "
                f"available ({num_layers} layers x {num_units} units); lower top_k to at most {heads}"
            )
        tokens, token_labels = self._check_tokens(inputs, feats.shape)
        seed = int(cfg.seed if cfg.seed is not None else inputs.seed)

        # 1. probes on the train texts: [H, n_train, d] designs
        y_train = labels[train]
        x_train = feats[train.to(feats.device)].reshape(-1, heads, dim).transpose(0, 1)
        coef, intercept = self._solve(x_train, y_train, seed)  # float64 CPU [H, d], [H]

        # 2. validation accuracy (and d') per probe
        val_feats = feats[val.to(feats.device)]
        z_feat = self._decision(val_feats, coef, intercept)
        feature_acc = self._accuracy(z_feat, labels[val])
        token_acc = None
        z_tok = None
        if tokens is not None:
            z_tok = self._decision(tokens, coef, intercept)
            token_acc = self._accuracy(z_tok, token_labels)
        if cfg.rank_on == "tokens":
            scores, z_rank, y_rank = token_acc, z_tok, token_labels
        else:
            scores, z_rank, y_rank = feature_acc, z_feat, labels[val]
        assert scores is not None and z_rank is not None and y_rank is not None
        separation = _separation(z_rank, y_rank)
        if cfg.tie_break == "separation" and bool((y_rank == y_rank[0]).all()):
            warnings.warn(
                f"logistic prober: the ranking data ({cfg.rank_on}) holds only label "
                f"{int(y_rank[0])}, so separation cannot break accuracy ties; ties are ordered "
                "by (layer, unit). Put both labels in the validation split.",
                stacklevel=2,
            )

        # 3. deterministic top-K: accuracy desc, [separation desc], flat index asc
        flat = np.arange(heads)
        keys: list[np.ndarray] = [flat]
        if cfg.tie_break == "separation":
            keys.append(-separation.numpy())
        keys.append(-scores.numpy())
        order = torch.from_numpy(np.lexsort(keys).astype(np.int64))
        top = order[: cfg.top_k]
        layers_k, units_k = top // num_units, top % num_units

        # 4. unit directions of the selected units
        if cfg.direction == "center_of_mass":
            fit_rows = (train | val).to(feats.device)
            sel = feats[fit_rows][:, layers_k.to(feats.device), units_k.to(feats.device)]
            sel = sel.to(torch.float64).cpu()  # [n_fit, K, d]
            y_fit = labels[train | val]
            raw = sel[y_fit == 1].mean(0) - sel[y_fit == 0].mean(0)
            what = "mean difference of the two labels"
        else:
            raw = coef[top]
            what = "probe weight vector"
        norms = raw.norm(dim=-1)
        for k in range(cfg.top_k):
            if not bool(norms[k] > 0):
                raise DataError(
                    f"logistic prober: the {what} of layer {int(layers_k[k])}, unit "
                    f"{int(units_k[k])} is zero, so it has no direction; the features of this "
                    "unit do not differ between labels. Check the features (all identical?) or "
                    "use the other `direction` option"
                )
        directions = (raw / norms.unsqueeze(-1)).to(torch.float32)

        self.feature_accuracy_ = feature_acc.reshape(num_layers, num_units).float()
        self.token_accuracy_ = (
            None if token_acc is None else token_acc.reshape(num_layers, num_units).float()
        )
        self.separation_ = separation.reshape(num_layers, num_units).float()
        self.scores_ = scores.reshape(num_layers, num_units).float()
        self.ranking_ = torch.stack([order // num_units, order % num_units], dim=1)
        self.probe_coef_ = coef[top].to(torch.float32)
        self.probe_intercept_ = intercept[top].to(torch.float32)
        self.targets_ = EditTargets(
            site="heads",
            layers=layers_k.clone(),
            units=units_k.clone(),
            directions=directions,
            sigmas=torch.ones(cfg.top_k, dtype=torch.float32),
            scores=self.scores_.clone(),
            unit_dim=dim,
        )
        return self

    # -- helpers -----------------------------------------------------------------------
    def _check_inputs(self, inputs: ProbeInputs):
        if not isinstance(inputs, ProbeInputs):
            raise DataError(
                f"logistic prober: fit expects ProbeInputs, got {type(inputs).__name__}"
            )
        feats = inputs.features
        if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or not feats.is_floating_point():
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise DataError(
                f"logistic prober: features must be a float tensor [N, L, U, d] (texts, layers, "
                f"units, unit size), got {got}; reshape [N, L, D] features to [N, L, U, D // U]"
            )
        if min(feats.shape) == 0:
            raise DataError(f"logistic prober: features of shape {tuple(feats.shape)} are empty")
        check_finite(feats, "logistic prober: features")
        if feats.dtype not in (torch.float32, torch.float64):
            feats = feats.float()  # bf16/fp16 captures: probes are fitted in float64 anyway
        num = feats.shape[0]
        labels = _labels(inputs.labels, "logistic prober: labels", num)
        train = _mask(inputs.train_mask, "logistic prober: train_mask", num)
        val = _mask(inputs.val_mask, "logistic prober: val_mask", num)
        if not bool(train.any()):
            raise DataError(
                "logistic prober: the train set is empty (train_mask selects no text); the "
                "probes need training texts"
            )
        if not bool(val.any()):
            raise DataError(
                "logistic prober: the validation set is empty (val_mask selects no text); heads "
                "are ranked on validation data: hold out some groups (validation_fraction > 0)"
            )
        overlap = int((train & val).sum())
        if overlap:
            raise DataError(
                f"logistic prober: train_mask and val_mask overlap on {overlap} texts; the "
                "validation texts must be held out from probe training"
            )
        classes = sorted(set(labels[train].tolist()))
        if len(classes) < 2:
            raise DataError(
                f"logistic prober: the train texts all have label {classes[0]}; the probes need "
                "both labels (aligned = 1 and misaligned = 0) among the training texts"
            )
        return feats, labels, train, val

    def _check_tokens(self, inputs: ProbeInputs, shape: torch.Size):
        tokens, token_labels = inputs.val_tokens, inputs.val_token_labels
        if tokens is None:
            if self.config.rank_on == "tokens":
                raise DataError(
                    "logistic prober: rank_on='tokens' ranks heads on token-level validation "
                    "activations, but ProbeInputs.val_tokens is None; let the pipeline capture "
                    "them (it does when needs_token_validation is True) or set "
                    "rank_on='features'"
                )
            return None, None
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.ndim != 4
            or tuple(tokens.shape[1:]) != tuple(shape[1:])
        ):
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise DataError(
                f"logistic prober: val_tokens must be [M, {shape[1]}, {shape[2]}, {shape[3]}] "
                f"(same layers/units/size as the features), got {got}"
            )
        if tokens.shape[0] == 0:
            raise DataError(
                "logistic prober: val_tokens holds no tokens; the validation answers must have "
                "at least one token each, or set rank_on='features'"
            )
        if token_labels is None:
            raise DataError(
                "logistic prober: val_tokens is given without val_token_labels; pass each "
                "token's answer label"
            )
        check_finite(tokens, "logistic prober: val_tokens")
        token_labels = _labels(token_labels, "logistic prober: val_token_labels", tokens.shape[0])
        return tokens, token_labels

    def _solve(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int):
        cfg: LogisticConfig = self.config  # type: ignore[assignment]
        heads = x_train.shape[0]
        if cfg.solver == "torch":
            coef, intercept, iters = fit_probes_torch(
                x_train,
                y_train,
                max_iter=cfg.max_iter,
                C=cfg.C,
                units_per_batch=cfg.torch_units_per_batch,
            )
            coef, intercept, iters = coef.cpu(), intercept.cpu(), iters.cpu()
        else:
            x_np = np.ascontiguousarray(x_train.detach().cpu().numpy())
            c, b, it = fit_probes_sklearn(
                x_np,
                y_train.numpy(),
                seed=seed,
                max_iter=cfg.max_iter,
                C=cfg.C,
                n_jobs=cfg.n_jobs,
                backend=cfg.parallel_backend,
            )
            coef, intercept, iters = torch.from_numpy(c), torch.from_numpy(b), torch.from_numpy(it)
        stuck = int((iters >= cfg.max_iter).sum())
        if stuck:
            warnings.warn(
                f"logistic prober: {stuck} of {heads} probes did not converge within "
                f"max_iter={cfg.max_iter} ({cfg.solver} solver); raise max_iter or standardise "
                "the features",
                stacklevel=3,
            )
        return coef.to(torch.float64), intercept.to(torch.float64)

    @staticmethod
    def _decision(x: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
        """Decision values ``[M, H]`` (float64, CPU) of every probe on rows ``x [M, L, U, d]``."""
        rows = x.shape[0]
        heads, dim = coef.shape
        w = coef.to(x.device)
        out = torch.empty(rows, heads, dtype=torch.float64)
        step = max(1, (1 << 24) // max(1, heads * dim))  # bound the float64 copy
        for a in range(0, rows, step):
            chunk = x[a : a + step].reshape(-1, heads, dim).to(torch.float64)
            out[a : a + step] = torch.einsum("mhd,hd->mh", chunk, w).cpu()
        return out + intercept

    @staticmethod
    def _accuracy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Share of rows whose predicted label (``z > 0``, as sklearn's predict) equals ``y``."""
        correct = ((z > 0).to(torch.int64) == y.unsqueeze(-1)).sum(0)
        return correct.to(torch.float64) / z.shape[0]
