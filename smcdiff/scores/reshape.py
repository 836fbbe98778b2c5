r"""A flat score model seen with another event shape (e.g. a closed-form 16-D prior as 1x4x4 images).

``reshape_score(model, event_shape)`` wraps a model whose maths is on flat rows ``(N, d)`` so that
it takes and returns ``(N, *event_shape)`` (``prod(event_shape) = d``): ``x`` is reshaped to
``(N, d)`` for the model and the score back. Time, process, device and dtype are the model's; the
log density (when the model has one) is unchanged by the reshape.
"""

from __future__ import annotations

import math

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density

__all__ = ["ReshapedDensityScore", "ReshapedScore", "reshape_score"]


class ReshapedScore:
    """``model`` on particles of shape ``(N, *event_shape)`` (module docstring)."""

    def __init__(self, model: ScoreModel, event_shape: tuple[int, ...]):
        shape = tuple(int(s) for s in event_shape)
        inner = event_shape_of(model)
        if not shape or any(s < 1 for s in shape) or math.prod(shape) != math.prod(inner):
            raise SMCDiffError(
                f"reshape_score: event_shape {shape} must be positive sizes with "
                f"{math.prod(inner)} entries in all (the model's event shape is {inner})"
            )
        self.model, self.process = model, model.process
        self.event_shape, self.inner_shape = shape, inner
        self.dim = math.prod(shape)
        self.scalar_time = bool(getattr(model, "scalar_time", False))

    @property
    def device(self) -> torch.device | None:
        return getattr(self.model, "device", None)

    @property
    def dtype(self) -> torch.dtype | None:
        return getattr(self.model, "dtype", None)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, *event_shape)`` -> ``(N, *model_event_shape)``."""
        return x.reshape(x.shape[0], *self.inner_shape)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The model's score, ``(N, *event_shape)`` -> same shape."""
        return self.model.score(self.inner(x), t).reshape(x.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, event_shape={self.event_shape})"


class ReshapedDensityScore(ReshapedScore):
    """A :class:`ReshapedScore` of a model with a log density."""

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The model's log density, ``(N, *event_shape)`` -> ``(N,)``."""
        return self.model.log_density(self.inner(x), t)  # type: ignore[attr-defined]

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score, log_density)`` from one evaluation of the model."""
        s, logp = self.model.score_and_log_density(self.inner(x), t)  # type: ignore[attr-defined]
        return s.reshape(x.shape), logp


def reshape_score(model: ScoreModel, event_shape: tuple[int, ...]) -> ReshapedScore:
    """``model`` taking and returning particles of shape ``(N, *event_shape)``; keeps
    ``log_density`` when the model has one."""
    cls = ReshapedDensityScore if has_log_density(model) else ReshapedScore
    return cls(model, event_shape)
