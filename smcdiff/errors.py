"""Errors and input checks shared by every layer.

Every message names the quantity and, where there is one, the step. Checks on user input
(shapes, devices, dtypes, sizes) run once, before any work; checks on values produced during a
run (non-finite scores, rewards, weights) are accumulated on the device by
:class:`smcdiff.engine.guard.FiniteGuard` and raised without a host-device sync inside a step.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "DegeneracyWarning",
    "DegenerateWeightsError",
    "DiscretisationWarning",
    "NonFiniteError",
    "SMCDiffError",
    "StiffDriftWarning",
]


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


class CheckpointError(SMCDiffError):
    """A checkpoint cannot be written, read or resumed (missing, torn or foreign file, another
    format version, another device type, a changed option); the message names the path."""


class DegenerateWeightsError(NonFiniteError):
    """Every particle of a group has weight zero (all log-weights are -inf)."""


class DegeneracyWarning(UserWarning):
    """The weights of a run degenerated (a tiny minimum ESS, a few surviving lineages or
    heavy-tailed weights at some step), so its ``log_z`` and weighted estimates are unreliable
    even if the final ESS looks healthy. The message names the step and the numbers;
    ``result.diagnose()`` prints the whole report (:mod:`smcdiff.diagnostics.degeneracy`)."""


class DiscretisationWarning(UserWarning):
    """A sampler's time discretisation could not be refined to its error tolerance (e.g. the FKC
    step control at its shortest sub-step, :mod:`smcdiff.steering.fkc.stepping`), so ``log_z``
    and the weights carry discretisation error there. The message names the step and the
    numbers; the trace keeps the per-step record."""


class StiffDriftWarning(DiscretisationWarning):
    """A drift moved particles by far more than the noise scale in one step (its explicit part
    above ``max_move`` noise scales :math:`g_t\\sqrt{\\delta d}`, e.g. the gradient of a stiff
    reward): the step is too long for that drift, so those particles were tamed (or, untamed,
    thrown far from the target). The message names the step, the time and the fraction."""
