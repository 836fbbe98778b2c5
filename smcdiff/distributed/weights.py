r"""Global normalisation, ESS and log Z of a particle system spread over R ranks.

Rank :math:`r` holds :math:`n` particles with log-weights :math:`\ell_i` normalised *on the
rank* (the engine's step normalises locally) and its share of the step's increment,
:math:`s_r = \log\sum_{i \in r} W_{k-1}^i G_k^i` (the engine's local ``log_z_increment`` when the
step started from globally normalised weights :math:`W_{k-1}`). One all-gather of
:math:`(s_r, q_r = \log\sum_{i\in r} e^{2\ell_i})` per rank gives every rank, bitwise alike:

.. math::

    \log\frac{\hat Z_k}{\hat Z_{k-1}} = \log\sum_r e^{s_r}, \qquad
    m_r = s_r - \log\sum_{r'} e^{s_{r'}}, \qquad
    W_i = e^{m_r + \ell_i}, \qquad
    \mathrm{ESS} = \Big(\sum_r e^{2 m_r + q_r}\Big)^{-1},

the log-Z increment, each rank's log-mass :math:`m_r` (:math:`\sum_r e^{m_r} = 1`), the globally
normalised weights and the global ESS — the same numbers a single process holding all
:math:`N = Rn` particles computes, up to the order of floating-point sums.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from smcdiff.distributed.comm import Comm

__all__ = ["GlobalWeights", "global_weights", "island_ess"]


class GlobalWeights(NamedTuple):
    """What one normalisation all-gather tells every rank (all float64, on the weights' device).

    ``log_increment`` ``(G,)``: the global log-Z increment; ``log_mass`` ``(R, G)``: each rank's
    log share of the normalised weight; ``ess`` ``(G,)``: the global ESS; ``log_weights``
    ``(G, n)``: this rank's particles' globally normalised log-weights; ``extra`` ``(R, m)``:
    the other values gathered with them (e.g. invalid-particle counts), per rank."""

    log_increment: torch.Tensor
    log_mass: torch.Tensor
    ess: torch.Tensor
    log_weights: torch.Tensor
    extra: torch.Tensor


def global_weights(
    comm: Comm,
    local_log_w: torch.Tensor,
    local_increment: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> GlobalWeights:
    r"""Normalise across ranks (one all-gather of ``2G + m`` float64 per rank).

    ``local_log_w`` ``(G, n)``: log-weights normalised on this rank (a rank whose weights are
    all zero has NaN or ``-inf`` rows; its particles get weight zero); ``local_increment``
    ``(G,)``: :math:`s_r` (``-inf`` for a rank of zero mass); ``extra`` ``(m,)``: more values to
    gather in the same collective."""
    lw = local_log_w.double()
    G = lw.shape[0]
    lsq = torch.logsumexp(2.0 * lw, dim=-1)
    more = lw.new_zeros(0) if extra is None else extra.double().reshape(-1)
    row = torch.cat([local_increment.double().reshape(G), lsq, more])
    table = comm.all_gather(row)  # (R, 2G + m)
    s, q = table[:, :G], table[:, G : 2 * G]
    inc = torch.logsumexp(s, dim=0)
    log_mass = s - inc
    dead = log_mass == -math.inf  # a rank without mass: its q may be NaN
    ess = torch.exp(-torch.logsumexp(torch.where(dead, -math.inf, 2.0 * log_mass + q), dim=0))
    mine = log_mass[comm.rank].unsqueeze(-1)
    glw = torch.where(mine == -math.inf, -math.inf, lw + mine)
    return GlobalWeights(inc, log_mass, ess, glw, table[:, 2 * G :])


def island_ess(log_mass: torch.Tensor) -> torch.Tensor:
    r"""ESS of the islands' weights :math:`e^{m_r}`: :math:`1/\sum_r e^{2m_r}`, ``(R, G)`` ->
    ``(G,)``."""
    return torch.exp(-torch.logsumexp(2.0 * log_mass, dim=0))
