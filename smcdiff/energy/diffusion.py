r"""SMC along a diffusion path for an energy-defined target, with training-free scores.

Work in the scaled coordinates :math:`y = (x - \mu)/\sigma_0` (reference mean and scale), where the
target :math:`\tilde\pi_y(y) = \tilde\pi(\mu + \sigma_0 y)\,\sigma_0^d` has the same normaliser
:math:`Z` and roughly unit scale, and run the reverse VP diffusion from :math:`\mathcal N(0, I)`.

``method="diffusion"`` (weighted, consistent, with :math:`\log\hat Z`): the estimator (rdMC
importance sampling by default, :class:`~smcdiff.scores.RDMCImportanceScore`) gives the score that
drives the proposal and an estimate :math:`\hat p_t(y)` of :math:`Z p_t(y)`, unbiased for it. The
path-corrected FK model of :mod:`smcdiff.diffusion_fk` weights each move by

.. math:: \frac{\hat p_s(y_s)\, q_{t|s}(y_t \mid y_s)}{\hat p_t(y_t)\, q(y_s \mid y_t)},

with the start weight :math:`\hat p_{t_K}(y)/\mathcal N(y; 0, I)` and, at the last step,
:math:`\hat p_{t_{min}}` replaced by :math:`\tilde\pi_y` (``end_log_prob``). Each estimate is stored
with its particle and reused as the next denominator, so the estimates cancel along every path
(a random-weight / pseudo-marginal SMC sampler): the weighted particles target :math:`\pi`
exactly as :math:`N \to \infty` whatever the estimator's error, which only costs efficiency, and
:math:`\hat Z` is unbiased. ``final_moves`` MCMC moves invariant for :math:`\pi` (weights kept)
follow.

``method="rdmc"`` / ``"ensemble"``: the unweighted reverse SDE driven by the rdMC score (Huang et
al. 2024) or by the Föllmer drift (Schrödinger–Föllmer sampler); biased for finite inner sample
sizes and step counts, no :math:`\hat Z`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from smcdiff.checks import nan_or_posinf, nonfinite_rows
from smcdiff.diffusion_fk import build_diffusion_fk
from smcdiff.energy.options import DiffusionOptions, RunSettings
from smcdiff.energy.reference import reference_tensors
from smcdiff.energy.time_grid_adaptive import AdaptiveTimeFK
from smcdiff.engine.collectors import degeneracy_collectors
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.smc import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.processes.grids import time_grid
from smcdiff.processes.schedules import VP
from smcdiff.resampling.policies import Never, policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.scores.ensemble import FollmerDrift
from smcdiff.scores.rdmc import RDMCImportanceScore
from smcdiff.scores.refined import RDMCRefinedScore
from smcdiff.seeding import child_generator
from smcdiff.target import CountingTarget, Target, target_event_shape

__all__ = [
    "EstimatorChecks",
    "ScaledTarget",
    "path_model",
    "run_diffusion",
    "scaled_target",
    "score_estimator",
]

INNER_TARGET = (
    "target log_prob at the score estimator's inner samples (NaN or +inf, or a NaN gradient; "
    "without a path correction also zero density at every inner sample)"
)
"""The quantity :class:`EstimatorChecks` names when an inner estimate is not finite."""


class EstimatorChecks(FeynmanKacModel):
    r"""A diffusion FK model whose training-free score estimator does not raise by itself
    (``check_finite=False``): a non-finite inner estimate — the target's ``log_prob`` NaN or
    :math:`+\infty` at an inner sample, so the particle's :math:`\log\hat p_t` is NaN /
    :math:`+\infty` (weighted) or its score NaN (unweighted) — is reported in the step's
    ``checks`` under :data:`INNER_TARGET`, ahead of the model's own checks. The engine's guard
    then raises :class:`~smcdiff.errors.NonFiniteError` naming the step, with the partial run,
    without a host-device sync inside the step. A particle whose estimate is
    :math:`\log\hat p_t = -\infty` (no inner draw with mass) has weight zero and an undefined
    (0/0) score: its score is set to 0 and not reported, so a target with no mass anywhere ends
    in the engine's :class:`~smcdiff.errors.DegenerateWeightsError` (all weights zero). Everything
    else is the wrapped ``fk``'s."""

    def __init__(self, fk: FeynmanKacModel):
        self.fk = fk
        self.n_steps, self.times = fk.n_steps, fk.times

    def _with_checks(self, out: StepOutput) -> StepOutput:
        st = out.state
        bad = nan_or_posinf(st["logp"]) if "logp" in st else nonfinite_rows(st["score"])
        if "logp" in st and "score" in out.checks:  # zero density: weight 0, score 0/0
            dead = st["logp"] == -math.inf
            out.checks["score"] = out.checks["score"] & ~dead
            st["score"] = torch.where(dead.reshape(-1, *([1] * (st["score"].dim() - 1))),
                                      torch.zeros_like(st["score"]), st["score"])  # fmt: skip
        out.checks = {INNER_TARGET: bad, **out.checks}
        return out

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        return self._with_checks(self.fk.init(n, generator))

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        return self._with_checks(self.fk.step(k, state, generator, log_weights))

    def refresh(self, k: int, state: ParticleState) -> tuple[ParticleState, int]:
        return self.fk.refresh(k, state)

    def done(self, k: int, state: ParticleState) -> torch.Tensor | None:
        return self.fk.done(k, state)

    def step_label(self, k: int) -> str:
        return self.fk.step_label(k)

    def state_dict(self) -> dict[str, Any]:
        return self.fk.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fk.load_state_dict(state)


class ScaledTarget:
    r""":math:`\tilde\pi_y(y) = \tilde\pi(\mu + \sigma_0 y)\,\prod_i\sigma_{0,i}`: same normaliser,
    unit scale. ``to_x(y)`` maps back."""

    def __init__(self, target: Target, mean: torch.Tensor, std: torch.Tensor):
        self.target, self.dim = target, int(target.dim)
        self.mean, self.std = mean, std
        self.log_det = (
            float(torch.log(std).sum()) if std.dim() >= 1 else self.dim * math.log(float(std))
        )

    def to_x(self, y: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * y

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        return self.target.log_prob(self.to_x(y)) + self.log_det


def scaled_target(settings: RunSettings) -> ScaledTarget:
    """The target in the coordinates scaled by the run's reference (mean and scale). The
    training-free estimators work on vectors: a target with a non-flat ``event_shape`` is
    refused."""
    s = settings
    shape = target_event_shape(s.target)
    if len(shape) != 1:
        raise SMCDiffError(
            f"sample: the diffusion methods take targets on vectors (N, d); this target's "
            f"event_shape is {shape} (use method='tempered' or an MCMC method)"
        )
    std, mean = reference_tensors(s.reference_std, s.reference_mean, (s.target.dim,), "sample")
    to = {"device": s.device, "dtype": s.dtype}
    return ScaledTarget(s.target, mean.to(**to), std.to(**to))


def run_diffusion(settings: RunSettings, options: DiffusionOptions, *, weighted: bool) -> SMCResult:
    """Runner behind ``sample(method="diffusion" | "rdmc" | "ensemble")`` (module docstring):
    ``weighted`` for ``"diffusion"``; ``options.score`` picks the estimator (``"rdmc"`` or
    ``"follmer"``). ``log_z`` is NaN for the unweighted baselines."""
    s, o = settings, options
    scaled = scaled_target(s)
    inner = child_generator(s.generator, s.device)
    counter = CountingTarget(scaled)
    model = score_estimator(o, counter, inner, weighted)
    fk = path_model(o, model, scaled, weighted, s)
    run = run_smc(
        EstimatorChecks(fk),
        s.n_particles,
        n_groups=s.n_groups,
        resampling=s.resampling,
        policy=policy_from_threshold(min(s.ess_threshold, 0.5)) if weighted else Never(),
        generator=s.generator,
        check_every=s.check_every,
        progress=s.progress,
        collectors=degeneracy_collectors(),
        checkpoint=s.checkpoint,
        start=s.start,
        stateful={"score_estimator": model, "target_counter": counter},  # for checkpoints
    )
    y = run.state["x"]
    n_moves = o.final_moves if o.final_moves is not None else (10 if weighted else 0)
    if n_moves:  # adapted MCMC moves invariant for the target; weights are unchanged
        h0 = o.final_step_size or 0.1 * scaled.dim ** (-1 / 3)
        moves = mcmc_corrector(o.final_kernel, lambda k, z: counter.log_prob(z), n_moves, h0)
        y = moves(run.completed_steps, {"x": y}, s.generator)[0]["x"]  # k: errors name it
    run.state = {"x": scaled.to_x(y)}
    if not weighted:
        run.log_z = torch.full_like(run.log_z, math.nan)
    info = {
        "score": o.score,
        "n_steps": o.n_steps if fk.times is not None else len(fk.grid) - 1,
        "grid": list(fk.times if fk.times is not None else fk.grid),
        "n_mc": o.n_mc,
        "n_target_evals": counter.n_evals,
        "n_grad_evals": counter.n_grads,
        "n_resampled": int(run.trace["resampled"].sum()),
    }
    return SMCResult.from_run(run, grouped=s.grouped, info=info)


def path_model(
    options: DiffusionOptions, model: Any, scaled: ScaledTarget, weighted: bool, s: RunSettings
) -> FeynmanKacModel:
    """The FK model of the run: the path-corrected (``weighted``) or plain reverse diffusion on
    ``options.grid``, or on the adaptive grid (:mod:`smcdiff.energy.time_grid_adaptive`)."""
    o = options
    if o.grid == "adaptive":
        if not weighted:
            raise SMCDiffError(
                "sample: grid='adaptive' chooses times from the path weights: only "
                "method='diffusion' has them (use a fixed grid for 'rdmc' / 'ensemble')"
            )
        proc = model.process
        return AdaptiveTimeFK(
            model, scaled.log_prob, max_steps=o.n_steps, options=o.adaptive_grid(),
            t_max=proc.t_max if o.t_max is None else o.t_max,
            t_min=proc.t_min if o.t_min is None else o.t_min, device=s.device, dtype=s.dtype,
        )  # fmt: skip
    times = time_grid(model.process, o.n_steps, o.grid, t_min=o.t_min, t_max=o.t_max).tolist()
    return build_diffusion_fk(
        model,
        times,
        weighted=weighted,
        path_correction=weighted,
        sampler="ancestral_upper" if weighted else "ancestral",
        end_log_prob=scaled.log_prob if weighted else None,
        device=s.device,
        dtype=s.dtype,
    )


def score_estimator(
    options: DiffusionOptions, target: Target, generator: torch.Generator, weighted: bool
) -> Any:
    r"""The training-free score model of ``options.score`` on the scaled ``target``: rdMC
    importance sampling (with one fixed common noise per run when ``weighted``, so its
    :math:`\hat p_t` is a smooth function of the particles), the MALA-refined mixture
    (``"refined"``) or the Föllmer drift. Its own finite checks are off: :class:`EstimatorChecks`
    reports non-finite estimates through the engine, with the step."""
    o = options
    if o.score == "refined":
        return RDMCRefinedScore(
            target, VP(), o.n_mc, n_chains=o.n_chains, n_chain_steps=o.n_chain_steps,
            n_ascent=o.n_ascent,
            estimator=o.estimator, generator=generator, chunk_size=o.chunk_size,
            reference_std=1.0, check_finite=False,
        )  # fmt: skip
    if o.score == "follmer":
        return FollmerDrift(
            target, o.n_mc, estimator="stein" if o.estimator == "tweedie" else o.estimator,
            antithetic=o.antithetic, generator=generator, chunk_size=o.chunk_size,
            check_finite=False,
        )  # fmt: skip
    return RDMCImportanceScore(
        target, VP(), o.n_mc, estimator=o.estimator, antithetic=o.antithetic,
        generator=generator, chunk_size=o.chunk_size, reference_std=1.0,
        common_noise="fixed" if weighted else False, check_finite=False,
    )  # fmt: skip
