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
``"exp"`` integrates the linear part :math:`-\lambda x`,
:math:`\lambda = f_t + c_t W/\nu_t`, :math:`\nu_t = \alpha_t^2 + \sigma_t^2`, exactly (the drift
:math:`\rho_t` has when each :math:`q_i \approx \mathcal N(0, \nu_t)`, which removes the stiffness
of the high-noise end) and the rest explicitly; ``"exp-fit"`` (default) fits :math:`\lambda` per
group and coordinate to the weighted particles (the slope of the drift, which also holds a
reward's curvature :math:`c_t\beta_t\nabla^2 r`). Log-weight :math:`(W-1)\,d\,\log(\alpha_t/\alpha_s)`
(the constant term, integrated exactly) :math:`+\ (\beta_s - \beta_t)\,\bar r + \Delta\tau\,\bar G`,
where the bars are the trapezoid averages over the old and new points (``weight_rule="trapezoid"``,
no extra NFE: the new point's scores serve the next step) or the old point's values (``"left"``);
:math:`G` here excludes the two terms handled apart. The bias is :math:`O(\Delta\tau)`; it shrinks
with the step count (table in ``docs/fkc-driftlite.md``). With ``step_control="auto"`` (default)
each grid step is taken as sub-steps where an error estimate (trapezoid vs left-point log Z
increment, plus the KL of the move's Heun correction) exceeds ``tol``
(:mod:`~smcdiff.steering.fkc.stepping`); :math:`\beta_t` is linear in t between grid points.

**Start and log Z.** :math:`\rho_{t_{max}} \approx \mathcal N(0, \sigma_{ref}^2/W)` (each
:math:`q_i \approx \mathcal N(0,\sigma_{ref}^2)`); the start weight is
:math:`\sum_i w_i\log\hat q_i(x) + \beta_{t_{max}} r(x) - \log\mathcal N(x; 0, \sigma_{ref}^2/W)` with
:math:`\hat q_i = q_{i,t_{max}}` when the components have ``log_density`` and
:math:`\mathcal N(0, \sigma_{ref}^2)` otherwise (then it is a constant). So ``log_z`` estimates
:math:`\log\int\prod_i p_i(x)^{w_i} e^{\beta r(x)}\,dx` with :math:`p_i = q_{i,t_{min}}` the
(normalised) component marginals at the end of the grid — exactly up to the time discretisation
with log densities; without them, up to the error of :math:`q_{i,t_{max}} \approx \mathcal N(0,
\sigma_{ref}^2)` as well. Normalised weights do not depend on that constant. For a
:class:`~smcdiff.processes.MeanFree` process every Gaussian here is the one of its
centre-of-mass-free subspace and :math:`d = (n-1)s` its dimension: particles start there, each
move is projected back onto it, and ``log_z`` is an integral over it.

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
import warnings
from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_number
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import DiscretisationWarning, SMCDiffError, StiffDriftWarning
from smcdiff.processes.meanfree import MeanFree
from smcdiff.samplers.kernels import gaussian_log_prob, standard_noise, support_dim
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time
from smcdiff.scores.combine import GeometricScore
from smcdiff.steering.driftlite import Control, make_control, weighted_variance
from smcdiff.steering.fkc.basis import BasisField, control_features, resolve_basis
from smcdiff.steering.fkc.divergence import DivergenceEstimator, make_divergence
from smcdiff.steering.fkc.integrator import (
    FKCGrid,
    Integrator,
    LeftPoint,
    MoveCoefficients,
    NoiseSplit,
    TimePoint,
    Trapezoid,
    WeightRule,
    make_integrator,
    make_weight_rule,
    tame,
)
from smcdiff.steering.fkc.point import FKCPoint, PointEvaluator
from smcdiff.steering.fkc.schedules import BetaSchedule, beta_grid, make_beta_schedule
from smcdiff.steering.fkc.stepping import (
    StepControl,
    StepTotals,
    SubStep,
    integrate_step,
    log_z_gap,
    make_step_control,
)

__all__ = ["FKCModel"]

_LOG_2PI = math.log(2.0 * math.pi)
WARN_FRACTION = 1e-3
"""A run warns (:class:`~smcdiff.errors.StiffDriftWarning`) when, at some grid step, more than
this fraction of a group's particles had an explicit displacement above ``max_move``."""


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
        reward_name: how error messages and finiteness checks name it (``"log_likelihood"``
            when ``steer`` runs the user's likelihood as the reward).
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
        step_control, tol, max_substeps: ``"auto"`` (sub-steps while a sub-step's error
            estimate exceeds ``tol``, default 0.005, down to the grid step / ``max_substeps``,
            default 64; one host sync per sub-step) or ``"off"`` (one move per grid step, no
            sync), or a :class:`~smcdiff.steering.fkc.stepping.StepControl`.
        max_move: the cap on a particle's explicit displacement in one (sub-)step, in noise
            scales :math:`g_t\sqrt{\delta d}` (:func:`~smcdiff.steering.fkc.integrator.tame`,
            default 10; ``None``: no taming, only the count). A step that needs it is far too
            long for its drift (a stiff reward's gradient, a large control).
        device, dtype: of the particles (must match the score models).

    Step info (trace): ``weight_var`` ``(G,)``, the weighted variance of the log-weight increment
    under the step's starting weights; ``weight_var_uncontrolled``, the same without the control
    term :math:`\theta^\top\psi` (equal when ``control=None``); ``theta`` ``(G, J)`` with control
    (averaged over the sub-steps by length). With step control: ``substeps`` (accepted),
    ``substeps_rejected``, ``step_error`` ``(G,)`` (the summed error estimates) and
    ``step_unresolved`` (sub-steps above ``10 tol`` at the shortest length; a
    :class:`~smcdiff.errors.DiscretisationWarning` names the first such step and, at the end, the
    count). Always: ``move_capped`` ``(G,)``, the fraction of particles whose explicit
    displacement exceeded ``max_move`` noise scales (tamed), and ``move_ratio`` ``(G,)``, the
    largest displacement in noise scales (both the largest over the sub-steps); kept on the
    device and read once at the last step, which warns (:class:`~smcdiff.errors.StiffDriftWarning`)
    naming the first step where more than :data:`WARN_FRACTION` of a group was capped. NFE counts every attempted sub-step. The next sub-step length is the state column
    ``"substep"`` (so it resamples and checkpoints with the particles); ``self._unresolved``
    only feeds the warnings.
    """

    def __init__(
        self,
        model: ScoreModel,
        times: Sequence[float],
        *,
        reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reward_name: str = "reward",
        beta: float | None = None,
        beta_schedule: str | BetaSchedule | Callable[[float], float] = "linear",
        noise: str | float = "target",
        weight_rule: str | WeightRule = "trapezoid",
        integrator: str | Integrator = "exp-fit",
        divergence: str | DivergenceEstimator = "auto",
        n_probes: int = 1,
        control: str | Control | None = None,
        basis: Sequence[str | BasisField] | None = None,
        ridge: float = 1e-6,
        step_control: str | StepControl = "auto",
        tol: float | None = None,
        max_substeps: int | None = None,
        max_move: float | None = 10.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        where = "FKCModel"
        self.step_control = make_step_control(step_control, tol, max_substeps, where=where)
        self._unresolved: list[tuple[int, float]] = []
        self.max_move = check_number("max_move", max_move, minimum=0.0, strict_min=True,
                                     where=where, allow_none=True)  # fmt: skip
        self._moves: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.target = _as_geometric(model, where)
        self.process = self.target.process
        self.event_shape = event_shape_of(self.target)
        self.dim = math.prod(self.event_shape)
        self.W = self.target.total_weight
        self.dense = has_log_density(self.target)
        self.reward, self.reward_name = reward, reward_name
        self.noise = NoiseSplit.from_spec(noise, self.W, where=where)
        self.integrator = make_integrator(integrator, where=where)
        self.grid = FKCGrid(self.process, times, self.noise, self.integrator, self.W, where=where)
        self.times = self.grid.times
        self.n_steps = len(self.times) - 1
        self.beta = self._beta_grid(beta, beta_schedule, where)
        self.weight_rule = make_weight_rule(weight_rule, where=where)
        self.divergence = make_divergence(divergence, n_probes, self.dim, where=where)
        self.control = make_control(control, ridge, where=where)
        self._build_basis(basis, where)
        self.device, self.dtype = torch.device(device), dtype
        self.ref_std = float(self.process.prior_std)
        # a MeanFree process lives on its (n-1)s-dim centre-of-mass-free subspace: start there,
        # keep moves there, and count its dimension in the reference density and in (W-1) d f_t
        self.mean_free = isinstance(self.process, MeanFree)
        self.ref_dim = support_dim(self.process, self.event_shape)

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
            log_density=self._ecg_logq, name=self.reward_name,
        )  # fmt: skip

    # ------------------------------------------------------------------ one evaluation at a point
    def _where(self, k: int, t: float) -> str:
        return f"FKCModel step {k}/{self.n_steps} (t={t:.4g})"

    def _evaluate(
        self, x: torch.Tensor, point: TimePoint, beta: float, generator: torch.Generator,
        where: str, want_logq: bool = False,
    ) -> tuple[ParticleState, dict[str, torch.Tensor], int, int]:  # fmt: skip
        """The cached state at ``x`` and time ``point.t`` (reward inverse temperature ``beta``):
        ``x``, ``drift`` (:math:`S`), ``rate`` (:math:`G` without the two terms handled apart),
        ``r``, ``logq`` ``(N, K)`` (when asked or for ECG), and with control ``phi``, ``psi``
        (and ``pot``)."""
        p, checks, nfe, n_grad = self.evaluator(x, point.t, beta, generator, where, want_logq)
        state: ParticleState = {"x": x, "drift": p.score.to(x.dtype), "rate": self._rate(p, point)}
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

    def _rate(self, p: FKCPoint, point: TimePoint) -> torch.Tensor:
        r""":math:`\tfrac{g^2}{2}(|S|^2 - \sum_i w_i|s_i|^2) + \beta(-f\,x\cdot\nabla r +
        \tfrac{g^2}{2}\Delta r)`, float64 ``(N,)``."""
        g2 = point.g2
        sq = sum(
            wi * s.double().square().flatten(1).sum(-1)
            for wi, s in zip(p.weights, p.scores, strict=True)
        )
        rate = 0.5 * g2 * (p.score.square().flatten(1).sum(-1) - sq)
        if p.reward is not None and p.beta != 0.0:
            x_dot_gr = (p.x.double() * p.reward_grad.double()).flatten(1).sum(-1)
            rate = rate + p.beta * (-point.f * x_dot_gr + 0.5 * g2 * p.reward_lap)
        return rate

    # ------------------------------------------------------------------ FeynmanKacModel
    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        std = self.ref_std / math.sqrt(self.W)
        x = std * standard_noise(
            self.process, n, self.event_shape, generator, device=self.device, dtype=self.dtype
        )
        where = self._where(0, self.times[0])
        state, checks, nfe, n_grad = self._evaluate(
            x, self.grid.at(self.times[0], 0), self.beta[0], generator, where, self.dense
        )
        log_g = self._log_start(x, std, state, checks)
        if not self._ecg_logq:
            state.pop("logq", None)
        if self.step_control.on:
            state["substep"] = self._hint(x, self.times[0] - self.times[1])
        self._unresolved, self._moves = [], []
        return StepOutput(state, log_g, checks, nfe=nfe, n_grad=n_grad)

    def _hint(self, x: torch.Tensor, length: float) -> torch.Tensor:
        """The step control's next sub-step length as a state column ``(N,)`` (one value
        repeated, so it survives resampling and checkpoints with the particles)."""
        return torch.full((x.shape[0],), length, dtype=torch.float64, device=x.device)

    def _log_start(
        self, x: torch.Tensor, std: float, state: ParticleState, checks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        r"""Start weight :math:`\sum_i w_i\log\hat q_i(x) + \beta_0 r(x) - \log\mathcal N(x; 0,
        \text{std}^2)` (see the module docstring), float64 ``(N,)``. The reference is the density
        the particles were drawn from, on the process's support: for a
        :class:`~smcdiff.processes.MeanFree` process the subspace Gaussian
        :math:`\mathcal N_{\mathcal X}` of dimension :math:`d = (n-1)s`
        (:meth:`~smcdiff.processes.MeanFree.log_normal`), so a model whose density at
        :math:`t_{max}` is the process prior gets a constant start weight."""
        n, d = x.shape[0], self.ref_dim
        if self.dense:
            log_ref = gaussian_log_prob(x, torch.zeros_like(x), std**2, self.process)
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
        """Grid step ``t_{k-1} -> t_k`` as one move or, with step control, as sub-steps (see
        :mod:`~smcdiff.steering.fkc.stepping`); the log-potential is their sum."""
        n_groups, n_per = log_weights.shape
        hint = state.get("substep")
        first = float(hint[0]) if hint is not None else None  # step control only: a host sync

        def substep(t_a, t_b, st, lw, want_error):
            return self._substep(k, t_a, t_b, st, generator, lw, want_error)

        tot = integrate_step(
            self.step_control, self.times[k - 1], self.times[k], state, log_weights, substep, first
        )
        wts = torch.exp(log_weights)
        info = {
            "weight_var": weighted_variance(tot.log_g.reshape(n_groups, n_per), wts),
            "weight_var_uncontrolled": weighted_variance(tot.inc.reshape(n_groups, n_per), wts),
        }
        if tot.theta is not None:
            info["theta"] = tot.theta
        info["move_capped"], info["move_ratio"] = tot.capped, tot.ratio
        self._check_moves(k, tot.capped, tot.ratio)
        new = tot.state
        if self.step_control.on:
            new = {**new, "substep": self._hint(new["x"], tot.next_length)}
            info.update(self._control_info(k, tot))
        return StepOutput(new, tot.log_g, tot.checks, nfe=tot.nfe, n_grad=tot.n_grad, info=info)

    def _substep(
        self, k: int, t_a: float, t_b: float, state: ParticleState, generator: torch.Generator,
        log_weights: torch.Tensor, want_error: bool,
    ) -> SubStep:  # fmt: skip
        """One move ``t_a -> t_b`` inside grid step k, with its log-potential and, when asked,
        its error estimate (:func:`~smcdiff.steering.fkc.stepping.log_z_gap`)."""
        pa, pb = self._point(k, t_a), self._point(k, t_b)
        beta_a, beta_b = self._beta_at(k, t_a), self._beta_at(k, t_b)
        x, n_per = state["x"], log_weights.shape[1]
        explicit = pa.c * state["drift"]
        theta = theta_p = None
        if self.control is not None:
            rate = self._control_rate(state, (beta_b - beta_a) / (t_a - t_b))
            theta = self.control.coefficients(state, rate, torch.exp(log_weights))
            theta_p = theta.repeat_interleave(n_per, dim=0)  # (G*N, J)
            explicit = explicit + _combine(theta_p.to(x.dtype), state["phi"])
        if self.integrator.fitted:
            move = self.grid.fitted_move(pa, t_b, x, explicit, log_weights)
        else:
            move = self.grid.move(pa, t_b)
        drift = explicit + move.lin * x
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        scale = math.sqrt(max(pa.g2, 0.0) * (t_a - t_b) * self.ref_dim)
        step, capped, ratio = tame(move.b * drift, scale, self.max_move, log_weights.shape[0])
        x_b = move.a * x + step + move.var**0.5 * z
        if self.mean_free:  # the SDE's increments lie in the subspace; per-coordinate fits need not
            x_b = self.process.project(x_b)
        new, checks, nfe, n_grad = self._evaluate(x_b, pb, beta_b, generator, self._where(k, t_b))
        parts = self._rate_parts(pa, pb, beta_a, beta_b, state, new, theta_p)
        const = (self.W - 1) * self.ref_dim * (pa.log_alpha - pb.log_alpha)
        inc, log_g = _potential(self.weight_rule, const, parts, theta_p is not None)
        err = None
        if want_error:
            trap = _potential(Trapezoid(), const, parts, theta_p is not None)[1]
            left = _potential(LeftPoint(), const, parts, theta_p is not None)[1]
            err = log_z_gap(log_weights, trap, left)
            err = err + self._move_error(pa, pb, move, drift, new, theta_p, log_weights)
        return SubStep(new, log_g, inc, err, checks, nfe, n_grad, theta, capped, ratio)

    def _move_error(
        self, pa: TimePoint, pb: TimePoint, move: MoveCoefficients, drift_a: torch.Tensor,
        new: ParticleState, theta_p: torch.Tensor | None, log_weights: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        r"""Weighted mean KL (nats) between the move's Gaussian kernel and the same kernel with
        the explicit drift averaged over the old and new points (Heun):
        :math:`\mathbb E_W |B(D_b - D_a)/2|^2 / (2V)`, ``(G,)`` float64; zero without noise."""
        g, n = log_weights.shape
        if pa.h2 <= 0.0:
            return torch.zeros(g, dtype=torch.float64, device=log_weights.device)
        lin_b = move.lin if self.integrator.fitted else self.grid.linear(pb)
        drift_b = pb.c * new["drift"] + lin_b * new["x"]
        if theta_p is not None:
            drift_b = drift_b + _combine(theta_p.to(drift_b.dtype), new["phi"])
        dx = (0.5 * move.b) * (drift_b - drift_a)
        kl = (dx.double().square() / (2.0 * move.var)).flatten(1).sum(-1)
        return (torch.exp(log_weights.double()) * kl.reshape(g, n)).sum(1)

    def _point(self, k: int, t: float) -> TimePoint:
        """Floats at ``t``: the grid's cached values at ``t_{k-1}`` / ``t_k``, else computed."""
        for j in (k - 1, k):
            if t == self.times[j]:
                return self.grid.at(t, j)
        return self.grid.at(t)

    def _beta_at(self, k: int, t: float) -> float:
        r""":math:`\beta_t` inside grid step k, linear in t between :math:`\beta_{k-1}` and
        :math:`\beta_k`."""
        t0, t1, b0, b1 = self.times[k - 1], self.times[k], self.beta[k - 1], self.beta[k]
        if t == t0 or t == t1:
            return b0 if t == t0 else b1
        return b0 + (b1 - b0) * (t0 - t) / (t0 - t1)

    def _control_rate(self, state: ParticleState, dbeta_dtau: float) -> torch.Tensor:
        r"""The rate the control solves against: :math:`G` with :math:`\dot\beta r`, ``(G*N,)``."""
        if self.reward is None:
            return state["rate"]
        return state["rate"] + dbeta_dtau * state["r"]

    def _rate_parts(
        self, pa: TimePoint, pb: TimePoint, beta_a: float, beta_b: float, old: ParticleState,
        new: ParticleState, theta_p: torch.Tensor | None,
    ) -> list[tuple[float, torch.Tensor, torch.Tensor]]:  # fmt: skip
        r"""``(coefficient, old value, new value)`` of each term the weight rule integrates:
        :math:`G\,d\tau`, :math:`r\,d\beta` and the control features :math:`\psi` (last)."""
        dtau, dbeta = pa.t - pb.t, beta_b - beta_a
        parts = [(dtau, old["rate"], new["rate"])]
        if self.reward is not None and dbeta != 0.0:
            parts.append((dbeta, old["r"], new["r"]))
        if theta_p is not None:
            parts.append((dtau, theta_p, (old["psi"], new["psi"])))
        return parts

    def _control_info(self, k: int, tot: StepTotals) -> dict[str, torch.Tensor]:
        """The step control's trace entries; warns at the first grid step whose error estimate
        stayed above tol at the shortest sub-step, and at the last step with the count when
        there were more (``self._unresolved`` only feeds these messages; the trace keeps the
        per-step record and checkpoints with the run)."""
        if tot.unresolved:
            self._unresolved.append((k, tot.worst))
            if len(self._unresolved) == 1:
                self._warn(
                    f"{self._where(k, self.times[k])}: the step control could not meet "
                    f"tol={self.step_control.tol:g}: a sub-step's error estimate is "
                    f"{tot.worst:.3g} at the shortest sub-step (the grid step / max_substeps="
                    f"{self.step_control.max_substeps})"
                )  # fmt: skip
        if k == self.n_steps and len(self._unresolved) > 1:
            worst_k, worst = max(self._unresolved, key=lambda kw: kw[1])
            self._warn(
                f"FKCModel: {len(self._unresolved)} of {self.n_steps} grid steps could not meet "
                f"tol={self.step_control.tol:g} within max_substeps="
                f"{self.step_control.max_substeps} (largest error estimate {worst:.3g}, at "
                f"step {worst_k})"
            )  # fmt: skip
        return {
            "substeps": torch.tensor(float(tot.substeps)),
            "substeps_rejected": torch.tensor(float(tot.rejected)),
            "step_error": tot.error,
            "step_unresolved": torch.tensor(float(tot.unresolved)),
        }

    def _check_moves(self, k: int, capped: torch.Tensor, ratio: torch.Tensor) -> None:
        """Keep step k's move sizes (device tensors ``(G,)``); at the last step read them all
        (one host sync per run) and warn at the first step where more than
        :data:`WARN_FRACTION` of a group's particles were above ``max_move``."""
        self._moves.append((capped, ratio))
        if k != self.n_steps:
            return
        caps, ratios = (torch.stack(v).amax(1).cpu() for v in zip(*self._moves, strict=True))
        bad = torch.nonzero(caps > WARN_FRACTION).flatten()
        if bad.numel() == 0:
            return
        i = int(bad[0])
        first = self.n_steps - len(self._moves) + 1 + i  # _moves starts at the run's first step
        cap = 10.0 if self.max_move is None else self.max_move
        done = "were tamed to" if self.max_move is not None else "were not tamed (max_move=None)"
        warnings.warn(
            f"{self._where(first, self.times[first])}: the drift moved {float(caps[i]):.1%}"
            f" of the particles by more than {cap:g} noise scales g_t sqrt(dt d) in one "
            f"sub-step (largest {float(ratios.max()):.3g}); they {done} that; {bad.numel()} of "
            f"{self.n_steps} grid steps had more than {WARN_FRACTION:.1%} above it. The steps "
            "are far too long for the drift (a stiff reward's gradient or the control): the "
            "particles and weights there carry large discretisation error. Raise n_steps or "
            "max_substeps, or soften the reward; per-step record in the trace ('move_capped', "
            "'move_ratio').",
            StiffDriftWarning, stacklevel=5,
        )  # fmt: skip

    @staticmethod
    def _warn(what: str) -> None:
        warnings.warn(
            f"{what}; log Z and the weights carry discretisation error there. Raise "
            "max_substeps or n_steps, or use DriftLite control; per-step record in the trace "
            "('step_error', 'substeps', 'step_unresolved').",
            DiscretisationWarning, stacklevel=6,
        )  # fmt: skip

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached scores and features at ``state["x"]`` after a corrector move
        (Hutchinson probes from a generator seeded with ``k``)."""
        gen = torch.Generator(device=state["x"].device).manual_seed(k)
        t = self.times[k]
        new, _, nfe, _ = self._evaluate(
            state["x"], self.grid.at(t, k), self.beta[k], gen, self._where(k, t)
        )
        if "substep" in state:
            new["substep"] = state["substep"]
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


def _potential(
    rule: WeightRule, const: float, parts: list, controlled: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(increment without control, log-potential)`` of a move, float64 ``(G*N,)``: the
    constant plus ``rule`` applied to each of ``parts`` (see ``FKCModel._rate_parts``; the control
    term, last when ``controlled``, holds ``theta`` and the old/new features)."""
    terms = parts[:-1] if controlled else parts
    inc = torch.full_like(parts[0][1], const)
    for coef, old, new in terms:
        inc = inc + rule.integrate(coef, old, new)
    if not controlled:
        return inc, inc
    dtau, theta_p, (psi_old, psi_new) = parts[-1]
    psi = rule.integrate(1.0, psi_old, psi_new)
    return inc, inc + dtau * (theta_p * psi).sum(-1)
