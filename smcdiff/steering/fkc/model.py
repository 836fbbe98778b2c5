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

from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time
from smcdiff.scores.combine import GeometricScore
from smcdiff.steering.driftlite import Control, make_control, weighted_variance
from smcdiff.steering.fkc.basis import BasisField, control_features, resolve_basis
from smcdiff.steering.fkc.divergence import DivergenceEstimator, make_divergence
from smcdiff.steering.fkc.integrator import (
    FKCGrid,
    Integrator,
    NoiseSplit,
    WeightRule,
    make_integrator,
    make_weight_rule,
)
from smcdiff.steering.fkc.point import FKCPoint, PointEvaluator
from smcdiff.steering.fkc.schedules import BetaSchedule, beta_grid, make_beta_schedule

__all__ = ["FKCModel"]

_LOG_2PI = math.log(2.0 * math.pi)


class FKCModel(FeynmanKacModel):
    r"""A :class:`~smcdiff.engine.FeynmanKacModel` for :math:`\prod_i q_i^{w_i} e^{\beta_t r}` (see the
    module docstring for the SDE, the weights and what ``log_z`` estimates).

    Particles have shape ``(N, *event_shape)`` (the event shape of the score models); every
    reduction (:math:`|S|^2`, :math:`x\cdot\nabla r`, divergences, the control's least squares)
    runs over the flattened event dims, ``d`` = their product.

    Args:
        model: a :class:`~smcdiff.scores.combine.GeometricScore` (e.g. from ``anneal``,
            ``product``, ``cfg``) or a plain score model (weight 1).
        times: decreasing grid ``t_max = t_0 > ... > t_K = t_min`` (e.g. :func:`smcdiff.time_grid`).
        reward: ``r(x)``: ``(N, *event_shape) -> (N,)``, differentiable twice (:math:`\nabla r`,
            :math:`\Delta r`), evaluated at :math:`x_t` itself.
        beta: final inverse temperature of the reward for a named ``beta_schedule``.
        beta_schedule: ``"linear"``, ``"snr"``, ``"constant"`` (see
            :mod:`~smcdiff.steering.fkc.schedules`), a
            :class:`~smcdiff.steering.fkc.schedules.BetaSchedule` or a callable ``t -> beta_t``
            (then leave ``beta`` unset).
        noise: ``"target"``, ``"tempered"`` or a float :math:`\kappa \ge 0` (:math:`h^2 = \kappa g^2`).
        weight_rule: ``"trapezoid"``, ``"left"`` or a
            :class:`~smcdiff.steering.fkc.integrator.WeightRule`.
        integrator: ``"exp"`` (the linear part of the drift integrated exactly), ``"em"``
            (Euler–Maruyama) or an :class:`~smcdiff.steering.fkc.integrator.Integrator`.
        divergence, n_probes: how :math:`\Delta r` and score divergences are computed
            (``"auto" | "exact" | "hutchinson"`` or a
            :class:`~smcdiff.steering.fkc.divergence.DivergenceEstimator`).
        control: ``None``, ``"vcg"``, ``"ecg"`` or a :class:`~smcdiff.steering.driftlite.Control`;
            basis: names from :data:`~smcdiff.steering.fkc.basis.BASES` and/or
            :class:`~smcdiff.steering.fkc.basis.BasisField` objects (default
            ``("scores", "reward")``, ``"reward"`` only with a reward); ridge: relative ridge of a
            named control.
        device, dtype: of the particles (must match the score models).

    Step info (trace): ``weight_var`` ``(G,)``, the weighted variance of the log-weight increment
    under the step's starting weights; ``weight_var_uncontrolled``, the same without the control
    term :math:`\theta^\top\psi` (equal when ``control=None``); ``theta`` ``(G, J)`` with control.
    """

    def __init__(
        self,
        model: ScoreModel,
        times: Sequence[float],
        *,
        reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        beta: float | None = None,
        beta_schedule: str | BetaSchedule | Callable[[float], float] = "linear",
        noise: str | float = "target",
        weight_rule: str | WeightRule = "trapezoid",
        integrator: str | Integrator = "exp",
        divergence: str | DivergenceEstimator = "auto",
        n_probes: int = 1,
        control: str | Control | None = None,
        basis: Sequence[str | BasisField] | None = None,
        ridge: float = 1e-6,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        where = "FKCModel"
        self.target = _as_geometric(model, where)
        self.process = self.target.process
        self.event_shape = event_shape_of(self.target)
        self.dim = math.prod(self.event_shape)
        self.W = self.target.total_weight
        self.dense = has_log_density(self.target)
        self.reward = reward
        self.noise = NoiseSplit.from_spec(noise, self.W, where=where)
        self.integrator = make_integrator(integrator, where=where)
        self.grid = FKCGrid.build(
            self.process, times, self.noise, self.integrator, self.W, where=where
        )
        self.times = self.grid.times
        self.n_steps = len(self.times) - 1
        self.beta = self._beta_grid(beta, beta_schedule, where)
        self.weight_rule = make_weight_rule(weight_rule, where=where)
        self.divergence = make_divergence(divergence, n_probes, self.dim, where=where)
        self.control = make_control(control, ridge, where=where)
        self._build_basis(basis, where)
        self.device, self.dtype = torch.device(device), dtype
        self.ref_std = float(self.process.prior_std)

    # ------------------------------------------------------------------ construction helpers
    def _beta_grid(self, beta, schedule, where: str) -> list[float]:
        if self.reward is None and (beta is not None or not isinstance(schedule, str)):
            raise SMCDiffError(f"{where}: beta / a beta schedule was given without a reward")
        self.beta_schedule = make_beta_schedule(schedule, beta, where=where)
        if self.reward is None:
            return [0.0] * len(self.times)
        return beta_grid(self.beta_schedule, self.times, self.process, where=where)

    def _build_basis(self, basis, where: str) -> None:
        """The control basis fields and the evaluator that computes what they (and the weights)
        need at a point."""
        ecg = self.control is not None and self.control.needs_potentials
        self.basis, self.basis_labels = resolve_basis(
            basis, has_reward=self.reward is not None, dense=self.dense, ecg=ecg,
            n_components=self.target.n_components, where=where,
        )  # fmt: skip
        used = self.basis if self.control is not None else ()
        self._ecg_logq = ecg and any(f.potential_needs_log_density for f in used)
        self.evaluator = PointEvaluator(
            self.target, self.reward, self.divergence, self.event_shape,
            score_div=any(f.score_div for f in used), reward_div=any(f.reward_div for f in used),
            log_density=self._ecg_logq,
        )  # fmt: skip

    # ------------------------------------------------------------------ one evaluation at a point
    def _evaluate(
        self, x: torch.Tensor, k: int, generator: torch.Generator, want_logq: bool = False
    ) -> tuple[ParticleState, dict[str, torch.Tensor], int, int]:
        """The cached state at ``x`` and time ``t_k``: ``x``, ``drift`` (:math:`S`), ``rate``
        (:math:`G` without the two terms handled apart), ``r``, ``logq`` ``(N, K)`` (when asked
        or for ECG), and with control ``phi``, ``psi`` (and ``pot``)."""
        t = self.times[k]
        where = f"FKCModel step {k}/{self.n_steps} (t={t:.4g})"
        p, checks, nfe, n_grad = self.evaluator(x, t, self.beta[k], generator, where, want_logq)
        state: ParticleState = {"x": x, "drift": p.score.to(x.dtype), "rate": self._rate(p, k)}
        if p.reward is not None:
            state["r"] = p.reward
        if want_logq or self._ecg_logq:
            state["logq"] = torch.stack(p.log_q, dim=1)  # (N, K)
        if self.control is not None:
            ecg = self.control.needs_potentials
            state.update(
                control_features(p, self.basis, self.basis_labels, potentials=ecg, where=where)
            )
        return {k: v.detach() for k, v in state.items()}, checks, nfe, n_grad

    def _rate(self, p: FKCPoint, k: int) -> torch.Tensor:
        r""":math:`\tfrac{g^2}{2}(|S|^2 - \sum_i w_i|s_i|^2) + \beta(-f\,x\cdot\nabla r +
        \tfrac{g^2}{2}\Delta r)`, float64 ``(N,)``."""
        g2 = self.grid.g2[k]
        sq = sum(
            wi * s.double().square().flatten(1).sum(-1)
            for wi, s in zip(p.weights, p.scores, strict=True)
        )
        rate = 0.5 * g2 * (p.score.square().flatten(1).sum(-1) - sq)
        if p.reward is not None and p.beta != 0.0:
            x_dot_gr = (p.x.double() * p.reward_grad.double()).flatten(1).sum(-1)
            rate = rate + p.beta * (-self.grid.f[k] * x_dot_gr + 0.5 * g2 * p.reward_lap)
        return rate

    # ------------------------------------------------------------------ FeynmanKacModel
    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        std = self.ref_std / math.sqrt(self.W)
        x = std * torch.randn(
            n, *self.event_shape, generator=generator, device=self.device, dtype=self.dtype
        )
        state, checks, nfe, n_grad = self._evaluate(x, 0, generator, want_logq=self.dense)
        log_g = self._log_start(x, std, state, checks)
        if not self._ecg_logq:
            state.pop("logq", None)
        return StepOutput(state, log_g, checks, nfe=nfe, n_grad=n_grad)

    def _log_start(
        self, x: torch.Tensor, std: float, state: ParticleState, checks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        r"""Start weight :math:`\sum_i w_i\log\hat q_i(x) + \beta_0 r(x) - \log\mathcal N(x; 0,
        \text{std}^2)` (see the module docstring), float64 ``(N,)``."""
        n, d = x.shape[0], self.dim
        if self.dense:
            sq = x.double().square().flatten(1).sum(-1)
            log_ref = -0.5 * sq / std**2 - 0.5 * d * (_LOG_2PI + 2 * math.log(std))
            w = torch.tensor(self.target.weights, dtype=torch.float64, device=x.device)
            log_g = state["logq"] @ w - log_ref
            checks["log_density"] = ~torch.isfinite(state["logq"]).all(1)
        else:  # q_i(t_max) taken as N(0, ref^2): the ratio is a constant
            s2 = self.ref_std**2
            const = -(self.W - 1) * 0.5 * d * (_LOG_2PI + math.log(s2)) - 0.5 * d * math.log(self.W)
            log_g = torch.full((n,), const, dtype=torch.float64, device=x.device)
        if self.reward is not None and self.beta[0] != 0.0:
            log_g = log_g + self.beta[0] * state["r"]
        return log_g

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        a, x = k - 1, state["x"]
        n_groups, n_per = log_weights.shape
        wts = torch.exp(log_weights)
        move = self.grid.move[a]
        drift = self.grid.c[a] * state["drift"] + move.lin * x
        theta = theta_p = None
        if self.control is not None:
            theta = self.control.coefficients(state, self._control_rate(a, k, state), wts)
            theta_p = theta.repeat_interleave(n_per, dim=0)  # (G*N, J)
            drift = drift + _combine(theta_p.to(x.dtype), state["phi"])
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        new, checks, nfe, n_grad = self._evaluate(move.apply(x, drift, z), k, generator)
        inc, log_g = self._log_potential(a, k, state, new, theta_p)
        info = {
            "weight_var": weighted_variance(log_g.reshape(n_groups, n_per), wts),
            "weight_var_uncontrolled": weighted_variance(inc.reshape(n_groups, n_per), wts),
        }
        if theta is not None:
            info["theta"] = theta
        return StepOutput(new, log_g, checks, nfe=nfe, n_grad=n_grad, info=info)

    def _control_rate(self, a: int, k: int, state: ParticleState) -> torch.Tensor:
        r"""The rate the control solves against: :math:`G` with :math:`\dot\beta r`, ``(G*N,)``."""
        if self.reward is None:
            return state["rate"]
        dbeta_dtau = (self.beta[k] - self.beta[a]) / (self.times[a] - self.times[k])
        return state["rate"] + dbeta_dtau * state["r"]

    def _log_potential(
        self, a: int, k: int, old: ParticleState, new: ParticleState, theta_p: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(increment without control, log-potential)`` of the step from ``t_a`` to ``t_k``,
        float64 ``(G*N,)``, by the weight rule."""
        dtau, dbeta = self.times[a] - self.times[k], self.beta[k] - self.beta[a]
        rule, n = self.weight_rule, old["x"].shape[0]
        const = (self.W - 1) * self.dim * (self.grid.log_alpha[a] - self.grid.log_alpha[k])
        inc = torch.full((n,), const, dtype=torch.float64, device=old["x"].device)
        inc = inc + rule.integrate(dtau, old["rate"], new["rate"])
        if self.reward is not None and dbeta != 0.0:
            inc = inc + rule.integrate(dbeta, old["r"], new["r"])
        if theta_p is None:
            return inc, inc
        psi = rule.integrate(1.0, old["psi"], new["psi"])
        return inc, inc + dtau * (theta_p * psi).sum(-1)

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached scores and features at ``state["x"]`` after a corrector move
        (Hutchinson probes from a generator seeded with ``k``)."""
        gen = torch.Generator(device=state["x"].device).manual_seed(k)
        new, _, nfe, _ = self._evaluate(state["x"], k, gen)
        return new, nfe

    def log_target(self, k: int, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\rho_{t_k}(x) = \sum_i w_i\log q_{i,t_k}(x) + \beta_k r(x)` (unnormalised),
        ``(N, *event_shape) -> (N,)``, differentiable: what an MCMC corrector at step k must leave
        invariant. Needs components with ``log_density``."""
        if not self.dense:
            raise SMCDiffError("FKCModel.log_target needs components with log_density")
        t = self.times[k]
        out = self.target.log_density(x, model_time(self.target, t, x)).double()
        if self.reward is not None and self.beta[k] != 0.0:
            out = out + self.beta[k] * self.reward(x).double()
        return out


def _as_geometric(model: ScoreModel, where: str) -> GeometricScore:
    """``model`` as a :class:`GeometricScore` (a plain score model gets weight 1)."""
    if isinstance(model, GeometricScore):
        return model
    if not isinstance(model, ScoreModel):
        raise SMCDiffError(f"{where}: model must be a ScoreModel, got {type(model)}")
    return GeometricScore([model], [1.0])


def _combine(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    r""":math:`u = \sum_j\theta_j\phi_j`: ``theta`` ``(N, J)``, ``phi`` ``(N, J, *E)`` ->
    ``(N, *E)``."""
    return (theta.reshape(*theta.shape, *([1] * (phi.dim() - 2))) * phi).sum(1)
