"""Resampling as an object behind one interface: the seam for other ways of moving particles.

The engine asks a :class:`Resampler` to resample the groups where a policy's mask is set. The
single-device :class:`LocalResampler` draws ancestors with a scheme of
:mod:`smcdiff.resampling` and gathers every state entry; a distributed or checkpointing resampler
implements the same call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from smcdiff.engine.model import ParticleState
from smcdiff.resampling import get_scheme
from smcdiff.resampling.gather import gather_rows

__all__ = ["LocalResampler", "Resampler", "as_resampler"]


class Resampler:
    """Base class of resamplers; subclass it and implement ``__call__``."""

    def __call__(
        self,
        particles: ParticleState,
        log_w: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        """Resample the groups where ``mask`` ``(G,)`` is set.

        ``particles``: entries ``(G*N, ...)``; ``log_w``: normalised ``(G, N)``. Returns the new
        particles, the new normalised log-weights (uniform in resampled groups) and the ancestors
        ``(G, N)`` (indices within each group; the identity where a group kept its particles)."""
        raise NotImplementedError


class LocalResampler(Resampler):
    """Resampling on one device with ``scheme`` (a name in :data:`smcdiff.resampling.SCHEMES` or a
    callable ``scheme(log_w (G, N), generator=...) -> ancestors (G, N)``).

    The scheme runs for every group and the mask selects (no host-device sync); so the random
    stream advances the same way whether or not a group resampled. Ancestors are clamped to
    ``[0, N)``: weights that turned NaN since the last finiteness check (``check_every > 1``)
    make a scheme's indices garbage, and the run must reach that check, which names the step
    where they turned, rather than fail in ``index_select`` (a device-side assert on CUDA).
    Finite weights always give indices in range, so the clamp changes nothing else."""

    def __init__(self, scheme: str | Callable = "systematic"):
        self.scheme = get_scheme(scheme)
        self.name = scheme if isinstance(scheme, str) else getattr(scheme, "__name__", "custom")

    def __call__(
        self,
        particles: ParticleState,
        log_w: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        G, N = log_w.shape
        identity = torch.arange(N, device=log_w.device).expand(G, N)
        drawn = self.scheme(log_w, generator=generator).clamp(0, N - 1)  # NaN weights: see below
        ancestors = torch.where(mask.unsqueeze(1), drawn, identity)
        flat = (ancestors + (torch.arange(G, device=log_w.device) * N).unsqueeze(1)).reshape(-1)
        particles = {name: gather_rows(v, flat) for name, v in particles.items()}
        uniform = torch.full_like(log_w, -math.log(N))
        return particles, torch.where(mask.unsqueeze(1), uniform, log_w), ancestors

    def __repr__(self) -> str:
        return f"LocalResampler({self.name!r})"


def as_resampler(resampling: str | Callable | Resampler) -> Resampler:
    """A :class:`Resampler` from a scheme name, a scheme callable or a resampler object (kept)."""
    return resampling if isinstance(resampling, Resampler) else LocalResampler(resampling)
