"""The Feynman–Kac model protocol: what a sampler hands to the SMC engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["FeynmanKacModel", "ParticleState", "StepOutput"]

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


class FeynmanKacModel:
    r"""Base class of every Feynman–Kac model the engine runs, on steps ``0..n_steps``.

    Required: ``n_steps`` and

    * ``init(n, generator) -> StepOutput``: draw :math:`x_0 \sim M_0` (``n = G*N`` rows) and
      return :math:`\log G_0`;
    * ``step(k, state, generator, log_weights) -> StepOutput`` for ``k = 1..n_steps``: move
      :math:`x_{k-1} \to x_k \sim M_k` and return :math:`\log G_k(x_{k-1}, x_k)`.
      ``log_weights`` are the normalised log-weights ``(G, N)`` (float64) the step starts from,
      after the resampling decision; most models ignore them, moves that adapt to the weighted
      population (drift control, adaptive tempering) read them.

    The engine targets :math:`\pi_k \propto M_0 \prod_{j \le k} G_j M_j` and estimates its
    normaliser. The optional hooks below have defaults; override what applies:

    * ``times``: the (diffusion) time of each step, ``n_steps + 1`` floats, or ``None`` for models
      without one (tempering); policies and the trace use it when given;
    * ``refresh(k, state) -> (state, nfe)``: recompute what the state caches about ``x`` (scores,
      densities, tilts) after an MCMC corrector moved the particles (default: nothing to do);
    * ``done(k, state) -> 0-d bool tensor | None``: end the run before ``n_steps`` (then
      ``n_steps`` is a maximum); ``None`` (the default) never ends early and costs nothing, a
      tensor costs one host-device sync per step;
    * ``state_dict() -> dict`` / ``load_state_dict(state)``: the model's mutable Python-side
      state between steps (anything a step reads that an earlier step wrote outside the
      particles), for checkpoints (:mod:`smcdiff.engine.checkpoint`); default: none. State
      kept in the particles (the :data:`ParticleState`) is checkpointed with them and needs no
      hook; a model that keeps state elsewhere and does not override these resumes to another
      run. ``state_dict`` runs at every finiteness check: return references, not host copies;
    * ``step_label(k) -> str``: how error messages name step k (default ``"step k/n_steps"``).
    """

    n_steps: int
    times: Sequence[float] | None = None

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """Step 0: ``n`` particles from :math:`M_0` and their :math:`\\log G_0` ``(n,)``."""
        raise NotImplementedError

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        """Step ``k``: move ``state`` by :math:`M_k` and return :math:`\\log G_k` ``(G*N,)``;
        ``log_weights`` ``(G, N)`` are the normalised weights the step starts from."""
        raise NotImplementedError

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        return state, 0

    def done(self, k: int, state: ParticleState) -> torch.Tensor | None:
        return None

    def step_label(self, k: int) -> str:
        """How error messages name step ``k`` (default ``"step k/n_steps"``)."""
        return f"step {k}/{self.n_steps}"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise NotImplementedError(
                f"{type(self).__name__} has a checkpointed state but no load_state_dict()"
            )
