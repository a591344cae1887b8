"""Histogram kernels of the mutual-information graph (MIG): per-row marginal entropies
and pairwise joint entropies of binned activations, computed in worker threads with
single-threaded OpenMP pools. The public entry points are
:func:`tae_framework.functional.mutual_information_matrix` and
:func:`tae_framework.functional.mig_pool`, which check their inputs and bin them first.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

#: Offset inside the logarithm of every histogram entropy, ``p * log2(p + eps)``,
#: exactly as in the reference code. Empty bins contribute exactly 0.
ENTROPY_EPS = 1e-10


def _count_entropy_table(total: int, device: torch.device) -> Tensor:
    """``t[c] = (c/total) * log2(c/total + eps)`` for c = 0..total, float64."""
    p = torch.arange(total + 1, dtype=torch.float64, device=device) / total
    return p * torch.log2(p + ENTROPY_EPS)


def _marginal_entropies(codes: Tensor, bins: int) -> Tensor:
    """Entropy (bits, float64) of every row's bin histogram. codes: [R, D] int64."""
    rows, dim = codes.shape
    counts = torch.zeros(rows, bins, dtype=torch.int32, device=codes.device)
    ones = torch.ones(1, 1, dtype=torch.int32, device=codes.device).expand(rows, dim)
    counts.scatter_add_(1, codes, ones)
    table = _count_entropy_table(dim, codes.device)
    return -table.index_select(0, counts.view(-1)).view(rows, bins).sum(dim=-1)


def _dense_ranks(codes: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Relabel each row's bins by their rank among the row's occupied bins.

    codes: [R, D] int64 in [0, bins). Returns (int32 ranks [R, D], int64 number of
    occupied bins [R]). A bijective relabelling per row leaves every histogram's counts,
    hence every entropy, unchanged, while the joint histogram of two rows shrinks from
    ``bins**2`` cells to (occupied bins of one) x (occupied bins of the other): real
    activations (and min-max normalised heavy-tailed data) occupy a few dozen of the 100
    bins, so the histograms fit in the CPU's L1/L2 cache.
    """
    occupied = torch.zeros(codes.shape[0], bins, dtype=torch.int32, device=codes.device)
    occupied.scatter_(1, codes, 1)
    counts = occupied.sum(dim=1)
    rank_of_bin = occupied.cumsum_(dim=1).sub_(1)
    return rank_of_bin.gather(1, codes), counts


#: Below this many joint samples (pairs x D) per thread, mutual_information_matrix does
#: not start worker threads: the work takes a few milliseconds on one core.
_MIN_SAMPLES_PER_THREAD = 1 << 22


def _openmp_limiter():
    """A cached threadpoolctl controller: its ``limit(limits=1, user_api="openmp")``
    sets the OpenMP pool of the calling thread only, and costs microseconds once cached."""
    global _OPENMP_CONTROLLER
    if _OPENMP_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _OPENMP_CONTROLLER = ThreadpoolController()
    return _OPENMP_CONTROLLER


_OPENMP_CONTROLLER = None


def _single_threaded_openmp(device: torch.device):
    """Context manager: the calling thread's OpenMP pool limited to one thread (CPU only).

    MIG's elementwise passes are memory-bound and small per call; on a busy machine a
    multi-threaded pool spins waiting for a taken core. Parallelism comes from
    :func:`_pairwise_joint_entropies`'s worker threads instead.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        return contextlib.nullcontext()
    return _openmp_limiter().limit(limits=1, user_api="openmp")


def _pairwise_joint_entropies(
    codes: Tensor, bins: int, max_elements: int, num_threads: int | None = None
) -> Tensor:
    """Joint entropies H(i, j) for i < j (bits, float64), zeros elsewhere.

    codes: [G, n, D] int64 bin indices. Returns [G, n, n] float64.

    Each row's bins are first replaced by dense ranks (:func:`_dense_ranks`), so the
    joint histogram of a pair has ``k_i x k_j`` cells (``k`` = occupied bins) instead of
    ``bins**2``. For a block of pairs sharing the anchor token i (the same i in a block
    of groups, against a block of later tokens j), the joint codes
    ``rank_i[k] * K + rank_j[k]`` are scatter-counted into an int32 histogram per pair
    (no Python loop over pairs). The entropy ``-sum_c (n_c/D) log2(n_c/D + eps)`` is
    read from a precomputed float64 table ``t[n] = n log2(n/D + eps)`` summed over the
    cells, or, when a pair has more cells than samples, as
    ``-(1/D) sum_k log2(n_{c_k}/D + eps)`` over its D samples; both are exact
    (integer counts, float64 sums).

    Threads: the blocks are shared among ``num_threads`` Python worker threads (default
    ``torch.get_num_threads()``), each running its torch operations with OpenMP limited
    to one thread; torch releases the GIL inside every operation. Small problems run in
    the calling thread, also with its OpenMP pool limited to one thread for the loop
    (the operations are too small for OpenMP to gain, and on a busy machine its
    synchronisation makes them several times slower).
    """
    groups, n, dim = codes.shape
    device = codes.device
    out = torch.zeros(groups, n, n, dtype=torch.float64, device=device)
    if n < 2 or groups == 0:
        return out
    ranks, occ = _dense_ranks(codes.reshape(-1, dim), bins)
    ranks = ranks.view(groups, n, dim)
    occ_tok = occ.view(groups, n).tolist()  # one host sync, outside the loop
    occ_max = [max(row) for row in occ_tok]
    widest = max(occ_max)
    rows_budget = max(1, max_elements // max(widest * widest, dim))

    items = []  # (i, g0, g1, j0, j1, K partner multiplier, cells)
    for i in range(n - 1):
        m = n - 1 - i
        j_step = min(m, rows_budget)
        g_step = max(1, min(groups, rows_budget // j_step))
        for g0 in range(0, groups, g_step):
            g1 = min(groups, g0 + g_step)
            k_partner = max(occ_max[g0:g1])
            cells = max(occ_tok[g][i] for g in range(g0, g1)) * k_partner
            for j0 in range(i + 1, n, j_step):
                items.append((i, g0, g1, j0, min(n, j0 + j_step), k_partner, cells))

    log_table = torch.log2(
        torch.arange(dim + 1, dtype=torch.float64, device=device) / dim + ENTROPY_EPS
    )
    count_table = torch.arange(dim + 1, dtype=torch.float64, device=device) * log_table
    max_rows = max((g1 - g0) * (j1 - j0) for _, g0, g1, j0, j1, _, _ in items)
    max_cells = max(c for *_, c in items)
    scale = -1.0 / dim

    def work(next_item) -> None:
        # scratch of this thread, reused by every block it processes
        hist_buf = torch.empty(max_rows * max_cells, dtype=torch.int32, device=device)
        joint_buf = torch.empty(max_rows * dim, dtype=torch.int32, device=device)
        vals_buf = torch.empty(max_rows * max(max_cells, dim), dtype=torch.float64, device=device)
        ones = torch.ones(max_rows, dim, dtype=torch.int32, device=device)
        while (item := next_item()) is not None:
            i, g0, g1, j0, j1, k_partner, cells = item
            rows = (g1 - g0) * (j1 - j0)
            anchor = ranks[g0:g1, i : i + 1, :] * k_partner  # [gb, 1, D]
            joint = joint_buf[: rows * dim].view(g1 - g0, j1 - j0, dim)
            torch.add(anchor, ranks[g0:g1, j0:j1, :], out=joint)
            joint = joint.view(rows, dim)
            hist = hist_buf[: rows * cells].view(rows, cells)
            hist.zero_()
            hist.scatter_add_(1, joint, ones[:rows])
            if cells <= dim:  # sum over the cells: sum_c n_c log2(n_c / D + eps)
                vals = torch.index_select(count_table, 0, hist.view(-1), out=vals_buf[: rows * cells])
                s = vals.view(rows, cells).sum(dim=-1)
            else:  # sum over the samples: sum_k log2(n_{c_k} / D + eps)
                per_sample = hist.gather(1, joint)
                vals = torch.index_select(log_table, 0, per_sample.view(-1), out=vals_buf[: rows * dim])
                s = vals.view(rows, dim).sum(dim=-1)
            out[g0:g1, i, j0:j1] = s.mul_(scale).view(g1 - g0, j1 - j0)

    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    samples = groups * n * (n - 1) // 2 * dim
    workers = max(1, min(threads, len(items), samples // _MIN_SAMPLES_PER_THREAD))
    if device.type != "cpu":
        workers = 1  # one stream of device kernels; threads would only add launch contention
    limiter = _openmp_limiter() if device.type == "cpu" else None
    if workers == 1:
        it = iter(items)
        if limiter is None or threads == 1:
            work(lambda: next(it, None))
        else:
            with limiter.limit(limits=1, user_api="openmp"):
                work(lambda: next(it, None))
        return out

    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    it = iter(items)

    def next_item():
        with lock:
            return next(it, None)

    def worker() -> None:
        torch.get_num_threads()  # let torch set up this thread's pool first, then limit it
        with limiter.limit(limits=1, user_api="openmp"):
            work(next_item)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tae-mi") as pool:
        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()
    return out
