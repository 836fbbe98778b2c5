r"""MCGdiff (Cardoso, Janati, Le Corff, Moulines, ICLR 2024, arXiv:2308.07983): SMC for linear
inverse problems :math:`y = A x + \sigma_y\varepsilon` on a diffusion prior, exact as
:math:`N \to \infty`.

**Coordinates.** With the SVD :math:`A = U\,\mathrm{diag}(s)\,V_{:d_y}^\top` the observation is
:math:`\bar y_i = \bar x_i + r_i\varepsilon_i`, :math:`\bar x = V^\top x`, :math:`r_i =
\sigma_y/s_i` (:class:`~smcdiff.LinearGaussianObservation`). The likelihood acts on the particles
at the grid's end :math:`t_m` (``t_min``, as for every ``steer`` method). Write the VP process in
the scaled coordinates :math:`u_t = x_t/\alpha_t`: :math:`u_t = u_{t_m} + W(v_t - v_{t_m})`, a
Brownian motion in the variance time :math:`v_t = \sigma_t^2/\alpha_t^2`. In these coordinates
:math:`\tilde y_i = \bar y_i/\alpha_{t_m} = \bar u_{t_m,i} + \tilde r_i\varepsilon`,
:math:`\tilde r_i = r_i/\alpha_{t_m}`, has the law of :math:`\bar u_{\tau_i, i}` at the
**absorption time** :math:`v_{\tau_i} = v_{t_m} + \tilde r_i^2`: conditioning on :math:`y` is
conditioning the diffusion on :math:`\bar u_{\tau_i, i} = \tilde y_i` (the paper's
:math:`\sigma_{\tau}/\alpha_\tau` matching :math:`\sigma_y/s_i`).

**Feynman–Kac model** (one score evaluation per step, grid :math:`t_0 > \dots > t_K = t_m`).
Before its absorption an observed coordinate carries the pseudo-likelihood of the paper,
:math:`g_t(\bar u_i) = \mathcal N(\bar u_i; \tilde y_i, v_t - v_{\tau_i})` (the forward law of
:math:`\bar u_{t,i}` from :math:`\bar u_{\tau_i,i} = \tilde y_i`); after it, none. The prior's
reverse kernel is the DDPM (ancestral) step, in :math:`u` the Brownian bridge
:math:`\mathcal N(\hat x_0 + \tfrac{v_{lo}}{v_{hi}}(u - \hat x_0), \tfrac{v_{lo}(v_{hi} -
v_{lo})}{v_{hi}})` with Tweedie's :math:`\hat x_0` from the score at :math:`t_{hi}`. Each observed
coordinate of a step :math:`t_{hi} \to t_{lo}` is proposed from the exact (locally optimal)
conditional and weighted by its predictive ratio:

* absorbed later (:math:`v_{\tau} < v_{lo}`): the Gaussian product of the bridge
  :math:`\mathcal N(\mu, c^2)` with :math:`g_{t_{lo}}`; weight :math:`\mathcal N(\tilde y; \mu,
  c^2 + v_{lo} - v_\tau) / g_{t_{hi}}(\bar u)`;
* absorbed in this step (:math:`v_{lo} \le v_\tau < v_{hi}`): the bridge split at
  :math:`\tau` (same :math:`\hat x_0`, so its law without the observation is the DDPM step):
  weight :math:`\mathcal N(\tilde y; \mu_\tau, c_\tau^2) / g_{t_{hi}}(\bar u)`, then the bridge
  from :math:`(\tau, \tilde y)` to :math:`t_{lo}`; no grid point is added, so ``n_steps`` score
  evaluations in all (the paper snaps :math:`\tau_i` to the grid instead, which changes the
  observation noise);
* already absorbed, and the unobserved coordinates: the DDPM step.

The start :math:`x_{t_0} \sim \mathcal N(0, \sigma_{ref}^2 I)` is proposed the same way. A
coordinate so noisy that :math:`\tau_i` lies beyond :math:`t_0` follows the prior and is weighted
by :math:`\mathcal N(\tilde y_i; \bar u_{t_m,i}, \tilde r_i^2)` at the end. The weights telescope
to the density of :math:`(\bar u_{\tau_i,i})_i` at :math:`\tilde y`, so ``log_z`` estimates
:math:`\log p(y)` (plus the Jacobian :math:`-\sum_i\log(s_i\alpha_{t_m})`, added at step 0) under
the sampler's prior: exact for :math:`N\to\infty` up to the discretisation of the reverse SDE (the
same as ``method="none"``'s ancestral sampler).

Known costs (measured in ``tests/steering/test_mcgdiff.py``, docs/gmm-inverse.md): after its
absorption an observed coordinate's variance is built by the DDPM bridge steps alone, each adding
:math:`v_{lo}(v_{hi} - v_{lo})/v_{hi}` instead of :math:`v_{hi} - v_{lo}`, so it is low by
~19 % at 100 log-SNR steps (~50 % at 30), vanishing as the steps shrink; and at low noise the
potential divided by is wider than the predictive multiplied by, so the weights are heavy-tailed
on long grids (the run warns of lineage degeneracy; ``log_z`` is noisier with more steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.checks import nonfinite_rows
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VP, DiscreteVP
from smcdiff.scores.base import event_shape_of, model_time
from smcdiff.steering.linear_obs import LinearGaussianObservation
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["MCGdiffConfig", "MCGdiffModel", "build_mcgdiff", "gauss_logpdf", "linear_problem"]

WHERE = "steer"


@dataclass(frozen=True)
class MCGdiffConfig:
    r"""MCGdiff: SMC for :math:`p(x)\,\mathcal N(y; Ax, \sigma_y^2 I)` on a VP diffusion prior
    (module docstring: the algorithm, its exactness and its ``log_z``).

    ``observation``: a :class:`~smcdiff.LinearGaussianObservation` ``(A, y, sigma)`` (batched
    ``(R, d_y, d)`` with ``n_runs=R``); it may instead be passed as ``log_likelihood``. A general
    ``log_likelihood`` callable or a ``reward`` is refused: MCGdiff needs the linear-Gaussian
    form.
    """

    observation: LinearGaussianObservation | None = None

    def __post_init__(self) -> None:
        if self.observation is not None and not isinstance(
            self.observation, LinearGaussianObservation
        ):
            raise SMCDiffError(
                f"{WHERE}: observation must be a smcdiff.LinearGaussianObservation(A, y, sigma), "
                f"got {type(self.observation).__name__}"
            )


def linear_problem(common: CommonConfig, observation: Any) -> LinearGaussianObservation:
    """The observation of a linear inverse-problem method (``observation=`` or a
    :class:`~smcdiff.LinearGaussianObservation` given as ``log_likelihood``), checked against
    the model (a VP process, the particle dimension) and ``n_runs``, on ``common.device``."""
    where, ll = common.where, common.log_likelihood
    if common.reward is not None:
        raise SMCDiffError(f"{where} solves y = A x + noise; it does not take a reward")
    if observation is None and isinstance(ll, LinearGaussianObservation):
        observation = ll
    elif ll is not None and ll is not observation:
        raise SMCDiffError(
            f"{where} needs the linear-Gaussian form of the likelihood: pass "
            "observation=smcdiff.LinearGaussianObservation(A, y, sigma), not a log_likelihood "
            "callable"
        )
    if observation is None:
        raise SMCDiffError(f"{where} needs observation=smcdiff.LinearGaussianObservation(A, y, "
                           "sigma)")  # fmt: skip
    process = common.model.process
    if not isinstance(process, (VP, DiscreteVP)):
        raise SMCDiffError(
            f"{where} needs a variance-preserving process (VP or DiscreteVP); the model's is "
            f"{type(process).__name__}"
        )
    d = math.prod(event_shape_of(common.model))
    if observation.dim != d:
        raise SMCDiffError(f"{where}: A has {observation.dim} columns; the particles have {d} "
                           "coordinates")  # fmt: skip
    runs = common.n_runs or 1
    if observation.batched and observation.n_runs != runs:
        raise SMCDiffError(
            f"{where}: the observation holds {observation.n_runs} problems but n_runs={runs}; "
            "a batched observation needs one run per problem"
        )
    return observation.to(common.device)


def gauss_logpdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\mathcal N(x; m, v)` elementwise (broadcast), in float64."""
    r = (x - mean).double()
    var = var.double()
    return -0.5 * r * r / var - 0.5 * torch.log(2 * math.pi * var)


class MCGdiffModel(FeynmanKacModel):
    """The MCGdiff Feynman–Kac model (module docstring) on the grid ``times`` (decreasing)."""

    def __init__(self, model: Any, times: list[float], obs: LinearGaussianObservation,
                 n_runs: int, dtype: torch.dtype):  # fmt: skip
        self.model, self.times, self.n_steps = model, list(times), len(times) - 1
        self.process, self.dtype = model.process, dtype
        self.event_shape = event_shape_of(model)
        ts = torch.tensor(self.times, dtype=torch.float64)
        self.alpha = self.process.alpha(ts).tolist()
        self.sig = self.process.sigma(ts).tolist()
        self.v = [(s / a) ** 2 for s, a in zip(self.sig, self.alpha, strict=True)]
        a_m = self.alpha[-1]
        rep = n_runs if obs.n_runs == 1 else 1  # one problem shared by every run
        self.G, self.d_y = n_runs, obs.d_y
        self.V = obs.V.repeat(rep, 1, 1).to(dtype)
        self.y_u = (obs.y_bar / a_m).repeat(rep, 1)  # (G, d_y) float64: y in u-coordinates
        self.dv = (obs.noise_std_bar / a_m).square().repeat(rep, 1)  # v_tau - v_m
        self.late = self.dv >= self.v[0] - self.v[-1]  # absorbed before t_0: weighted at the end
        log_s = obs.singular_values.log().sum(-1).repeat(rep)
        self.log_jac = -log_s - self.d_y * math.log(a_m)  # (G,)
        self.ref_std = float(self.process.prior_std)

    def rotated(
        self, k: int, state: ParticleState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, score, u, x0)`` at the start of step ``k``: the particles, the flat score,
        ``u = x / alpha`` and
        Tweedie's ``x0 = (x + sigma^2 score) / alpha`` in the SVD basis, each ``(n, d)``
        (one score evaluation)."""
        x = state["x"]
        n, t = x.shape[0], self.times[k - 1]
        score = self.model.score(x, model_time(self.model, t, x)).reshape(n, -1)
        a_hi, s_hi = self.alpha[k - 1], self.sig[k - 1]
        flat = x.reshape(n, -1)
        u = self._rotate(flat / a_hi)
        return x, score, u, self._rotate((flat + s_hi**2 * score) / a_hi)

    def _rotate(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``(G N, d)`` -> ``(G, N, d)``: :math:`V^\top x` per run (``transpose``: :math:`V x`)."""
        xg = x.reshape(self.G, -1, self.V.shape[-1])
        return torch.einsum("gne,gde->gnd" if transpose else "gnd,gde->gne", xg, self.V)

    def _noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d = self.V.shape[-1]
        return torch.randn(self.G, n // self.G, d, generator=generator, device=self.V.device,
                           dtype=self.dtype)  # fmt: skip

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """:math:`x_{t_0}`: the reference Gaussian times :math:`g_{t_0}` on the observed
        coordinates; :math:`\\log G_0 = \\sum_i \\log\\mathcal N(\\tilde y_i; 0, w + v_0 -
        v_{\\tau_i})` (:math:`w = \\sigma_{ref}^2/\\alpha_{t_0}^2`) plus the Jacobian."""
        w = (self.ref_std / self.alpha[0]) ** 2
        gam = (self.v[0] - self.v[-1]) - self.dv  # v_0 - v_tau, (G, d_y)
        active = gam > 0
        gam = torch.where(active, gam, 1.0)
        gain = w / (w + gam)
        mean = torch.where(active, gain * self.y_u, 0.0).to(self.dtype)
        std = torch.where(active, gain * gam, w).sqrt().to(self.dtype)
        u = self._noise(n, generator) * math.sqrt(w)
        u[..., : self.d_y] = mean[:, None] + std[:, None] * u[..., : self.d_y] / math.sqrt(w)
        log_g = torch.where(active, gauss_logpdf(self.y_u, torch.zeros_like(gam), w + gam), 0.0)
        log_g = (log_g.sum(-1) + self.log_jac)[:, None].expand(self.G, n // self.G)
        x = (self.alpha[0] * self._rotate(u.reshape(n, -1), transpose=True)).reshape(n, -1)
        return StepOutput({"x": x.reshape(n, *self.event_shape)}, log_g.reshape(n))

    def step(self, k: int, state: ParticleState, generator: torch.Generator,
             log_weights: torch.Tensor) -> StepOutput:  # fmt: skip
        """:math:`t_{k-1} \\to t_k`: one score evaluation, the DDPM bridge, the observed
        coordinates from their exact conditional (module docstring)."""
        x, score, u, x0 = self.rotated(k, state)
        n, a_lo = x.shape[0], self.alpha[k]
        v_hi, v_lo = self.v[k - 1], self.v[k]
        mu = x0 + (v_lo / v_hi) * (u - x0)
        c2 = v_lo * (v_hi - v_lo) / v_hi
        z = self._noise(n, generator)
        u_new = mu + math.sqrt(c2) * z
        obs_mean, obs_var, log_g = self._observed(k, u[..., : self.d_y], x0[..., : self.d_y],
                                                  mu[..., : self.d_y], c2)  # fmt: skip
        u_new[..., : self.d_y] = obs_mean + obs_var.sqrt() * z[..., : self.d_y]
        if k == self.n_steps:  # coordinates absorbed before t_0: importance weight at the end
            late = gauss_logpdf(self.y_u[:, None], u_new[..., : self.d_y], self.dv[:, None])
            log_g = log_g + torch.where(self.late[:, None], late, 0.0).sum(-1)
        x_new = (a_lo * self._rotate(u_new.reshape(n, -1), transpose=True)).reshape(n, -1)
        checks = {"score": nonfinite_rows(score), "x": nonfinite_rows(x_new)}
        return StepOutput({"x": x_new.reshape(x.shape)}, log_g.reshape(n), checks, nfe=1)

    def _observed(self, k: int, u: torch.Tensor, x0: torch.Tensor, mu: torch.Tensor, c2: float):
        """Proposal mean, variance ``(G, N, d_y)`` of the observed coordinates at step ``k`` and
        the log potential ``(G, N)`` (module docstring: the three cases)."""
        v_m, v_hi, v_lo = self.v[-1], self.v[k - 1], self.v[k]
        y, dv = self.y_u[:, None], self.dv[:, None]  # (G, 1, d_y) float64
        gam_hi, gam_lo = (v_hi - v_m) - dv, (v_lo - v_m) - dv  # v - v_tau
        active, later = gam_hi > 0, gam_lo > 0  # before tau at t_hi / at t_lo
        now = active & ~later
        v_tau = v_m + dv
        log_g = -torch.where(active, gauss_logpdf(u, y, torch.where(active, gam_hi, 1.0)), 0.0)
        # absorbed later: Gaussian product of the bridge N(mu, c2) with g_lo = N(y, gam_lo)
        g_lo = torch.where(later, gam_lo, 1.0)
        gain = c2 / (c2 + g_lo)
        mean_a, var_a = mu + gain.to(mu.dtype) * (y.to(mu.dtype) - mu), gain * g_lo
        log_a = gauss_logpdf(y, mu, c2 + g_lo)
        # absorbed now: bridge to tau (density of y there), then from (tau, y) to t_lo
        g_hi = torch.where(now, gam_hi, 1.0)
        vt = torch.where(now, v_tau, 1.0)
        mu_tau = x0 + (vt / v_hi).to(mu.dtype) * (u - x0)
        log_b = gauss_logpdf(y, mu_tau, vt * g_hi / v_hi)
        mean_b = x0 + (v_lo / vt).to(mu.dtype) * (y.to(mu.dtype) - x0)
        var_b = v_lo * torch.where(now, -gam_lo, 0.0) / vt
        log_g = log_g + torch.where(later, log_a, 0.0) + torch.where(now, log_b, 0.0)
        mean = torch.where(later, mean_a, torch.where(now, mean_b, mu))
        var = torch.where(later, var_a, torch.where(now, var_b, c2)).to(mu.dtype)
        return mean, var.expand_as(mean), log_g.sum(-1)


def build_mcgdiff(common: CommonConfig, config: MCGdiffConfig) -> MethodPlan:
    """MCGdiff on ``common``'s grid (the ancestral reverse kernel), ``n_steps`` NFE."""
    obs = linear_problem(common, config.observation)
    fk = MCGdiffModel(common.model, common.times(), obs, common.n_runs or 1, common.dtype)
    return MethodPlan(fk, {"observation": repr(obs), "sampler": "ancestral"})
