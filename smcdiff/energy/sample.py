r"""``sample()``: the front door for energy-defined targets :math:`\pi(x) \propto e^{-U(x)}`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_n_particles
from smcdiff.energy.diffusion import run_diffusion
from smcdiff.energy.tempered import TemperedSMC
from smcdiff.engine.smc import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.runner import KERNELS, run_chain
from smcdiff.resampling import get_scheme
from smcdiff.resampling.policies import policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.target import CountingTarget, Target

__all__ = ["SAMPLE_METHODS", "sample"]


def sample(
    target: Target,
    *,
    method: str = "tempered",
    n_particles: int = 1000,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    n_runs: int | None = None,
    reference_std: float | torch.Tensor | None = None,
    reference_mean: torch.Tensor | None = None,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 1.0,
    check_every: int | None = None,
    progress: bool = False,
    **options: Any,
) -> SMCResult:
    r"""Weighted particles for :math:`\pi \propto e^{\text{target.log\_prob}}` and its log normaliser.

    ``target``: a :class:`~smcdiff.Target` (``dim``, batched ``log_prob`` ``(N, d) -> (N,)``).
    Every method starts from the reference :math:`\mathcal N(\mu, \sigma_0^2 I)` with
    :math:`\sigma_0` = ``reference_std`` (default: ``target.reference_std`` if the target has one,
    else 1) and :math:`\mu` = ``reference_mean`` (default 0).

    Methods (``options`` go to the method):

    * ``"tempered"``: adaptive tempered SMC (:class:`~smcdiff.energy.tempered.TemperedSMC`:
      ``kernel="hmc"``, ``n_moves=5``, ``target_ess=0.5``, ``step_size``, ``target_accept``,
      ``max_steps``, ``cuda_graph`` (default on CUDA: each step's MCMC moves run as one cached
      CUDA graph, 5-14x faster on an H100), kernel options such as ``n_leapfrog``); resampling when the ESS falls below
      ``ess_threshold * N`` (default 1: every step);
    * ``"diffusion"``: SMC along a VP diffusion path in the coordinates scaled by the reference,
      proposals from estimated scores (``score="rdmc"``: rdMC importance sampling, or
      ``"follmer"``), path weights from the estimators' :math:`\hat p_t` that telescope to the
      target, so it is consistent with an unbiased :math:`\hat Z` (``n_steps=100``, ``n_mc=64``
      inner samples, ``final_moves=10`` MALA moves; see :mod:`smcdiff.energy.diffusion`);
    * ``"rdmc"``, ``"ensemble"``: the unweighted reverse SDE with the rdMC score or the Föllmer
      drift (biased baselines, ``log_z`` NaN);
    * ``"mala"``, ``"hmc"``, ``"ula"``, ``"underdamped"``, ``"pcnl"``: MCMC only, N independent
      chains from the reference (``n_steps=1000``, ``n_warmup``, ``step_size``, kernel options);
      the particles are the chains' last states, equally weighted, and ``log_z`` is NaN.

    ``n_runs`` runs independent systems at once (results get a leading run dimension).
    ``result.info`` holds the settings, ``n_target_evals``, ``n_grad_evals`` and ``wall_time_s``.
    """
    if method not in SAMPLE_METHODS:
        raise SMCDiffError(
            f"sample: method must be one of {sorted(SAMPLE_METHODS)}, got {method!r}"
        )
    if not isinstance(target, Target):
        raise SMCDiffError(
            "sample: target must have .dim and .log_prob(x) (see smcdiff.Target / smcdiff.as_target)"
        )
    check_n_particles(n_particles)
    if n_runs is not None and (
        isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 1
    ):
        raise SMCDiffError(f"sample: n_runs must be a positive int or None, got {n_runs!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise SMCDiffError(f"sample: ess_threshold must be in [0, 1], got {ess_threshold}")
    get_scheme(resampling)
    device = torch.device(device if device is not None else _target_device(target))
    dtype = dtype or getattr(target, "dtype", None) or torch.float32
    if reference_std is None:
        reference_std = getattr(target, "reference_std", 1.0)
    gen = torch.Generator(device=device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    gen.manual_seed(seed)
    common = {
        "target": target,
        "n_particles": n_particles,
        "n_groups": n_runs or 1,
        "grouped": n_runs is not None,
        "generator": gen,
        "device": device,
        "dtype": dtype,
        "reference_std": reference_std,
        "reference_mean": reference_mean,
        "resampling": resampling,
        "ess_threshold": ess_threshold,
        "check_every": check_every,
        "progress": progress,
    }
    t0 = time.perf_counter()
    result = SAMPLE_METHODS[method](common, options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    info = {
        "method": method,
        "seed": seed,
        "device": str(device),
        "n_particles": n_particles,
        **result.info,
        "wall_time_s": time.perf_counter() - t0,
    }
    result.info = info
    result.target = target
    return result


def _target_device(target: Target) -> torch.device:
    dev = getattr(target, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def _tempered(c: dict, opts: dict) -> SMCResult:
    fk = TemperedSMC(
        c["target"],
        reference_std=c["reference_std"],
        reference_mean=c["reference_mean"],
        device=c["device"],
        dtype=c["dtype"],
        **opts,
    )
    run = run_smc(
        fk,
        c["n_particles"],
        n_groups=c["n_groups"],
        resampling=c["resampling"],
        policy=policy_from_threshold(c["ess_threshold"]),
        generator=c["generator"],
        check_every=c["check_every"],
        progress=c["progress"],
    )
    info = {
        "kernel": fk.kernel_name,
        "n_moves": fk.n_moves,
        "target_ess": fk.target_ess,
        "n_temperatures": run.completed_steps,
        "n_target_evals": int(run.trace["nfe"].sum()),
        "n_grad_evals": int(run.trace["n_grad"].sum()),
        "n_resampled": int(run.trace["resampled"].sum()),
    }
    return SMCResult.from_run(run, grouped=c["grouped"], info=info)


def _mcmc(kernel: str) -> Callable[[dict, dict], SMCResult]:
    def run(c: dict, opts: dict) -> SMCResult:
        G, N, d = c["n_groups"], c["n_particles"], c["target"].dim
        std = torch.as_tensor(c["reference_std"], dtype=c["dtype"], device=c["device"])
        mean = c["reference_mean"]
        z = torch.randn(G * N, d, generator=c["generator"], device=c["device"], dtype=c["dtype"])
        x0 = z * std + (0.0 if mean is None else torch.as_tensor(mean).to(z))
        n_steps = int(opts.pop("n_steps", 1000))
        counted = CountingTarget(c["target"])
        opts.setdefault("step_size", 0.1 * float(std.min()) ** 2)
        chain = run_chain(kernel, counted.log_prob, x0, n_steps, generator=c["generator"], **opts)
        x = chain.samples[-1].reshape(G, N, d)
        lw = torch.full((G, N), -math.log(N), dtype=torch.float64, device=x.device)
        lz = torch.full((G,), math.nan, dtype=torch.float64)
        trace = {"accept_rate": chain.accept_rate.reshape(G, N).mean(-1).cpu()}
        info = {
            "kernel": kernel,
            "n_steps": n_steps,
            "n_target_evals": counted.n_evals,
            "n_grad_evals": counted.n_grads,
            "n_nonfinite": chain.n_nonfinite,
        }
        if not c["grouped"]:
            x, lw, lz, trace = x[0], lw[0], lz[0], {k: v[0] for k, v in trace.items()}
        return SMCResult(x, lw, lz, trace, info)

    return run


SAMPLE_METHODS: dict[str, Callable[[dict, dict], SMCResult]] = {
    "tempered": _tempered,
    "diffusion": lambda c, o: run_diffusion(c, o, weighted=True, score=o.pop("score", "rdmc")),
    "rdmc": lambda c, o: run_diffusion(c, o, weighted=False, score="rdmc"),
    "ensemble": lambda c, o: run_diffusion(c, o, weighted=False, score="follmer"),
    **{name: _mcmc(name) for name in KERNELS},
}
"""Method name -> runner ``(common settings, method options) -> SMCResult`` (grouped)."""
