"""Log-space weight arithmetic. Pure functions over the last dimension (particles).

All functions accept log-weights of shape ``(..., N)`` (any batch of independent groups) and
reduce over the last dimension. ``-inf`` is a legal log-weight (weight zero); NaN is not, and is
propagated (callers detect it, see :mod:`smcdiff.engine.guard`).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "conditional_ess",
    "ess",
    "log_mean_exp",
    "log_normalize",
    "normalize",
]


def log_normalize(log_w: torch.Tensor) -> torch.Tensor:
    r"""Normalised log-weights :math:`\log W_i = \log w_i - \log \sum_j w_j`, shape ``(..., N)``."""
    return log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)


def normalize(log_w: torch.Tensor) -> torch.Tensor:
    r"""Normalised weights :math:`W_i = w_i / \sum_j w_j` (a softmax), shape ``(..., N)``.

    Written as :math:`\exp(\ell - \mathrm{lse}(\ell))`: ``torch.softmax`` runs one CUDA block per
    row, 9 ms for one row of 10^7 float64 on an H200, against ~0.1 ms for the reduction.
    """
    return torch.exp(log_normalize(log_w))


def log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r""":math:`\log \frac1N \sum_i e^{\ell_i}`, computed stably."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def ess(log_w: torch.Tensor) -> torch.Tensor:
    r"""Effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2 \in [1, N]`, shape ``(...)``.

    Computed as :math:`\exp(2\,\mathrm{lse}(\ell) - \mathrm{lse}(2\ell))`, which is exact in log space.
    """
    return torch.exp(2.0 * torch.logsumexp(log_w, dim=-1) - torch.logsumexp(2.0 * log_w, dim=-1))


def conditional_ess(log_w: torch.Tensor, log_g: torch.Tensor) -> torch.Tensor:
    r"""Conditional ESS of an incremental weight ``log_g`` under current weights ``log_w``.

    :math:`\mathrm{CESS} = N (\sum_i W_i G_i)^2 / \sum_i W_i G_i^2 \in [1, N]` (Zhou, Johansen &
    Aston, 2016), with :math:`W` the normalised current weights; shape ``(...)``.
    Equals :func:`ess` of ``log_g`` when the current weights are uniform.
    """
    log_W = log_normalize(log_w)
    n = log_w.shape[-1]
    return n * torch.exp(
        2.0 * torch.logsumexp(log_W + log_g, dim=-1) - torch.logsumexp(log_W + 2.0 * log_g, dim=-1)
    )
