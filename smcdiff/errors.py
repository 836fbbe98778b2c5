"""Errors and input checks shared by every layer.

Every message names the quantity and, where there is one, the step. Checks on user input
(shapes, devices, dtypes, sizes) run once, before any work; checks on values produced during a
run (non-finite scores, rewards, weights) are accumulated on the device by
:class:`smcdiff.engine.guard.FiniteGuard` and raised without a host-device sync inside a step.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "DegenerateWeightsError",
    "NonFiniteError",
    "SMCDiffError",
    "check_device",
    "check_n_particles",
    "check_shape",
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


class DegenerateWeightsError(NonFiniteError):
    """Every particle of a group has weight zero (all log-weights are -inf)."""


def check_n_particles(n: int, *, minimum: int = 2, name: str = "n_particles") -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise SMCDiffError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise SMCDiffError(
            f"{name} must be at least {minimum}: weights, ESS and resampling need several "
            f"particles (got {n})"
        )
    return n


def check_shape(name: str, x: torch.Tensor, shape: tuple[int | None, ...], *, where: str) -> None:
    """Raise if ``x.shape`` does not match ``shape`` (``None`` matches any size)."""
    if not isinstance(x, torch.Tensor):
        raise SMCDiffError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    ok = x.dim() == len(shape) and all(
        s is None or s == xs for s, xs in zip(shape, x.shape, strict=False)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise SMCDiffError(f"{where}: {name} has shape {tuple(x.shape)}, expected {want}")


def check_device(name: str, x: torch.Tensor, device: torch.device, *, where: str) -> None:
    if x.device != device and not (x.device.type == device.type and device.index is None):
        raise SMCDiffError(
            f"{where}: {name} is on {x.device} but the particles are on {device}; "
            f"move it with .to('{device}')"
        )
