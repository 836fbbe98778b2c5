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

On a :class:`~smcdiff.processes.MeanFree` process the particles live on its centre-of-mass-free
subspace: they start there (the reference Gaussian is the subspace's, of dimension
:math:`(n-1)s`, in the start weight and in ``log_z``), every proposal draw and MALA move is
projected back onto it, and the path-correction Gaussians are the subspace's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_choice, check_device, check_shape, nan_or_posinf, nonfinite_rows
from smcdiff.diffusion_fk.adaptive import AdaptiveTilt, initial_log_step
from smcdiff.diffusion_fk.path import PathCorrection
from smcdiff.diffusion_fk.potentials import POTENTIALS, Difference, Potential, sub_keep_neg_inf
from smcdiff.diffusion_fk.proposals import BaseProposal, GuidedProposal
from smcdiff.diffusion_fk.tilt import (
    TILT_SCHEDULES,
    Tilt,
    TiltSchedule,
    TiltTerm,
    TiltValue,
    constant_schedule,
)
from smcdiff.engine.guard import NO_MASS, OUT_OF_RANGE
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.processes.meanfree import MeanFree
from smcdiff.processes.parameterization import tweedie_x0
from smcdiff.samplers.kernels import ReverseStep, gaussian_log_prob, reverse_step, standard_noise
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time

__all__ = ["GUIDANCE_RANGE", "DiffusionFK", "build_diffusion_fk"]

GUIDANCE_RANGE = 1e3
r"""Unweighted guided runs (``"guidance"``) raise :class:`~smcdiff.errors.NonFiniteError` at the
first step where a particle's RMS coordinate :math:`\lVert x\rVert/\sqrt D` exceeds
``GUIDANCE_RANGE`` times the reference std (``process.prior_std``): no marginal of the process
lives there (data of scale > 1e3 x prior_std would need a rescaling), so the guidance diverged.
One cause is a learned score: the gradient through
:math:`\hat x_0 = (x - \sigma_t\hat\varepsilon)/\alpha_t` carries the net's Jacobian error
times :math:`1/\alpha_t`, the guided step overshoots, and particles grow geometrically where the
net extrapolates linearly (finite, ~1e16, no NaN); with the exact score too when
:math:`c_s\gamma\lVert A\rVert^2/\sigma_y^2 \gg 2` (a likelihood sharp for the step size).
Weighted methods have weights to drop such particles and are not checked."""


class DiffusionFK(FeynmanKacModel):
    """A Feynman–Kac model over a decreasing time grid ``times`` (module docstring).

    Args:
        model: the prior (a :class:`~smcdiff.scores.base.ScoreModel`; with ``path``, one with
            ``score_and_log_density``).
        times: ``t_K = t_max > ... > t_min``, ``K + 1`` floats (``grid``).
        tilt: the terms of :math:`\\phi`; ``schedule``: the tilt schedule :math:`\\lambda` (with
            ``adaptive``, its cap).
        potential, proposal, path: the parts (``path=None``: no path correction).
        adaptive: an :class:`~smcdiff.diffusion_fk.adaptive.AdaptiveTilt` to choose each step's
            tilt strength from the particles (weighted models only); then ``n_steps`` is
            ``K + max_substeps`` (sub-steps at ``t_min``, ended by :meth:`done`) when the prior
            has a density (path correction) and ``K`` otherwise.
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
        adaptive: AdaptiveTilt | None = None,
        weighted: bool = True,
        sampler: str = "ancestral",
        eta: float = 1.0,
        kernels: Sequence[ReverseStep] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.model, self.process = model, model.process
        self.grid = [float(t) for t in times]
        self.K = len(self.grid) - 1
        self._groups = 1  # runs in the batch (set by each step; per-run checks of guidance)
        if kernels is None:
            kernels = [
                reverse_step(self.process, t, s, sampler, eta)
                for t, s in zip(self.grid[:-1], self.grid[1:], strict=False)
            ]
        self.kernels = list(kernels)
        self.potential = potential if potential is not None else Difference()
        self.proposal = proposal if proposal is not None else BaseProposal()
        self.path, self.weighted = path, weighted
        self._check_parts(sampler)
        self.tilt = Tilt(tilt, self.process, self.grid, schedule)
        self.adaptive = adaptive if (weighted and self.tilt) else None
        self.substeps = self.adaptive is not None and path is not None and adaptive.n_moves > 0
        self.n_steps = self.K + (self.adaptive.max_substeps if self.substeps else 0)
        self.times = self.grid + [self.grid[-1]] * (self.n_steps - self.K)
        self.device, self.dtype = torch.device(device), dtype
        self.event_shape = event_shape_of(model)
        self.dim = int(model.dim)
        self.ref_std = self.process.prior_std
        self.mean_free = isinstance(self.process, MeanFree)  # particles on the subspace
        self._x_bound = GUIDANCE_RANGE * float(self.ref_std)  # GUIDANCE_RANGE
        self._alpha_sigma = [
            (float(self.process.alpha(t)), float(self.process.sigma(t))) for t in self.grid
        ]
        # the prior's per-time constants (an exact mixture's noised factors) built once for the
        # grid and held here: a step does no factorisation, and captured graphs read them
        precompute = getattr(model, "precompute", None)
        self._per_time = precompute(self.grid) if callable(precompute) else None
        # phi at intermediate steps: for potentials that read it and for guided proposals
        self._phi_inside = bool(self.tilt) and (
            self.proposal.guided or (weighted and self.potential.intermediate)
        )

    def _check_parts(self, sampler: str) -> None:
        if len(self.kernels) != self.K:
            raise SMCDiffError(f"DiffusionFK: got {len(self.kernels)} kernels for {self.K} steps")
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
        """Score (and density) at ``x``, step ``k``; with the tilt, its raw value ``f``, ``hard``
        (:class:`~smcdiff.diffusion_fk.tilt.TiltValue`) at :math:`\\hat x_0` and, if
        ``need_grad``, the gradient ``gradf`` of ``f`` in ``x``."""
        t, last = self.grid[k], k == self.K
        need_phi = bool(self.tilt) and (self._phi_inside or last)
        need_grad = need_grad and need_phi
        where = f"step {k}/{self.K} (t={t:.4g})"
        out: dict[str, torch.Tensor] = {}
        with torch.enable_grad() if need_grad else torch.no_grad():
            xr = x.detach().requires_grad_(need_grad)
            score = self._score(xr, t, out)
            check_shape("score", score, tuple(x.shape), where=where)
            check_device("score", score, x.device, where=where)
            checks = {"particles": nonfinite_rows(x), "score": nonfinite_rows(score.detach())}
            if self.path is not None:
                checks["log_density"] = nan_or_posinf(out["logp"])  # -inf: weight 0
            if need_phi:
                a, s = self._alpha_sigma[k]
                x0 = xr if last else tweedie_x0(xr, score, a, s)
                value = self.tilt.evaluate(x0, k, checks, where)
                name = " + ".join(term.name for term in self.tilt.terms)
                if need_grad:  # an indicator or a constant tilt has no graph: gradient 0
                    grad = torch.zeros_like(xr)
                    if value.f.requires_grad:
                        (g,) = torch.autograd.grad(value.f.sum(), xr, allow_unused=True)
                        grad = grad if g is None else g
                    elif not self.weighted:  # no weights to correct a guidance that does nothing
                        raise SMCDiffError(
                            f"{where}: {name} is not differentiable in x (no autograd graph: a "
                            "constant or an indicator); guidance moves by its gradient and has "
                            "no weights, so it would return the prior"
                        )
                    hard = value.hard.reshape(-1, *([1] * (x.dim() - 1)))
                    # the penalty of a violated constraint is flat: its gradient is 0
                    out["gradf"] = torch.where(hard, 0.0, grad.detach()).to(self.dtype)
                    checks[f"{name} gradient"] = nonfinite_rows(out["gradf"])
                if last and not self.weighted:  # unweighted: a tilt -inf everywhere is an error
                    hard = value.hard.reshape(self._groups, -1)
                    checks[f"{name} {NO_MASS}"] = (hard & hard.all(1, keepdim=True)).reshape(-1)
                out["f"], out["hard"] = value.f.detach(), value.hard
        out["score"] = score.detach().to(x.dtype)  # a float64 model: float32 particles stay
        return out, checks, int(need_grad)

    def _apply_strength(
        self,
        state: ParticleState,
        k: int,
        lam: float | torch.Tensor | None,
        phi: torch.Tensor | None = None,
    ) -> ParticleState:
        """``state`` with ``phi`` (:meth:`Tilt.phi` at strength ``lam``, default the schedule;
        given: already computed) and the guided proposal's ``grad`` = ``lam * gradf``."""
        if "f" not in state:
            return state
        state = dict(state)
        if phi is None:
            phi = self.tilt.phi(TiltValue(state["f"], state["hard"]), k, lam)
        state["phi"] = phi
        if "gradf" in state:
            lam = self.tilt.lam[k] if lam is None else lam
            scale = (
                lam
                if isinstance(lam, float)
                else lam.to(self.dtype).reshape(-1, *([1] * (state["x"].dim() - 1)))
            )
            state["grad"] = scale * state.pop("gradf")
        return state

    def _score(self, x: torch.Tensor, t: float, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prior's score at ``(x, t)``; with a path correction also ``out["logp"]``."""
        tm = model_time(self.model, t, x)
        if self.path is None:
            return self.model.score(x, tm)
        score, logp = self.model.score_and_log_density(x, tm)  # type: ignore[attr-defined]
        out["logp"] = logp.detach().double()
        return score

    def log_target(
        self, k: int, x: torch.Tensor, lam: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""Log of the step-k target :math:`\gamma_k(x) = \log p_{t_k}(x) + \phi_{\lambda_k}
        (\hat x_0(x))` (:math:`\phi(x)` from the last step on; ``end_log_prob`` in place of
        :math:`\log p_{t_{min}}` there when given), up to a constant (at step 0 without path
        correction, :math:`\log\mathcal N(x; 0, \sigma_{ref}^2 I)` replaces
        :math:`\log p_{t_K}`); ``lam``: the tilt strength (float or ``(N,)``; default the
        schedule's); ``(N, *event_shape) -> (N,)``, differentiable in ``x``. This is what an MCMC
        corrector at step k must leave invariant (needs a prior with ``log_density``), e.g.
        ``run_smc(fk, n, corrector=mcmc_corrector("mala", fk.log_target))``."""
        last = k >= self.K
        t = self.grid[min(k, self.K)]
        tm = model_time(self.model, t, x)
        if self.path is not None:
            score, logp = self.model.score_and_log_density(x, tm)  # type: ignore[attr-defined]
            if last and self.path.end_log_prob is not None:
                logp = self.path.end_log_prob(x)
        elif k == 0:  # the start law is the reference Gaussian, whatever the prior
            score = self.model.score(x, tm)
            logp = gaussian_log_prob(x, torch.zeros_like(x), self.ref_std**2, self.process)
        else:
            raise SMCDiffError(
                "log_target at step k > 0 needs path_correction (a prior with log_density): "
                "without it the step-k target is the sampler's own marginal, which has no formula"
            )
        if not self.tilt:
            return logp.double()
        a, s = self._alpha_sigma[min(k, self.K)]
        x0 = x if last else tweedie_x0(x, score, a, s)
        return logp.double() + self.tilt.log_value(x0, k, lam)

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        """Re-evaluate the cached score, density and tilt at ``state["x"]`` after a corrector
        move (1 NFE). Only per-state potentials are consistent with moves: ``difference`` and
        ``final`` (``max`` and ``sum`` are path functionals)."""
        if not self.potential.per_state:
            raise SMCDiffError(
                f"potential={self.potential.name!r} depends on the whole path; MCMC correctors "
                "need a per-state potential ('difference' or 'final')"
            )
        ev, _, _ = self._evaluate(state["x"], k, self.guided and k < self.K)
        return self._apply_strength({**state, **ev}, k, state.get("lam")), 1

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """``n`` particles from :math:`\\mathcal N(0, \\sigma_{ref}^2 I)`, ``(n, *event_shape)``
        (of the subspace for a :class:`~smcdiff.processes.MeanFree` process); with ``adaptive``
        the tilt starts at strength 0."""
        x = self.ref_std * standard_noise(
            self.process, n, self.event_shape, generator, device=self.device, dtype=self.dtype
        )
        ev, checks, n_grad = self._evaluate(x, 0, self.guided and self.K > 0)
        log_g = torch.zeros(n, dtype=torch.float64, device=self.device)
        if self.path is not None:
            log_g = log_g + self.path.start(x, ev["logp"], self.ref_std, self.process)
        lam = None
        if self.adaptive is not None:
            lam = torch.zeros(n, dtype=torch.float64, device=self.device)
        state: ParticleState = self._apply_strength({"x": x, **ev}, 0, lam)
        if lam is not None:
            state["lam"] = lam
        if self.weighted and "phi" in state:
            g, run = self.potential.initial(state["phi"])
            log_g = log_g + g
            if self.potential.path_state:
                state["run"], state["acc"] = run, g
        return StepOutput(state, log_g, checks, nfe=1, n_grad=n_grad)

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        """Move with the proposal from ``t_{k-1}`` to ``t_k`` and weight (module docstring); with
        ``adaptive``, ``log_weights`` choose the tilt strength, and steps past ``K`` are the
        sub-steps at ``t_min``."""
        if k > self.K:
            return self._substep(k, state, generator, log_weights)
        ker, last = self.kernels[k - 1], k == self.K
        nfe0, moved, move_checks = 0, {}, {}
        if self._moves_needed(k, state, log_weights):
            state, nfe0, moved, move_checks = self._move(k - 1, state, generator, log_weights)
        x = state["x"]
        x_new, z, shift = self.proposal.propose(ker, state, generator)
        if self.mean_free:  # the kernel's mean is mean-free: keep its noise on the subspace too
            x_new, z = self.process.project(x_new), self.process.project(z)
            shift = None if shift is None else self.process.project(shift)
        self._groups = log_weights.shape[0]  # guidance's "no mass" check is per run
        ev, checks, n_grad = self._evaluate(x_new, k, self.guided and not last)
        if self.guided and not self.weighted:  # first: the cause of what the score does there
            checks = {**self._range_check(x_new), **checks}
        log_g = None  # the first term itself (no zeros + term: one (N,) pass less)
        if self.path is not None:
            args = (self.process, ker, x, x_new, z, ev["logp"], state["logp"])
            if last:  # p_{t_min} -> the exact end density
                log_g = self.path.finish(*args, checks, f"step {k}/{self.K}").double()
            else:
                log_g = self.path.step(*args).double()
        elif self.weighted:
            ratio = self.proposal.log_ratio(z, shift, ker.var)
            if ratio is not None:
                log_g = ratio.double()
        # the adaptive strength lives with the particles; MALA step sizes start afresh from the
        # particles' spread at each step that moves (the target sharpens between steps)
        carried = {"lam": state["lam"]} if "lam" in state else {}
        new: ParticleState = {"x": x_new, **ev, **carried}
        info: dict[str, torch.Tensor] = {}
        if self.weighted and "f" in ev:
            zero = x.new_zeros((), dtype=torch.float64)  # 0-d: + (N,) float64 terms
            log_g, new, info = self._weigh(k, state, new, zero if log_g is None else log_g,
                                           log_weights)  # fmt: skip
        else:
            new = self._apply_strength(new, k, None)
        if log_g is None:
            log_g = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        info.update(moved)
        checks.update(move_checks)
        return StepOutput(new, log_g, checks, nfe=1 + nfe0, n_grad=n_grad + nfe0, info=info)

    def _range_check(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows of ``x`` whose RMS coordinate exceeds :data:`GUIDANCE_RANGE` times the
        reference std (no host sync); the name (the same at every step: the guard keeps one
        column per name) says the bound and what to do."""
        rms = x.detach().reshape(x.shape[0], -1).square().mean(1).sqrt()
        name = (
            f"guided particles beyond {GUIDANCE_RANGE:g} x the reference std (RMS coordinate > "
            f"{self._x_bound:g}): the guidance step c_s * guidance_scale * grad overshoots and "
            "the particles run away (a likelihood sharp for the step size, or a learned score, "
            "whose x0-hat = (x - sigma * eps)/alpha amplifies the net's error at high noise); "
            "lower guidance_scale, take more steps, or use a weighted method ('fk', 'tds') "
            f"{OUT_OF_RANGE}"
        )
        return {name: rms > self._x_bound}

    def _moves_needed(self, k: int, state: ParticleState, log_weights: torch.Tensor) -> bool:
        """Moves at the start of step k (k >= 2, per-state potential, with sub-steps): only where
        they can help — the previous step's strength was held below its cap, or the engine just
        resampled (equal weights). One host sync."""
        if not (self.substeps and k > 1 and self.adaptive.move_every and self.potential.per_state):
            return False
        held = state["lam"] < self.tilt.lam[k - 1] - 1e-9
        resampled = (log_weights.amax(-1) - log_weights.amin(-1)) < 1e-12
        return bool(held.any() | resampled.any())

    def _on_support(self, x: torch.Tensor) -> torch.Tensor:
        """MALA-moved ``x`` back on the subspace of a :class:`~smcdiff.processes.MeanFree`
        process (the targets are translation invariant there: the projected chain is MALA on the
        subspace), unchanged otherwise."""
        return self.process.project(x) if self.mean_free else x

    def _move(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> tuple[ParticleState, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """MALA moves invariant for the step-k target at the particles' strength, then the
        cached score, density and tilt re-evaluated at the new points. Returns the state, the
        NFE, the info (mean acceptance per group) and the checks (names prefixed)."""
        x, lam, n_groups = state["x"], state["lam"], log_weights.shape[0]
        x, _, accept, bad = self.adaptive.move(
            x, lambda y: self.log_target(k, y, lam), initial_log_step(x, n_groups), n_groups,
            generator,
        )  # fmt: skip
        x = self._on_support(x)
        ev, checks, _ = self._evaluate(x, k, self.guided)
        checks = {f"{name} (after the tilt moves of step {k})": m for name, m in checks.items()}
        checks[f"log target of the tilt moves (log p_t + reward / log_likelihood) of step {k}"] = (
            bad
        )
        new = self._apply_strength({**state, **ev, "x": x}, k, lam)
        return new, self.adaptive.n_moves + 2, {"accept": accept}, checks

    def _weigh(
        self,
        k: int,
        state: ParticleState,
        new: ParticleState,
        log_g: torch.Tensor,
        log_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ParticleState, dict[str, torch.Tensor]]:
        """Add step k's FK potential to ``log_g`` at the schedule's strength or, adaptive, at
        the largest strength that keeps the CESS (:mod:`~smcdiff.diffusion_fk.adaptive`)."""
        last = k == self.K
        carried = ("run", "acc") if self.potential.path_state else ()
        need_zero = self.adaptive is not None or any(key not in state for key in ("phi", *carried))
        zero = torch.zeros_like(new["f"]) if need_zero else None  # "final": no intermediate phi
        prev = state.get("phi", zero)
        # without path_state the potential reads neither run nor acc: prev stands in
        run, acc = (state.get(key, zero if carried else prev) for key in ("run", "acc"))
        value = TiltValue(new["f"], new["hard"])

        def potential(lam: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.potential.step(self.tilt.phi(value, k, lam), prev, run, acc, last)

        lam, info = None, {}
        if self.adaptive is not None:
            cap = torch.full_like(zero, self.tilt.lam[k])
            lo = cap if (last and not self.substeps) else zero
            increments = [lambda m: log_g + potential(m)[0]]
            if "f" in state:  # what one more step at this strength would cost
                old = TiltValue(state["f"], state["hard"])
                increments.append(
                    lambda m: log_g + self.tilt.phi(value, k, m) - self.tilt.phi(old, k - 1, m)
                )
            lam = self.adaptive.choose(log_weights, increments, lo, cap, monotone=False)
            info["tilt"] = lam.reshape(log_weights.shape)[:, 0]
        phi = self.tilt.phi(value, k, lam)
        g, run = self.potential.step(phi, prev, run, acc, last)
        new = self._apply_strength(new, k, lam, phi)
        if carried:
            new["run"], new["acc"] = run, acc + g
        if lam is not None:
            new["lam"] = lam
        return log_g + g, new, info

    def _substep(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        """A sub-step at ``t_min``: MALA moves invariant for the current target, then the tilt
        strength raised as far as the CESS allows (to 1 at the last allowed sub-step)."""
        G, adaptive = log_weights.shape[0], self.adaptive
        lam, x = state["lam"], state["x"]
        log_h = state["mala_log_h"] if "mala_log_h" in state else initial_log_step(x, G)
        x, log_h, accept, bad = adaptive.move(
            x, lambda y: self.log_target(self.K, y, lam), log_h, G, generator
        )
        x = self._on_support(x)
        checks = {"log target of the tilt moves (log p_t + reward / log_likelihood)": bad}
        value = self.tilt.evaluate(x, self.K, checks, f"sub-step {k - self.K} at t_min")
        old = self.tilt.phi(value, self.K, lam)

        def log_g_of(m: torch.Tensor) -> torch.Tensor:
            return sub_keep_neg_inf(self.tilt.phi(value, self.K, m), old)

        one = torch.ones_like(lam)
        new_lam = (
            one if k == self.n_steps else adaptive.choose(log_weights, [log_g_of], lam, one, True)
        )
        log_g = log_g_of(new_lam)
        keep = {key: v for key, v in state.items() if key not in ("score", "logp", "grad")}
        new = {**keep, "x": x, "lam": new_lam, "mala_log_h": log_h, "f": value.f,
               "hard": value.hard, "phi": self.tilt.phi(value, self.K, new_lam)}  # fmt: skip
        info = {"tilt": new_lam.reshape(G, -1)[:, 0], "accept": accept}
        n = adaptive.n_moves + 1
        return StepOutput(new, log_g, checks, nfe=n, n_grad=n, info=info)

    def step_label(self, k: int) -> str:
        """``"step k/K"``, or ``"tilt sub-step j at t_min (after step K/K)"`` past ``K``."""
        if k <= self.K:
            return f"step {k}/{self.K}"
        return f"tilt sub-step {k - self.K} at t_min (after step {self.K}/{self.K})"

    def done(self, k: int, state: ParticleState) -> torch.Tensor | None:
        """With sub-steps: ``True`` once every group's tilt strength reached 1 (one host sync
        per step from the last diffusion step on); ``None`` otherwise (never ends early)."""
        if not self.substeps or k < self.K:
            return None
        return (state["lam"] >= 1.0).all()


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
    adaptive: AdaptiveTilt | None = None,
    end_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionFK:
    """A :class:`DiffusionFK` from names and switches (the front doors' vocabulary):
    ``potential`` in :data:`~smcdiff.diffusion_fk.potentials.POTENTIALS`, ``guided`` (a
    :class:`GuidedProposal` with ``guidance_scale``), ``path_correction`` (with ``end_log_prob``),
    ``tilt_schedule`` in :data:`~smcdiff.diffusion_fk.tilt.TILT_SCHEDULES` (with ``adaptive``,
    the cap of the adaptive strengths)."""
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
        adaptive=adaptive,
        weighted=weighted,
        sampler=sampler,
        eta=eta,
        device=device,
        dtype=dtype,
    )
