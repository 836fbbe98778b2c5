r"""SMC along a diffusion path for an energy-defined target, with training-free scores.

Work in the scaled coordinates :math:`y = (x - \mu)/\sigma_0` (reference mean and scale), where the
target :math:`\tilde\pi_y(y) = \tilde\pi(\mu + \sigma_0 y)\,\sigma_0^d` has the same normaliser
:math:`Z` and roughly unit scale, and run the reverse VP diffusion from :math:`\mathcal N(0, I)`.

``method="diffusion"`` (weighted, consistent, with :math:`\log\hat Z`): the estimator (rdMC
importance sampling by default, :class:`~smcdiff.scores.RDMCScore`) gives both the score that
drives the proposal and an estimate :math:`\hat p_t(y)` of :math:`Z p_t(y)`, unbiased for it. The
path-corrected FK model of :mod:`smcdiff.steering.fk` weights each move by

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

from smcdiff.engine.smc import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.processes.grids import time_grid
from smcdiff.processes.schedules import VP
from smcdiff.resampling.policies import Never, policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.scores.ensemble import FollmerDrift
from smcdiff.scores.rdmc import RDMCScore
from smcdiff.steering.fk import DiffusionFK
from smcdiff.target import CountingTarget, Target

__all__ = ["ScaledTarget", "run_diffusion"]


class ScaledTarget:
    r""":math:`\tilde\pi_y(y) = \tilde\pi(\mu + \sigma_0 y)\,\prod_i\sigma_{0,i}`: same normaliser,
    unit scale. ``to_x(y)`` maps back."""

    def __init__(self, target: Target, mean: torch.Tensor, std: torch.Tensor):
        self.target, self.dim = target, int(target.dim)
        self.mean, self.std = mean, std
        self.log_det = (
            float(torch.log(std).sum()) if std.dim() == 1 else self.dim * math.log(float(std))
        )

    def to_x(self, y: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * y

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        return self.target.log_prob(self.to_x(y)) + self.log_det


def run_diffusion(c: dict, opts: dict, *, weighted: bool, score: str) -> SMCResult:
    """Runner behind ``sample(method="diffusion" | "rdmc" | "ensemble")`` (module docstring).

    ``opts``: ``n_steps`` (100), ``n_mc`` inner samples per particle and step (64), ``estimator``
    (``"tweedie"`` or ``"grad"``), ``antithetic`` (True), ``grid`` (``"log_snr"``), ``t_min``,
    ``t_max``, ``final_moves`` (10, weighted only), ``final_kernel`` (``"mala"``),
    ``final_step_size``, ``chunk_size``.
    """
    opts = dict(opts)
    n_steps = int(opts.pop("n_steps", 100))
    n_mc = int(opts.pop("n_mc", 64))
    estimator = opts.pop("estimator", "tweedie")
    antithetic = bool(opts.pop("antithetic", True))
    grid = opts.pop("grid", "log_snr")
    t_min, t_max = opts.pop("t_min", None), opts.pop("t_max", None)
    final_moves = int(opts.pop("final_moves", 10 if weighted else 0))
    final_kernel = opts.pop("final_kernel", "mala")
    final_step = opts.pop("final_step_size", None)
    chunk = opts.pop("chunk_size", None)
    if opts:
        raise SMCDiffError(f"sample: unknown options for this method: {sorted(opts)}")
    device, dtype, gen = c["device"], c["dtype"], c["generator"]
    d = c["target"].dim
    std = torch.as_tensor(c["reference_std"], dtype=dtype, device=device)
    mean = c["reference_mean"]
    mean = torch.zeros(d, dtype=dtype, device=device) if mean is None else torch.as_tensor(mean)
    scaled = ScaledTarget(c["target"], mean.to(device=device, dtype=dtype), std)
    inner = torch.Generator(device=device).manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=gen, device=device))
    )
    counter = CountingTarget(scaled)
    if score == "follmer":
        model: Any = FollmerDrift(
            counter, n_mc, estimator="stein" if estimator == "tweedie" else estimator,
            antithetic=antithetic, generator=inner, chunk_size=chunk,
        )  # fmt: skip
    else:
        model = RDMCScore(
            counter, VP(), n_mc, "is", estimator=estimator, antithetic=antithetic,
            generator=inner, chunk_size=chunk, reference_std=1.0,
            common_noise="fixed" if weighted else False,
        )  # fmt: skip

    times = time_grid(model.process, n_steps, grid, t_min=t_min, t_max=t_max).tolist()
    fk = DiffusionFK(
        model,
        times,
        weighted=weighted,
        path_correction=weighted,
        sampler="ancestral_upper" if weighted else "ancestral",
        end_log_prob=scaled.log_prob if weighted else None,
        device=device,
        dtype=dtype,
    )
    run = run_smc(
        fk,
        c["n_particles"],
        n_groups=c["n_groups"],
        resampling=c["resampling"],
        policy=policy_from_threshold(min(c["ess_threshold"], 0.5)) if weighted else Never(),
        generator=gen,
        check_every=c["check_every"],
        progress=c["progress"],
    )
    y = run.state["x"]
    if final_moves:  # adapted MCMC moves invariant for the target; weights are unchanged
        h0 = final_step or 0.1 * d ** (-1 / 3)
        moves = mcmc_corrector(final_kernel, lambda k, z: counter.log_prob(z), final_moves, h0)
        y = moves(0, {"x": y}, gen)[0]["x"]
    run.state = {"x": scaled.to_x(y)}
    if not weighted:
        run.log_z = torch.full_like(run.log_z, math.nan)
    info = {
        "score": score,
        "n_steps": n_steps,
        "n_mc": n_mc,
        "n_target_evals": counter.n_evals,
        "n_grad_evals": counter.n_grads,
        "n_resampled": int(run.trace["resampled"].sum()),
    }
    return SMCResult.from_run(run, grouped=c["grouped"], info=info)
