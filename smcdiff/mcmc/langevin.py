r"""Langevin kernels: unadjusted (ULA), Metropolis-adjusted (MALA) and underdamped (BAOAB).

All three discretise Langevin dynamics for :math:`\pi`; with :math:`g = \nabla\log\pi` and
:math:`z \sim N(0, I)` per chain, on particles of any shape ``(N, *event_shape)`` (norms sum over
every event dimension). ULA and the underdamped kernel are unadjusted: their
stationary law is :math:`\pi` only up to an :math:`O(h)` (ULA) / :math:`O(h^2)` (BAOAB) bias.
They have no accept/reject: a step to where the target or its gradient is not finite (a diverging
chain, or a step out of the support) holds the chain back and is flagged in ``info.diverged``;
:func:`~smcdiff.mcmc.run_chain` warns when that happens.
"""

from __future__ import annotations

import math

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import (
    GradientKernel,
    LogProb,
    MCMCState,
    MoveInfo,
    chain_step_size,
    finite_rows,
    metropolis,
    nan_evaluations,
    row_sum,
    select,
    value_and_grad,
)

__all__ = ["MALA", "ULA", "UnderdampedLangevin"]


class _Overdamped(GradientKernel):
    def _propose(self, state: MCMCState, h: torch.Tensor, generator: torch.Generator) -> MCMCState:
        x = state.x
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_new = x + h * state.grad + torch.sqrt(2 * h) * z
        return MCMCState(x_new, *value_and_grad(self.log_prob, x_new))


class ULA(_Overdamped):
    r"""Unadjusted Langevin: :math:`x' = x + h\,g(x) + \sqrt{2h}\,z`, always accepted unless
    non-finite. For :math:`\pi = N(0, s^2)` its stationary variance is
    :math:`s^2 / (1 - h / (2 s^2))`."""

    default_target_accept: float | None = None

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]:
        prop = self._propose(state, chain_step_size(step_size, state.x), generator)
        ok = finite_rows(prop.log_prob, prop.grad)
        nan = nan_evaluations(prop.x, prop.log_prob, prop.grad, state.x)
        info = MoveInfo(ok.to(state.x.dtype), ok, (~ok).sum(), *nan, diverged=~ok)
        return select(ok, prop, state), info


class MALA(_Overdamped):
    r"""Metropolis-adjusted Langevin: the ULA proposal :math:`q(x, x') = N(x'; x + h g(x), 2h I)`
    accepted with

    .. math:: \log\alpha = \log\pi(x') - \log\pi(x)
        - \frac{\|x - x' - h g(x')\|^2 - \|x' - x - h g(x)\|^2}{4h}.
    """

    default_target_accept: float | None = 0.574

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]:
        h = chain_step_size(step_size, state.x)
        prop = self._propose(state, h, generator)
        fwd = row_sum((prop.x - state.x - h * state.grad).square())
        bwd = row_sum((state.x - prop.x - h * prop.grad).square())
        log_alpha = prop.log_prob - state.log_prob - (bwd - fwd) / (4 * h.reshape(-1))
        return metropolis(state, prop, log_alpha, generator)


class UnderdampedLangevin(GradientKernel):
    r"""Underdamped Langevin :math:`dx = v\,dt,\ dv = g(x)\,dt - \gamma v\,dt + \sqrt{2\gamma}\,dW`
    (unit mass) discretised by BAOAB (Leimkuhler & Matthews 2013), unadjusted:

    .. math:: v \mathrel{+}= \tfrac h2 g(x);\quad x \mathrel{+}= \tfrac h2 v;\quad
        v \leftarrow e^{-\gamma h} v + \sqrt{1 - e^{-2\gamma h}}\,z;\quad
        x \mathrel{+}= \tfrac h2 v;\quad v \mathrel{+}= \tfrac h2 g(x).

    One gradient per step. The velocity lives in the state (drawn :math:`N(0, I)` by ``init``);
    a non-finite step leaves the chain where it was. For a Gaussian :math:`\pi` BAOAB's
    :math:`x`-marginal is exact (its :math:`v`-marginal is not).
    """

    default_target_accept: float | None = None

    def __init__(self, log_prob: LogProb, friction: float = 1.0):
        if isinstance(friction, bool) or not (math.isfinite(friction) and friction > 0):
            raise SMCDiffError(
                f"UnderdampedLangevin: friction must be a number > 0, got {friction!r}"
            )
        super().__init__(log_prob)
        self.friction = friction

    def init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MCMCState:
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return MCMCState(x, *value_and_grad(self.log_prob, x), velocity=v)

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]:
        x, g = state.x, state.grad
        h = chain_step_size(step_size, x)
        c = torch.exp(-self.friction * h)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        v = state.velocity + 0.5 * h * g
        x = x + 0.5 * h * v
        v = c * v + torch.sqrt(1 - c * c) * z
        x = x + 0.5 * h * v
        lp, g = value_and_grad(self.log_prob, x)
        prop = MCMCState(x, lp, g, v + 0.5 * h * g)
        ok = finite_rows(lp, g) & torch.isfinite(prop.velocity).flatten(1).all(-1)
        nan = nan_evaluations(x, lp, g, state.x)
        info = MoveInfo(ok.to(x.dtype), ok, (~ok).sum(), *nan, diverged=~ok)
        return select(ok, prop, state), info
