r"""The discretisation of FKC: the drift/weight split, the move integrators and the weight rules.

Run time :math:`\tau = 1 - t`. Particles move by :math:`dx = (-f_t x + c_t S + u)\,d\tau + h_t\,dW`
with :math:`c = (g^2 + h^2)/2` (see :mod:`smcdiff.steering.fkc.model`). Pieces, each an object
chosen once per model:

* :class:`NoiseSplit` — the noise level :math:`h^2 = \kappa g^2` (``"target"``: :math:`\kappa = 1`;
  ``"tempered"``: :math:`\kappa = 1/W`; or a float :math:`\kappa \ge 0`);
* an :class:`Integrator` — the move coefficients ``(A, B, L, V)`` of one step
  ``x' = A x + B (c S(x) + L x + u(x)) + sqrt(V) z`` from ``t_a`` to ``t_{a+1}``, frozen at ``t_a``:
  :class:`EulerMaruyama` (``"em"``), :class:`ExponentialIntegrator` (``"exp"``) or
  :class:`FittedExponential` (``"exp-fit"``: ``A``, ``B``, ``L``, ``V`` tensors per group and
  coordinate, fitted to the weighted particles at the start of the step);
* a :class:`WeightRule` — the quadrature of the log-weight rate over a step: :class:`Trapezoid`
  (old and new point, no extra NFE) or :class:`LeftPoint` (old point);
* :class:`FKCGrid` — the floats of each time (:math:`\log\alpha`, :math:`f`, :math:`g^2`,
  :math:`h^2`, :math:`c`, as a :class:`TimePoint`) and the move coefficients of a (sub-)step.
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
    "FittedExponential",
    "Integrator",
    "LeftPoint",
    "MoveCoefficients",
    "NoiseSplit",
    "TimePoint",
    "Trapezoid",
    "WeightRule",
    "check_times",
    "make_integrator",
    "make_weight_rule",
    "tame",
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
    """``x' = a x + b drift + sqrt(var) z`` with ``drift = c S(x) + lin x + u(x)``: floats, or
    tensors shaped like the particles (:class:`FittedExponential`)."""

    a: float | torch.Tensor
    b: float | torch.Tensor
    lin: float | torch.Tensor
    var: float | torch.Tensor

    def apply(self, x: torch.Tensor, drift: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b * drift + self.var**0.5 * z


class Integrator:
    """Base class: ``coefficients(...)`` of one step (see :class:`MoveCoefficients`)."""

    name = "integrator"
    fitted = False

    def linear(self, process: NoiseProcess, t: float, c: float, total_weight: float) -> float:
        """``L``: the coefficient of ``x`` moved from the exact part into the explicit drift."""
        return 0.0

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

    def linear(self, process: NoiseProcess, t: float, c: float, total_weight: float) -> float:
        nu = float(process.alpha(t)) ** 2 + float(process.sigma(t)) ** 2
        return c * total_weight / nu

    def coefficients(self, process, t, dtau, f, c, h2, total_weight) -> MoveCoefficients:
        lin = self.linear(process, t, c, total_weight)
        lam = f + lin
        return MoveCoefficients(
            math.exp(-lam * dtau), _phi(lam, dtau), lin, h2 * _phi(2.0 * lam, dtau)
        )


class FittedExponential(ExponentialIntegrator):
    r"""The exponential integrator with its linear part fitted to the weighted particles: per
    group and per coordinate j (flattened event dims), the slope of the explicit drift
    :math:`D = cS + u` on :math:`x_j`,

    .. math::
        \kappa_j = -\operatorname{Cov}_W(D_j, x_j) / \operatorname{Var}_W(x_j),

    at the start of the step, and :math:`\lambda_j = f + \kappa_j` integrated exactly (``A``,
    ``B``, ``V`` as for ``"exp"``, per coordinate), the rest :math:`D + \kappa x` explicitly.
    Exact moves when the target is Gaussian with a diagonal precision (a quadratic reward on a
    Gaussian prior: where ``"exp"``'s :math:`cW/\nu` misses the reward's curvature
    :math:`c\beta_t\nabla^2 r`, which makes its explicit part stiff); any :math:`\kappa` leaves
    the SDE, and so the weights, unchanged. Only contracting slopes are integrated exactly:
    :math:`\kappa_j = \max(0, \cdot)`, so :math:`A \le e^{-f\delta}`. An expanding slope
    (a repulsive drift, or a fit to a near-degenerate weighted set: :math:`\kappa = -10^4`
    on the DW-4 reward tilt, :math:`A = 10^{15}`) stays in the explicit part, where
    :func:`tame` bounds it. Vectorised, no host sync; where :math:`\operatorname{Var}_W(x_j)`
    vanishes (one particle per group, a constant coordinate) it falls back to ``"exp"``'s
    :math:`cW/\nu`."""

    name = "exp-fit"
    fitted = True

    def fit(
        self, process: NoiseProcess, t: float, dtau: float, f: float, c: float, h2: float,
        total_weight: float, x: torch.Tensor, explicit: torch.Tensor, log_weights: torch.Tensor,
    ) -> MoveCoefficients:  # fmt: skip
        """Tensor coefficients ``(G*N, *E)`` from particles ``x`` ``(G*N, *E)``, their explicit
        drift ``explicit`` (:math:`cS + u`, same shape) and normalised log-weights ``(G, N)``."""
        g, n = log_weights.shape
        w = torch.exp(log_weights.double()).unsqueeze(-1)  # (G, N, 1)
        xg, dg = x.double().reshape(g, n, -1), explicit.double().reshape(g, n, -1)
        mean_x = (w * xg).sum(1, keepdim=True)
        xc = xg - mean_x
        var = (w * xc * xc).sum(1, keepdim=True)  # (G, 1, d)
        cov = (w * xc * (dg - (w * dg).sum(1, keepdim=True))).sum(1, keepdim=True)
        ok = var > 1e-12 * (var + mean_x * mean_x) + 1e-300
        default = self.linear(process, t, c, total_weight)
        kappa = torch.where(ok, (-cov / torch.where(ok, var, 1.0)).clamp(min=0.0), default)
        lam = f + kappa
        a, b, v = torch.exp(-lam * dtau), _phi_t(lam, dtau), h2 * _phi_t(2.0 * lam, dtau)
        shape = (g, n, xg.shape[-1])
        a, b, kappa, v = (u.expand(shape).reshape(x.shape).to(x.dtype) for u in (a, b, kappa, v))
        return MoveCoefficients(a, b, kappa, v)


def tame(
    step: torch.Tensor, scale: float, max_move: float | None, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Tamed explicit displacement: each particle's ``step`` :math:`B\,D(x_n)` ``(G*N, *E)``
    (the explicit part of the move) is scaled down to at most ``max_move`` noise scales,

    .. math::
        \rho_n = |B\,D(x_n)| / s, \qquad B\,D(x_n) \leftarrow B\,D(x_n)\,\min(1, m/\rho_n),

    with ``scale`` :math:`s = g_t\sqrt{\delta\,d}` (the norm of the forward noise over the
    step) and :math:`m` = ``max_move`` (``None``: no taming, particles above 10 only counted).
    A step below the cap is unchanged; one above it is a step far too long for its drift (an
    explicit step of a superlinear drift, e.g. the cubic gradient of a quartic energy, throws
    the particle to where the drift is larger still: Euler diverges, Hutzenthaler, Jentzen &
    Kloeden 2011), and the cap keeps it a bounded move (a hard-threshold variant of their tamed
    Euler scheme, consistent as :math:`\delta \to 0` since the cap on the drift itself,
    :math:`m\,g_t\sqrt{d/\delta}`, grows as :math:`\delta^{-1/2}`). Returns the tamed step, the fraction of each group's particles
    above the cap ``(G,)`` and the largest :math:`\rho_n` per group ``(G,)`` (float64, on the
    device, no sync). ``scale <= 0`` (no forward noise): unchanged, zero counts."""
    ratio = step.detach().double().flatten(1).norm(dim=1)
    cap = 10.0 if max_move is None else max_move
    if not scale > 0.0:
        ratio = torch.zeros_like(ratio)
    else:
        ratio = ratio / scale
        if max_move is not None:
            factor = torch.where(ratio > cap, cap / ratio, 1.0).to(step.dtype)
            step = step * factor.reshape(-1, *([1] * (step.dim() - 1)))
    per_group = ratio.reshape(n_groups, -1)
    return step, (per_group > cap).double().mean(1), per_group.amax(1)


def _phi_t(rate: torch.Tensor, dtau: float) -> torch.Tensor:
    """:func:`_phi` elementwise on a tensor of rates."""
    y = rate * dtau
    small = y.abs() < 1e-12
    return torch.where(small, dtau, -torch.expm1(-y) / torch.where(small, 1.0, rate))


INTEGRATORS: dict[str, type[Integrator]] = {
    "exp": ExponentialIntegrator,
    "exp-fit": FittedExponential,
    "em": EulerMaruyama,
}


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
class TimePoint:
    r"""The process's floats at one time ``t``: :math:`\log\alpha_t`, ``f`` (drift coefficient),
    ``g2``, ``h2`` (noise of the move) and ``c`` (score coefficient of the drift)."""

    t: float
    log_alpha: float
    f: float
    g2: float
    h2: float
    c: float


class FKCGrid:
    r"""The decreasing grid ``t_0 > ... > t_K`` and the floats of any time of the run: ``at(t)``
    (a :class:`TimePoint`, cached for the grid's times) and ``move(point, s)``, the move
    coefficients of a step from ``point.t`` to ``s < point.t`` frozen at ``point.t``. Sub-steps
    of the step control (:mod:`~smcdiff.steering.fkc.stepping`) use times between grid points;
    every float is computed on the host, once per (sub-)step."""

    def __init__(
        self, process: NoiseProcess, times: Sequence[float], noise: NoiseSplit,
        integrator: Integrator, total_weight: float, *, where: str,
    ):  # fmt: skip
        self.process, self.noise, self.integrator = process, noise, integrator
        self.total_weight = total_weight
        self.times = check_times(times, where=where)
        self.points = [self._point(t) for t in self.times]
        if not all(math.isfinite(p.log_alpha) for p in self.points):
            raise SMCDiffError(f"{where}: alpha_t must be positive on the grid (Flow: t_max < 1)")

    def _point(self, t: float) -> TimePoint:
        alpha, g2 = float(self.process.alpha(t)), float(self.process.diffusion_sq(t))
        log_alpha = math.log(alpha) if alpha > 0 and math.isfinite(alpha) else -math.inf
        f = float(self.process.drift(t))
        return TimePoint(t, log_alpha, f, g2, self.noise.h2(g2), self.noise.c(g2))

    def at(self, t: float, k: int | None = None) -> TimePoint:
        """The floats at time ``t``; ``k``: its index when ``t`` is the grid's ``t_k``."""
        return self.points[k] if k is not None else self._point(t)

    def linear(self, point: TimePoint) -> float:
        """The integrator's ``L`` at ``point.t`` (see :class:`MoveCoefficients`)."""
        return self.integrator.linear(self.process, point.t, point.c, self.total_weight)

    def move(self, point: TimePoint, s: float) -> MoveCoefficients:
        """Move coefficients from ``point.t`` to ``s``, frozen at ``point.t``."""
        return self.integrator.coefficients(
            self.process, point.t, point.t - s, point.f, point.c, point.h2, self.total_weight
        )

    def fitted_move(
        self, point: TimePoint, s: float, x: torch.Tensor, explicit: torch.Tensor,
        log_weights: torch.Tensor,
    ) -> MoveCoefficients:  # fmt: skip
        """:meth:`FittedExponential.fit` from ``point.t`` to ``s``."""
        return self.integrator.fit(
            self.process, point.t, point.t - s, point.f, point.c, point.h2, self.total_weight,
            x, explicit, log_weights,
        )  # fmt: skip


def check_times(times: Sequence[float], *, where: str) -> list[float]:
    """``times`` as floats: strictly decreasing, at least 2, within [0, 1]."""
    ts = [float(t) for t in times]
    if len(ts) < 2 or any(not a > b for a, b in itertools.pairwise(ts)):
        raise SMCDiffError(f"{where}: times must be strictly decreasing with >= 2 entries")
    if not (0.0 <= ts[-1] and ts[0] <= 1.0):
        raise SMCDiffError(f"{where}: times must lie in [0, 1], got {ts[0]}..{ts[-1]}")
    return ts
