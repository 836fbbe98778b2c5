r"""Resampling schemes: log-weights ``(..., N)`` -> ancestor indices ``(..., n)`` in ``[0, N)``.

Every scheme resamples each group (leading index) independently and is unbiased:
:math:`E[\#\{k : A_k = i\}] = n W_i` with :math:`W` the normalised weights, and the offspring
counts of a group sum to exactly ``n``. Particles of weight zero (log-weight ``-inf``) are never
chosen. Randomness comes only from ``generator`` (which must live on ``log_w``'s device): the same
generator state gives the same ancestors.

All schemes but :func:`ssp` are sync-free (no ``.item()``, no Python branch on tensor values), so
they can run inside a captured CUDA step. A group whose log-weights are all ``-inf`` has no
distribution; its ancestors are in range but meaningless (the engine's guard reports it).

The inverse-CDF schemes share one float32 boundary guard: the CDF is built in float64 and divided
by its own last entry, so it is exactly 1.0 from the last positive-weight particle on; with the
uniforms (float64) kept below 1, ``searchsorted(cdf, u, right=True)`` can never land on a trailing
zero-weight particle, nor past the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.checks import check_n_particles
from smcdiff.errors import SMCDiffError
from smcdiff.resampling._ssp_numba import ssp_counts
from smcdiff.weights import normalize

__all__ = [
    "SCHEMES",
    "Scheme",
    "get_scheme",
    "multinomial",
    "normalized_cdf",
    "offspring_counts",
    "residual",
    "ssp",
    "stratified",
    "systematic",
]

Scheme = Callable[..., torch.Tensor]

_BELOW_ONE = 1.0 - 2.0**-53  # largest float64 < 1


def _check(log_w: torch.Tensor, n: int | None) -> int:
    """Validate the input (shapes only, no sync) and return the number of draws ``n``."""
    if not isinstance(log_w, torch.Tensor) or not log_w.is_floating_point() or log_w.dim() < 1:
        raise SMCDiffError("resampling: log_w must be a floating tensor of shape (..., N)")
    if log_w.shape[-1] < 1:
        raise SMCDiffError("resampling: log_w has no particles (last dimension is 0)")
    return log_w.shape[-1] if n is None else check_n_particles(n, minimum=1, name="n")


def _weights(log_w: torch.Tensor) -> torch.Tensor:
    """Normalised weights ``W`` in float64, shape ``(..., N)``."""
    return normalize(log_w.to(torch.float64))


def _uniform(shape: tuple[int, ...], log_w: torch.Tensor, generator: torch.Generator | None):
    return torch.rand(shape, dtype=torch.float64, device=log_w.device, generator=generator)


def normalized_cdf(mass: torch.Tensor) -> torch.Tensor:
    r"""CDF :math:`F_i = \sum_{j \le i} m_j / \sum_j m_j` of non-negative ``mass`` ``(..., N)``.

    Dividing by the computed last entry (not by the exact total 1) makes :math:`F_i = 1.0` exactly
    for every ``i`` at or after the last positive mass. An all-zero row stays all zero.
    """
    cdf = mass.cumsum(-1)
    return cdf / cdf[..., -1:].clamp_min(torch.finfo(cdf.dtype).tiny)


def _inverse_cdf(mass: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""``A_k = min{i : F_i > u_k}`` for float64 ``mass`` ``(..., N)`` and ``u`` ``(..., n)``.

    ``u`` need not be sorted. ``u`` is kept below 1 (``(k + V)/n`` can round up to 1.0).
    """
    u = u.clamp(max=_BELOW_ONE)
    idx = torch.searchsorted(normalized_cdf(mass), u, right=True)
    return idx.clamp_(max=mass.shape[-1] - 1)


def _repeat_indices(cum_counts: torch.Tensor, n: int) -> torch.Tensor:
    """``np.repeat(arange(N), counts)`` from cumulative counts ``(..., N)``; ``(..., n)``.

    Position ``k`` gets particle ``i`` with ``cum[i-1] <= k < cum[i]``; positions at or past the
    total are clamped to ``N - 1`` (callers mask or never produce them).
    """
    pos = torch.arange(n, dtype=cum_counts.dtype, device=cum_counts.device)
    pos = pos.expand(*cum_counts.shape[:-1], n).contiguous()
    idx = torch.searchsorted(cum_counts, pos, right=True)
    return idx.clamp_(max=cum_counts.shape[-1] - 1)


def multinomial(
    log_w: torch.Tensor, n: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Multinomial resampling: :math:`A_k = F^{-1}(U_k)`, :math:`U_k \overset{iid}{\sim} U[0,1)`.

    ``log_w`` ``(..., N)`` -> ancestors ``(..., n)`` (``n`` defaults to ``N``), in draw order.
    Offspring counts are :math:`\mathrm{Multinomial}(n, W)`. Unlike ``torch.multinomial`` there is
    no limit on ``N`` (CUDA caps categories at :math:`2^{24}`).
    """
    n = _check(log_w, n)
    return _inverse_cdf(_weights(log_w), _uniform((*log_w.shape[:-1], n), log_w, generator))


def _ancestors_from_counts_below(c: torch.Tensor, n: int) -> torch.Tensor:
    r"""Ancestors for sorted uniforms from :math:`C_i = \#\{k : u_k < F_i\}` ``(..., N)``.

    :math:`A_k = \min\{i : F_i > u_k\} = \min\{i : C_i > k\} = \#\{i : C_i \le k\}`: a histogram
    of the :math:`C_i` (one ``scatter_add``) and its prefix sum (one scan). O(N), no binary search.
    """
    hist = torch.zeros((*c.shape[:-1], n + 1), dtype=torch.int32, device=c.device)
    hist.scatter_add_(-1, c, torch.ones_like(c, dtype=torch.int32))
    return hist[..., :n].cumsum(-1, dtype=torch.long)


def stratified(
    log_w: torch.Tensor, n: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Stratified resampling: :math:`A_k = F^{-1}((k + V_k)/n)`, :math:`V_k \overset{iid}{\sim}
    U[0,1)`, one uniform per stratum :math:`[k/n, (k+1)/n)`.

    ``log_w`` ``(..., N)`` -> sorted ancestors ``(..., n)``. With :math:`m_i = nF_i`,
    :math:`j = \lfloor m_i \rfloor`: :math:`C_i = j + [j < n,\ V_j < m_i - j]` uniforms fall
    below :math:`F_i`, which gives the ancestors without a binary search.
    """
    n = _check(log_w, n)
    v = _uniform((*log_w.shape[:-1], n), log_w, generator)
    m = n * normalized_cdf(_weights(log_w))
    j = m.floor().long().clamp_(max=n)
    v_j = v.gather(-1, j.clamp(max=n - 1))
    c = j + ((j < n) & (v_j < m - j)).long()
    return _ancestors_from_counts_below(c, n)


def systematic(
    log_w: torch.Tensor, n: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Systematic resampling: :math:`A_k = F^{-1}((k + V)/n)`, one :math:`V \sim U[0,1)` per group.

    ``log_w`` ``(..., N)`` -> sorted ancestors ``(..., n)``. Every offspring count is
    :math:`\lfloor nW_i \rfloor` or :math:`\lceil nW_i \rceil`. :math:`C_i = \lceil nF_i - V \rceil`
    uniforms fall below :math:`F_i`, which gives the ancestors without a binary search.
    """
    n = _check(log_w, n)
    v = _uniform((*log_w.shape[:-1], 1), log_w, generator)
    c = torch.ceil(n * normalized_cdf(_weights(log_w)) - v).long().clamp_(0, n)
    return _ancestors_from_counts_below(c, n)


def residual(
    log_w: torch.Tensor, n: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Residual resampling: :math:`\lfloor nW_i \rfloor` copies of particle ``i``, then
    :math:`R = n - \sum_i \lfloor nW_i \rfloor` multinomial draws on the residuals
    :math:`r_i = nW_i - \lfloor nW_i \rfloor`.

    ``log_w`` ``(..., N)`` -> ancestors ``(..., n)``: the deterministic copies (sorted) first, then
    the residual draws. ``R`` differs per group, so ``n`` residual draws are made and positions
    :math:`k < n - R` take the copies instead; the copies are truncated at ``n``, so a
    round-off with :math:`\sum_i \lfloor nW_i \rfloor > n` still yields exactly ``n`` ancestors.
    """
    n = _check(log_w, n)
    nw = n * _weights(log_w)
    floor = nw.floor()
    cum_floor = floor.cumsum(-1)
    copies = _repeat_indices(cum_floor, n)
    drawn = _inverse_cdf(nw - floor, _uniform((*log_w.shape[:-1], n), log_w, generator))
    k = torch.arange(n, dtype=torch.float64, device=log_w.device)
    return torch.where(k < cum_floor[..., -1:], copies, drawn)


def ssp(
    log_w: torch.Tensor, n: int | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Srinivasan sampling process (Gerber, Chopin & Whiteley, 2019).

    Offspring counts :math:`\in \{\lfloor nW_i \rfloor, \lceil nW_i \rceil\}` with
    :math:`E[\mathrm{count}_i] = nW_i` and :math:`\sum_i \mathrm{count}_i = n`, negatively
    associated; the fractional parts are resolved pairwise in particle order (see
    :func:`smcdiff.resampling._ssp_numba.ssp_counts`). ``log_w`` ``(..., N)`` -> sorted ancestors
    ``(..., n)``.

    Sequential, so the counts are computed by a numba kernel on the host (compiled on the first
    call): on CUDA the weights and uniforms are copied to the host and the counts back, which
    synchronises the device. Not for use inside a captured CUDA step.
    """
    n = _check(log_w, n)
    nw = n * _weights(log_w)
    u = _uniform(nw.shape, log_w, generator)
    n_particles = nw.shape[-1]
    counts = ssp_counts(
        nw.reshape(-1, n_particles).cpu().numpy(), u.reshape(-1, n_particles).cpu().numpy(), n
    )
    counts = torch.from_numpy(counts).to(log_w.device).reshape(nw.shape)
    return _repeat_indices(counts.cumsum(-1), n)


def offspring_counts(ancestors: torch.Tensor, n_particles: int) -> torch.Tensor:
    r"""Offspring counts :math:`c_i = \#\{k : A_k = i\}`: ``(..., n)`` -> ``(..., N)`` int64."""
    counts = torch.zeros(
        (*ancestors.shape[:-1], n_particles), dtype=torch.int64, device=ancestors.device
    )
    return counts.scatter_add_(-1, ancestors, torch.ones_like(ancestors))


SCHEMES: dict[str, Scheme] = {
    "multinomial": multinomial,
    "residual": residual,
    "ssp": ssp,
    "stratified": stratified,
    "systematic": systematic,
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The scheme named ``scheme`` in :data:`SCHEMES`; a callable is returned as is."""
    if callable(scheme):
        return scheme
    if isinstance(scheme, str) and scheme in SCHEMES:
        return SCHEMES[scheme]
    raise SMCDiffError(
        f"unknown resampling scheme {scheme!r}; valid names: {', '.join(sorted(SCHEMES))} "
        "(or a callable scheme(log_w, n=None, *, generator) -> ancestors: the engine calls it as scheme(log_w, generator=g) for N offspring)"
    )
