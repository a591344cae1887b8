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

Two solvers fit the same objective, ``C * sum(log-loss) + ||w||^2 / 2`` with an
unpenalised intercept:

* ``sklearn``: ``LogisticRegression(random_state=seed, max_iter=max_iter, C=C)`` per
  unit (lbfgs), exactly the reference; chunks of units run in parallel with joblib.
* ``torch``: a batched damped Newton solver for many units at once on the
  features' device (GPU when the features live there). It reaches the optimum to
  near machine precision, so its probes agree with sklearn's up to sklearn's
  own tolerance.

Speed (``benchmarks/test_bench_prober.py``: 1,024 units, 400 train texts, d = 128).
One lbfgs probe is a tiny problem (~3 ms), so the sklearn path is dominated by Python
overhead that holds the GIL: joblib threads barely help, processes (``loky``) do, in
proportion to free cores. Each probe runs with BLAS/OpenMP limited to one thread
(more only spin on a [n, d] problem, and on a busy machine slow it several-fold).
On the project's shared 2-core machine (load 6-9) the medians were: serial 5.7-7.1 s,
threads 6.4-9.3 s, loky 7.6-12 s, torch (CPU) 11-38 s; with no free core, loky's
extra processes cannot pay off there, but it is the only backend that scales with
cores, so it stays the default (``n_jobs=1`` for strictly serial). The torch solver
forms d x d Hessians (~2 n d^2 flops per unit and iteration, against lbfgs's ~4 n d),
which is wasteful on a CPU and cheap on a GPU: use it where the features are on one.

Learned state is plain tensors (no sklearn objects): see :class:`LogisticProber`.
"""

from __future__ import annotations

import itertools
import math
import types
import warnings
from contextlib import nullcontext
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from ..config import ComponentConfig
from ..errors import ConfigError, DataError
from ..progress import progress
from ..types import EditTargets, ProbeInputs, check_finite
from .base import Prober

__all__ = ["LogisticConfig", "LogisticProber", "fit_probes_sklearn", "fit_probes_torch"]

#: Fewer units than this are fitted serially: starting joblib workers costs more.
_MIN_UNITS_FOR_PARALLEL = 64


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
# solvers: X [H, n, d] (one design matrix per unit), y [n] in {0, 1}
# returns coef [H, d] float64, intercept [H] float64, iterations [H] int64
# --------------------------------------------------------------------------------------


def _sklearn_chunk(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    max_iter: int,
    C: float,
    quiet: bool = True,
    dtype: type | None = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    units, _, dim = x.shape
    coef = np.empty((units, dim), dtype=np.float64)
    intercept = np.empty(units, dtype=np.float64)
    iters = np.empty(units, dtype=np.int64)
    with warnings.catch_warnings():
        # Non-convergence is reported once, by the prober, for all units together. In
        # worker threads the caller installs this filter instead: catch_warnings swaps
        # process-global state and is not thread-safe.
        if quiet:
            warnings.simplefilter("ignore", ConvergenceWarning)
        for i in range(units):
            clf = LogisticRegression(random_state=seed, max_iter=max_iter, C=C)
            # lbfgs in float64 by default, as the reference; dtype=None keeps x's dtype
            clf.fit(x[i] if dtype is None else np.asarray(x[i], dtype=dtype), y)
            coef[i] = clf.coef_[0]
            intercept[i] = clf.intercept_[0]
            iters[i] = int(np.max(clf.n_iter_))
    return coef, intercept, iters


def _shipped_by_value(fn):
    """A copy of ``fn`` that joblib's loky backend pickles by value (cloudpickle ships
    functions of ``__main__`` with their code). Worker processes then import only numpy
    and scikit-learn, not this module with torch: faster start, ~0.3 GB less memory
    per worker. ``fn`` must use no module globals besides ``np`` and ``warnings``."""
    clone = types.FunctionType(
        fn.__code__,
        {"np": np, "warnings": warnings, "__builtins__": __builtins__},
        fn.__name__,
        fn.__defaults__,
    )
    clone.__module__ = "__main__"
    clone.__qualname__ = fn.__qualname__
    return clone


_sklearn_chunk_portable = _shipped_by_value(_sklearn_chunk)


def fit_probes_sklearn(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    max_iter: int = 1000,
    C: float = 1.0,
    n_jobs: int = -1,
    backend: str = "loky",
    dtype: type | None = np.float64,
    min_parallel_units: int = _MIN_UNITS_FOR_PARALLEL,
    desc: str = "probes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit one scikit-learn ``LogisticRegression`` per unit.

    Args:
        x: ``[H, n, d]`` design matrices, one per unit, float32 or float64 (each unit's
            matrix is converted to float64 just before its fit, so float32 input halves
            what is copied to worker processes without changing the result).
        y: ``[n]`` labels in {0, 1} (both present).
        seed, max_iter, C: passed to ``LogisticRegression``.
        n_jobs: joblib workers (-1 = all CPUs); units are split in about 4 chunks per
            worker so each worker call amortises its overhead.
        backend: joblib backend (``loky`` or ``threading``).
        dtype: dtype each unit's matrix is converted to before its fit (lbfgs runs in
            that precision); ``None`` keeps ``x``'s dtype (scikit-learn fits float32
            input in float32).
        min_parallel_units: fewer units than this are fitted serially (starting joblib
            workers costs more than a few small fits).
        desc: label of the progress bar.

    Every fit runs with BLAS/OpenMP limited to one thread (see below), so the result
    does not depend on ``n_jobs`` or on the machine's load.

    Returns:
        ``(coef [H, d], intercept [H], n_iter [H])`` as numpy arrays.
    """
    from joblib import Parallel, cpu_count, delayed
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    units = x.shape[0]
    workers = cpu_count() if n_jobs < 0 else n_jobs
    if n_jobs < -1:
        workers = max(1, cpu_count() + 1 + n_jobs)
    workers = min(workers, units)
    # One probe is a [n, d] problem: BLAS threads cannot speed it up, and on a busy
    # machine they spin and slow it down several-fold. loky workers get this limit
    # from joblib; the serial and threading paths set it here.
    if workers <= 1 or units < min_parallel_units:
        parts = []
        with threadpool_limits(limits=1), progress(total=units, desc=desc, unit="probe") as bar:
            for a in range(0, units, 16):  # chunks of units, so the bar moves
                parts.append(_sklearn_chunk(x[a : a + 16], y, seed, max_iter, C, True, dtype))
                bar.update(len(parts[-1][1]))
        return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]
    bounds = np.linspace(0, units, min(units, 4 * workers) + 1).astype(int)
    quiet = backend != "threading"  # processes need their own filter (see _sklearn_chunk)
    limit = threadpool_limits(limits=1) if backend == "threading" else nullcontext()
    bar = progress(total=units, desc=desc, unit="probe")
    with limit, warnings.catch_warnings(), bar:
        warnings.simplefilter("ignore", ConvergenceWarning)
        parts = []
        for part in Parallel(n_jobs=workers, backend=backend, return_as="generator")(
            delayed(_sklearn_chunk_portable)(x[a:b], y, seed, max_iter, C, quiet, dtype)
            for a, b in itertools.pairwise(bounds)
            if b > a
        ):
            parts.append(part)
            bar.update(len(part[1]))
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def _objective(xa: torch.Tensor, y: torch.Tensor, w: torch.Tensor, reg: torch.Tensor, C: float):
    z = torch.bmm(xa, w.unsqueeze(-1)).squeeze(-1)  # [h, n]
    loss = torch.nn.functional.softplus(z) - y * z
    return C * loss.sum(-1) + 0.5 * (reg * w * w).sum(-1), z


def _newton_batch(
    x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton on ``[h, n, d]`` float64 designs; returns (w [h, d+1], iterations [h])."""
    units, n, dim = x.shape
    f64, dev = torch.float64, x.device
    reg = torch.ones(dim + 1, dtype=f64, device=dev)
    reg[-1] = 0.0  # intercept not penalised
    w_out = torch.zeros(units, dim + 1, dtype=f64, device=dev)
    it_out = torch.zeros(units, dtype=torch.int64, device=dev)
    # working set: only the units still iterating (compacted when some finish)
    ids = torch.arange(units, device=dev)
    xa = torch.cat([x, x.new_ones(units, n, 1)], dim=-1)  # [h, n, d+1], intercept last
    xa32 = xa.to(torch.float32)  # the Hessian only sets the step: float32 is enough
    yb = y.to(f64).expand(units, n)
    w = torch.zeros(units, dim + 1, dtype=f64, device=dev)
    its = torch.zeros(units, dtype=torch.int64, device=dev)
    frozen = torch.zeros(units, dtype=torch.bool, device=dev)
    f, z = _objective(xa, yb, w, reg, C)
    for _ in range(max_iter):
        p = torch.sigmoid(z)
        grad = C * torch.bmm(xa.transpose(1, 2), (p - yb).unsqueeze(-1)).squeeze(-1) + reg * w
        root = (C * p * (1.0 - p)).sqrt_().to(torch.float32).unsqueeze(-1)
        scaled = xa32 * root
        hess = torch.bmm(scaled.transpose(1, 2), scaled).to(f64)
        del scaled
        diag = hess.diagonal(dim1=-2, dim2=-1)  # a view: in-place adds change hess
        scale = diag.mean(-1).clamp_min(1.0)
        diag.add_(reg).add_((1e-10 * scale).unsqueeze(-1))
        chol, info = torch.linalg.cholesky_ex(hess)
        jitter = 1e-8
        while bool((info > 0).any()):  # numerically indefinite (saturated probabilities)
            diag.add_((jitter * scale * (info > 0)).unsqueeze(-1))
            chol, info = torch.linalg.cholesky_ex(hess)
            jitter *= 100.0
        step = -torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
        slope = (grad * step).sum(-1)  # < 0: a descent direction
        # converged: Newton decrement small relative to the objective
        done = frozen | (-slope <= 1e-12 * (1.0 + f.abs()))
        t = torch.ones_like(f)
        accepted = done.clone()
        for _ in range(40):  # backtracking (Armijo) line search, all units together
            cand_w = w + t.unsqueeze(-1) * step
            cand_f, cand_z = _objective(xa, yb, cand_w, reg, C)
            ok = ~accepted & (cand_f <= f + 1e-4 * t * slope)
            w = torch.where(ok.unsqueeze(-1), cand_w, w)
            f = torch.where(ok, cand_f, f)
            z = torch.where(ok.unsqueeze(-1), cand_z, z)
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        # no decrease possible at float64 precision (not accepted): at the optimum
        finished = done | ~accepted
        its += (~finished).long()
        if bool(finished.all()):
            break
        # drop finished units once enough have finished (compaction copies the designs)
        if int(finished.sum()) * 4 >= finished.numel():
            w_out[ids[finished]] = w[finished]
            it_out[ids[finished]] = its[finished]
            keep = ~finished
            ids, xa, xa32, yb = ids[keep], xa[keep], xa32[keep], yb[keep]
            w, f, z, its = w[keep], f[keep], z[keep], its[keep]
            frozen = torch.zeros_like(keep[keep])
        else:  # keep computing them, but never move them again
            frozen = finished
    w_out[ids] = w
    it_out[ids] = its
    return w_out, it_out


def fit_probes_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iter: int = 1000,
    C: float = 1.0,
    units_per_batch: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit an L2 logistic regression per unit with a batched Newton solver.

    Minimises ``C * sum_i log(1 + exp(-s_i (x_i . w + b))) + ||w||^2 / 2`` (``s_i`` =
    +-1 labels, intercept ``b`` unpenalised), scikit-learn's objective, for
    ``units_per_batch`` units at a time on ``x``'s device, in float64 (Hessians
    accumulated in float32: they only set the step, the gradient is exact). Each step
    is a Cholesky-solved Newton step with a backtracking line search; a unit stops
    when its Newton decrement is below ``1e-12 * (1 + |objective|)``.

    Args:
        x: ``[H, n, d]`` designs, one per unit, any float dtype and device.
        y: ``[n]`` labels in {0, 1}.

    Returns:
        ``(coef [H, d], intercept [H], n_iter [H])``: float64, float64, int64 on ``x``'s device.
    """
    units, _, dim = x.shape
    coef = torch.empty(units, dim, dtype=torch.float64, device=x.device)
    intercept = torch.empty(units, dtype=torch.float64, device=x.device)
    iters = torch.empty(units, dtype=torch.int64, device=x.device)
    y = y.to(device=x.device)
    with progress(total=units, desc="probes", unit="probe") as bar:
        for a in range(0, units, units_per_batch):
            b = min(units, a + units_per_batch)
            w, it = _newton_batch(x[a:b].to(torch.float64), y, C, max_iter)
            coef[a:b], intercept[a:b], iters[a:b] = w[:, :dim], w[:, dim], it
            bar.update(b - a)
    return coef, intercept, iters


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
