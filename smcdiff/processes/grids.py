"""Time grids ``t_max = t_K > t_{K-1} > ... > t_0 = t_min`` for reverse-time samplers."""

from __future__ import annotations

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = ["time_grid"]

GRIDS = ("uniform", "log_snr", "edm", "scheduler")


def time_grid(
    process: NoiseProcess,
    n_steps: int,
    kind: str = "uniform",
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    r"""Decreasing float64 grid of ``n_steps + 1`` times from ``t_max`` to ``t_min``.

    * ``"uniform"``: equal steps in t.
    * ``"log_snr"``: equal steps in :math:`\lambda_t = \log(\alpha_t^2/\sigma_t^2)`.
    * ``"edm"``: Karras et al. (2022): equal steps in :math:`\bar\sigma^{1/\rho}` where
      :math:`\bar\sigma_t = \sigma_t/\alpha_t = e^{-\lambda_t/2}` (the VE-equivalent noise level).
    * ``"scheduler"``: the timesteps of a trained network's scheduler; a process with its own
      timesteps (:class:`~smcdiff.processes.discrete.DiscreteVP`) makes every grid itself
      (``process.time_grid``).
    """
    if n_steps < 1:
        raise SMCDiffError(f"time_grid: n_steps must be >= 1, got {n_steps}")
    own = getattr(process, "time_grid", None)  # a scheduler's process (processes/discrete.py)
    if callable(own):
        return own(n_steps, kind, t_min=t_min, t_max=t_max, rho=rho)
    if kind == "scheduler":
        raise SMCDiffError(
            "time_grid: grid='scheduler' needs a process with its own timesteps "
            "(DiscreteVP, ScheduledFlow, e.g. from smcdiff.from_diffusers)"
        )
    lo = process.t_min if t_min is None else t_min
    hi = process.t_max if t_max is None else t_max
    if not 0.0 <= lo < hi <= 1.0:
        raise SMCDiffError(f"time_grid: need 0 <= t_min < t_max <= 1, got t_min={lo}, t_max={hi}")
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = hi + (lo - hi) * u
    elif kind == "log_snr":
        l_hi, l_lo = process.log_snr(hi), process.log_snr(lo)
        ts = process.t_from_log_snr(l_hi + (l_lo - l_hi) * u)
    elif kind == "edm":
        s_hi = torch.exp(-0.5 * process.log_snr(hi)) ** (1.0 / rho)
        s_lo = torch.exp(-0.5 * process.log_snr(lo)) ** (1.0 / rho)
        sig = (s_hi + (s_lo - s_hi) * u) ** rho
        ts = process.t_from_log_snr(-2.0 * torch.log(sig))
    else:
        raise SMCDiffError(f"time_grid: kind must be one of {GRIDS}, got {kind!r}")
    ts[0], ts[-1] = hi, lo  # exact ends despite the bisection
    return ts
