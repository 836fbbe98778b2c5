"""The Feynman–Kac model protocol: what a sampler hands to the SMC engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = ["FeynmanKacModel", "ParticleState", "StepOutput", "nan_or_posinf", "nonfinite_rows"]

ParticleState = dict[str, torch.Tensor]
"""Named per-particle tensors, each with leading dimension ``G * N`` (groups flattened).
The engine resamples every entry with the same ancestors; ``"x"`` holds the particles."""


@dataclass
class StepOutput:
    r"""What a model returns for step k.

    ``state``: the particles after the move (a :data:`ParticleState`);
    ``log_potential``: :math:`\log G_k`, shape ``(G*N,)``; ``-inf`` is a legal zero weight;
    ``checks``: quantity name -> boolean mask ``(G*N,)`` of particles where that quantity is invalid
    (NaN, wrong infinity); the engine reports the first non-empty one with its step;
    ``nfe`` / ``n_grad``: network (score) evaluations and gradient (backward) evaluations spent;
    ``info``: per-step summaries (scalar or ``(G,)`` tensors, e.g. a temperature or an acceptance
    rate) that the engine stores in the trace under their names.
    """

    state: ParticleState
    log_potential: torch.Tensor
    checks: dict[str, torch.Tensor] = field(default_factory=dict)
    nfe: int = 0
    n_grad: int = 0
    info: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class FeynmanKacModel(Protocol):
    r"""A Feynman–Kac model on steps ``0..n_steps``.

    ``init(n, generator)`` draws :math:`x_0 \sim M_0` and returns :math:`\log G_0`;
    ``step(k, state, generator)`` for ``k = 1..n_steps`` moves :math:`x_{k-1} \to x_k \sim M_k` and
    returns :math:`\log G_k(x_{k-1}, x_k)`. The engine targets
    :math:`\pi_k \propto M_0 \prod_{j \le k} G_j M_j` and estimates its normaliser.
    ``times[k]`` is the (diffusion) time of step k, used by policies and the trace.

    Optional: ``refresh(k, state) -> (state, nfe)`` recomputes what the state caches about ``x``
    (scores, densities, tilts) after an MCMC corrector moved the particles; the engine calls it
    after every corrector move.

    Optional: ``uses_weights = True`` makes the engine call ``step(k, state, generator,
    log_weights=log_w)`` with the normalised log-weights ``(G, N)`` (float64) that the step starts
    from (after the resampling decision) — for moves that adapt to the weighted population (drift
    control, adaptive tempering). ``done(k, state) -> bool tensor`` (a 0-d tensor) lets a model end
    the run before ``n_steps`` (then ``n_steps`` is a maximum); the engine reads it after each step
    (one host-device sync per step, only for models that define it).
    """

    n_steps: int
    times: list[float]

    def init(self, n: int, generator: torch.Generator) -> StepOutput: ...

    def step(self, k: int, state: ParticleState, generator: torch.Generator) -> StepOutput: ...


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N,)``: rows of ``x`` (``(N, ...)``) holding any NaN or ±inf."""
    return ~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)


def nan_or_posinf(x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of NaN or +inf entries (``-inf`` is a legal log-weight: weight zero)."""
    return torch.isnan(x) | (x == float("inf"))
