r"""Pareto-:math:`\hat k` of importance weights: PSIS (Vehtari, Simpson, Gelman, Yao & Gabry,
2024, JMLR 25, "Pareto smoothed importance sampling").

PSIS fits a generalised Pareto distribution (GPD) to the exceedances of the largest
:math:`M = \lceil\min(N/5, 3\sqrt N)\rceil` weights over the :math:`(M+1)`-th largest
(:func:`~smcdiff.engine.collectors.psis_tail_size`; the R package ``loo`` and ArviZ 0.x); its
shape :math:`\hat k` estimates the tail index :math:`\xi` of the weight distribution,
:math:`P(w > u) \sim u^{-1/\xi}`. The weighted estimates are reliable for :math:`\hat k < 0.7`
(and :math:`\hat k < 1 - 1/\log_{10} N`); at :math:`\hat k \ge 0.5` the weights have infinite
variance and the ESS overstates the quality.

The fit (:func:`tail_pareto_k`) reads only the :math:`M+1` largest log-weights, so a run's
:math:`\hat k` costs one ``topk`` (:math:`O(N)`, on the device) and :math:`O(M\sqrt M)` float64
work on :math:`M \le 3\sqrt N + 1` values, never a sort of all N. With :math:`w_{(1)} \ge \dots`
the weights scaled by the largest, the exceedances are :math:`y_j = w_{(j)} - u`,
:math:`u = \max(w_{(M+1)}, \text{tiny})`, for the :math:`L \le M` weights strictly above
:math:`u`, and :math:`\hat k` is the empirical-Bayes estimate of Zhang & Stephens (2009,
Technometrics 51) with ``loo``'s weak prior toward 0.5: on the grid
:math:`\theta_j = 1/y_{max} + (1 - \sqrt{m/(j - 1/2)}) / (3 y_q)`, :math:`j = 1..m`,
:math:`m = 30 + \lfloor\sqrt L\rfloor`, with :math:`y_q` the
:math:`\lfloor L/4 + 1/2\rfloor`-th smallest exceedance (a lower quartile),

.. math::
    k(\theta) = \frac1L \sum_i \log(1 - \theta y_i), \quad
    \ell(\theta) = L\,(\log(-\theta / k(\theta)) - k(\theta) - 1), \quad
    \bar\theta = \sum_j \operatorname{softmax}(\ell)_j\, \theta_j, \quad
    \hat k = \frac{L\,k(\bar\theta) + 10 \cdot 0.5}{L + 10}

(posterior weights below :math:`10\,\epsilon` dropped). This is the estimate of ArviZ 0.x's
``psislw`` (the tests check agreement with it to ~1e-9), written here so that it needs only the
tail and no ArviZ.

Conventions: fewer than 25 particles, or 4 or fewer weights above :math:`u`, give ``inf`` (no fit
possible, treat as unreliable); :math:`M` largest weights all equal, as for exactly uniform
weights, give ``-inf`` (bounded weights with an atom at the maximum: the limit of a bounded,
negative-shape tail; PSIS has nothing to smooth). ``r_eff = 1``: SMC particles are treated as
independent draws.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from smcdiff.engine.collectors import psis_tail_size
from smcdiff.errors import SMCDiffError

__all__ = ["pareto_k", "tail_pareto_k"]

_MIN_PARTICLES = 25
_CHUNK = 1 << 24  # float64 elements of one (rows, grid, tail) block of the fit


def pareto_k(log_weights: torch.Tensor) -> float | torch.Tensor:
    r"""PSIS :math:`\hat k` of log-weights ``(N,)`` -> ``float``, or ``(R, N)`` -> ``(R,)`` float64.

    The weights need not be normalised (:math:`\hat k` is invariant to a constant shift of the
    log-weights); ``-inf`` entries (zero weight) are allowed, NaN and ``+inf`` are errors. One
    ``topk`` of the :math:`M + 1` largest on ``log_weights``' device, then :func:`tail_pareto_k`.
    """
    if log_weights.dim() not in (1, 2):
        raise SMCDiffError(
            f"pareto_k: log_weights must be (N,) or (R, N), got shape {tuple(log_weights.shape)}"
        )
    rows = torch.atleast_2d(log_weights.detach())
    if torch.isnan(rows).any() or torch.isposinf(rows).any():
        raise SMCDiffError("pareto_k: log_weights contain NaN or +inf")
    if torch.isneginf(rows).all(dim=-1).any():
        raise SMCDiffError("pareto_k: every weight of a run is zero (all log_weights are -inf)")
    n = rows.shape[-1]
    k = torch.full((rows.shape[0],), math.inf, dtype=torch.float64)
    if n >= _MIN_PARTICLES:
        top = torch.topk(rows.double(), psis_tail_size(n) + 1, dim=-1).values
        k = torch.from_numpy(tail_pareto_k(top, n))
    return float(k[0]) if log_weights.dim() == 1 else k


def tail_pareto_k(top: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    r"""PSIS :math:`\hat k` of ``R`` runs of ``n`` weights from their largest log-weights only:
    ``top`` ``(R, m)``, each row sorted descending, :math:`m \ge M + 1` with
    :math:`M` = :func:`~smcdiff.engine.collectors.psis_tail_size` ``(n)`` (columns past
    :math:`M + 1` are not read) -> ``(R,)`` float64 (module docstring: the estimate and the
    ``inf`` / ``-inf`` conventions). Exactly :func:`pareto_k` of the full rows.
    """
    M = psis_tail_size(n)
    top = torch.as_tensor(top).detach().to(device="cpu", dtype=torch.float64)
    if n < _MIN_PARTICLES:
        return np.full(top.shape[0], np.inf)
    if top.dim() != 2 or top.shape[1] < M + 1:
        raise SMCDiffError(
            f"tail_pareto_k: top must be (R, m) with m >= psis_tail_size(n) + 1 = {M + 1} "
            f"for n={n}, got shape {tuple(top.shape)}"
        )
    x = top[:, : M + 1].numpy()
    k = np.full(x.shape[0], np.inf)
    x = x - x[:, :1]  # the largest weight is 1 (PSIS's scaling: exp never overflows)
    cut = np.maximum(x[:, M], np.log(np.finfo(float).tiny))
    above = (x[:, :M] > cut[:, None]).sum(axis=1)  # L: rows are descending, the tail a prefix
    flat = x[:, M - 1] == 0.0
    k[flat] = -np.inf
    for L in np.unique(above[~flat & (above > 4)]):
        rows = np.flatnonzero(~flat & (above == L))
        y = np.exp(x[rows, L - 1 :: -1]) - np.exp(cut[rows, None])  # ascending exceedances
        step = max(1, _CHUNK // (L * (30 + math.isqrt(L))))
        for s in range(0, rows.size, step):
            k[rows[s : s + step]] = _gpd_shape(y[s : s + step])
    return k


def _gpd_shape(y: np.ndarray) -> np.ndarray:
    r"""Zhang-Stephens GPD shape with the weak prior (module docstring) of each row of ascending
    positive exceedances ``y`` ``(R, L)`` -> ``(R,)``."""
    L = y.shape[1]
    m = 30 + math.isqrt(L)
    grid = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    theta = grid / (3.0 * y[:, int(L / 4 + 0.5) - 1, None]) + 1.0 / y[:, -1:]  # (R, m)
    kk = np.log1p(-theta[:, :, None] * y[:, None, :]).mean(axis=-1)  # (R, m)
    ell = L * (np.log(-theta / kk) - kk - 1.0)
    w = np.exp(ell - ell.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    w = np.where(w >= 10 * np.finfo(float).eps, w, 0.0)
    theta_bar = (theta * w).sum(axis=1) / w.sum(axis=1)
    k = np.log1p(-theta_bar[:, None] * y).mean(axis=1)
    return (L * k + 10 * 0.5) / (L + 10)
