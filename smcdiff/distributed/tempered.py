r"""Tempered SMC over the ranks of a process group (``sample(method="tempered",
distributed=True)``).

Adaptive tempering picks :math:`\lambda_k = \lambda_{k-1} + \delta` with the conditional ESS of
the *whole* system at ``target_ess``:

.. math::

    \frac{\mathrm{CESS}(\delta)}{N} = \frac{\big(\sum_r \sum_{i\in r} W_i e^{\delta\ell_i}\big)^2}
    {\sum_r \sum_{i\in r} W_i e^{2\delta\ell_i}},

with :math:`W` the globally normalised weights; each search pass scores its candidates with one
all-gather of the ranks' two log-sums per candidate, so every rank chooses the same temperature
(the same search as :func:`smcdiff.energy.tempered.next_temperature`, whose candidates and
brackets it follows). The MCMC step size adapts per rank, from the acceptance of that rank's
particles (each move is still exact for the current tempered law).
"""

from __future__ import annotations

from typing import Any

import torch

from smcdiff.distributed.comm import Comm
from smcdiff.distributed.runner import run_smc_distributed
from smcdiff.energy.options import RunSettings, TemperedOptions
from smcdiff.energy.tempered import TemperedSMC, check_reached_target, next_temperature
from smcdiff.resampling.policies import policy_from_threshold
from smcdiff.result import SMCResult

__all__ = ["GlobalTemperedSMC", "global_next_temperature", "run_tempered_distributed"]


def global_next_temperature(
    comm: Comm,
    log_w: torch.Tensor,
    ell: torch.Tensor,
    lam: torch.Tensor,
    target_ess: float,
    n_grid: int = 48,
    n_refine: int = 4,
    min_step: float = 1e-12,
) -> torch.Tensor:
    r"""Temperature increments ``(G,)`` from the global CESS (module docstring): the one-process
    search :func:`~smcdiff.energy.tempered.next_temperature` with each candidate pass's two
    log-sums combined over the ranks (one all-gather of ``2 G n_grid`` float64 per pass, so every
    rank chooses the same temperature). ``log_w`` ``(G, n)``: this rank's globally normalised
    log-weights, ``ell`` ``(G, n)``, ``lam`` ``(G,)``."""

    def reduce(local: torch.Tensor) -> torch.Tensor:  # (2, G, J), alike on every rank
        return torch.logsumexp(comm.all_gather(local), dim=0)

    return next_temperature(log_w, ell, lam, target_ess, n_grid, n_refine, min_step, reduce)


class GlobalTemperedSMC(TemperedSMC):
    """:class:`~smcdiff.energy.tempered.TemperedSMC` whose adaptive temperatures come from the
    global CESS (:func:`global_next_temperature`); a fixed ``schedule`` is used as it is.

    The engine hands a model weights normalised on its rank; :func:`run_smc_distributed` binds
    the run (:meth:`bind_distributed`), whose resampler holds the rank's log-mass, so that the
    CESS weighs the ranks by their share of the global weight."""

    def __init__(self, target: Any, options: TemperedOptions, *, comm: Comm, **kwargs: Any):
        super().__init__(target, options, **kwargs)
        self.comm = comm
        self.run: Any = None

    def bind_distributed(self, run: Any) -> None:
        """Called by :func:`run_smc_distributed` with its
        :class:`~smcdiff.distributed.runner.DistributedSMC`."""
        self.run = run

    def _next(
        self, k: int, log_weights: torch.Tensor, ell: torch.Tensor, lam: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.schedule is not None:
            return super()._next(k, log_weights, ell, lam)
        lw = log_weights + self.run.resampler.log_mass.unsqueeze(-1)  # globally normalised
        delta = global_next_temperature(self.comm, lw, ell, lam, self.target_ess)
        return delta, torch.where(delta >= 1.0 - lam, torch.ones_like(lam), lam + delta)


def run_tempered_distributed(settings: RunSettings, options: TemperedOptions) -> SMCResult:
    """``sample(method="tempered", distributed=True)``: :class:`GlobalTemperedSMC` run by
    :func:`~smcdiff.distributed.run_smc_distributed` (one group; ``settings.n_particles`` is
    the global N), resampling when the global ESS falls below ``ess_threshold * N`` with
    distributed systematic resampling."""
    s = settings
    fk = GlobalTemperedSMC(
        s.target, options, comm=Comm(), reference_std=s.reference_std,
        reference_mean=s.reference_mean, device=s.device, dtype=s.dtype,
    )  # fmt: skip
    progress = False if s.progress is None else s.progress
    run = run_smc_distributed(
        fk, s.n_particles, n_groups=s.n_groups, resampling=s.resampling,
        policy=policy_from_threshold(s.ess_threshold), generator=s.generator,
        check_every=s.check_every, progress=progress, checkpoint=s.checkpoint, start=s.start,
    )  # fmt: skip
    check_reached_target(run, fk, s.grouped)
    info = {
        "kernel": fk.kernel_name,
        "n_moves": fk.n_moves,
        "target_ess": fk.target_ess,
        "n_temperatures": run.completed_steps,
        "n_target_evals": int(run.trace["nfe"].sum()),
        "n_grad_evals": int(run.trace["n_grad"].sum()),
        "n_resampled": int(run.trace["resampled"].sum()),
    }
    return SMCResult.from_run(run, grouped=s.grouped, info=info)
