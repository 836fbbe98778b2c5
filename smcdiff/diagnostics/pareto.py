r"""Pareto-:math:`\hat k` of importance weights by ArviZ's PSIS (Vehtari et al., 2024, JMLR 25).

PSIS fits a generalised Pareto distribution to the largest :math:`M = \lfloor\min(N/5,
3\sqrt N)\rfloor` (ArviZ 1.x; ``ceil`` in 0.x) weights; its shape :math:`\hat k` estimates the tail
index :math:`\xi` of the weight distribution, :math:`P(w > u) \sim u^{-1/\xi}`. The weighted
estimates are reliable for :math:`\hat k < 0.7` (and :math:`\hat k < 1 - 1/\log_{10} N`); at
:math:`\hat k \ge 0.5` the weights have infinite variance and the ESS overstates the quality.

Sign conventions (the one thing that differs between ArviZ versions):

- 0.x ``arviz.psislw(log_weights, reff)`` takes **log weights** (for LOO the caller passes
  ``-log_lik``), over the last axis;
- 1.x ``arviz_stats.base.array_stats.psislw(ary, r_eff, axis)`` takes the **log-likelihood** and
  negates it internally, so it is called with ``-log_weights``.

Conventions here, the same for both versions: fewer than 25 particles (a tail of fewer than 5) gives
``inf`` (no fit possible, treat as unreliable); a tail whose values are all equal, as for exactly
uniform weights, gives ``-inf`` (bounded weights with an atom at the maximum: the limit of a
bounded, negative-shape tail; PSIS has nothing to smooth). ``r_eff = 1``: SMC particles are
treated as independent draws.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from smcdiff.diagnostics.arviz import import_arviz
from smcdiff.errors import SMCDiffError

__all__ = ["pareto_k"]

_MIN_PARTICLES = 25


def pareto_k(log_weights: torch.Tensor) -> float | torch.Tensor:
    r"""PSIS :math:`\hat k` of log-weights ``(N,)`` -> ``float``, or ``(R, N)`` -> ``(R,)`` float64.

    The weights need not be normalised (:math:`\hat k` is invariant to a constant shift of the
    log-weights); ``-inf`` entries (zero weight) are allowed, NaN and ``+inf`` are errors.
    Computed in float64 numpy on the CPU.
    """
    if log_weights.dim() not in (1, 2):
        raise SMCDiffError(
            f"pareto_k: log_weights must be (N,) or (R, N), got shape {tuple(log_weights.shape)}"
        )
    rows = np.atleast_2d(log_weights.detach().to(device="cpu", dtype=torch.float64).numpy())
    if np.isnan(rows).any() or np.isposinf(rows).any():
        raise SMCDiffError("pareto_k: log_weights contain NaN or +inf")
    if np.isneginf(rows).all(axis=-1).any():
        raise SMCDiffError("pareto_k: every weight of a run is zero (all log_weights are -inf)")
    n = rows.shape[-1]
    k = np.full(rows.shape[0], np.inf)
    if n >= _MIN_PARTICLES:
        tail = math.floor(min(n / 5, 3 * math.sqrt(n)))
        top = np.sort(rows, axis=-1)[:, -tail:]
        flat = top[:, 0] == top[:, -1]
        k[flat] = -np.inf
        if not flat.all():
            k[~flat] = _psis_khat(rows[~flat])
    return float(k[0]) if log_weights.dim() == 1 else torch.from_numpy(k)


def _psis_khat(log_weights: np.ndarray) -> np.ndarray:
    r""":math:`\hat k` per row of float64 log-weights ``(R, N)``, by the installed ArviZ."""
    az, major = import_arviz()
    if major == 0:
        _, khat = az.psislw(log_weights, reff=1.0)
    elif major == 1:
        from arviz_stats.base import array_stats

        _, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
    else:
        raise NotImplementedError(
            f"smcdiff.diagnostics.pareto supports ArviZ 0.x and 1.x; found arviz {az.__version__}"
        )
    return np.asarray(khat, dtype=np.float64).reshape(log_weights.shape[0])
