r"""When to resample: policies map log-weights ``(..., N)`` to a mask ``(...)`` of groups.

A policy is called as ``policy(log_w, step, t)`` with ``step`` the (Python int) step index and
``t`` the (Python float) time of the step, ``t = 1`` noise and ``t = 0`` data. It returns a
``bool`` tensor on ``log_w``'s device without a host-device sync, so adaptive resampling stays a
mask: the engine resamples every group and keeps the old particles where the mask is ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.weights import ess

__all__ = [
    "ActiveWindow",
    "Always",
    "ESSBelow",
    "EveryK",
    "Never",
    "ResamplingPolicy",
    "policy_from_threshold",
]


@runtime_checkable
class ResamplingPolicy(Protocol):
    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor: ...


def _full(log_w: torch.Tensor, value: bool) -> torch.Tensor:
    return torch.full(log_w.shape[:-1], value, dtype=torch.bool, device=log_w.device)


@dataclass(frozen=True)
class Always:
    """Resample every group at every step."""

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        return _full(log_w, True)


@dataclass(frozen=True)
class Never:
    """Never resample (plain importance sampling along the path)."""

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        return _full(log_w, False)


@dataclass(frozen=True)
class ESSBelow:
    r"""Resample groups with :math:`\mathrm{ESS} < f N`, ``f = fraction`` in [0, 1]."""

    fraction: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise SMCDiffError(f"ESSBelow: fraction must be in [0, 1], got {self.fraction}")

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        return ess(log_w) < self.fraction * log_w.shape[-1]


@dataclass(frozen=True)
class EveryK:
    """Resample every group at steps ``k - 1, 2k - 1, ...`` (``step % k == k - 1``), ``k >= 1``."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise SMCDiffError(f"EveryK: k must be an int >= 1, got {self.k!r}")

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        return _full(log_w, step % self.k == self.k - 1)


@dataclass(frozen=True)
class ActiveWindow:
    """Apply ``inner`` while ``t_lo <= t <= t_hi`` and never resample outside that window.

    Times follow the library convention (``t = 1`` noise, ``t = 0`` data), so e.g.
    ``ActiveWindow(0.0, 0.5, ESSBelow(0.5))`` resamples adaptively only in the second, data-side
    half of the reverse path.
    """

    t_lo: float
    t_hi: float
    inner: ResamplingPolicy

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_lo <= self.t_hi <= 1.0:
            raise SMCDiffError(
                f"ActiveWindow: need 0 <= t_lo <= t_hi <= 1, got t_lo={self.t_lo}, t_hi={self.t_hi}"
            )

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        if t is None:
            raise SMCDiffError(
                f"ActiveWindow needs the model's times, but the model has none (step {step}); "
                "use EveryK or ESSBelow"
            )
        if self.t_lo <= t <= self.t_hi:
            return self.inner(log_w, step, t)
        return _full(log_w, False)


def policy_from_threshold(ess_threshold: float) -> ResamplingPolicy:
    """The usual ``ess_threshold`` knob: 0 -> :class:`Never`, >= 1 -> :class:`Always`, else
    :class:`ESSBelow` (``ess_threshold``)."""
    if ess_threshold < 0:
        raise SMCDiffError(f"ess_threshold must be >= 0, got {ess_threshold}")
    if ess_threshold == 0:
        return Never()
    if ess_threshold >= 1:
        return Always()
    return ESSBelow(ess_threshold)
