"""The engine's raw output, :class:`SMCRun` (the front doors wrap it as an ``SMCResult``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from smcdiff.engine.collectors import Collector
from smcdiff.engine.model import ParticleState
from smcdiff.engine.state import SMCState

__all__ = ["SMCRun"]


@dataclass
class SMCRun:
    """Raw engine output. Shapes: ``state`` entries ``(G*N, ...)``, ``log_weights`` ``(G, N)``
    (normalised, float64), ``log_z`` ``(G,)`` float64; ``trace`` maps names to CPU tensors with a
    leading step dimension ``K+1`` (see :func:`~smcdiff.engine.smc.run_smc`); ``collected``: the
    records of the run's collectors by name."""

    state: ParticleState
    log_weights: torch.Tensor
    log_z: torch.Tensor
    trace: dict[str, torch.Tensor]
    n_groups: int
    n_particles: int
    completed_steps: int
    collected: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, state: SMCState, trace: dict[str, torch.Tensor], collectors: Sequence[Collector] = ()
    ) -> SMCRun:
        """From the state after the last step, the trace and the collectors."""
        collected = {c.name: c.result() for c in collectors}
        return cls(
            state.particles, state.log_weights, state.log_z, trace, state.n_groups,
            state.n_particles, state.step, collected,
        )  # fmt: skip
