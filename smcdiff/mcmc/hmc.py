r"""Hamiltonian Monte Carlo with a leapfrog integrator and an identity or diagonal mass."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import (
    GradientKernel,
    LogProb,
    MCMCState,
    MoveInfo,
    chain_step_size,
    check_event_param,
    metropolis_given,
    nan_evaluations,
    row_sum,
    value_and_grad,
)

__all__ = ["HMC", "hmc_transition"]


class HMC(GradientKernel):
    r"""HMC: draw :math:`p \sim N(0, M)`, take ``n_leapfrog`` = L leapfrog steps of size h

    .. math:: p \mathrel{+}= \tfrac h2 g(x);\quad x \mathrel{+}= h M^{-1} p;\quad
        p \mathrel{+}= \tfrac h2 g(x)

    (inner half-kicks merged; L gradients per step) and accept with
    :math:`\log\alpha = H(x, p) - H(x', p')`, :math:`H = -\log\pi(x) + \tfrac12 p^\top M^{-1} p`.

    ``inv_mass``: the diagonal of :math:`M^{-1}`, of the event shape (``(d,)`` for vectors; any
    shape broadcasting against one particle), or ``None`` for the identity. Works on particles of
    any shape ``(N, *event_shape)``: kinetic energies sum over every event dimension.
    """

    default_target_accept: float | None = 0.65

    def __init__(
        self, log_prob: LogProb, n_leapfrog: int = 10, inv_mass: torch.Tensor | None = None
    ):
        if isinstance(n_leapfrog, bool) or not isinstance(n_leapfrog, int) or n_leapfrog < 1:
            raise SMCDiffError(f"HMC: n_leapfrog must be an int >= 1, got {n_leapfrog!r}")
        if inv_mass is not None and not bool((torch.as_tensor(inv_mass) > 0).all()):
            raise SMCDiffError("HMC: inv_mass (diagonal of the inverse mass) must be positive")
        super().__init__(log_prob)
        self.n_leapfrog = n_leapfrog
        self.inv_mass = inv_mass

    def init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MCMCState:
        if self.inv_mass is not None:
            check_event_param("inv_mass", self.inv_mass, x, "HMC")
        return super().init(x, generator)

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]:
        x = state.x
        p, u = self.draws(state, generator)
        h = chain_step_size(step_size, x)
        pair = partial(value_and_grad, self.log_prob)
        return hmc_transition(pair, state, p, u, h, self.inv_mass_tensor(x), self.n_leapfrog)

    @staticmethod
    def draws(state: MCMCState, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The random numbers of one transition from ``state``: ``p`` standard normal (shape of
        ``x``) and ``u`` ``(N,)`` uniform in the dtype of log alpha, in this order."""
        x = state.x
        p = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        dtype = torch.promote_types(state.log_prob.dtype, x.dtype)
        u = torch.rand(x.shape[0], generator=generator, dtype=dtype, device=x.device)
        return p, u

    def inv_mass_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The diagonal of :math:`M^{-1}` as a tensor of ``x``'s dtype and device (a 0-d one
        for the identity)."""
        if self.inv_mass is None:
            return torch.ones((), dtype=x.dtype, device=x.device)
        return torch.as_tensor(self.inv_mass, dtype=x.dtype, device=x.device)


def hmc_transition(
    pair: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    state: MCMCState,
    p: torch.Tensor,
    u: torch.Tensor,
    h: torch.Tensor,
    inv_m: torch.Tensor,
    n_leapfrog: int,
) -> tuple[MCMCState, MoveInfo]:
    r"""One HMC transition (:class:`HMC`) as a pure function of tensors, with its random numbers
    drawn by the caller: ``p`` standard normal (shape of ``state.x``; the momentum is
    :math:`M^{1/2} p`), ``u`` ``(N,)`` uniform for the accept step, ``h`` the step size
    broadcasting against ``x`` (:func:`~smcdiff.mcmc.base.chain_step_size`), ``inv_m`` the
    diagonal of :math:`M^{-1}`, ``pair(x) -> (log_prob (N,), grad)``. No host sync, no
    branch on values: ``torch.compile`` can fuse it (:mod:`smcdiff.mcmc.compiled`)."""
    x, lp, g = state.x, state.log_prob, state.grad
    p = p / inv_m.sqrt()
    h0 = -lp + 0.5 * row_sum(inv_m * p * p)
    p = p + 0.5 * h * g
    bad_lp = bad_grad = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(n_leapfrog):
        x = x + h * inv_m * p
        lp, g = pair(x)
        nan_lp, nan_grad = nan_evaluations(x, lp, g, state.x)  # anywhere on the path
        bad_lp, bad_grad = bad_lp | nan_lp, bad_grad | nan_grad
        p = p + (h if i < n_leapfrog - 1 else 0.5 * h) * g
    h1 = -lp + 0.5 * row_sum(inv_m * p * p)
    prop = MCMCState(x, lp, g)
    return metropolis_given(state, prop, h0 - h1, u, (bad_lp, bad_grad))
