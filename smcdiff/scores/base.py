"""The ScoreModel protocol: what every sampler asks of a (learned, exact or estimated) prior.

Shapes and time (one contract for every caller):

* particles are ``x`` of shape ``(N, *event_shape)`` (vectors ``(N, d)``, images ``(N, C, H, W)``,
  particle systems ``(N, n_atoms, dim)``); ``score(x, t)`` returns the same shape;
* by default a model receives the time as a per-row tensor ``t`` of shape ``(N,)`` (dtype and
  device of ``x``), as a network does; a model whose maths needs one common time (closed forms,
  training-free estimators) declares the class attribute ``scalar_time = True`` and receives a
  Python float instead;
* callers never decide which: they call :func:`model_time` (and :func:`event_shape_of` for the
  event shape of a model that only declares ``dim``).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "DensityScoreModel",
    "ScoreModel",
    "event_shape_of",
    "has_log_density",
    "model_time",
]


@runtime_checkable
class ScoreModel(Protocol):
    r"""A diffusion prior seen through its noised scores :math:`s_t(x) = \nabla_x \log p_t(x)`.

    Attributes: ``process`` (the :class:`NoiseProcess` the model was trained / defined under),
    ``event_shape`` (the shape of one particle; optional, defaults to ``(dim,)`` — read it with
    :func:`event_shape_of`) and ``dim`` (the event size, the product of ``event_shape``, kept for
    compatibility). ``score(x, t)`` maps ``x`` of shape ``(N, *event_shape)`` to the same shape; it
    must be differentiable in ``x`` for gradient-based guidance. ``t`` is a ``(N,)`` tensor (one
    time per row), or a Python float when the class declares ``scalar_time = True``; callers build
    it with :func:`model_time`.
    """

    process: NoiseProcess
    dim: int

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DensityScoreModel(ScoreModel, Protocol):
    r"""A score model that also knows :math:`\log p_t(x)` (normalised), shape ``(N,)``.

    ``score_and_log_density`` returns both from one evaluation (one NFE). Time as for
    :class:`ScoreModel`.
    """

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor: ...

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def has_log_density(model: object) -> bool:
    return callable(getattr(model, "score_and_log_density", None)) and callable(
        getattr(model, "log_density", None)
    )


def model_time(model: object, t: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """The time ``t`` in the form ``model`` takes it, for particles ``x`` ``(N, *event_shape)``.

    A float ``t``: returned as is when ``model.scalar_time`` is true, else as a ``(N,)`` tensor
    filled with ``t`` (dtype and device of ``x``). A tensor ``t`` (one time per row, e.g. handed
    on by a combination of models): broadcast to ``(N,)`` for a per-row model; for a
    ``scalar_time`` model its first entry is read as a float (rows must share one time; this reads
    one value back from the device).
    """
    scalar = bool(getattr(model, "scalar_time", False))
    if isinstance(t, torch.Tensor):
        if scalar:
            return float(t.reshape(-1)[0])
        return t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
    if scalar:
        return t
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def event_shape_of(model: object) -> tuple[int, ...]:
    """``model.event_shape`` as a tuple of ints if the model declares it, else ``(model.dim,)``.
    Raises if a declared ``event_shape`` does not multiply to a declared ``dim``."""
    shape = getattr(model, "event_shape", None)
    if shape is None:
        return (int(model.dim),)  # type: ignore[attr-defined]
    shape = tuple(int(s) for s in shape)
    dim = getattr(model, "dim", None)
    if dim is not None and math.prod(shape) != int(dim):
        raise SMCDiffError(
            f"{type(model).__name__}: event_shape {shape} has {math.prod(shape)} entries but dim "
            f"is {dim}; dim must be the product of event_shape"
        )
    return shape
