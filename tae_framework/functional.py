"""Stateless tensor math of Token-Aware Editing (TAE).

Everything here is a pure function of its tensor arguments: no module state, no
hooks, no host synchronisation in the functions used during generation
(:func:`logit_lens_entropy`, :func:`adaptive_strength`, :func:`fixed_strength`).
All functions are batched over leading dimensions and work on any device and
floating dtype. They compute in float32 internally (float64 when the input is
float64) and return float32 (float64 for float64 input).

The definitions follow ``shared/docs/tae-method.md``:

* section 2, MIG (Mutual-Information-guided Graph aggregation):
  :func:`minmax_bins`, :func:`entropy_bits`, :func:`mutual_information_matrix`,
  :func:`mig_pool`;
* section 4b, the logit-lens uncertainty ``u``: :func:`logit_lens_entropy`;
* section 4, the per-token edit strength: :func:`adaptive_strength` (TAE) and
  :func:`fixed_strength` (ITI). The edit of a head is
  ``alpha * sigma * strength * direction`` under both rules.

Errors are :class:`~tae_framework.errors.ConfigError` (bad hyper-parameter) and
:class:`~tae_framework.errors.DataError` (bad tensor); both are ``ValueError``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ._histogram_mi import (
    ENTROPY_EPS,
    _marginal_entropies,
    _pairwise_joint_entropies,
    _single_threaded_openmp,
)
from .errors import ConfigError, DataError

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_ENTROPY_GAIN",
    "DEFAULT_MAX_ELEMENTS",
    "ENTROPY_EPS",
    "adaptive_strength",
    "entropy_bits",
    "fixed_strength",
    "logit_lens_entropy",
    "mig_pool",
    "minmax_bins",
    "mutual_information_matrix",
]

#: Number of equal-width bins on [0, 1] used by MIG (the reference's ``num_bins``).
DEFAULT_BINS = 100


#: Gain ``c`` applied to the centred logit-lens logits before the softmax:
#: the reference code's formula ``275.33 / (6 - x) - 11.56`` evaluated at its
#: default argument ``x = 0.48`` (about 38.318). Larger gains sharpen the
#: distribution and lower the normalised entropy.
DEFAULT_ENTROPY_GAIN = 275.33 / (6 - 0.48) - 11.56

#: Default bound on the number of joint-histogram cells that
#: :func:`mutual_information_matrix` materialises at once (see there).
DEFAULT_MAX_ELEMENTS = 1 << 19


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
        raise ConfigError(
            f"bins must be an integer >= 2, got {bins!r} ({type(bins).__name__}); "
            "pass the number of histogram bins, e.g. bins=100"
        )
    if bins < 2:
        raise ConfigError(
            f"bins must be >= 2, got {bins}: a histogram with fewer than 2 bins has "
            "zero entropy everywhere; use the method's default bins=100"
        )
    return int(bins)


def _check_tokens(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise DataError(f"{what}: expected a torch.Tensor of shape [..., n, D], got {type(x)!r}")
    if x.dim() < 2:
        raise DataError(
            f"{what}: expected a tensor of shape [..., n, D] (n tokens by D values), got "
            f"shape {tuple(x.shape)}; for a single token use x.unsqueeze(0)"
        )
    if x.shape[-2] == 0:
        raise DataError(
            f"{what}: got n = 0 tokens (shape {tuple(x.shape)}); the graph needs at least "
            "one token, so drop empty answers before calling it"
        )
    if x.shape[-1] == 0:
        raise DataError(
            f"{what}: got D = 0 values per token (shape {tuple(x.shape)}); pass the "
            "activation vectors themselves"
        )
    if x.is_complex():
        raise DataError(f"{what}: complex tensors are not supported (dtype {x.dtype})")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# MIG: binning, entropies, mutual information, graph pooling
# ---------------------------------------------------------------------------


def _bin_codes(x: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Bins of :func:`minmax_bins` plus a per-vector "all values finite" flag.

    x: [..., D] in its working dtype. Returns (int64 codes [..., D], bool [..., 1]).
    ``amin``/``amax`` propagate NaN and +-inf, so the flag costs nothing extra.
    """
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    span = hi - lo
    # Constant vectors: numerator is exactly 0, divide by 1 instead of 0 -> bin 0.
    span = torch.where(span > 0, span, torch.ones_like(span))
    v = (x - lo).div_(span)  # in [0, 1] for finite rows, same op order as the reference
    # torch.bucketize(v, edges, right=False) returns i = #{k : edges[k] < v}. For edges
    # exactly k / bins that is ceil(v * bins); the float32/float64 linspace edges differ
    # from k / bins by an ulp, so fix the guess g by one step either way:
    # i = g + [edges[g] < v] - [edges[g - 1] >= v].
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=x.dtype, device=x.device)
    upper = edges  # upper[g] = edges[g], g in [0, bins]
    lower = torch.cat([edges.new_full((1,), -math.inf), edges[:-1]])  # lower[g] = edges[g-1]
    guess = (v * bins).ceil_().nan_to_num_(0.0).clamp_(0, bins).long()
    flat = guess.reshape(-1)
    step_up = upper.index_select(0, flat).reshape(v.shape) < v
    step_down = lower.index_select(0, flat).reshape(v.shape) >= v
    codes = guess.add_(step_up).sub_(step_down.long())
    # minmax_bins' rule: clamp(i - 1, 0, bins - 1)
    return codes.sub_(1).clamp_(0, bins - 1), finite


def minmax_bins(x: Tensor, bins: int = DEFAULT_BINS) -> Tensor:
    """Min-max normalise each vector along the last dim and discretise it into bins.

    Each vector ``v`` (the last dimension) is mapped to
    ``v' = (v - min(v)) / (max(v) - min(v))`` and then every value to the bin
    ``clamp(bucketize(v', linspace(0, 1, bins + 1)) - 1, 0, bins - 1)`` with torch's
    default ``right=False`` bucketize; so ``v' = 0`` lands in bin 0 and ``v' = 1`` in
    bin ``bins - 1``. The normalisation is computed in float32 (float64 for float64
    input) with the same operation order as the reference code, so bins agree with
    it bit for bit. The bucket search is done arithmetically (a guess from
    ``ceil(v' * bins)`` corrected against the exact ``linspace`` edges), which is
    identical to ``torch.bucketize`` and several times faster on CPU.

    Constant vectors (``max == min``): the reference divides 0 by 0 and gets NaN,
    which torch's bucketize then sends to the last bin. We define instead that
    every value of a constant vector lands in bin 0. Either way a constant vector
    has a single occupied bin, so its entropy is 0 and its mutual information with
    any vector is 0: the numbers are the same, and no NaN is ever produced.

    Args:
        x: Tensor of shape ``[..., D]`` with ``D >= 1``; any real dtype and device.
            NaN/inf values are not checked here (they give meaningless bins); the
            callers :func:`mutual_information_matrix` and :func:`mig_pool` reject them.
        bins: Number ``B`` of equal-width bins on [0, 1]; at least 2.

    Returns:
        int64 tensor of shape ``[..., D]`` with values in ``[0, bins - 1]``.

    Raises:
        ConfigError: ``bins`` is not an integer >= 2.
        DataError: ``x`` is not a tensor, is 0-dimensional, or has ``D = 0``.
    """
    bins = _check_bins(bins)
    if not isinstance(x, Tensor):
        raise DataError(f"minmax_bins: expected a torch.Tensor, got {type(x)!r}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise DataError(f"minmax_bins: expected shape [..., D] with D >= 1, got {tuple(x.shape)}")
    if x.is_complex():
        raise DataError(f"minmax_bins: complex tensors are not supported (dtype {x.dtype})")
    codes, _ = _bin_codes(x.to(_work_dtype(x.dtype)), bins)
    return codes


def entropy_bits(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in bits of (histogram) probabilities, as the reference computes it.

    ``H = -sum(p * log2(p + 1e-10))`` along ``dim``; empty bins contribute exactly 0.

    Args:
        probs: Tensor of probabilities of shape ``[..., B, ...]``, summing to 1 along
            ``dim``. Not validated.
        dim: Dimension holding the distribution.

    Returns:
        Tensor with ``dim`` removed, float32 (float64 for float64 input).
    """
    p = probs.to(_work_dtype(probs.dtype))
    return -(p * torch.log2(p + ENTROPY_EPS)).sum(dim=dim)


def mutual_information_matrix(
    x: Tensor,
    bins: int = DEFAULT_BINS,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    num_threads: int | None = None,
) -> Tensor:
    """Pairwise mutual information (bits) between the tokens of each group.

    For every pair of tokens ``i, j`` (rows of the last two dims), the D positions are
    D paired samples of the binned values (:func:`minmax_bins`):
    ``MI(i, j) = H(i) + H(j) - H(i, j)``, with ``H(i)`` the entropy of the ``bins``-bin
    histogram of token i and ``H(i, j)`` that of the ``bins x bins`` joint histogram,
    both ``-sum p * log2(p + 1e-10)``. The matrix is symmetric; only pairs ``i < j``
    are computed and mirrored, and the diagonal is ``H(i)``. For ``n = 1`` the result
    is ``[[H(0)]]``. Matches the reference implementation to float32 rounding.

    Cost is O(n^2 * D) per group with no Python loop over pairs (one loop step per
    anchor token and memory block); entropies are accumulated in float64. Each joint
    histogram only has (occupied bins of i) x (occupied bins of j) cells, so it stays
    in the CPU cache. On the CPU the blocks are shared among worker threads (see
    ``num_threads``), each with a single-threaded OpenMP pool; on one core, roughly
    n = 30 tokens x D = 4096 x 32 layers take 0.1-0.2 s and n = 300 about 100x that.

    Args:
        x: Tensor of shape ``[..., n, D]``: n tokens with D values each (for MIG, the
            head-wise activations of the answer tokens of one text at one layer);
            leading dims (e.g. layers, texts) are batched. Must be finite.
        bins: Number of equal-width bins ``B`` on [0, 1]; at least 2.
        max_elements: Bound on the number of joint-histogram cells held at once per
            thread (``rows * max(k*k, D)``, with ``k <= B`` the most bins any token
            occupies; at least one row is always processed). Peak scratch memory is
            at most about ``20 * max_elements`` bytes per thread on top of the O(input)
            binned codes and ranks (int32 counts and joint codes, float64 table
            values): about 10 MB for the default ``2**19``. Larger values cut Python
            loop overhead but use the CPU cache worse.
        num_threads: Worker threads on the CPU (default: ``torch.get_num_threads()``
            of the calling thread). Problems under about 4M joint samples per thread
            run in the calling thread. Every thread, the calling one included, runs
            its torch operations with OpenMP limited to one thread, so a second
            thread never slows the computation down by oversubscribing the cores.
            The result does not depend on the number of threads.

    Returns:
        Tensor of shape ``[..., n, n]``, float32 (float64 for float64 input), on
        ``x``'s device.

    Raises:
        ConfigError: ``bins`` < 2 or not an integer, ``max_elements`` < 1, or
            ``num_threads`` < 1.
        DataError: ``x`` has fewer than 2 dims, ``n = 0``, ``D = 0``, or NaN/inf.
    """
    bins = _check_bins(bins)
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or num_threads < 1
    ):
        raise ConfigError(
            f"num_threads must be a positive integer or None, got {num_threads!r}; None "
            "uses torch.get_num_threads()"
        )
    if (
        isinstance(max_elements, bool)
        or not isinstance(max_elements, numbers.Integral)
        or (max_elements < 1)
    ):
        raise ConfigError(
            f"max_elements must be a positive integer, got {max_elements!r}; it bounds "
            "the histogram cells held in memory at once (default 2**19)"
        )
    _check_tokens(x, "mutual_information_matrix")
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    with _single_threaded_openmp(x.device):
        return _mutual_information(x, bins, int(max_elements), threads)


def _mutual_information(x: Tensor, bins: int, max_elements: int, threads: int) -> Tensor:
    wd = _work_dtype(x.dtype)
    lead = x.shape[:-2]
    n, dim = x.shape[-2], x.shape[-1]
    groups = math.prod(lead)
    codes, finite = _bin_codes(x.reshape(groups, n, dim).to(wd), bins)  # [G, n, D]
    if not bool(finite.all()):  # one host sync; MI is not on the generation hot path
        raise DataError(
            f"mutual_information_matrix: {int((~finite).sum())} token vector(s) contain "
            "NaN/inf values, for which min-max binning is undefined. Check the captured "
            "activations (e.g. fp16 overflow) and drop or recompute the offending texts"
        )
    h_tok = _marginal_entropies(codes.view(-1, dim), bins).view(groups, n)
    h_joint = _pairwise_joint_entropies(codes, bins, max_elements, threads)
    mi = h_tok.unsqueeze(-1) + h_tok.unsqueeze(-2) - h_joint  # valid for i < j
    upper = torch.triu(mi, diagonal=1)
    mi = upper + upper.transpose(-1, -2) + torch.diag_embed(h_tok)
    return mi.to(wd).reshape(*lead, n, n)


def mig_pool(
    x: Tensor,
    bins: int = DEFAULT_BINS,
    steps: int = 1,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    num_threads: int | None = None,
) -> Tensor:
    """MIG feature: mutual-information graph message passing, then mean over tokens.

    For each group (leading dims) of n token vectors ``X`` (``[n, D]``):
    ``A = softmax(MI(X))`` row-wise (no temperature, self-loops kept), ``X <- A @ X``,
    repeated ``steps`` times, then the mean over the n tokens. As in the reference
    code (its ``t`` argument), the graph is rebuilt from the current ``X`` at every
    step; ``steps=1`` is the method's setting. With ``n = 1`` the result is the token
    itself.

    The propagation and mean are computed in float64. Between steps ``X`` is rounded
    to the working dtype (float32, or float64 for float64 input), as the reference's
    float32 arrays are, before the next graph is built and propagated.

    Args:
        x: Tensor of shape ``[..., n, D]`` (e.g. ``[L, n, D]``: the head-wise
            activations of one text's n answer tokens at every layer). Must be finite.
        bins: Number of histogram bins for the mutual information; at least 2.
        steps: Number of message-passing rounds; at least 1.
        max_elements: Memory bound passed to :func:`mutual_information_matrix`.
        num_threads: CPU worker threads of :func:`mutual_information_matrix`
            (default ``torch.get_num_threads()``).

    Returns:
        Tensor of shape ``[..., D]``, float32 (float64 for float64 input).

    Raises:
        ConfigError: ``bins`` < 2 or ``steps`` < 1.
        DataError: ``x`` has fewer than 2 dims, ``n = 0``, ``D = 0``, or NaN/inf.
    """
    bins = _check_bins(bins)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}; the method uses 1")
    _check_tokens(x, "mig_pool")
    if num_threads is None:
        num_threads = torch.get_num_threads()  # the caller's setting, read before pinning
    with _single_threaded_openmp(x.device):
        return _mig(x, bins, int(steps), max_elements, num_threads)


def _mig(x: Tensor, bins: int, steps: int, max_elements: int, num_threads: int) -> Tensor:
    wd = _work_dtype(x.dtype)
    feats = x.to(wd)  # what the graph is built from at each step
    for step in range(steps):
        mi = mutual_information_matrix(feats, bins, max_elements=max_elements, num_threads=num_threads)
        adj = torch.softmax(mi.to(torch.float64), dim=-1)
        if step == steps - 1:
            # mean over tokens of A @ X == (mean of A's rows) @ X: n times fewer flops
            pooled = adj.mean(dim=-2, keepdim=True) @ feats.to(torch.float64)
            return pooled.squeeze(-2).to(wd)
        feats = (adj @ feats.to(torch.float64)).to(wd)
    raise AssertionError("unreachable: steps >= 1")  # pragma: no cover


# ---------------------------------------------------------------------------
# MAI: logit-lens uncertainty and edit strength
# ---------------------------------------------------------------------------


def logit_lens_entropy(logits: Tensor, gain: float | Tensor = DEFAULT_ENTROPY_GAIN) -> Tensor:
    """Normalised entropy of gain-sharpened logit-lens logits: the uncertainty ``u``.

    ``z = gain * (logits - mean(logits))`` over the vocabulary, then
    ``u = -sum softmax(z) * log_softmax(z) / ln(V)``. Computed with ``log_softmax``
    in float32 (float64 for float64 input) even for bf16/fp16 logits, so it is
    stable for any logit scale. ``u`` is in [0, 1]: 1 for uniform logits, near 0 when
    one logit dominates. No host synchronisation (safe inside generation hooks).

    Args:
        logits: Tensor of shape ``[..., V]`` with ``V >= 2`` (e.g. ``lm_head`` applied
            to the residual stream entering a layer). Must be finite (not checked, to
            avoid a host synchronisation): NaN/inf logits give NaN.
        gain: The constant ``c`` multiplying the centred logits, a float or a tensor
            broadcastable to ``[..., 1]``; default :data:`DEFAULT_ENTROPY_GAIN`.

    Returns:
        Tensor of shape ``[...]``, float32 (float64 for float64 input).

    Raises:
        DataError: ``logits`` is 0-dimensional or ``V < 2``.
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1 or logits.shape[-1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
        raise DataError(
            f"logit_lens_entropy: expected logits of shape [..., V] with V >= 2, got "
            f"{shape}; the entropy is normalised by ln(V), which is 0 for V = 1"
        )
    wd = _work_dtype(logits.dtype)
    # softmax is shift-invariant, so centring by the mean (the method) or by the max gives
    # the same distribution; the max keeps exp() <= 1. With s = gain * z - max and
    # e = exp(s): H = log(sum e) - sum(e * s) / sum e. One exp and a few passes over the
    # vocabulary, fewer than log_softmax followed by exp (this runs at every edited layer).
    z = logits.to(wd)
    s = (z - z.amax(dim=-1, keepdim=True)).mul_(gain)  # centred before scaling: exact offsets
    if not (isinstance(gain, numbers.Real) and gain >= 0):  # a tensor (or negative) gain
        s = s.sub_(s.amax(dim=-1, keepdim=True))
    e = s.exp()
    total = e.sum(dim=-1)
    ent = total.log() - e.mul_(s).sum(dim=-1) / total
    return (ent / math.log(logits.shape[-1])).clamp_(0.0, 1.0)


def _as_signal(t: Tensor | float | None) -> Tensor | float | None:
    if t is None or not isinstance(t, Tensor):
        return t
    return t.to(_work_dtype(t.dtype)) if t.is_floating_point() else t.to(torch.float32)


def adaptive_strength(
    p: Tensor | float | None,
    u: Tensor | float | None,
    beta: float | Tensor,
    use_p: bool = True,
    use_u: bool = True,
    use_base: bool = True,
) -> Tensor:
    """TAE's per-token strength multiplier ``base + beta * p + (1 - beta) * u``.

    The edit of a head at a token is ``alpha * sigma * strength * direction``. With
    ``base = 1`` this is the method's ``(1 + w)``, ``w = beta * p + (1 - beta) * u``.
    A missing signal (``None``) or a disabled one (``use_p`` / ``use_u`` False) counts
    as 0, so e.g. plain-text scoring without a logit lens gives ``1 + beta * p``.
    Pure broadcasting tensor arithmetic: no host synchronisation.

    Args:
        p: Misalignment probability per token, a tensor of any shape (e.g. ``[B, T]``)
            or a float, or None.
        u: Logit-lens uncertainty per token (see :func:`logit_lens_entropy`),
            broadcastable with ``p``, or a float, or None.
        beta: Mixing weight in [0, 1]. A Python number is validated; a tensor is used
            as is (not checked, to avoid a host synchronisation).
        use_p: Include ``beta * p``.
        use_u: Include ``(1 - beta) * u``.
        use_base: Include the constant 1 (else the strength is ``w`` alone).

    Returns:
        Tensor of the broadcast shape of the used signals (0-dim if none is used),
        float32 (float64 if a signal is float64), on the signals' device.

    Raises:
        ConfigError: ``beta`` is a number outside [0, 1] (or NaN).
    """
    if isinstance(beta, numbers.Real) and not isinstance(beta, bool):
        if not 0.0 <= float(beta) <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"beta must be in [0, 1], got {beta!r}: it mixes the misalignment "
                "probability (weight beta) and the uncertainty (weight 1 - beta); the "
                "method uses beta = 0.5"
            )
    elif not isinstance(beta, Tensor):
        raise ConfigError(f"beta must be a float in [0, 1] or a tensor, got {type(beta)!r}")
    p = _as_signal(p) if use_p else None
    u = _as_signal(u) if use_u else None
    base = 1.0 if use_base else 0.0
    out: Tensor | float = base
    if p is not None:
        out = out + beta * p
    if u is not None:
        out = out + (1 - beta) * u
    if not isinstance(out, Tensor):
        dtype = beta.dtype if isinstance(beta, Tensor) and beta.dtype == torch.float64 else None
        device = beta.device if isinstance(beta, Tensor) else None
        out = torch.tensor(out, dtype=dtype or torch.float32, device=device)
    elif not out.is_floating_point():
        out = out.to(torch.float32)
    return out


def fixed_strength(
    p: Tensor | float | None = None,
    u: Tensor | float | None = None,
    beta: float | Tensor | None = None,
    use_p: bool = True,
    use_u: bool = True,
    use_base: bool = True,
) -> Tensor:
    """ITI's strength rule: a constant multiplier 1 (edit = ``alpha * sigma * dir``).

    Same signature as :func:`adaptive_strength` so the two rules are
    interchangeable; the signals and flags are ignored except for the shape and
    device of the result.

    Args:
        p: Optional per-token tensor; only its shape/device are used.
        u: Optional per-token tensor; only its shape/device are used.
        beta: Ignored.
        use_p: Ignored.
        use_u: Ignored.
        use_base: Ignored.

    Returns:
        Ones of the broadcast shape of the given tensors (0-dim if none), float32,
        on their device.
    """
    del beta, use_p, use_u, use_base
    tensors = [t for t in (p, u) if isinstance(t, Tensor)]
    if not tensors:
        return torch.ones((), dtype=torch.float32)
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    return torch.ones(shape, dtype=torch.float32, device=tensors[0].device)
