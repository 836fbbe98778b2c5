r"""The Gaussian reference :math:`\mathcal N(\mu, \sigma_0^2 I)` every energy method starts from."""

from __future__ import annotations

import math

import torch

from smcdiff.errors import SMCDiffError

__all__ = ["reference_tensors"]


def reference_tensors(
    std: float | torch.Tensor,
    mean: torch.Tensor | None,
    event_shape: tuple[int, ...],
    where: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Checked :math:`(\sigma_0, \mu)` as float64 CPU tensors for particles of ``event_shape``.

    ``std``: a positive float (returned 0-d) or a tensor of the event shape or of ``(d,)``, ``d``
    the event size (returned with the event shape); ``mean``: ``None`` (zeros), or a tensor of
    the event shape or ``(d,)`` (returned with the event shape). Convert to the particles' dtype
    and device before use.
    """
    dim = math.prod(event_shape)
    s = torch.as_tensor(std, dtype=torch.float64)
    if s.dim() > 0:
        s = _event_shaped(s, event_shape)
    if s is None or not bool((s > 0).all()):
        raise SMCDiffError(
            f"{where}: reference_std must be a positive float or a positive tensor of shape "
            f"{tuple(event_shape)} or ({dim},)"
        )
    m = torch.zeros(event_shape) if mean is None else torch.as_tensor(mean)
    m = _event_shaped(m.to(torch.float64), event_shape)
    if m is None:
        raise SMCDiffError(
            f"{where}: reference_mean has shape {tuple(torch.as_tensor(mean).shape)}, expected "
            f"{tuple(event_shape)} or ({dim},)"
        )
    return s, m


def _event_shaped(t: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor | None:
    """``t`` reshaped to ``event_shape`` if it has that shape or the flat ``(d,)``; else
    ``None``."""
    if tuple(t.shape) == tuple(event_shape):
        return t
    if tuple(t.shape) == (math.prod(event_shape),):
        return t.reshape(event_shape)
    return None
