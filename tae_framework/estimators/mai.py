"""TAE's token-level misalignment estimator (p) and logit-lens uncertainty (u)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..backends.base import ForwardContext
from ..config import ComponentConfig
from ..errors import ConfigError, DataError
from ..plan import LayerProbe, ProbeLensSignals
from ..types import EditTargets, EstimatorInputs, check_finite
from .base import MisalignmentEstimator, SignalRuntime

__all__ = ["MAIRuntime", "TokenMisalignmentEstimator", "token_labels"]

#: Per-head fits run in parallel (joblib) only from this many feature values over all
#: heads (K * tokens * d) on: below it the serial, single-threaded fits take about a
#: second or less, less than starting worker processes.
_MIN_VALUES_FOR_PARALLEL_FIT = 1 << 22


def token_labels(
    false_ids: torch.Tensor,
    true_answers: list[torch.Tensor],
    match: Literal["positions", "ids"] = "positions",
) -> torch.Tensor:
    """Label each token of a false answer: 1 if its id is absent from the matching true answer.

    The matching true answer is the one that overlaps the false answer most (the first
    one on ties), counted by ``match``:

    * ``"positions"`` (default, the reference code's count): the number of positions of
      the false answer whose id occurs in the true answer, so a shared token that the
      false answer repeats counts each time. It picks the true answer that leaves the
      fewest tokens labelled misaligned.
    * ``"ids"``: the number of distinct ids the two answers share.

    Works on token ids only, so it is independent of the tokenizer.
    """
    if not true_answers:
        raise DataError("token_labels needs at least one true answer to compare the false answer with")
    if match not in ("positions", "ids"):
        raise DataError(f"token_labels: match must be 'positions' or 'ids', got {match!r}")
    false_list = false_ids.tolist()
    false_set = set(false_list)
    if match == "ids":
        overlaps = [len(false_set & set(t.tolist())) for t in true_answers]
    else:
        overlaps = [sum(i in ts for i in false_list) for ts in (set(t.tolist()) for t in true_answers)]
    best = true_answers[int(np.argmax(overlaps))]  # argmax returns the first maximum
    best_set = torch.as_tensor(sorted(set(best.tolist())), dtype=false_ids.dtype)
    return (~torch.isin(false_ids, best_set)).long()


class TokenMisalignmentEstimator(MisalignmentEstimator):
    """Per-head logistic regressions predicting whether the next token is misaligned,
    plus the logit-lens uncertainty of the residual stream entering each edited layer.

    Training data: the misaligned (label 0) fitting answers of the train groups; a
    token is misaligned when its id does not occur in the group's aligned answer that
    overlaps it most. Features are the head activations one position earlier.

    At inference the probes of all heads of a layer run as one batched product (no
    scikit-learn in the forward pass).
    """

    name = "mai"

    class Config(ComponentConfig):
        C: float = Field(default=1.0, gt=0, description="Inverse L2 strength of the logistic regressions.")
        max_iter: int = Field(default=1000, ge=1, description="Solver iterations per head.")
        lens: Literal["exact", "shared", "off"] = Field(
            default="exact",
            description="Uncertainty u: `exact` = a logit lens on the residual stream entering every "
            "edited layer; `shared` = one lens at the first edited layer, reused by the later ones "
            "(cheaper, exact only where u does not change with depth: see the benchmarks page); "
            "`off` = no u.",
        )
        gain: float | None = Field(
            default=None, description="Logit gain of the entropy (default: the reference's constant)."
        )
        lens_final_norm: bool = Field(
            default=False,
            description="Apply the model's final norm before the lens (the reference does not).",
        )
        lens_dtype: Literal["model", "float16", "bfloat16"] = Field(
            default="model",
            description="Precision of the unembedding the lens projects with. `model` = the "
            "model's own output layer (exact). `float16` / `bfloat16` = a copy of its weights in "
            "that dtype, made once when the edits are bound and used only by the lens: half the "
            "weight bytes read per edited layer, which is what a decode step's lens costs on a "
            "GPU (memory-bound). Costs V x hidden x 2 bytes of memory, and saves time only where "
            "the device computes in half precision natively (GPUs; on an AVX2-only CPU it is "
            "slower than `model`). `float16` moved u by at most 3e-5 on the shipped organism and "
            "by 2.5e-4 on average (1.1e-3 at most) on a random model, mostly from rounding the "
            "logits to float16 (see the benchmarks page); `bfloat16` is coarser.",
        )
        n_jobs: int = Field(
            default=-1,
            description="joblib workers for the per-head fits (-1 = all CPUs, 1 = serial). Heads are "
            "fitted in parallel only when the problem is large (at least 2**22 feature values over all "
            "heads); smaller problems are fitted serially, where starting workers would cost more. "
            "Every fit runs with BLAS/OpenMP limited to one thread, so the coefficients do not "
            "depend on this setting.",
        )
        parallel_backend: Literal["loky", "threading"] = Field(
            default="loky",
            description="joblib backend of the parallel per-head fits: `loky` (processes) runs "
            "lbfgs truly in parallel; `threading` avoids process start-up but lbfgs holds the GIL "
            "much of the time.",
        )
        label_match: Literal["positions", "ids"] = Field(
            default="positions",
            description="How a misaligned answer's closest aligned answer is chosen for token "
            "labels: `positions` = most positions whose token occurs in it (the reference's "
            "count; repeated tokens count each time), `ids` = most distinct shared token ids.",
        )

    # -- fit -------------------------------------------------------------------------
    def fit(self, inputs: EstimatorInputs) -> TokenMisalignmentEstimator:
        from ..probers.logistic import fit_probes_sklearn

        targets = inputs.targets
        aligned: dict[int, list[torch.Tensor]] = defaultdict(list)
        for s in inputs.sequences:
            if s.label == 1:
                aligned[s.group].append(s.token_ids)
        feats, labels, skipped = [], [], []
        for s in inputs.sequences:
            if s.label != 0 or s.features is None:
                continue
            if not aligned.get(s.group):
                skipped.append(s.group)
                continue
            y = token_labels(s.token_ids, aligned[s.group], self.config.label_match)
            if s.features.shape[0] != y.numel():
                raise DataError(
                    f"estimator: a sequence of group {s.group} has {y.numel()} tokens but "
                    f"{s.features.shape[0]} feature rows"
                )
            feats.append(s.features.float())
            labels.append(y)
        if skipped:
            warnings.warn(
                f"estimator 'mai': {len(skipped)} misaligned answer(s) have no aligned answer in their "
                f"group (groups {sorted(set(skipped))[:5]}...) and were skipped: their tokens cannot be labelled",
                stacklevel=2,
            )
        if not feats:
            raise DataError(
                "estimator 'mai' cannot fit: no misaligned (label 0) training answer has an aligned "
                "answer in its group to compare with; give each group at least one label-1 completion "
                "(a group is the `group` column, or the prompt when `group` is empty: give the aligned and "
                "misaligned answers to one question the same group or the same prompt)"
            )
        x = torch.cat(feats)  # [M, K, d]
        y = torch.cat(labels).numpy()
        check_finite(x, "estimator features")
        if y.min() == y.max():
            which = "no misaligned tokens" if y.max() == 0 else "only misaligned tokens"
            raise DataError(
                f"estimator 'mai' cannot fit: the token labels contain {which} ({len(y)} tokens); "
                "the misaligned answers must differ from their aligned counterparts in some tokens "
                "and share others"
            )
        k, d = targets.num_targets, targets.unit_dim
        # One lbfgs fit per head on [M, d] float32 features (scikit-learn keeps float32).
        # fit_probes_sklearn limits BLAS/OpenMP to one thread per fit: a multi-threaded pool
        # only spins on a problem this small (many times slower on a busy machine) and gives
        # the same coefficients; heads run in parallel processes only when that pays off.
        per_head = np.ascontiguousarray(x.numpy().transpose(1, 0, 2))  # [K, M, d]
        large = per_head.size >= _MIN_VALUES_FOR_PARALLEL_FIT
        coef, intercept, iters = fit_probes_sklearn(
            per_head, y, seed=inputs.seed, max_iter=self.config.max_iter, C=self.config.C,
            n_jobs=self.config.n_jobs if large else 1, backend=self.config.parallel_backend,
            dtype=None, min_parallel_units=2, desc="estimator mai",
        )  # fmt: skip
        if (iters >= self.config.max_iter).any():
            warnings.warn(
                f"estimator 'mai': lbfgs did not converge within max_iter={self.config.max_iter} "
                f"for {int((iters >= self.config.max_iter).sum())} of {k} head(s); raise max_iter",
                stacklevel=2,
            )
        self.coef_ = torch.from_numpy(coef.astype(np.float32)).reshape(k, d)
        self.intercept_ = torch.from_numpy(intercept.astype(np.float32))
        self.num_tokens_ = len(y)
        self.misaligned_rate_ = float(y.mean())
        return self

    # -- inference ---------------------------------------------------------------------
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., K, d]`` head activations -> ``[..., K]`` probability of misalignment."""
        z = torch.einsum("...kd,kd->...k", features.float(), self.coef_) + self.intercept_
        return torch.sigmoid(z)

    def signal_plan(self, targets: EditTargets) -> ProbeLensSignals:
        """The fitted probes and the lens settings as plain data (for an edit plan)."""
        from ..functional import DEFAULT_ENTROPY_GAIN

        self.check_is_fitted()
        if self.coef_.shape != (targets.num_targets, targets.unit_dim):
            raise DataError(
                f"estimator weights have shape {tuple(self.coef_.shape)} but the targets need "
                f"[{targets.num_targets}, {targets.unit_dim}]: fit the estimator on these targets"
            )
        cfg = self.config
        probes = {
            layer: LayerProbe(targets.units[ix], self.coef_[ix], self.intercept_[ix])
            for layer, ix in targets.by_layer().items()
        }
        return ProbeLensSignals(
            site=targets.site,
            unit_dim=targets.unit_dim,
            probes=probes,
            lens=cfg.lens,
            gain=cfg.gain if cfg.gain is not None else DEFAULT_ENTROPY_GAIN,
            lens_final_norm=cfg.lens_final_norm,
            lens_dtype=cfg.lens_dtype,
        )

    def bind(self, model, adapter, targets: EditTargets) -> MAIRuntime:
        return MAIRuntime(self.signal_plan(targets), model, adapter)


class _ReducedPrecisionLens:
    """The lens's own copy of the unembedding in a half-precision dtype.

    Made once, from the output layer's weights, when the estimator is bound (outside any
    forward pass); the copy lives on the output layer's device and the residual is moved
    there. Logits come out in that dtype; the entropy is computed in float32.
    """

    def __init__(self, unembed: torch.nn.Module, dtype: torch.dtype):
        weight = getattr(unembed, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ConfigError(
                f"lens_dtype={str(dtype).removeprefix('torch.')!r} needs an output layer with a 2-D "
                f"weight (a Linear); {type(unembed).__name__} has none: use lens_dtype='model'"
            )
        if weight.is_meta:
            raise ConfigError(
                "lens_dtype: the output layer's weights are not loaded (offloaded to the meta "
                "device), so the lens cannot keep a copy of them; use lens_dtype='model'"
            )
        bias = getattr(unembed, "bias", None)
        self.weight = weight.detach().to(dtype)
        self.bias = bias.detach().to(dtype) if isinstance(bias, torch.Tensor) else None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(device=self.weight.device, dtype=self.weight.dtype)
        return torch.nn.functional.linear(h, self.weight, self.bias)


class MAIRuntime(SignalRuntime):
    """Device-local evaluation of p (all heads of a layer at once) and u (logit lens)."""

    def __init__(self, plan: ProbeLensSignals, model, adapter):
        self.plan = plan
        self.lens = plan.lens
        self.gain = plan.gain
        self.unit_dim = plan.unit_dim
        self.num_units = adapter.site_info(model, plan.site).num_units
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {
            layer: (probe.units, probe.weight, probe.bias) for layer, probe in plan.probes.items()
        }
        self._cache: dict[tuple[int, torch.device], tuple[torch.Tensor, ...]] = {}
        self.unembed = adapter.unembedding(model)
        self.norm = adapter.final_norm(model) if plan.lens_final_norm else None
        self._lens = self.unembed
        if plan.lens_dtype != "model" and plan.lens != "off":
            self._lens = _ReducedPrecisionLens(self.unembed, getattr(torch, plan.lens_dtype))
        self.residual_layers = plan.residual_layers
        edited = sorted(self.layers)
        self._first = edited[0] if edited else -1

    def _weights(self, layer: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (layer, device)
        hit = self._cache.get(key)
        if hit is None:
            units, w, b = self.layers[layer]
            hit = self._cache[key] = (units.to(device), w.to(device), b.to(device))
        return hit

    def uncertainty(self, resid: torch.Tensor, ctx: ForwardContext | dict | None = None) -> torch.Tensor:
        """``[B, T', hidden]`` residual stream -> ``[B, T', 1]`` normalised lens entropy.

        When the edit session knows the edited positions (``span`` scope with a host-side
        mask, ``ctx.span_positions``), the lens runs only there; other positions get 0
        (they are not edited).
        """
        from ..functional import logit_lens_entropy

        ctx = ForwardContext.coerce(ctx)
        positions = ctx.span_positions
        if positions is not None and positions[0].numel() < resid.shape[0] * resid.shape[1]:
            b, t = ctx.span_positions_on(resid.device)
            picked = resid[b, t]
            h = self.norm(picked) if self.norm is not None else picked
            u_pos = logit_lens_entropy(self._lens(h), gain=self.gain).to(resid.device)
            u = torch.zeros(resid.shape[0], resid.shape[1], 1, dtype=u_pos.dtype, device=resid.device)
            u[b, t, 0] = u_pos
            return u
        h = self.norm(resid) if self.norm is not None else resid
        logits = self._lens(h)
        return logit_lens_entropy(logits, gain=self.gain).to(resid.device)[..., None]

    def signals(self, layer, site_input, residual_in, ctx: ForwardContext):
        ctx = ForwardContext.coerce(ctx)
        units, w, b = self._weights(layer, site_input.device)
        bsz, t = site_input.shape[:2]
        heads = site_input.reshape(bsz, t, self.num_units, self.unit_dim).index_select(2, units)
        p = torch.sigmoid(torch.einsum("btkd,kd->btk", heads.float(), w) + b)
        u = None
        if self.lens == "exact" and residual_in is not None:
            u = self.uncertainty(residual_in, ctx)
        elif self.lens == "shared":
            if layer == self._first and residual_in is not None:
                ctx.shared_u = self.uncertainty(residual_in, ctx)
            u = ctx.shared_u
            if u is not None and u.device != site_input.device:
                u = u.to(site_input.device, non_blocking=True)
        return p, u
