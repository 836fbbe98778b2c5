r"""Reward inverse-temperature schedules :math:`\beta_t` of the FKC tilt :math:`e^{\beta_t r(x)}`.

A schedule is an object with ``grid(times, process) -> list[float]``: :math:`\beta` at each time
of the sampler's decreasing grid ``t_max = t_0 > ... > t_K = t_min``. Named schedules end at
``beta`` at ``t_min``:

* ``"linear"`` (:class:`LinearBeta`): linear in t, 0 at ``t_max``;
* ``"snr"`` (:class:`SNRBeta`): proportional to :math:`\kappa_t = \alpha_t^2/(\alpha_t^2+\sigma_t^2)`,
  rescaled to 0 at ``t_max`` and ``beta`` at ``t_min``;
* ``"constant"`` (:class:`ConstantBeta`): ``beta`` everywhere;

and :class:`CallableBeta` wraps any ``t -> beta_t``. The values are Python floats, computed once
per model (the per-step code only reads them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "BETA_SCHEDULES",
    "BetaSchedule",
    "CallableBeta",
    "ConstantBeta",
    "LinearBeta",
    "SNRBeta",
    "beta_grid",
    "make_beta_schedule",
]


class BetaSchedule:
    r"""Base class: ``grid(times, process)`` gives :math:`\beta_t` on the grid ``times``."""

    def grid(self, times: Sequence[float], process: NoiseProcess) -> list[float]:
        raise NotImplementedError


class _NamedBeta(BetaSchedule):
    """A named schedule that ends at ``beta`` (default 1) at ``t_min``."""

    def __init__(self, beta: float = 1.0):
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta:g})"


class LinearBeta(_NamedBeta):
    r""":math:`\beta_t = \beta\,(t_{max} - t)/(t_{max} - t_{min})`."""

    def grid(self, times: Sequence[float], process: NoiseProcess) -> list[float]:
        b, ts = self.beta, times
        return [b * (ts[0] - t) / (ts[0] - ts[-1]) for t in ts]


class SNRBeta(_NamedBeta):
    r""":math:`\beta_t = \beta\,(\kappa_t - \kappa_{t_{max}})/(\kappa_{t_{min}} - \kappa_{t_{max}})`,
    :math:`\kappa_t = \alpha_t^2/(\alpha_t^2 + \sigma_t^2)`."""

    def grid(self, times: Sequence[float], process: NoiseProcess) -> list[float]:
        a2 = [float(process.alpha(t)) ** 2 for t in times]
        s2 = [float(process.sigma(t)) ** 2 for t in times]
        kap = [a / (a + s) for a, s in zip(a2, s2, strict=True)]
        return [self.beta * (k - kap[0]) / (kap[-1] - kap[0]) for k in kap]


class ConstantBeta(_NamedBeta):
    r""":math:`\beta_t = \beta`."""

    def grid(self, times: Sequence[float], process: NoiseProcess) -> list[float]:
        return [self.beta] * len(times)


class CallableBeta(BetaSchedule):
    r""":math:`\beta_t` = ``fn(t)`` for a user function ``t -> float``."""

    def __init__(self, fn: Callable[[float], float]):
        self.fn = fn

    def grid(self, times: Sequence[float], process: NoiseProcess) -> list[float]:
        return [float(self.fn(t)) for t in times]

    def __repr__(self) -> str:
        return f"CallableBeta({self.fn!r})"


BETA_SCHEDULES: dict[str, type[_NamedBeta]] = {
    "linear": LinearBeta,
    "snr": SNRBeta,
    "constant": ConstantBeta,
}


def make_beta_schedule(
    spec: str | BetaSchedule | Callable[[float], float], beta: float | None, *, where: str
) -> BetaSchedule:
    """The schedule for ``beta_schedule=spec``: a name from :data:`BETA_SCHEDULES` (ending at
    ``beta``, default 1), a :class:`BetaSchedule`, or a callable ``t -> beta_t`` (the last two
    carry their own values: then ``beta`` must be left unset)."""
    if isinstance(spec, str):
        if spec not in BETA_SCHEDULES:
            raise SMCDiffError(
                f"{where}: beta_schedule must be one of {tuple(BETA_SCHEDULES)}, a BetaSchedule or "
                f"a callable, got {spec!r}"
            )
        return BETA_SCHEDULES[spec](1.0 if beta is None else float(beta))
    if beta is not None:
        raise SMCDiffError(f"{where}: with a callable beta_schedule, leave beta unset")
    if isinstance(spec, BetaSchedule):
        return spec
    if callable(spec):
        return CallableBeta(spec)
    raise SMCDiffError(
        f"{where}: beta_schedule must be a name, a BetaSchedule or a callable, got {spec!r}"
    )


def beta_grid(
    schedule: BetaSchedule, times: Sequence[float], process: NoiseProcess, *, where: str
) -> list[float]:
    r""":math:`\beta` on ``times``, checked finite."""
    out = schedule.grid(times, process)
    if len(out) != len(times) or not all(math.isfinite(v) for v in out):
        raise SMCDiffError(f"{where}: beta_t is not finite on the grid: {out}")
    return out
