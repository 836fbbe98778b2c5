r"""Feynman–Kac correctors (Skreta et al., 2025) with optional DriftLite drift control.

**Target.** Run time :math:`\tau = 1 - t` forwards. Components :math:`q_{i,t}` are noised marginals
of one forward SDE :math:`dx = f_t x\,dt + g_t\,dW`, so
:math:`\partial_\tau q = \nabla\cdot(f_t x\, q) - \tfrac{g_t^2}{2}\Delta q`. The sampler targets

.. math::
    \log\rho_t(x) = \sum_i w_i\log q_{i,t}(x) + \beta_t r(x), \qquad
    S = \sum_i w_i s_i + \beta_t\nabla r, \qquad W = \textstyle\sum_i w_i .

**Weights.** Particles move by :math:`dx = v\,d\tau + h\,dW` and carry log-weight increments
:math:`G\,d\tau`; the weighted measure obeys
:math:`\partial_\tau\mu = -\nabla\cdot(v\mu) + \tfrac{h^2}{2}\Delta\mu + G\mu`. Put
:math:`\mu = \rho` and use :math:`\Delta q/q = \Delta\log q + |\nabla\log q|^2`. With
:math:`v = -f_t x + c\,S` and :math:`c = (g^2 + h^2)/2` every :math:`\Delta\log q_i` term cancels and

.. math::
    G = (W - 1)\,d\,f_t + \dot\beta\, r - \beta f_t\, x\cdot\nabla r + \tfrac{g^2}{2}\beta\Delta r
        + \tfrac{g^2}{2}\Big(|S|^2 - \sum_i w_i|s_i|^2\Big),

which does not depend on :math:`h` (:math:`\dot\beta = d\beta/d\tau`). The noise level :math:`h` is
the drift/weight split: ``noise="target"`` (:math:`h = g`, the reverse SDE of :math:`\rho`),
``"tempered"`` (:math:`h^2 = g^2/W`, for :math:`q^\gamma` the reverse SDE at temperature
:math:`1/\gamma`), or a float :math:`\kappa` with :math:`h^2 = \kappa g^2` (0: probability-flow ODE).
Cases: annealing :math:`q^\gamma`: :math:`G = (\gamma-1)d f_t + \tfrac{g^2}{2}\gamma(\gamma-1)|s|^2`;
product :math:`q_1q_2`: :math:`G = d f_t + g^2 s_1\cdot s_2`; CFG :math:`q_c^w q_u^{1-w}`:
:math:`G = -\tfrac{g^2}{2}w(1-w)|s_c - s_u|^2`; reward: :math:`G = \dot\beta r + \beta(-f_t x\cdot\nabla r
+ \tfrac{g^2}{2}\Delta r + g^2 s\cdot\nabla r) + \tfrac{g^2}{2}\beta^2|\nabla r|^2`.

**Discretisation** of step :math:`t \to s` (:math:`\Delta\tau = t - s`, coefficients at
:math:`t`): ``integrator="em"``, Euler–Maruyama
:math:`x_s = x_t + \Delta\tau\,(-f_t x_t + c_t S_t(x_t) + u_t(x_t)) + h_t\sqrt{\Delta\tau}\,z`;
``"exp"`` (default) integrates the linear part :math:`-\lambda x`,
:math:`\lambda = f_t + c_t W/\nu_t`, :math:`\nu_t = \alpha_t^2 + \sigma_t^2`, exactly (the drift
:math:`\rho_t` has when each :math:`q_i \approx \mathcal N(0, \nu_t)`, which removes the stiffness
of the high-noise end) and the rest explicitly. Log-weight :math:`(W-1)\,d\,\log(\alpha_t/\alpha_s)`
(the constant term, integrated exactly) :math:`+\ (\beta_s - \beta_t)\,\bar r + \Delta\tau\,\bar G`,
where the bars are the trapezoid averages over the old and new points (``weight_rule="trapezoid"``,
no extra NFE: the new point's scores serve the next step) or the old point's values (``"left"``);
:math:`G` here excludes the two terms handled apart. The bias is :math:`O(\Delta\tau)`; it shrinks
with the step count (table in ``docs/fkc-driftlite.md``).

**Start and log Z.** :math:`\rho_{t_{max}} \approx \mathcal N(0, \sigma_{ref}^2/W)` (each
:math:`q_i \approx \mathcal N(0,\sigma_{ref}^2)`); the start weight is
:math:`\sum_i w_i\log\hat q_i(x) + \beta_{t_{max}} r(x) - \log\mathcal N(x; 0, \sigma_{ref}^2/W)` with
:math:`\hat q_i = q_{i,t_{max}}` when the components have ``log_density`` and
:math:`\mathcal N(0, \sigma_{ref}^2)` otherwise (then it is a constant). So ``log_z`` estimates
:math:`\log\int\prod_i p_i(x)^{w_i} e^{\beta r(x)}\,dx` with :math:`p_i = q_{i,t_{min}}` the
(normalised) component marginals at the end of the grid — exactly up to the time discretisation
with log densities; without them, up to the error of :math:`q_{i,t_{max}} \approx \mathcal N(0,
\sigma_{ref}^2)` as well. Normalised weights do not depend on that constant.

**Control** (``control="vcg" | "ecg"``, see :mod:`smcdiff.steering.driftlite`): the drift gains
:math:`u = \sum_j\theta_j\phi_j` with :math:`\theta` (per group, constant over the step) solved
from the weighted particles at the start of the step, and :math:`G` gains
:math:`\nabla\cdot u + u\cdot S = \theta^\top\psi` (trapezoid as above), which keeps the weighted
measure. Basis names: ``"scores"`` (each :math:`s_i`), ``"target"`` (:math:`S`), ``"reward"``
(:math:`\nabla r`), ``"x"`` (:math:`x`, potential :math:`|x|^2/2`). Divergences
(:math:`\Delta r`, :math:`\nabla\cdot s_i`) are exact (``d`` backward passes) or Hutchinson
(``n_probes`` Rademacher probes): ``divergence="auto"`` is exact for ``d <= 16``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_device, check_shape, nonfinite_rows
from smcdiff.engine.model import ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.scores.base import ScoreModel, has_log_density
from smcdiff.scores.combine import GeometricScore
from smcdiff.steering.driftlite import (
    CONTROLS,
    ecg_coefficients,
    vcg_coefficients,
    weighted_variance,
)

__all__ = [
    "BASES",
    "BETA_SCHEDULES",
    "DIVERGENCES",
    "NOISES",
    "WEIGHT_RULES",
    "FKCModel",
    "divergence",
]

NOISES = ("target", "tempered")
WEIGHT_RULES = ("trapezoid", "left")
INTEGRATORS = ("exp", "em")
DIVERGENCES = ("auto", "exact", "hutchinson")
BETA_SCHEDULES = ("linear", "snr", "constant")
BASES = ("scores", "target", "reward", "x")
_AUTO_EXACT_MAX_DIM = 16
_LOG_2PI = math.log(2.0 * math.pi)


def divergence(
    y: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None = None
) -> torch.Tensor:
    r""":math:`\nabla\cdot y(x)` per row, float64 ``(N,)``, for ``y`` ``(N, d)`` built from ``x``
    ``(N, d)`` row by row (row n depends on ``x[n]`` only) with a graph.

    ``probes=None``: exact, :math:`\sum_j \partial y_j/\partial x_j` from ``d`` backward passes;
    ``probes`` ``(P, N, d)`` (Rademacher): Hutchinson, :math:`\frac1P\sum_p \varepsilon_p^\top
    (\partial y/\partial x)\,\varepsilon_p`, ``P`` passes, unbiased.
    """
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if not y.requires_grad:  # y does not depend on x (e.g. the gradient of a linear reward)
        return out
    if probes is None:
        for j in range(x.shape[1]):
            (v,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=True, allow_unused=True)
            if v is not None:
                out = out + v[:, j].double()
        return out
    for e in probes:
        (v,) = torch.autograd.grad((y * e).sum(), x, retain_graph=True, allow_unused=True)
        if v is not None:
            out = out + (v * e).sum(-1).double()
    return out / probes.shape[0]


class FKCModel:
    r"""A :class:`~smcdiff.engine.FeynmanKacModel` for :math:`\prod_i q_i^{w_i} e^{\beta_t r}` (see the
    module docstring for the SDE, the weights and what ``log_z`` estimates).

    Args:
        target: a :class:`~smcdiff.scores.combine.GeometricScore` (e.g. from ``anneal``,
            ``product``, ``cfg``) or a plain score model (weight 1).
        times: decreasing grid ``t_max = t_0 > ... > t_K = t_min`` (e.g. :func:`smcdiff.time_grid`).
        reward: ``r(x)``: ``(N, d) -> (N,)``, differentiable twice (:math:`\nabla r`, :math:`\Delta r`),
            evaluated at :math:`x_t` itself.
        beta: final inverse temperature of the reward for a named ``beta_schedule``.
        beta_schedule: ``"linear"`` in t (0 at ``t_max``, ``beta`` at ``t_min``), ``"snr"``
            (proportional to :math:`\alpha_t^2/(\alpha_t^2+\sigma_t^2)`, rescaled to the same ends),
            ``"constant"`` (``beta`` everywhere), or a callable ``t -> beta_t`` (then leave
            ``beta`` unset).
        noise: ``"target"``, ``"tempered"`` or a float :math:`\kappa \ge 0` (:math:`h^2 = \kappa g^2`).
        weight_rule: ``"trapezoid"`` or ``"left"``.
        integrator: ``"exp"`` (the linear part of the drift integrated exactly, see
            ``_move_coefficients``) or ``"em"`` (Euler–Maruyama).
        divergence, n_probes: how :math:`\Delta r` and score divergences are computed.
        control: ``None``, ``"vcg"`` or ``"ecg"``; basis: names from :data:`BASES` (default
            ``("scores", "reward")``, ``"reward"`` only with a reward); ridge: relative ridge.
        device, dtype: of the particles (must match the score models).

    Step info (trace): ``weight_var`` ``(G,)``, the weighted variance of the log-weight increment
    under the step's starting weights; ``weight_var_uncontrolled``, the same without the control
    term :math:`\theta^\top\psi` (equal when ``control=None``); ``theta`` ``(G, J)`` with control.
    """

    uses_weights = True

    def __init__(
        self,
        target: ScoreModel,
        times: Sequence[float],
        *,
        reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        beta: float | None = None,
        beta_schedule: str | Callable[[float], float] = "linear",
        noise: str | float = "target",
        weight_rule: str = "trapezoid",
        integrator: str = "exp",
        divergence: str = "auto",
        n_probes: int = 1,
        control: str | None = None,
        basis: Sequence[str] | None = None,
        ridge: float = 1e-6,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        where = "FKCModel"
        if not isinstance(target, GeometricScore):
            if not isinstance(target, ScoreModel):
                raise SMCDiffError(f"{where}: target must be a ScoreModel, got {type(target)}")
            target = GeometricScore([target], [1.0])
        self.target = target
        self.process = target.process
        self.dim = target.dim
        self.W = target.total_weight
        self.dense = has_log_density(target)
        self.times = [float(t) for t in times]
        if len(self.times) < 2 or any(
            not a > b for a, b in zip(self.times[:-1], self.times[1:], strict=False)
        ):
            raise SMCDiffError(f"{where}: times must be strictly decreasing with >= 2 entries")
        if not (0.0 <= self.times[-1] and self.times[0] <= 1.0):
            raise SMCDiffError(
                f"{where}: times must lie in [0, 1], got {self.times[0]}..{self.times[-1]}"
            )
        self.n_steps = len(self.times) - 1
        alpha = [float(self.process.alpha(t)) for t in self.times]
        if not all(a > 0 and math.isfinite(a) for a in alpha):
            raise SMCDiffError(f"{where}: alpha_t must be positive on the grid (Flow: t_max < 1)")
        self.log_alpha = [math.log(a) for a in alpha]
        self.f = [float(self.process.drift(t)) for t in self.times]
        self.g2 = [float(self.process.diffusion_sq(t)) for t in self.times]

        if reward is None and (beta is not None or callable(beta_schedule)):
            raise SMCDiffError(f"{where}: beta / a beta schedule was given without a reward")
        self.reward = reward
        self.beta = self._beta_grid(beta, beta_schedule, where)

        if isinstance(noise, str):
            if noise not in NOISES:
                raise SMCDiffError(
                    f"{where}: noise must be one of {NOISES} or a float, got {noise!r}"
                )
            kappa = 1.0 if noise == "target" else 1.0 / self.W
        else:
            kappa = float(noise)
            if not (math.isfinite(kappa) and kappa >= 0):
                raise SMCDiffError(
                    f"{where}: noise kappa must be a finite float >= 0, got {noise!r}"
                )
        self.kappa = kappa
        self.h2 = [kappa * g2 for g2 in self.g2]
        self.c = [0.5 * (g2 + h2) for g2, h2 in zip(self.g2, self.h2, strict=True)]
        if integrator not in INTEGRATORS:
            raise SMCDiffError(
                f"{where}: integrator must be one of {INTEGRATORS}, got {integrator!r}"
            )
        self.integrator = integrator
        self._move = [self._move_coefficients(a) for a in range(self.n_steps)]

        if weight_rule not in WEIGHT_RULES:
            raise SMCDiffError(
                f"{where}: weight_rule must be one of {WEIGHT_RULES}, got {weight_rule!r}"
            )
        self.weight_rule = weight_rule
        if divergence not in DIVERGENCES:
            raise SMCDiffError(
                f"{where}: divergence must be one of {DIVERGENCES}, got {divergence!r}"
            )
        if divergence == "auto":
            divergence = "exact" if self.dim <= _AUTO_EXACT_MAX_DIM else "hutchinson"
        self.divergence = divergence
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise SMCDiffError(f"{where}: n_probes must be a positive int, got {n_probes!r}")
        self.n_probes = n_probes

        if control is not None and control not in CONTROLS:
            raise SMCDiffError(
                f"{where}: control must be None or one of {CONTROLS}, got {control!r}"
            )
        self.control = control
        self.basis = self._check_basis(basis, where)
        self.ridge = float(ridge)
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise SMCDiffError(f"{where}: ridge must be finite and >= 0, got {ridge!r}")
        uses = set(self.basis) if control else set()
        self._score_div = bool(uses & {"scores", "target"})
        self._reward_div = bool(uses & {"reward", "target"})
        self._ecg_logq = control == "ecg" and bool(uses & {"scores", "target"})
        self.basis_labels = self._labels()

        self.device, self.dtype = torch.device(device), dtype
        self.ref_std = float(self.process.prior_std)

    # ------------------------------------------------------------------ construction helpers
    def _move_coefficients(self, a: int) -> tuple[float, float, float, float]:
        r"""``(A, B, L, V)`` of the move ``x' = A x + B (c S(x) + L x + u(x)) + sqrt(V) z`` from
        ``t_a`` to ``t_{a+1}``, coefficients frozen at ``t_a``.

        ``"em"``: ``A = 1 - f dtau``, ``B = dtau``, ``L = 0``, ``V = h^2 dtau``. ``"exp"``: the
        linear part :math:`-\lambda x`, :math:`\lambda = f + cW/\nu` (the drift that
        :math:`\rho \approx \mathcal N(0, \nu/W)` would give, :math:`\nu = \alpha^2 + \sigma^2`),
        is integrated exactly: ``A = exp(-lam dtau)``, ``B = (1 - A)/lam``,
        ``V = h^2 (1 - A^2)/(2 lam)``, ``L = cW/nu``.
        """
        dtau = self.times[a] - self.times[a + 1]
        f, c, h2 = self.f[a], self.c[a], self.h2[a]
        if self.integrator == "em":
            return 1.0 - f * dtau, dtau, 0.0, h2 * dtau
        t = self.times[a]
        nu = float(self.process.alpha(t)) ** 2 + float(self.process.sigma(t)) ** 2
        lin = c * self.W / nu
        lam = f + lin

        def phi(rate: float) -> float:  # (1 - exp(-rate dtau)) / rate, stable as rate -> 0
            x = rate * dtau
            return dtau if abs(x) < 1e-12 else -math.expm1(-x) / rate

        return math.exp(-lam * dtau), phi(lam), lin, h2 * phi(2.0 * lam)

    def _beta_grid(self, beta, schedule, where: str) -> list[float]:
        ts = self.times
        if callable(schedule):
            if beta is not None:
                raise SMCDiffError(f"{where}: with a callable beta_schedule, leave beta unset")
            out = [float(schedule(t)) for t in ts]
        else:
            if schedule not in BETA_SCHEDULES:
                raise SMCDiffError(
                    f"{where}: beta_schedule must be one of {BETA_SCHEDULES} or a callable, "
                    f"got {schedule!r}"
                )
            b = 1.0 if beta is None else float(beta)
            if schedule == "constant":
                out = [b] * len(ts)
            elif schedule == "linear":
                out = [b * (ts[0] - t) / (ts[0] - ts[-1]) for t in ts]
            else:
                a2 = [float(self.process.alpha(t)) ** 2 for t in ts]
                s2 = [float(self.process.sigma(t)) ** 2 for t in ts]
                kap = [a / (a + s) for a, s in zip(a2, s2, strict=True)]
                out = [b * (k - kap[0]) / (kap[-1] - kap[0]) for k in kap]
        if self.reward is None:
            return [0.0] * len(ts)
        if not all(math.isfinite(v) for v in out):
            raise SMCDiffError(f"{where}: beta_t is not finite on the grid: {out}")
        return out

    def _check_basis(self, basis, where: str) -> tuple[str, ...]:
        if basis is None:
            basis = ("scores", "reward") if self.reward is not None else ("scores",)
        basis = tuple(basis)
        if not basis or any(b not in BASES for b in basis) or len(set(basis)) != len(basis):
            raise SMCDiffError(f"{where}: basis must be distinct names from {BASES}, got {basis}")
        if self.reward is None and "reward" in basis:
            raise SMCDiffError(f"{where}: basis 'reward' needs a reward")
        if self.control == "ecg" and {"scores", "target"} & set(basis) and not self.dense:
            raise SMCDiffError(
                f"{where}: control='ecg' needs the potentials of its basis fields; 'scores' and "
                "'target' need components with log_density (use control='vcg' or basis "
                "('reward', 'x'))"
            )
        return basis

    def _labels(self) -> list[str]:
        out: list[str] = []
        for b in self.basis:
            out += [f"score{i}" for i in range(self.target.n_components)] if b == "scores" else [b]
        return out

    # ------------------------------------------------------------------ one evaluation at a point
    def _evaluate(
        self, x: torch.Tensor, k: int, generator: torch.Generator, want_logq: bool = False
    ) -> tuple[ParticleState, dict[str, torch.Tensor], int, int]:
        """Scores (and what the weights and the control need) at ``x`` and time ``t_k``."""
        t, beta = self.times[k], self.beta[k]
        where = f"FKCModel step {k}/{self.n_steps} (t={t:.4g})"
        n, d = x.shape
        has_r = self.reward is not None
        need_lap = has_r and (beta != 0.0 or self._reward_div)
        want_logq = want_logq or self._ecg_logq
        grad_on = has_r or self._score_div
        probes = None
        if (need_lap or self._score_div) and self.divergence == "hutchinson":
            probes = (
                torch.randint(0, 2, (self.n_probes, n, d), generator=generator, device=x.device)
                .to(x.dtype)
                .mul_(2)
                .sub_(1)
            )
        passes = d if probes is None else self.n_probes
        n_grad = 0
        checks: dict[str, torch.Tensor] = {"particles": nonfinite_rows(x)}
        with torch.enable_grad() if grad_on else torch.no_grad():
            xr = x.detach().requires_grad_(grad_on)
            comps, logq = [], []
            for i, m in enumerate(self.target.models):
                if want_logq:
                    s, lq = m.score_and_log_density(xr, t)
                    check_shape(f"log_density of component {i}", lq, (n,), where=where)
                    logq.append(lq.detach().double())
                else:
                    s = m.score(xr, t)
                check_shape(f"score of component {i}", s, (n, d), where=where)
                check_device(f"score of component {i}", s, x.device, where=where)
                comps.append(s)
            sdiv = [divergence(s, xr, probes) for s in comps] if self._score_div else []
            n_grad += passes * len(sdiv)
            r = grad_r = lap = None
            if has_r:
                r = self.reward(xr)
                check_shape("reward", r, (n,), where=where)
                check_device("reward", r, x.device, where=where)
                (grad_r,) = torch.autograd.grad(r.sum(), xr, create_graph=need_lap)
                n_grad += 1
                if need_lap:
                    lap = divergence(grad_r, xr, probes)
                    n_grad += passes
        comps = [s.detach() for s in comps]
        w = self.target.weights
        s0 = sum(wi * s for wi, s in zip(w, comps, strict=True))
        checks["score"] = torch.stack([nonfinite_rows(s) for s in comps]).any(0)
        s64 = s0.double()
        if has_r:
            r, grad_r = r.detach().double(), grad_r.detach()
            checks["reward"] = ~torch.isfinite(r) | nonfinite_rows(grad_r)
            s64 = s64 + beta * grad_r.double()
        divs = ([lap.detach()] if lap is not None else []) + [v.detach() for v in sdiv]
        if divs:
            lap = divs[0] if lap is not None else None
            sdiv = divs[1:] if lap is not None else divs
            checks["divergence"] = ~torch.isfinite(torch.stack(divs)).all(0)
        sq = sum(wi * s.double().square().sum(-1) for wi, s in zip(w, comps, strict=True))
        rate = 0.5 * self.g2[k] * (s64.square().sum(-1) - sq)
        if has_r and beta != 0.0:
            x_dot_gr = (x.double() * grad_r.double()).sum(-1)
            rate = rate + beta * (-self.f[k] * x_dot_gr + 0.5 * self.g2[k] * lap)
        state: ParticleState = {"x": x, "drift": s64.to(x.dtype), "rate": rate}
        if has_r:
            state["r"] = r
        if want_logq:
            state["logq"] = torch.stack(logq, dim=1)  # (N, K)
        if self.control is not None:
            state.update(self._features(x, comps, sdiv, logq, r, grad_r, lap, s64, beta))
        return {k: v.detach() for k, v in state.items()}, checks, len(comps), n_grad

    def _features(self, x, comps, sdiv, logq, r, grad_r, lap, s64, beta) -> ParticleState:
        """Basis fields ``phi`` ``(N, J, d)``, features ``psi = div phi + phi . S`` ``(N, J)`` and,
        for ECG, potentials ``pot`` ``(N, J)``."""
        w = self.target.weights
        phis, divs, pots = [], [], []
        ecg = self.control == "ecg"
        for b in self.basis:
            if b == "scores":
                phis += comps
                divs += sdiv
                pots += logq if ecg else []
            elif b == "target":
                phis.append(s64.to(x.dtype))
                dv = sum(wi * v for wi, v in zip(w, sdiv, strict=True))
                pt = sum(wi * v for wi, v in zip(w, logq, strict=True)) if ecg else None
                if r is not None and beta != 0.0:
                    dv = dv + beta * lap
                    pt = pt + beta * r if ecg else None
                divs.append(dv)
                pots += [pt] if ecg else []
            elif b == "reward":
                phis.append(grad_r)
                divs.append(lap)
                pots += [r] if ecg else []
            else:  # "x": u = x, div = d, potential |x|^2 / 2
                phis.append(x)
                divs.append(
                    torch.full(
                        (x.shape[0],), float(x.shape[1]), dtype=torch.float64, device=x.device
                    )
                )
                pots += [0.5 * x.double().square().sum(-1)] if ecg else []
        phi = torch.stack(phis, dim=1)
        psi = torch.stack(divs, dim=1) + (phi.double() * s64.unsqueeze(1)).sum(-1)
        out: ParticleState = {"phi": phi, "psi": psi}
        if ecg:
            out["pot"] = torch.stack(pots, dim=1)
        return out

    # ------------------------------------------------------------------ FeynmanKacModel
    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        std = self.ref_std / math.sqrt(self.W)
        x = std * torch.randn(
            n, self.dim, generator=generator, device=self.device, dtype=self.dtype
        )
        state, checks, nfe, n_grad = self._evaluate(x, 0, generator, want_logq=self.dense)
        sq = x.double().square().sum(-1)
        log_ref = -0.5 * sq / std**2 - 0.5 * self.dim * (_LOG_2PI + 2 * math.log(std))
        if self.dense:
            w = torch.tensor(self.target.weights, dtype=torch.float64, device=x.device)
            log_g = state["logq"] @ w - log_ref
            checks["log_density"] = ~torch.isfinite(state["logq"]).all(1)
        else:  # q_i(t_max) taken as N(0, ref^2): the ratio is a constant
            d, s2 = self.dim, self.ref_std**2
            const = -(self.W - 1) * 0.5 * d * (_LOG_2PI + math.log(s2)) - 0.5 * d * math.log(self.W)
            log_g = torch.full((n,), const, dtype=torch.float64, device=x.device)
        if self.reward is not None and self.beta[0] != 0.0:
            log_g = log_g + self.beta[0] * state["r"]
        if not self._ecg_logq:
            state.pop("logq", None)
        return StepOutput(state, log_g, checks, nfe=nfe, n_grad=n_grad)

    def step(
        self,
        k: int,
        state: ParticleState,
        generator: torch.Generator,
        log_weights: torch.Tensor | None = None,
    ) -> StepOutput:
        a = k - 1
        x = state["x"]
        n = x.shape[0]
        if log_weights is None:
            log_weights = torch.full((1, n), -math.log(n), dtype=torch.float64, device=x.device)
        n_groups = log_weights.shape[0]
        n_per = n // n_groups
        wts = torch.exp(log_weights)
        dtau = self.times[a] - self.times[k]
        dbeta = self.beta[k] - self.beta[a]
        has_r = self.reward is not None

        coef_a, coef_b, coef_lin, coef_var = self._move[a]
        drift = self.c[a] * state["drift"] + coef_lin * x
        theta = None
        if self.control is not None:
            rate = state["rate"] + (dbeta / dtau) * state["r"] if has_r else state["rate"]
            rate = rate.reshape(n_groups, n_per)
            j = state["psi"].shape[1]
            if self.control == "vcg":
                theta = vcg_coefficients(
                    state["psi"].reshape(n_groups, n_per, j), rate, wts, self.ridge
                )
            else:
                theta = ecg_coefficients(
                    state["phi"].reshape(n_groups, n_per, j, self.dim),
                    state["pot"].reshape(n_groups, n_per, j),
                    rate,
                    wts,
                    self.ridge,
                )
            theta_p = theta.repeat_interleave(n_per, dim=0)  # (G*N, J)
            drift = drift + (theta_p.to(x.dtype).unsqueeze(-1) * state["phi"]).sum(1)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_new = coef_a * x + coef_b * drift + math.sqrt(coef_var) * z
        new, checks, nfe, n_grad = self._evaluate(x_new, k, generator)

        inc = torch.full(
            (n,),
            (self.W - 1) * self.dim * (self.log_alpha[a] - self.log_alpha[k]),
            dtype=torch.float64,
            device=x.device,
        )
        trap = self.weight_rule == "trapezoid"
        inc = inc + (0.5 * dtau * (state["rate"] + new["rate"]) if trap else dtau * state["rate"])
        if has_r and dbeta != 0.0:
            inc = inc + (0.5 * dbeta * (state["r"] + new["r"]) if trap else dbeta * state["r"])
        log_g = inc
        if theta is not None:
            psi = 0.5 * (state["psi"] + new["psi"]) if trap else state["psi"]
            log_g = inc + dtau * (theta_p * psi).sum(-1)
        info = {
            "weight_var": weighted_variance(log_g.reshape(n_groups, n_per), wts),
            "weight_var_uncontrolled": weighted_variance(inc.reshape(n_groups, n_per), wts),
        }
        if theta is not None:
            info["theta"] = theta
        return StepOutput(new, log_g, checks, nfe=nfe, n_grad=n_grad, info=info)

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached scores and features at ``state["x"]`` after a corrector move
        (Hutchinson probes from a generator seeded with ``k``)."""
        gen = torch.Generator(device=state["x"].device).manual_seed(k)
        new, _, nfe, _ = self._evaluate(state["x"], k, gen)
        return new, nfe

    def log_target(self, k: int, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\rho_{t_k}(x) = \sum_i w_i\log q_{i,t_k}(x) + \beta_k r(x)` (unnormalised),
        ``(N, d) -> (N,)``, differentiable: what an MCMC corrector at step k must leave invariant.
        Needs components with ``log_density``."""
        if not self.dense:
            raise SMCDiffError("FKCModel.log_target needs components with log_density")
        out = self.target.log_density(x, self.times[k]).double()
        if self.reward is not None and self.beta[k] != 0.0:
            out = out + self.beta[k] * self.reward(x).double()
        return out
