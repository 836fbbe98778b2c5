r"""DDRM (Kawar, Elad, Ermon, Song, NeurIPS 2022, "Denoising Diffusion Restoration Models"): a
baseline for linear inverse problems :math:`y = A x + \sigma_y\varepsilon`. **Not exact**: its
particles are unweighted draws of a heuristic sampler, not of the posterior; there is no
``log_z``.

It works in the SVD basis of :math:`A` (:class:`~smcdiff.LinearGaussianObservation`) and in the
VE form of the VP process, :math:`u_t = x_t/\alpha_t` with noise level :math:`\sigma_t^{VE} =
\sqrt{v_t}`, :math:`v_t = \sigma_t^2/\alpha_t^2` (the paper's :math:`\sigma_t`). The observation
of the particles at the grid's end :math:`t_m` reads :math:`\tilde y_i = \bar y_i/\alpha_{t_m} =
\bar x_{0,i} + \rho_i\varepsilon`, :math:`\rho_i^2 = (\sigma_y/(s_i\alpha_{t_m}))^2 + v_{t_m}`
(the paper's :math:`\sigma_y/s_i`). With Tweedie's :math:`\bar x_0` from the score at
:math:`t_{hi}`, a step to :math:`t_{lo}` (:math:`\sigma_{lo} = \sqrt{v_{lo}}`) draws, per
coordinate of :math:`\bar u = V^\top u`,

* unobserved: :math:`\bar x_0 + \sqrt{1-\eta^2}\,\sigma_{lo}(\bar u - \bar x_0)/\sigma_{hi} +
  \eta\,\sigma_{lo} z`;
* observed, :math:`\sigma_{lo} < \rho_i`: :math:`\bar x_0 + \sqrt{1-\eta^2}\,\sigma_{lo}(\tilde y_i
  - \bar x_0)/\rho_i + \eta\,\sigma_{lo} z`;
* observed, :math:`\sigma_{lo} \ge \rho_i`: :math:`(1-\eta_b)\bar x_0 + \eta_b\tilde y_i +
  \sqrt{v_{lo} - \eta_b^2\rho_i^2}\, z`;

and starts from :math:`\bar u_{t_0,i} \sim \mathcal N(\tilde y_i, w - \rho_i^2)` on observed
coordinates with :math:`w = \sigma_{ref}^2/\alpha_{t_0}^2 > \rho_i^2` (else, and on the others,
:math:`\mathcal N(0, w)`). Defaults :math:`\eta = 0.85`, :math:`\eta_b = 1` (the paper's). One
score evaluation per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smcdiff.checks import check_number, nonfinite_rows
from smcdiff.engine.model import ParticleState, StepOutput
from smcdiff.steering.methods.mcgdiff import MCGdiffConfig, MCGdiffModel, linear_problem
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["DDRMConfig", "DDRMModel", "build_ddrm"]

WHERE = "steer"


@dataclass(frozen=True)
class DDRMConfig(MCGdiffConfig):
    r"""DDRM (module docstring): a biased, unweighted baseline for linear inverse problems.

    ``observation``: as for ``"mcgdiff"`` (:class:`~smcdiff.LinearGaussianObservation`, or given
    as ``log_likelihood``). ``eta`` (:math:`\eta`, default 0.85): the fresh-noise fraction of the
    unobserved and under-noised observed coordinates; ``eta_b`` (:math:`\eta_b`, default 1): the
    weight of the observation on the over-noised observed coordinates; both in [0, 1].
    """

    eta: float = 0.85
    eta_b: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eta", "eta_b"):
            value = check_number(name, getattr(self, name), minimum=0.0, maximum=1.0, where=WHERE)
            object.__setattr__(self, name, value)


class DDRMModel(MCGdiffModel):
    """The DDRM sampler as a Feynman–Kac model with zero potentials (module docstring); the
    SVD basis, observation and grid are :class:`MCGdiffModel`'s."""

    def __init__(self, *args, eta: float = 0.85, eta_b: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eta, self.eta_b = eta, eta_b
        self.rho2 = self.dv + self.v[-1]  # (G, d_y) float64: the observation noise^2 on x_0

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """:math:`\\bar u_{t_0}`: :math:`\\mathcal N(\\tilde y_i, w - \\rho_i^2)` where
        :math:`w > \\rho_i^2`, else :math:`\\mathcal N(0, w)`."""
        w = (self.ref_std / self.alpha[0]) ** 2
        near = self.rho2 < w
        mean = torch.where(near, self.y_u, 0.0).to(self.dtype)
        std = torch.where(near, w - self.rho2, w).sqrt().to(self.dtype)
        u = self._noise(n, generator) * math.sqrt(w)
        u[..., : self.d_y] = mean[:, None] + std[:, None] * u[..., : self.d_y] / math.sqrt(w)
        x = (self.alpha[0] * self._rotate(u.reshape(n, -1), transpose=True)).reshape(n, -1)
        zero = torch.zeros(n, dtype=torch.float64, device=x.device)
        return StepOutput({"x": x.reshape(n, *self.event_shape)}, zero)

    def step(self, k: int, state: ParticleState, generator: torch.Generator,
             log_weights: torch.Tensor) -> StepOutput:  # fmt: skip
        """:math:`t_{k-1} \\to t_k`: the DDRM update of every coordinate (module docstring)."""
        x, score, u, x0 = self.rotated(k, state)
        n, a_lo = x.shape[0], self.alpha[k]
        sd_lo, sd_hi = math.sqrt(self.v[k]), math.sqrt(self.v[k - 1])
        keep, fresh = math.sqrt(1.0 - self.eta**2) * sd_lo, self.eta * sd_lo
        z = self._noise(n, generator)
        u_new = x0 + keep * (u - x0) / sd_hi + fresh * z
        o = slice(0, self.d_y)
        y, rho2 = self.y_u[:, None], self.rho2[:, None]  # (G, 1, d_y) float64
        under = self.v[k] < rho2  # the observation is noisier than the step's noise
        rho = rho2.sqrt()
        mean_u = x0[..., o] + (keep / rho).to(x0.dtype) * (y.to(x0.dtype) - x0[..., o])
        over_var = (self.v[k] - self.eta_b**2 * rho2).clamp_min(0.0)
        mean_o = (1 - self.eta_b) * x0[..., o] + self.eta_b * y.to(x0.dtype)
        mean = torch.where(under, mean_u, mean_o)
        std = torch.where(under, fresh, over_var.sqrt()).to(x0.dtype)
        u_new[..., o] = mean + std * z[..., o]
        x_new = (a_lo * self._rotate(u_new.reshape(n, -1), transpose=True)).reshape(n, -1)
        checks = {"score": nonfinite_rows(score), "x": nonfinite_rows(x_new)}
        zero = torch.zeros(n, dtype=torch.float64, device=x.device)
        return StepOutput({"x": x_new.reshape(x.shape)}, zero, checks, nfe=1)


def build_ddrm(common: CommonConfig, config: DDRMConfig) -> MethodPlan:
    """DDRM on ``common``'s grid, ``n_steps`` NFE, no weights."""
    obs = linear_problem(common, config.observation)
    fk = DDRMModel(common.model, common.times(), obs, common.n_runs or 1, common.dtype,
                   eta=config.eta, eta_b=config.eta_b)  # fmt: skip
    return MethodPlan(fk, {"observation": repr(obs), "eta": config.eta, "eta_b": config.eta_b})
