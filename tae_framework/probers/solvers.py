"""The solvers behind the ``logistic`` prober (and MAI's per-head probes): one L2
logistic regression per unit, fitted for many units at once.

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
"""

from __future__ import annotations

import itertools
import types
import warnings
from contextlib import nullcontext

import numpy as np
import torch

from ..progress import progress

__all__ = ["fit_probes_sklearn", "fit_probes_torch"]

#: Fewer units than this are fitted serially: starting joblib workers costs more.
_MIN_UNITS_FOR_PARALLEL = 64


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
