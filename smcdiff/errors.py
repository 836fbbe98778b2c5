"""Errors and input checks shared by every layer.

Every message names the quantity and, where there is one, the step. Checks on user input
(shapes, devices, dtypes, sizes) run once, before any work; checks on values produced during a
run (non-finite scores, rewards, weights) are accumulated on the device by
:class:`smcdiff.engine.guard.FiniteGuard` and raised without a host-device sync inside a step.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DegenerateWeightsError", "NonFiniteError", "SMCDiffError"]


class SMCDiffError(ValueError):
    """Base class of every error smcdiff raises on bad input or a failed run."""


class NonFiniteError(SMCDiffError, FloatingPointError):
    """A quantity (score, reward, log-potential, particles) became NaN or +inf during a run.

    ``partial`` holds what the run had produced up to the last good step (an ``SMCResult`` or
    ``None``), so nothing is lost.
    """

    def __init__(self, message: str, *, quantity: str, step: int, partial: Any = None):
        super().__init__(message)
        self.quantity = quantity
        self.step = step
        self.partial = partial


class DegenerateWeightsError(NonFiniteError):
    """Every particle of a group has weight zero (all log-weights are -inf)."""
