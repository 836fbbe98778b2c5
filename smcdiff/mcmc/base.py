r"""Shared pieces of the batched MCMC kernels: state, info, gradients, the MH accept/reject.

Every kernel runs N independent chains at once on ``x`` of shape ``(N, *event_shape)`` (vectors
``(N, d)``, particle systems ``(N, n_atoms, dim)``, images ...) for a target :math:`\pi` given by
``log_prob: (N, *event_shape) -> (N,)``; every reduction runs over all event dimensions.
Kernels are small objects built from ``log_prob`` (and their own parameters) with two pure
methods::

    state = kernel.init(x, generator)                       # MCMCState
    state, info = kernel.step(state, step_size, generator)  # step_size: float or (N,) tensor

A proposal whose log-density or gradient is not finite is rejected (the chain stays put) and
counted in ``info.n_nonfinite``; nothing in a step syncs with the host or branches on values.
A log-density that is NaN (or +inf), or a gradient that is NaN where the log-density is finite,
at a finite point is a bug of the target, not a rejection: kernels flag those chains in
``info.nan_log_prob`` / ``info.nan_grad`` and the runners raise a
:class:`~smcdiff.errors.NonFiniteError` (:func:`nan_to_neg_inf` turns NaN log-densities into
``-inf``, zero density, for targets that are NaN outside their support). Unadjusted kernels
(ULA, underdamped) flag the chains they held back in ``info.diverged``: the step left the region
where the target is finite (too large a step size, or a step out of the support).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

from smcdiff.errors import SMCDiffError

__all__ = [
    "BLOWUP",
    "GradientKernel",
    "Kernel",
    "LogProb",
    "MCMCState",
    "MoveInfo",
    "chain_step_size",
    "check_event_param",
    "finite_rows",
    "nan_evaluations",
    "nan_to_neg_inf",
    "row_sum",
    "select",
    "value_and_grad",
]

LogProb = Callable[[torch.Tensor], torch.Tensor]
"""``log_prob(x (N, *event_shape)) -> (N,)``: an unnormalised log-density, differentiable in
``x``."""


class MCMCState(NamedTuple):
    """Per-chain state: ``x`` ``(N, *event_shape)``, ``log_prob`` ``(N,)``, ``grad`` (shape of
    ``x``; of log_prob at ``x``, reused by the next step), ``velocity`` (shape of ``x``) for kinetic
    kernels kept across steps (underdamped Langevin), else ``None``."""

    x: torch.Tensor
    log_prob: torch.Tensor
    grad: torch.Tensor
    velocity: torch.Tensor | None = None


class MoveInfo(NamedTuple):
    """``accept_prob`` ``(N,)``: the MH acceptance probability :math:`\\min(1, e^{\\log\\alpha})`
    (1 for unadjusted kernels, 0 for non-finite proposals); ``accepted`` ``(N,)`` bool;
    ``n_nonfinite``: scalar long tensor, the number of rejected non-finite proposals;
    ``nan_log_prob`` / ``nan_grad``: ``(N,)`` bool, chains whose step evaluated the target to a
    NaN (or +inf) log-density / a NaN gradient at a finite point (:func:`nan_evaluations`;
    ``None``: not reported); ``diverged``: ``(N,)`` bool, for unadjusted kernels the chains held
    back because their step was not finite (``None`` for Metropolis-adjusted kernels, whose
    rejections are part of the kernel)."""

    accept_prob: torch.Tensor
    accepted: torch.Tensor
    n_nonfinite: torch.Tensor
    nan_log_prob: torch.Tensor | None = None
    nan_grad: torch.Tensor | None = None
    diverged: torch.Tensor | None = None


class Kernel(Protocol):
    """A batched MCMC kernel; ``default_target_accept`` is the acceptance rate step-size
    adaptation aims at (``None``: the kernel is not adapted by default)."""

    default_target_accept: float | None

    def init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MCMCState: ...

    def step(
        self, state: MCMCState, step_size: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[MCMCState, MoveInfo]: ...


def value_and_grad(log_prob: LogProb, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_prob(x) (N,), ∇_x log_prob(x)`` (shape of ``x``)), both detached; works under
    ``no_grad``.
    Rows are independent, so the gradient of the sum is the per-row gradient. A ``log_prob``
    with a ``value_and_grad`` attribute (an analytic pair, same contract) is called instead."""
    pair = getattr(log_prob, "value_and_grad", None)
    if pair is not None:
        return pair(x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        if not isinstance(lp, torch.Tensor) or lp.is_complex():
            got = lp.dtype if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise SMCDiffError(f"target log_prob must return a real torch.Tensor (N,), got {got}")
        grad = None
        if lp.requires_grad:
            (grad,) = torch.autograd.grad(lp.sum(), x, allow_unused=True)
    if grad is None:  # log_prob does not depend on x
        grad = torch.zeros_like(x)
    return lp.detach(), grad.detach()


def chain_step_size(step_size: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float or ``(N,)`` step size as a ``(N or 1, 1, ..., 1)`` tensor broadcasting against
    ``x`` ``(N, *event_shape)``."""
    h = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    return h.reshape(-1, *([1] * (x.dim() - 1)))


def check_event_param(name: str, value: float | torch.Tensor, x: torch.Tensor, where: str) -> None:
    """Raise if the kernel parameter ``value`` (a float, or a tensor meant to broadcast against
    one particle, e.g. a diagonal mass) does not broadcast against ``x[0]`` (the event shape)."""
    shape, event = torch.as_tensor(value).shape, x.shape[1:]
    try:
        ok = torch.broadcast_shapes(shape, event) == event
    except RuntimeError:
        ok = False
    if not ok:
        raise SMCDiffError(
            f"{where}: {name} has shape {tuple(shape)}, which does not broadcast against one "
            f"particle of shape {tuple(event)}"
        )


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """``(N,)``: the sum of each row of ``x`` ``(N, *event_shape)`` over all its event dimensions
    (for ``(N, d)`` exactly ``x.sum(-1)``)."""
    return x.flatten(1).sum(-1)


def finite_rows(log_prob: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: chains whose log-density and gradient (``(N, *event_shape)``) are finite."""
    return torch.isfinite(log_prob) & torch.isfinite(grad).flatten(1).all(dim=-1)


BLOWUP = 1e4
"""A proposal farther than ``BLOWUP * (1 + max|x|)`` (sup norm) from the chain's state ``x`` is
a blown-up step (a diverging trajectory), where a NaN is floating-point overflow (``inf - inf``
in, e.g., a quartic at 1e20), not a bug of the target: it is rejected, not reported."""


def nan_evaluations(
    x: torch.Tensor, log_prob: torch.Tensor, grad: torch.Tensor, origin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N,)`` bool masks of target evaluations that are bugs, not rejections, at rows of ``x``
    ``(N, *event_shape)`` proposed from the chain states ``origin`` (same shape): at finite
    points within :data:`BLOWUP` of ``origin``, ``log_prob`` ``(N,)`` NaN or +inf, or ``grad``
    (shape of ``x``) holding a NaN where ``log_prob`` is finite. (A non-finite or blown-up
    ``x`` is a diverging move, and ``-inf`` a zero density: both are rejections.)"""
    reach = BLOWUP * (1.0 + origin.abs().flatten(1).amax(-1))
    at = (x - origin).abs().flatten(1).amax(-1) <= reach  # False for inf / NaN rows too
    bad_lp = at & (torch.isnan(log_prob) | (log_prob == torch.inf))
    bad_grad = at & torch.isfinite(log_prob) & torch.isnan(grad).flatten(1).any(-1)
    return bad_lp, bad_grad


def nan_to_neg_inf(log_prob: LogProb) -> LogProb:
    """``log_prob`` with NaN values replaced by ``-inf`` (zero density): for targets whose
    log-density is NaN outside their support (e.g. ``log`` of a negative number). Chains never
    move there; a NaN gradient where the log-density is finite stays an error."""

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        lp = log_prob(x)
        return torch.where(torch.isnan(lp), torch.full_like(lp, -torch.inf), lp)

    return wrapped


def metropolis(
    current: MCMCState,
    proposal: MCMCState,
    log_alpha: torch.Tensor,
    generator: torch.Generator,
    nan_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[MCMCState, MoveInfo]:
    r"""Accept ``proposal`` per chain with probability :math:`\min(1, e^{\log\alpha})`.

    Non-finite proposals (log-density, gradient or ``log_alpha``) get :math:`\alpha = 0`.
    Draws one :math:`\log u`, :math:`u \sim U(0, 1)`, per chain and accepts where
    :math:`\log u < \log\alpha`. ``nan_masks``: the step's :func:`nan_evaluations` (default:
    those of ``proposal``; HMC passes them over its whole trajectory).
    """
    n = log_alpha.shape[0]
    u = torch.rand(n, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device)
    return metropolis_given(current, proposal, log_alpha, u, nan_masks)


def metropolis_given(
    current: MCMCState,
    proposal: MCMCState,
    log_alpha: torch.Tensor,
    u: torch.Tensor,
    nan_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[MCMCState, MoveInfo]:
    """:func:`metropolis` with its uniforms ``u`` ``(N,)`` drawn by the caller (a pure function
    of tensors, e.g. for ``torch.compile``)."""
    ok = finite_rows(proposal.log_prob, proposal.grad) & ~torch.isnan(log_alpha)
    log_alpha = torch.where(ok, log_alpha, torch.full_like(log_alpha, -torch.inf))
    accepted = torch.log(u) < log_alpha
    if nan_masks is None:
        nan_masks = nan_evaluations(proposal.x, proposal.log_prob, proposal.grad, current.x)
    info = MoveInfo(torch.exp(log_alpha.clamp(max=0.0)), accepted, (~ok).sum(), *nan_masks)
    return select(accepted, proposal, current), info


def select(mask: torch.Tensor, a: MCMCState, b: MCMCState) -> MCMCState:
    """Per chain: ``a`` where ``mask`` ``(N,)`` is set, else ``b`` (a ``torch.where`` per field)."""
    col = mask.reshape(-1, *([1] * (a.x.dim() - 1)))
    return MCMCState(
        torch.where(col, a.x, b.x),
        torch.where(mask, a.log_prob, b.log_prob),
        torch.where(col, a.grad, b.grad),
        None if a.velocity is None else torch.where(col, a.velocity, b.velocity),
    )


class GradientKernel:
    """Shared base of the gradient-based kernels: holds ``log_prob`` and starts a chain at
    ``x`` with its log density and gradient (one evaluation)."""

    def __init__(self, log_prob: LogProb):
        self.log_prob = log_prob

    def init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MCMCState:
        return MCMCState(x, *value_and_grad(self.log_prob, x))
