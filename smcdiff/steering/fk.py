r"""Diffusion sampling as a Feynman–Kac model: the untilted sampler, guidance, and FK steering.

Target: :math:`\pi(x) \propto p(x)\,e^{\phi(x)}` with :math:`\phi(x) = \sum_j c_j\, f_j(x)`, e.g.
:math:`\beta\, r(x)` (reward tilt) plus :math:`\log p(y \mid x)` (likelihood); :math:`p = p_{t_{min}}`
is the prior's marginal at the end of the grid.

Intermediate tilts are :math:`\lambda_k \phi(\hat x_0(x_k))` with ``tilt_schedule`` ``"constant"``
(:math:`\lambda = 1`, as in FK steering) or ``"snr"`` (:math:`\lambda_t = \alpha_t^2/(\alpha_t^2 + \sigma_t^2)`,
which fades out the overconfident :math:`\phi(\hat x_0)` at high noise); the last step uses
:math:`\lambda = 1`, so the final target is the same.

Moves are reverse kernels :math:`x_s = c_x x_t + c_s s_t(x_t) + \delta + \sqrt v z` (see
:mod:`smcdiff.samplers.kernels`); the guided proposal adds :math:`\delta = c_s\,\gamma\,\nabla_{x_t}
\phi(\hat x_0(x_t))` (the score of the intermediate tilt). Log-potentials per step:

* the FK potential of :mod:`smcdiff.steering.potentials`;
* with a guided proposal, the exact correction :math:`\log p_\theta(x_s\mid x_t) - \log q(x_s\mid x_t)`;
* with ``path_correction`` (priors that know :math:`\log p_t`): the sampler's discretisation error is
  weighted out too, using the forward kernel as the backward kernel of an SMC sampler,
  :math:`\log \frac{p_s(x_s)\, q_{t|s}(x_t \mid x_s)}{p_t(x_t)\, q(x_s \mid x_t)}` per step and
  :math:`\log p_{t_{max}}(x) - \log \mathcal N(x; 0, \sigma_{ref}^2 I)` at the start. Then the weighted
  particles target :math:`p(x) e^{\phi(x)}` and ``log_z`` estimates :math:`\log \mathbb E_p[e^{\phi}]`
  without bias from the step count; without it, both refer to the sampler's own marginal.
  ``end_log_prob`` (an unnormalised :math:`\log\tilde\pi`) replaces :math:`\log p_{t_{min}}` at the
  last step by :math:`\log\tilde\pi(x)`: the path weights then telescope to :math:`\tilde\pi`
  (the energy-target sampler of :mod:`smcdiff.energy.diffusion`, where :math:`p_t` is estimated
  and the estimate at the last step cancels exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from smcdiff.checks import check_device, check_shape, nan_or_posinf, nonfinite_rows
from smcdiff.engine.model import ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.processes.parameterization import tweedie_x0
from smcdiff.samplers.kernels import (
    gaussian_log_prob,
    reverse_step,
    shifted_proposal_log_ratio,
)
from smcdiff.scores.base import ScoreModel, has_log_density
from smcdiff.steering.potentials import POTENTIALS, initial_potential, step_potential

__all__ = ["TILT_SCHEDULES", "DiffusionFK", "TiltTerm"]

TILT_SCHEDULES = ("constant", "snr")


@dataclass(frozen=True)
class TiltTerm:
    """One term :math:`c\\, f(x_0)` of the log-tilt; ``name`` is used in error messages."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0


class DiffusionFK:
    """A :class:`~smcdiff.engine.FeynmanKacModel` over a decreasing time grid.

    ``weighted=False`` gives the untilted sampler (no tilt terms) or plain guidance (``guided``);
    ``weighted=True`` gives FK steering. See the module docstring for the weights.
    """

    def __init__(
        self,
        model: ScoreModel,
        times: Sequence[float],
        *,
        tilt: Sequence[TiltTerm] = (),
        weighted: bool = True,
        potential: str = "difference",
        guided: bool = False,
        guidance_scale: float = 1.0,
        path_correction: bool = False,
        sampler: str = "ancestral",
        eta: float = 1.0,
        tilt_schedule: str = "constant",
        end_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if potential not in POTENTIALS:
            raise SMCDiffError(f"potential must be one of {POTENTIALS}, got {potential!r}")
        self.model, self.process = model, model.process
        self.times = [float(t) for t in times]
        self.n_steps = len(self.times) - 1
        self.kernels = [
            reverse_step(self.process, t, s, sampler, eta)
            for t, s in zip(self.times[:-1], self.times[1:], strict=False)
        ]
        stochastic = all(k.var > 0 for k in self.kernels)
        if (weighted or path_correction) and not stochastic:
            raise SMCDiffError(
                f"sampler={sampler!r} is deterministic (zero step variance): weighted methods and "
                "path_correction need a stochastic sampler ('ancestral', 'em' or ddim with eta > 0)"
            )
        if path_correction and not has_log_density(model):
            raise SMCDiffError(
                "path_correction=True needs a prior with log_density / score_and_log_density"
            )
        self.tilt, self.weighted, self.potential = tuple(tilt), weighted, potential
        self.guided, self.guidance_scale = guided, float(guidance_scale)
        self.path = path_correction
        if end_log_prob is not None and not path_correction:
            raise SMCDiffError("end_log_prob needs path_correction=True (a prior with log_density)")
        self.end_log_prob = end_log_prob
        self.device, self.dtype = torch.device(device), dtype
        self.dim = int(model.dim)
        self.ref_std = self.process.prior_std
        ab = [(float(self.process.alpha(t)), float(self.process.sigma(t))) for t in self.times]
        self._alpha_sigma = ab
        if tilt_schedule not in TILT_SCHEDULES:
            raise SMCDiffError(
                f"tilt_schedule must be one of {TILT_SCHEDULES}, got {tilt_schedule!r}"
            )
        # lambda_k multiplies the intermediate tilt; 1 at the last step so potentials telescope
        self.lam = [1.0 if tilt_schedule == "constant" else a * a / (a * a + s * s) for a, s in ab]
        self.lam[-1] = 1.0
        # phi at intermediate steps is needed for FK potentials other than "final" and for guidance
        self._phi_inside = bool(self.tilt) and (guided or (weighted and potential != "final"))

    # -- one evaluation of the prior (and tilt) at a new point: 1 NFE, +1 gradient if guided --
    def _evaluate(self, x: torch.Tensor, k: int, need_grad: bool) -> tuple[dict, dict, int]:
        t, last = self.times[k], k == self.n_steps
        need_phi = bool(self.tilt) and (self._phi_inside or last)
        need_grad = need_grad and need_phi
        where = f"step {k}/{self.n_steps} (t={t:.4g})"
        out: dict[str, torch.Tensor] = {}
        with torch.enable_grad() if need_grad else torch.no_grad():
            xr = x.detach().requires_grad_(need_grad)
            if self.path:
                score, logp = self.model.score_and_log_density(xr, t)
                out["logp"] = logp.detach().double()
            else:
                score = self.model.score(xr, t)
            check_shape("score", score, tuple(x.shape), where=where)
            check_device("score", score, x.device, where=where)
            checks = {"particles": nonfinite_rows(x), "score": nonfinite_rows(score.detach())}
            if self.path:
                checks["log_density"] = ~torch.isfinite(out["logp"])
            if need_phi:
                a, s = self._alpha_sigma[k]
                x0 = xr if last else tweedie_x0(xr, score, a, s)
                phi = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for term in self.tilt:
                    v = term.fn(x0)
                    check_shape(term.name, v, (x.shape[0],), where=where)
                    check_device(term.name, v, x.device, where=where)
                    checks[term.name] = nan_or_posinf(v.detach())
                    v = v.double()  # -inf (a hard constraint) stays -inf even where lambda = 0
                    phi = phi + torch.where(v == float("-inf"), v, (self.lam[k] * term.scale) * v)
                if need_grad:
                    (grad,) = torch.autograd.grad(phi.sum(), xr)
                    out["grad"] = grad.detach().to(self.dtype)
                out["phi"] = phi.detach()
        out["score"] = score.detach()
        return out, checks, int(need_grad)

    def log_target(self, k: int, x: torch.Tensor) -> torch.Tensor:
        r"""Log of the step-k target :math:`\gamma_k(x) = \log p_{t_k}(x) + \lambda_k
        \phi(\hat x_0(x))` (:math:`\phi(x)` at the last step), up to a constant (at step 0 without path
        correction, :math:`\log\mathcal N(x; 0, \sigma_{ref}^2 I)` replaces :math:`\log p_{t_K}`); ``(N, d) -> (N,)``,
        differentiable in ``x``. This is what an MCMC corrector at step k must leave invariant
        (needs a prior with ``log_density``), e.g.
        ``run_smc(fk, n, corrector=mcmc_corrector("mala", fk.log_target))``."""
        t, last = self.times[k], k == self.n_steps
        if self.path:
            score, logp = self.model.score_and_log_density(x, t)
        elif k == 0:  # the start law is the reference Gaussian, whatever the prior
            score = self.model.score(x, t)
            logp = gaussian_log_prob(x, torch.zeros_like(x), self.ref_std**2)
        else:
            raise SMCDiffError(
                "log_target at step k > 0 needs path_correction (a prior with log_density): "
                "without it the step-k target is the sampler's own marginal, which has no formula"
            )
        if not self.tilt:
            return logp.double()
        a, s = self._alpha_sigma[k]
        x0 = x if last else tweedie_x0(x, score, a, s)
        lam = 1.0 if last else self.lam[k]
        return logp.double() + sum(lam * term.scale * term.fn(x0).double() for term in self.tilt)

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached score, density and tilt at ``state["x"]`` after a corrector
        move (1 NFE). Only per-state potentials are consistent with moves: ``difference`` and
        ``final`` (``max`` and ``sum`` are path functionals)."""
        if self.potential in ("max", "sum"):
            raise SMCDiffError(
                f"potential={self.potential!r} depends on the whole path; MCMC correctors need "
                "a per-state potential ('difference' or 'final')"
            )
        ev, _, _ = self._evaluate(state["x"], k, self.guided and k < self.n_steps)
        return {**state, **ev}, 1

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        x = self.ref_std * torch.randn(
            n, self.dim, generator=generator, device=self.device, dtype=self.dtype
        )
        ev, checks, n_grad = self._evaluate(x, 0, self.guided and self.n_steps > 0)
        log_g = torch.zeros(n, dtype=torch.float64, device=self.device)
        if self.path:
            log_g = log_g + ev["logp"] - gaussian_log_prob(x, torch.zeros_like(x), self.ref_std**2)
        state: ParticleState = {"x": x, **ev}
        if self.weighted and "phi" in ev:
            g, run = initial_potential(self.potential, ev["phi"])
            log_g = log_g + g
            state["run"], state["acc"] = run, g
        return StepOutput(state, log_g, checks, nfe=1, n_grad=n_grad)

    def step(self, k: int, state: ParticleState, generator: torch.Generator) -> StepOutput:
        ker, last = self.kernels[k - 1], k == self.n_steps
        x = state["x"]
        mean = ker.mean(x, state["score"])
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        shift = None
        if self.guided and "grad" in state:
            shift = (ker.cs * self.guidance_scale) * state["grad"]
            mean = mean + shift
        x_new = mean + ker.std * z
        ev, checks, n_grad = self._evaluate(x_new, k, self.guided and not last)
        log_g = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if self.path:
            a, v = (float(c) for c in self.process.transition(ker.s, ker.t))
            log_q = -0.5 * (z.double() ** 2).sum(-1) - 0.5 * self.dim * math.log(
                2 * math.pi * ker.var
            )
            log_g = log_g + ev["logp"] - state["logp"] + gaussian_log_prob(x, a * x_new, v) - log_q
        elif self.weighted and shift is not None:
            log_g = log_g + shifted_proposal_log_ratio(z, shift, ker.var)
        if last and self.end_log_prob is not None:  # p_{t_min} -> the exact end density
            end = self.end_log_prob(x_new)
            check_shape("end log_prob", end, (x.shape[0],), where=f"step {k}/{self.n_steps}")
            checks["end log_prob"] = nan_or_posinf(end.detach())
            log_g = log_g + end.detach().double() - ev["logp"]
        new: ParticleState = {"x": x_new, **ev}
        if self.weighted and "phi" in ev:
            zero = torch.zeros_like(ev["phi"])  # "final" potential: no intermediate phi
            prev, run, acc = (state.get(key, zero) for key in ("phi", "run", "acc"))
            g, run = step_potential(self.potential, ev["phi"], prev, run, acc, last)
            log_g = log_g + g
            new["run"], new["acc"] = run, acc + g
        return StepOutput(new, log_g, checks, nfe=1, n_grad=n_grad)
