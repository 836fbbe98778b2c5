r"""Diffusion sampling as a Feynman–Kac model, composed from parts.

Target: :math:`\pi(x) \propto p(x)\,e^{\phi(x)}` with :math:`\phi(x) = \sum_j c_j\, f_j(x)`
(:mod:`~smcdiff.diffusion_fk.tilt`); :math:`p = p_{t_{min}}` is the prior's marginal at the end of
the grid. A :class:`DiffusionFK` is

* a **proposal** (:mod:`~smcdiff.diffusion_fk.proposals`): the reverse kernel, or the kernel
  shifted by the gradient of the intermediate tilt (guided / twisted);
* a **potential** (:mod:`~smcdiff.diffusion_fk.potentials`) on the intermediate tilt
  :math:`\lambda_k\phi(\hat x_0(x_k))` with its **tilt schedule** :math:`\lambda`;
* an optional **path correction** (:mod:`~smcdiff.diffusion_fk.path`) that weights out the
  sampler's discretisation error;
* ``weighted``: whether the FK potentials and the proposal correction are applied at all
  (``False``: the untilted sampler, or plain guidance with a guided proposal).

Log-potential per step: the path-correction weight (with a path correction; it already accounts
for the proposal actually used) or else, weighted, the proposal's :math:`\log p_\theta/q`; then,
weighted, the FK potential. Particles are ``(N, *event_shape)``; the score model receives the time
through :func:`~smcdiff.scores.base.model_time`. :func:`build_diffusion_fk` builds the model from
the front doors' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_choice, check_device, check_shape, nonfinite_rows
from smcdiff.diffusion_fk.path import PathCorrection
from smcdiff.diffusion_fk.potentials import POTENTIALS, Difference, Potential
from smcdiff.diffusion_fk.proposals import BaseProposal, GuidedProposal
from smcdiff.diffusion_fk.tilt import (
    TILT_SCHEDULES,
    Tilt,
    TiltSchedule,
    TiltTerm,
    constant_schedule,
)
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.processes.parameterization import tweedie_x0
from smcdiff.samplers.kernels import ReverseStep, gaussian_log_prob, reverse_step
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time

__all__ = ["DiffusionFK", "build_diffusion_fk"]


class DiffusionFK(FeynmanKacModel):
    """A Feynman–Kac model over a decreasing time grid ``times`` (module docstring).

    Args:
        model: the prior (a :class:`~smcdiff.scores.base.ScoreModel`; with ``path``, one with
            ``score_and_log_density``).
        times: ``t_K = t_max > ... > t_min``, ``n_steps + 1`` floats.
        tilt: the terms of :math:`\\phi`; ``schedule``: the tilt schedule :math:`\\lambda`.
        potential, proposal, path: the parts (``path=None``: no path correction).
        weighted: apply the FK potentials and the proposal correction.
        sampler, eta: the reverse kernels (:func:`~smcdiff.samplers.kernels.reverse_step`), unless
            ``kernels`` (one :class:`ReverseStep` per step) is given.
    """

    def __init__(
        self,
        model: ScoreModel,
        times: Sequence[float],
        *,
        tilt: Sequence[TiltTerm] = (),
        potential: Potential | None = None,
        proposal: BaseProposal | None = None,
        path: PathCorrection | None = None,
        schedule: TiltSchedule = constant_schedule,
        weighted: bool = True,
        sampler: str = "ancestral",
        eta: float = 1.0,
        kernels: Sequence[ReverseStep] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.model, self.process = model, model.process
        self.times = [float(t) for t in times]
        self.n_steps = len(self.times) - 1
        if kernels is None:
            kernels = [
                reverse_step(self.process, t, s, sampler, eta)
                for t, s in zip(self.times[:-1], self.times[1:], strict=False)
            ]
        self.kernels = list(kernels)
        self.potential = potential if potential is not None else Difference()
        self.proposal = proposal if proposal is not None else BaseProposal()
        self.path, self.weighted = path, weighted
        self._check_parts(sampler)
        self.tilt = Tilt(tilt, self.process, self.times, schedule)
        self.device, self.dtype = torch.device(device), dtype
        self.event_shape = event_shape_of(model)
        self.dim = int(model.dim)
        self.ref_std = self.process.prior_std
        self._alpha_sigma = [
            (float(self.process.alpha(t)), float(self.process.sigma(t))) for t in self.times
        ]
        # phi at intermediate steps: for potentials that read it and for guided proposals
        self._phi_inside = bool(self.tilt) and (
            self.proposal.guided or (weighted and self.potential.intermediate)
        )

    def _check_parts(self, sampler: str) -> None:
        if len(self.kernels) != self.n_steps:
            raise SMCDiffError(
                f"DiffusionFK: got {len(self.kernels)} kernels for {self.n_steps} steps"
            )
        stochastic = all(k.var > 0 for k in self.kernels)
        if (self.weighted or self.path is not None) and not stochastic:
            raise SMCDiffError(
                f"sampler={sampler!r} is deterministic (zero step variance): weighted methods and "
                "path_correction need a stochastic sampler ('ancestral', 'em' or ddim with eta > 0)"
            )
        if self.path is not None and not has_log_density(self.model):
            raise SMCDiffError(
                "path_correction=True needs a prior with log_density / score_and_log_density"
            )

    @property
    def guided(self) -> bool:
        """Whether the proposal uses the gradient of the tilt."""
        return self.proposal.guided

    # -- one evaluation of the prior (and tilt) at a new point: 1 NFE, +1 gradient if guided --
    def _evaluate(self, x: torch.Tensor, k: int, need_grad: bool) -> tuple[dict, dict, int]:
        t, last = self.times[k], k == self.n_steps
        need_phi = bool(self.tilt) and (self._phi_inside or last)
        need_grad = need_grad and need_phi
        where = f"step {k}/{self.n_steps} (t={t:.4g})"
        out: dict[str, torch.Tensor] = {}
        with torch.enable_grad() if need_grad else torch.no_grad():
            xr = x.detach().requires_grad_(need_grad)
            score = self._score(xr, t, out)
            check_shape("score", score, tuple(x.shape), where=where)
            check_device("score", score, x.device, where=where)
            checks = {"particles": nonfinite_rows(x), "score": nonfinite_rows(score.detach())}
            if self.path is not None:
                checks["log_density"] = ~torch.isfinite(out["logp"])
            if need_phi:
                a, s = self._alpha_sigma[k]
                x0 = xr if last else tweedie_x0(xr, score, a, s)
                phi = self.tilt.evaluate(x0, k, checks, where)
                if need_grad:
                    (grad,) = torch.autograd.grad(phi.sum(), xr)
                    out["grad"] = grad.detach().to(self.dtype)
                out["phi"] = phi.detach()
        out["score"] = score.detach()
        return out, checks, int(need_grad)

    def _score(self, x: torch.Tensor, t: float, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prior's score at ``(x, t)``; with a path correction also ``out["logp"]``."""
        tm = model_time(self.model, t, x)
        if self.path is None:
            return self.model.score(x, tm)
        score, logp = self.model.score_and_log_density(x, tm)  # type: ignore[attr-defined]
        out["logp"] = logp.detach().double()
        return score

    def log_target(self, k: int, x: torch.Tensor) -> torch.Tensor:
        r"""Log of the step-k target :math:`\gamma_k(x) = \log p_{t_k}(x) + \lambda_k
        \phi(\hat x_0(x))` (:math:`\phi(x)` at the last step), up to a constant (at step 0 without
        path correction, :math:`\log\mathcal N(x; 0, \sigma_{ref}^2 I)` replaces
        :math:`\log p_{t_K}`); ``(N, *event_shape) -> (N,)``, differentiable in ``x``. This is what
        an MCMC corrector at step k must leave invariant (needs a prior with ``log_density``),
        e.g. ``run_smc(fk, n, corrector=mcmc_corrector("mala", fk.log_target))``."""
        t, last = self.times[k], k == self.n_steps
        tm = model_time(self.model, t, x)
        if self.path is not None:
            score, logp = self.model.score_and_log_density(x, tm)  # type: ignore[attr-defined]
        elif k == 0:  # the start law is the reference Gaussian, whatever the prior
            score = self.model.score(x, tm)
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
        return logp.double() + self.tilt.log_value(x0, k)

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached score, density and tilt at ``state["x"]`` after a corrector
        move (1 NFE). Only per-state potentials are consistent with moves: ``difference`` and
        ``final`` (``max`` and ``sum`` are path functionals)."""
        if not self.potential.per_state:
            raise SMCDiffError(
                f"potential={self.potential.name!r} depends on the whole path; MCMC correctors "
                "need a per-state potential ('difference' or 'final')"
            )
        ev, _, _ = self._evaluate(state["x"], k, self.guided and k < self.n_steps)
        return {**state, **ev}, 1

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """``n`` particles from :math:`\\mathcal N(0, \\sigma_{ref}^2 I)`, ``(n, *event_shape)``."""
        x = self.ref_std * torch.randn(
            n, *self.event_shape, generator=generator, device=self.device, dtype=self.dtype
        )
        ev, checks, n_grad = self._evaluate(x, 0, self.guided and self.n_steps > 0)
        log_g = torch.zeros(n, dtype=torch.float64, device=self.device)
        if self.path is not None:
            log_g = log_g + self.path.start(x, ev["logp"], self.ref_std)
        state: ParticleState = {"x": x, **ev}
        if self.weighted and "phi" in ev:
            g, run = self.potential.initial(ev["phi"])
            log_g = log_g + g
            state["run"], state["acc"] = run, g
        return StepOutput(state, log_g, checks, nfe=1, n_grad=n_grad)

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        """Move with the proposal from ``t_{k-1}`` to ``t_k`` and weight (module docstring);
        ``log_weights`` is not used."""
        ker, last = self.kernels[k - 1], k == self.n_steps
        x = state["x"]
        x_new, z, shift = self.proposal.propose(ker, state, generator)
        ev, checks, n_grad = self._evaluate(x_new, k, self.guided and not last)
        log_g = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if self.path is not None:
            log_g = log_g + self.path.step(
                self.process, ker, x, x_new, z, ev["logp"], state["logp"]
            )
            if last:  # p_{t_min} -> the exact end density
                where = f"step {k}/{self.n_steps}"
                log_g = self.path.finish(x_new, log_g, ev["logp"], checks, where)
        elif self.weighted:
            ratio = self.proposal.log_ratio(z, shift, ker.var)
            if ratio is not None:
                log_g = log_g + ratio
        new: ParticleState = {"x": x_new, **ev}
        if self.weighted and "phi" in ev:
            zero = torch.zeros_like(ev["phi"])  # "final" potential: no intermediate phi
            prev, run, acc = (state.get(key, zero) for key in ("phi", "run", "acc"))
            g, run = self.potential.step(ev["phi"], prev, run, acc, last)
            log_g = log_g + g
            new["run"], new["acc"] = run, acc + g
        return StepOutput(new, log_g, checks, nfe=1, n_grad=n_grad)


def build_diffusion_fk(
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
) -> DiffusionFK:
    """A :class:`DiffusionFK` from names and switches (the front doors' vocabulary):
    ``potential`` in :data:`~smcdiff.diffusion_fk.potentials.POTENTIALS`, ``guided`` (a
    :class:`GuidedProposal` with ``guidance_scale``), ``path_correction`` (with ``end_log_prob``),
    ``tilt_schedule`` in :data:`~smcdiff.diffusion_fk.tilt.TILT_SCHEDULES`."""
    check_choice("potential", potential, POTENTIALS, where="build_diffusion_fk")
    check_choice("tilt_schedule", tilt_schedule, TILT_SCHEDULES, where="build_diffusion_fk")
    if end_log_prob is not None and not path_correction:
        raise SMCDiffError("end_log_prob needs path_correction=True (a prior with log_density)")
    return DiffusionFK(
        model,
        times,
        tilt=tilt,
        potential=POTENTIALS[potential](),
        proposal=GuidedProposal(guidance_scale) if guided else BaseProposal(),
        path=PathCorrection(end_log_prob) if path_correction else None,
        schedule=TILT_SCHEDULES[tilt_schedule],
        weighted=weighted,
        sampler=sampler,
        eta=eta,
        device=device,
        dtype=dtype,
    )
