"""The explicit values the step API passes around: the particle system and one record per step."""

from __future__ import annotations

from typing import NamedTuple

import torch

from smcdiff.engine.model import ParticleState

__all__ = ["SMCState", "StepInfo"]


class SMCState(NamedTuple):
    r"""The particle system after step ``step``, for ``G`` groups of ``N`` particles.

    ``particles``: named tensors with leading dimension ``G*N`` (``"x"``: ``(G*N, *event_shape)``);
    ``log_weights``: normalised log-weights ``(G, N)``, float64;
    ``log_z``: :math:`\log\hat Z_k` ``(G,)``, float64 (sum of the log-Z increments so far);
    ``n_groups``, ``n_particles``: G and N.
    """

    particles: ParticleState
    log_weights: torch.Tensor
    log_z: torch.Tensor
    step: int
    n_groups: int
    n_particles: int


class StepInfo(NamedTuple):
    r"""What happened in one step (device tensors; nothing here forces a host-device sync).

    ``ess``: ESS after reweighting ``(G,)``; ``log_z_increment``:
    :math:`\log\sum_i W_{k-1}^i G_k^i` ``(G,)``; ``resampled``: ``(G,)`` bool, decided at the start
    of the step; ``ancestors``: ``(G, N)`` indices into the previous step's group (the identity
    where a group did not resample); ``nfe`` / ``n_grad``: score and gradient evaluations;
    ``extra``: model and corrector summaries by name (e.g. ``"temperature"``, ``"accept"``);
    ``invalid``: quantity name -> number of particles where it was NaN / wrong-signed infinity
    (0-d tensors), read by :class:`~smcdiff.engine.guard.FiniteGuard`; ``t``: the model's time of
    the step, or ``None``.
    """

    step: int
    ess: torch.Tensor
    log_z_increment: torch.Tensor
    resampled: torch.Tensor
    ancestors: torch.Tensor
    nfe: int
    n_grad: int
    extra: dict[str, torch.Tensor]
    invalid: dict[str, torch.Tensor]
    t: float | None = None
