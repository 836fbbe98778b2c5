r"""The discretisation of FKC: the drift/weight split, the move integrators and the weight rules.

Run time :math:`\tau = 1 - t`. Particles move by :math:`dx = (-f_t x + c_t S + u)\,d\tau + h_t\,dW`
with :math:`c = (g^2 + h^2)/2` (see :mod:`smcdiff.steering.fkc.model`). Pieces, each an object
chosen once per model:

* :class:`NoiseSplit` — the noise level :math:`h^2 = \kappa g^2` (``"target"``: :math:`\kappa = 1`;
  ``"tempered"``: :math:`\kappa = 1/W`; or a float :math:`\kappa \ge 0`);
* an :class:`Integrator` — the move coefficients ``(A, B, L, V)`` of one step
  ``x' = A x + B (c S(x) + L x + u(x)) + sqrt(V) z`` from ``t_a`` to ``t_{a+1}``, frozen at ``t_a``:
  :class:`EulerMaruyama` (``"em"``) or :class:`ExponentialIntegrator` (``"exp"``);
* a :class:`WeightRule` — the quadrature of the log-weight rate over a step: :class:`Trapezoid`
  (old and new point, no extra NFE) or :class:`LeftPoint` (old point);
* :class:`FKCGrid` — every per-step float (times, :math:`\log\alpha`, :math:`f`, :math:`g^2`,
  :math:`h^2`, :math:`c`, move coefficients) computed once, so a step only reads lists.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "INTEGRATORS",
    "NOISES",
    "WEIGHT_RULES",
    "EulerMaruyama",
    "ExponentialIntegrator",
    "FKCGrid",
    "Integrator",
    "LeftPoint",
    "MoveCoefficients",
    "NoiseSplit",
    "Trapezoid",
    "WeightRule",
    "check_times",
    "make_integrator",
    "make_weight_rule",
]


# ------------------------------------------------------------------------------ drift/weight split
class NoiseSplit:
    r"""The noise level of the move, :math:`h^2 = \kappa g^2`, and the score coefficient
    :math:`c = (g^2 + h^2)/2` that keeps the FKC weights free of :math:`h`."""

    def __init__(self, kappa: float):
        self.kappa = float(kappa)

    @classmethod
    def from_spec(cls, noise: str | float, total_weight: float, *, where: str) -> NoiseSplit:
        """``"target"`` (:math:`\\kappa = 1`, the reverse SDE of the target), ``"tempered"``
        (:math:`\\kappa = 1/W`) or a finite float :math:`\\kappa \\ge 0` (0: probability flow)."""
        if isinstance(noise, str):
            if noise not in NOISES:
                raise SMCDiffError(
                    f"{where}: noise must be one of {NOISES} or a float, got {noise!r}"
                )
            return cls(1.0 if noise == "target" else 1.0 / total_weight)
        kappa = float(noise)
        if not (math.isfinite(kappa) and kappa >= 0):
            raise SMCDiffError(f"{where}: noise kappa must be a finite float >= 0, got {noise!r}")
        return cls(kappa)

    def h2(self, g2: float) -> float:
        return self.kappa * g2

    def c(self, g2: float) -> float:
        return 0.5 * (g2 + self.h2(g2))

    def __repr__(self) -> str:
        return f"NoiseSplit(kappa={self.kappa:g})"


NOISES = ("target", "tempered")


# ------------------------------------------------------------------------------ integrators
class MoveCoefficients(NamedTuple):
    """``x' = a x + b drift + sqrt(var) z`` with ``drift = c S(x) + lin x + u(x)``."""

    a: float
    b: float
    lin: float
    var: float

    def apply(self, x: torch.Tensor, drift: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b * drift + math.sqrt(self.var) * z


class Integrator:
    """Base class: ``coefficients(...)`` of one step (see :class:`MoveCoefficients`)."""

    name = "integrator"

    def coefficients(
        self, process: NoiseProcess, t: float, dtau: float, f: float, c: float, h2: float,
        total_weight: float,
    ) -> MoveCoefficients:  # fmt: skip
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyama(Integrator):
    r"""``A = 1 - f dtau``, ``B = dtau``, ``L = 0``, ``V = h^2 dtau``."""

    name = "em"

    def coefficients(self, process, t, dtau, f, c, h2, total_weight) -> MoveCoefficients:
        return MoveCoefficients(1.0 - f * dtau, dtau, 0.0, h2 * dtau)


def _phi(rate: float, dtau: float) -> float:
    """``(1 - exp(-rate dtau)) / rate``, stable as ``rate -> 0``."""
    x = rate * dtau
    return dtau if abs(x) < 1e-12 else -math.expm1(-x) / rate


class ExponentialIntegrator(Integrator):
    r"""The linear part :math:`-\lambda x`, :math:`\lambda = f + cW/\nu` (the drift that
    :math:`\rho \approx \mathcal N(0, \nu/W)` would give, :math:`\nu = \alpha^2 + \sigma^2`),
    integrated exactly, the rest explicitly: ``A = exp(-lam dtau)``, ``B = (1 - A)/lam``,
    ``V = h^2 (1 - A^2)/(2 lam)``, ``L = cW/nu``. Removes the stiffness of the high-noise end."""

    name = "exp"

    def coefficients(self, process, t, dtau, f, c, h2, total_weight) -> MoveCoefficients:
        nu = float(process.alpha(t)) ** 2 + float(process.sigma(t)) ** 2
        lin = c * total_weight / nu
        lam = f + lin
        return MoveCoefficients(
            math.exp(-lam * dtau), _phi(lam, dtau), lin, h2 * _phi(2.0 * lam, dtau)
        )


INTEGRATORS: dict[str, type[Integrator]] = {"exp": ExponentialIntegrator, "em": EulerMaruyama}


def make_integrator(spec: str | Integrator, *, where: str) -> Integrator:
    """An :class:`Integrator` from its name in :data:`INTEGRATORS` (or the object itself)."""
    if isinstance(spec, Integrator):
        return spec
    if not isinstance(spec, str) or spec not in INTEGRATORS:
        raise SMCDiffError(f"{where}: integrator must be one of {tuple(INTEGRATORS)}, got {spec!r}")
    return INTEGRATORS[spec]()


# ------------------------------------------------------------------------------ weight rules
class WeightRule:
    r"""Quadrature of a rate over one step: ``integrate(coef, old, new)`` approximates
    :math:`\text{coef}\cdot\bar v` from the values at the old and the new point."""

    name = "weight_rule"

    def integrate(self, coef: float, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Trapezoid(WeightRule):
    """``coef (old + new) / 2``: no extra NFE (the new point's values serve the next step)."""

    name = "trapezoid"

    def integrate(self, coef: float, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return 0.5 * coef * (old + new)


class LeftPoint(WeightRule):
    """``coef old``: the old point's value only."""

    name = "left"

    def integrate(self, coef: float, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return coef * old


WEIGHT_RULES: dict[str, type[WeightRule]] = {"trapezoid": Trapezoid, "left": LeftPoint}


def make_weight_rule(spec: str | WeightRule, *, where: str) -> WeightRule:
    """A :class:`WeightRule` from its name in :data:`WEIGHT_RULES` (or the object itself)."""
    if isinstance(spec, WeightRule):
        return spec
    if not isinstance(spec, str) or spec not in WEIGHT_RULES:
        raise SMCDiffError(
            f"{where}: weight_rule must be one of {tuple(WEIGHT_RULES)}, got {spec!r}"
        )
    return WEIGHT_RULES[spec]()


# ------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class FKCGrid:
    r"""Per-time floats on the decreasing grid ``t_0 > ... > t_K`` (index = step):
    ``log_alpha``, ``f`` (drift coefficient), ``g2``, ``h2``, ``c``; ``move[a]``: the move
    coefficients from ``t_a`` to ``t_{a+1}``."""

    times: list[float]
    log_alpha: list[float]
    f: list[float]
    g2: list[float]
    h2: list[float]
    c: list[float]
    move: list[MoveCoefficients]

    @classmethod
    def build(
        cls, process: NoiseProcess, times: Sequence[float], noise: NoiseSplit,
        integrator: Integrator, total_weight: float, *, where: str,
    ) -> FKCGrid:  # fmt: skip
        ts = check_times(times, where=where)
        alpha = [float(process.alpha(t)) for t in ts]
        if not all(a > 0 and math.isfinite(a) for a in alpha):
            raise SMCDiffError(f"{where}: alpha_t must be positive on the grid (Flow: t_max < 1)")
        f = [float(process.drift(t)) for t in ts]
        g2 = [float(process.diffusion_sq(t)) for t in ts]
        h2 = [noise.h2(v) for v in g2]
        c = [noise.c(v) for v in g2]
        move = [
            integrator.coefficients(
                process, ts[a], ts[a] - ts[a + 1], f[a], c[a], h2[a], total_weight
            )
            for a in range(len(ts) - 1)
        ]
        return cls(ts, [math.log(a) for a in alpha], f, g2, h2, c, move)


def check_times(times: Sequence[float], *, where: str) -> list[float]:
    """``times`` as floats: strictly decreasing, at least 2, within [0, 1]."""
    ts = [float(t) for t in times]
    if len(ts) < 2 or any(not a > b for a, b in itertools.pairwise(ts)):
        raise SMCDiffError(f"{where}: times must be strictly decreasing with >= 2 entries")
    if not (0.0 <= ts[-1] and ts[0] <= 1.0):
        raise SMCDiffError(f"{where}: times must lie in [0, 1], got {ts[0]}..{ts[-1]}")
    return ts
