r"""Time embeddings: a per-row time ``t`` ``(N,)`` as features ``(N, dim)``.

* ``"fourier"`` (Tancik et al. 2020; Song et al. 2021): fixed random frequencies
  :math:`\omega_j \sim \mathcal N(0, s^2)` (``scale`` :math:`s`), features
  :math:`[\sin 2\pi\omega_j t, \cos 2\pi\omega_j t]`;
* ``"sinusoidal"`` (Vaswani et al. 2017; DDPM): geometric frequencies
  :math:`\omega_j = P^{-j/(\text{dim}/2)}` (``max_period`` :math:`P`) applied to ``scale * t``,
  features
  :math:`[\sin\omega_j s t, \cos\omega_j s t]`.

Both are followed by a two-layer MLP in the networks. The time a network sees is whatever its
:class:`~smcdiff.scores.network.NetworkScore` ``time_input`` gives (``t`` in [0, 1] by default;
``sigma`` or ``log_snr`` span other ranges: pick ``scale`` so that ``scale * t`` spans a few units
for ``"fourier"`` and up to ~1000 for ``"sinusoidal"``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.errors import SMCDiffError

__all__ = ["EMBEDDINGS", "TimeEmbedding", "row_time"]

EMBEDDINGS = ("fourier", "sinusoidal")
_DEFAULT_SCALE = {"fourier": 16.0, "sinusoidal": 1000.0}


def row_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The time as a ``(N,)`` tensor for ``x`` ``(N, ...)``: a number or a one-element tensor is
    repeated, a ``(N,)`` tensor kept (dtype and device of ``x``)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
    return t.expand(x.shape[0]) if t.numel() == 1 else t


class TimeEmbedding(nn.Module):
    """``t`` ``(N,)`` (or a number, broadcast to ``batch``) -> ``(N, dim)`` features.

    Args:
        dim: even number of features.
        kind: ``"fourier"`` or ``"sinusoidal"`` (module docstring).
        scale: the frequency scale :math:`s` (default 16 for Fourier, 1000 for sinusoidal).
        max_period: :math:`P` of the sinusoidal embedding.

    The Fourier frequencies are a buffer drawn at construction from the global torch RNG (so
    they are saved with the weights; seed torch before building the net for reproducibility).
    """

    def __init__(
        self, dim: int, kind: str = "fourier", scale: float | None = None, max_period: float = 1e4
    ):
        super().__init__()
        where = "TimeEmbedding"
        dim = check_int("dim", dim, 2, where=where)
        if dim % 2:
            raise SMCDiffError(f"{where}: dim must be even (sin and cos halves), got {dim}")
        self.kind = check_choice("time_embedding", kind, EMBEDDINGS, where=where)
        scale = _DEFAULT_SCALE[kind] if scale is None else scale
        self.scale = check_number("scale", scale, minimum=0.0, strict_min=True, where=where)
        half = dim // 2
        if kind == "fourier":
            freqs = torch.randn(half) * self.scale
        else:
            freqs = self.scale * torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.freqs.device).reshape(-1).to(self.freqs.dtype)
        arg = t[:, None] * self.freqs[None, :]
        if self.kind == "fourier":
            arg = 2.0 * math.pi * arg
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
