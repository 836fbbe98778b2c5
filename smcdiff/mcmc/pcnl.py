r"""Preconditioned Crank–Nicolson Langevin (pCNL) for targets :math:`N(0, C)\,e^{\Phi}`.

Cotter, Roberts, Stuart & White (2013), "MCMC methods for functions", pCNL (θ = 1/2, K = C).
"""

from __future__ import annotations

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import (
    GradientKernel,
    LogProb,
    MCMCState,
    MoveInfo,
    chain_step_size,
    check_event_param,
    metropolis,
    row_sum,
    value_and_grad,
)

__all__ = ["PCNL"]


class PCNL(GradientKernel):
    r"""pCNL for :math:`\log\pi(x) = \log N(x; 0, C) + \Phi(x)` with :math:`C` a scalar or
    diagonal ``prior_var`` (``float``, or a tensor of the event shape: ``(d,)`` for vectors);
    ``log_prob`` is the full :math:`\log\pi` and
    :math:`\Phi(x) = \log\pi(x) + \tfrac12 x^\top C^{-1} x` (up to a constant),
    :math:`g = \nabla\Phi = \nabla\log\pi + C^{-1}x`.

    Crank–Nicolson on :math:`dx = (-x + C g(x))\,ds + \sqrt{2C}\,dW` with step δ
    (``step_size``) gives, with :math:`\rho = (2 - \delta)/(2 + \delta)`, :math:`\xi \sim N(0, I)`,

    .. math:: x' = \rho x + \sqrt{1 - \rho^2}\,\big(C^{1/2}\xi + \sqrt{\delta/2}\,C g(x)\big),

    which is reversible for :math:`N(0, C)` when :math:`\Phi = 0`, so the MH ratio involves
    only :math:`\Phi` and :math:`g`:

    .. math:: \log\alpha = r(x', x) - r(x, x'),\quad
        r(u, v) = \Phi(u) + \tfrac12\langle v - u, g(u)\rangle
        + \tfrac\delta4 \langle u + v, g(u)\rangle - \tfrac\delta4 \|C^{1/2} g(u)\|^2.

    The state's ``grad`` is :math:`\nabla\log\pi`, like every kernel's.
    """

    default_target_accept: float | None = 0.574

    def __init__(self, log_prob: LogProb, prior_var: float | torch.Tensor = 1.0):
        if isinstance(prior_var, bool) or not bool((torch.as_tensor(prior_var) > 0).all()):
            raise SMCDiffError("PCNL: prior_var (the prior covariance C) must be positive")
        super().__init__(log_prob)
        self.prior_var = prior_var

    def init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MCMCState:
        check_event_param("prior_var", self.prior_var, x, "PCNL")
        return super().init(x, generator)

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]:
        x = state.x
        c = torch.as_tensor(self.prior_var, dtype=x.dtype, device=x.device)
        d = chain_step_size(step_size, x)
        rho = (2 - d) / (2 + d)
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        g = state.grad + x / c
        x_new = rho * x + torch.sqrt(1 - rho * rho) * (c.sqrt() * xi + torch.sqrt(d / 2) * c * g)
        prop = MCMCState(x_new, *value_and_grad(self.log_prob, x_new))
        g_new = prop.grad + x_new / c
        phi = state.log_prob + 0.5 * row_sum(x * x / c)
        phi_new = prop.log_prob + 0.5 * row_sum(x_new * x_new / c)
        d = d.reshape(-1)

        log_alpha = _r(x_new, x, phi_new, g_new, c, d) - _r(x, x_new, phi, g, c, d)
        return metropolis(state, prop, log_alpha, generator)


def _r(
    u: torch.Tensor,
    v: torch.Tensor,
    phi_u: torch.Tensor,
    g_u: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
) -> torch.Tensor:
    """:math:`r(u, v)` of :class:`PCNL`, per chain ``(N,)`` (inner products over event dims)."""
    return (
        phi_u
        + 0.5 * row_sum((v - u) * g_u)
        + d / 4 * row_sum((u + v) * g_u)
        - d / 4 * row_sum(c * g_u * g_u)
    )
