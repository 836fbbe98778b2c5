"""The ScoreModel protocol: what every sampler asks of a (learned, exact or estimated) prior."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from smcdiff.processes.schedules import NoiseProcess

__all__ = ["DensityScoreModel", "ScoreModel", "has_log_density"]


@runtime_checkable
class ScoreModel(Protocol):
    r"""A diffusion prior seen through its noised scores :math:`s_t(x) = \nabla_x \log p_t(x)`.

    Attributes: ``process`` (the :class:`NoiseProcess` the model was trained / defined under) and
    ``dim`` (event size d). ``score(x, t)`` maps ``x`` of shape ``(N, d)`` and a scalar time ``t``
    to ``(N, d)``; it must be differentiable in ``x`` for gradient-based guidance.
    """

    process: NoiseProcess
    dim: int

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor: ...


@runtime_checkable
class DensityScoreModel(ScoreModel, Protocol):
    r"""A score model that also knows :math:`\log p_t(x)` (normalised), shape ``(N,)``.

    ``score_and_log_density`` returns both from one evaluation (one NFE).
    """

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor: ...

    def score_and_log_density(
        self, x: torch.Tensor, t: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def has_log_density(model: object) -> bool:
    return callable(getattr(model, "score_and_log_density", None)) and callable(
        getattr(model, "log_density", None)
    )
