r"""Adaptive tilting: the tilt strength of each step chosen from the particles.

The idea of adaptive tempering, moved inside diffusion FK steering. With a fixed schedule the
intermediate tilt :math:`\lambda_k\phi(\hat x_0(x_k))` can change so much in one step that a few
particles take all the weight (a sharp tilt, a likelihood that is wrong about :math:`\hat x_0` at
high noise). :class:`AdaptiveTilt` instead picks, per step and per group,

.. math:: \lambda_k = \max\{\lambda \in [\lambda_{k-1}, \bar\lambda_k] :
    \mathrm{CESS}_k(\lambda) \ge \rho N\},\qquad
    \mathrm{CESS}_k(\lambda) = \frac{(\sum_i W^i_{k-1} G^i_k(\lambda))^2}{\sum_i W^i_{k-1}
    G^i_k(\lambda)^2}

(Zhou, Johansen & Aston 2016), with :math:`\bar\lambda_k` the cap of the tilt schedule (1 at the
last step) and :math:`G_k(\lambda)` the step's whole potential (path correction, proposal
correction and FK potential at strength :math:`\lambda`). The strength may fall from one step
to the next: :math:`\hat x_0` moves between steps, so at a fixed strength the tilt of the
particles changes too, and a lower strength can be what keeps the CESS; if no strength keeps
it, the one with the largest CESS is taken. When the last step ends below
:math:`\lambda = 1`, extra sub-steps at the final time raise it to 1: each one moves the
particles by ``n_moves`` MALA steps invariant for :math:`p_{t_{min}}(x)\,e^{\phi_\lambda(x)}`
(``end_log_prob`` in place of :math:`\log p_{t_{min}}` when given), then reweights by
:math:`e^{\phi_{\lambda'}(x) - \phi_\lambda(x)}` with :math:`\lambda'` chosen as above. With a
per-state potential, ``n_moves`` MALA moves also start every step that follows a resampling or a
step whose strength was held below its cap (one host sync per step), invariant for the previous
step's target :math:`p_{t_{k-1}}(x)\,e^{\phi_{\lambda_{k-1}}(\hat x_0(x))}`: under a sharp tilt,
resampling leaves copies of few particles, and the moves spread them again. The moves need the
prior's density (path correction); without it there are no moves and no sub-steps, and the last
step goes to :math:`\lambda = 1` at once (the degeneracy diagnostics report it if that
collapses).

Two CESS conditions choose :math:`\lambda_k`: the step's own increment, and the increment one
more step at the same strength would have, :math:`\phi_\lambda(\hat x_0(x_k)) -
\phi_\lambda(\hat x_0(x_{k-1}))` — the tilt of a sharp reward at :math:`\hat x_0` jumps from
step to step at high noise, and a strength that cannot be kept would only be undone later at
a cost. Measured on the examples of ``docs/weight-degeneracy.md`` (CPU, N = 1000, four seeds):
:math:`\beta = 100` mixture tilt log Z error −0.03…+0.18 (fixed schedule −16…−21), constraint
:math:`x > 0` on N(0, 1) −0.14…+0.15 (fixed schedule −4.4), at 8× the NFE of the fixed
schedule (5 MALA moves per step).

Every :math:`\lambda` is a function of the particles, as in adaptive tempering: the weighted
particles stay consistent and :math:`\hat Z` keeps a bias of order :math:`1/N`. The search is
:func:`smcdiff.weights.largest_keeping_cess` (a grid then a bisection, on the device: no host
sync); ending the sub-steps costs one sync per sub-step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.mcmc.adapt import robbins_monro
from smcdiff.mcmc.langevin import MALA
from smcdiff.weights import cess_fraction, largest_keeping_cess

__all__ = ["AdaptiveTilt"]

WHERE = "adaptive tilt"
MALA_ACCEPT = 0.574


@dataclass(frozen=True)
class AdaptiveTilt:
    r"""Options of adaptive tilting (module docstring).

    ``cess``: the conditional-ESS fraction :math:`\rho` each step keeps (in (0, 1));
    ``n_moves``: MALA moves per sub-step at the final time (0: no sub-steps, the last step goes
    to :math:`\lambda = 1` at once) and, with ``move_every`` and a per-state potential
    (``difference``, ``final``), at the start of a step after a resampling or a held strength,
    invariant for the previous step's
    target :math:`p_{t_{k-1}}(x)\,e^{\phi_{\lambda_{k-1}}(\hat x_0(x))}` (they restore the
    diversity that resampling under a sharp tilt removes); ``max_substeps``: at most this many sub-steps (the last one
    goes to :math:`\lambda = 1` whatever its CESS; the run's degeneracy diagnostics then report
    a collapse); ``n_grid``, ``iters``: candidates and halvings of the search
    (:func:`~smcdiff.weights.largest_keeping_cess`).
    """

    cess: float = 0.9
    n_moves: int = 5
    max_substeps: int = 100
    iters: int = 12
    n_grid: int = 17
    move_every: bool = True

    def __post_init__(self) -> None:
        check_number("cess", self.cess, minimum=0.0, maximum=1.0, strict_min=True,
                     strict_max=True, where=WHERE)  # fmt: skip
        check_int("n_moves", self.n_moves, 0, where=WHERE)
        check_int("max_substeps", self.max_substeps, 1, where=WHERE)
        check_int("iters", self.iters, 1, where=WHERE)
        check_int("n_grid", self.n_grid, 2, where=WHERE)

    def choose(
        self,
        log_w: torch.Tensor,
        increments: Sequence[Callable[[torch.Tensor], torch.Tensor]],
        lo: torch.Tensor,
        hi: torch.Tensor,
        monotone: bool,
    ) -> torch.Tensor:
        """Strengths per particle row ``(G*N,)`` (constant within a group): the largest in
        ``[lo, hi]`` at which every one of ``increments`` keeps the CESS fraction
        (:func:`~smcdiff.weights.largest_keeping_cess`; ``monotone``: the CESS falls with the
        strength, else a grid of
        ``n_grid`` candidates first). Each of ``increments`` maps row strengths ``(G*N,)`` to row
        log-increments ``(G*N,)``; ``lo``, ``hi``: rows ``(G*N,)``."""
        G, N = log_w.shape
        hi = torch.maximum(hi, lo)

        def frac_of(lam: torch.Tensor) -> torch.Tensor:
            rows = lam.repeat_interleave(N)
            fracs = [cess_fraction(log_w, inc(rows).reshape(G, N)) for inc in increments]
            return torch.stack(fracs).amin(0)

        lam = largest_keeping_cess(
            frac_of, lo.reshape(G, N)[:, 0].double(), hi.reshape(G, N)[:, 0].double(),
            self.cess, self.iters, 0 if monotone else self.n_grid,
        )  # fmt: skip
        return lam.repeat_interleave(N)

    def move(
        self,
        x: torch.Tensor,
        log_target: Callable[[torch.Tensor], torch.Tensor],
        log_h: torch.Tensor,
        n_groups: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n_moves`` MALA moves of ``x`` ``(G*N, *event_shape)`` invariant for
        :math:`e^{\\text{log\\_target}}`, with per-row log step sizes ``log_h`` ``(G*N,)``
        adapted per group toward acceptance 0.574 (Robbins–Monro). Returns ``(x, log_h, mean
        acceptance per group (G,), bad)`` with ``bad`` ``(G*N,)`` the chains that evaluated the
        target to NaN (or a NaN gradient at a finite value)."""
        kern = MALA(log_target)
        state = kern.init(x, generator)
        accept = torch.zeros(n_groups, dtype=torch.float64, device=x.device)
        bad = ~torch.isfinite(state.log_prob) & ~(state.log_prob == -math.inf)
        for _ in range(self.n_moves):
            state, info = kern.step(state, log_h.exp().to(x.dtype), generator)
            for mask in (info.nan_log_prob, info.nan_grad):
                bad = bad if mask is None else bad | mask
            a = info.accept_prob.double().reshape(n_groups, -1).mean(-1)
            log_h = robbins_monro(log_h, a.repeat_interleave(x.shape[0] // n_groups),
                                  MALA_ACCEPT, 0.5)  # fmt: skip
            accept = accept + a / self.n_moves
        return state.x, log_h, accept, bad


def initial_log_step(x: torch.Tensor, n_groups: int) -> torch.Tensor:
    r"""Per-row MALA log step sizes ``(G*N,)`` from the particles' spread:
    :math:`h = 0.1\,\bar v\, d^{-1/3}` with :math:`\bar v` the group's mean per-coordinate
    variance (float64)."""
    flat = x.detach().double().reshape(n_groups, -1, math.prod(x.shape[1:]))
    v = flat.var(dim=1).mean(-1).clamp_min(1e-12)  # a zero spread only sets a tiny first step
    h = 0.1 * v * flat.shape[-1] ** (-1.0 / 3.0)
    return h.log().repeat_interleave(flat.shape[1])
