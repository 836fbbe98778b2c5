"""``steer()``: the front door for tilting a diffusion prior at inference time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_int, check_n_particles
from smcdiff.engine.smc import Corrector, run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.processes.grids import time_grid
from smcdiff.resampling import get_scheme
from smcdiff.resampling.policies import Never, policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.samplers.kernels import SAMPLERS
from smcdiff.scores.base import ScoreModel, has_log_density
from smcdiff.scores.combine import GeometricScore
from smcdiff.scores.combine import anneal as anneal_model
from smcdiff.steering.fk import DiffusionFK, TiltTerm
from smcdiff.steering.fkc import FKCModel
from smcdiff.steering.potentials import POTENTIALS

__all__ = ["FKC_METHODS", "INITS", "METHODS", "steer"]

METHODS = ("fk", "tds", "fkc", "driftlite-vcg", "driftlite-ecg", "guidance", "none")
FKC_METHODS = {"fkc": None, "driftlite-vcg": "vcg", "driftlite-ecg": "ecg"}
INITS = ("prior", "pcnl", "mala")


def steer(
    model: ScoreModel,
    *,
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    beta: float = 1.0,
    method: str = "fk",
    anneal: float | None = None,
    n_particles: int = 1000,
    n_steps: int = 100,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    seed: int | None = None,
    device: str | torch.device | None = None,
    potential: str = "difference",
    proposal: str = "base",
    guidance_scale: float = 1.0,
    path_correction: bool | str = "auto",
    sampler: str = "auto",
    eta: float = 1.0,
    tilt_schedule: str | None = None,
    grid: str = "log_snr",
    t_min: float | None = None,
    t_max: float | None = None,
    n_runs: int | None = None,
    corrector: Corrector | None = None,
    init: str = "prior",
    init_moves: int = 20,
    init_step_size: float | None = None,
    beta_schedule: str | Callable[[float], float] = "linear",
    noise: str | float = "target",
    divergence: str = "auto",
    n_probes: int = 1,
    basis: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    check_every: int | None = None,
    progress: bool = False,
) -> SMCResult:
    r"""Sample :math:`\pi(x) \propto p(x)\, e^{\beta r(x)}\, p(y \mid x)` from a diffusion prior ``model``.

    ``reward`` and ``log_likelihood`` map ``x0`` of shape ``(N, d)`` to ``(N,)`` (either or both;
    they need not be differentiable unless a guided proposal or guidance uses their gradient);
    ``-inf`` is a legal value (a hard constraint), NaN is an error.

    Methods:

    * ``"fk"``: Feynman–Kac steering: potentials (``potential`` in ``difference | max | sum |
      final``) on the intermediate tilt :math:`\phi(\hat x_0(x_t))`, resampling when the ESS falls
      below ``ess_threshold * N`` (0: never, 1: every step); ``proposal="guided"`` shifts each step
      by the gradient of the intermediate tilt and corrects the weights exactly;
    * ``"tds"``: the twisted diffusion sampler (Wu et al. 2023): FK steering with the twisted
      proposal (``proposal="guided"``) and ``potential="difference"``: twist :math:`\tilde p_k(x) = e^{\phi(\hat x_0(x_k))}`, proposal
      mean shifted by :math:`c_s \nabla\log\tilde p_k`, weight :math:`p(x_{k-1}\mid x_k)\,\tilde
      p_{k-1}(x_{k-1}) / (\tilde p_k(x_k)\, q(x_{k-1}\mid x_k))` and the exact final correction
      :math:`e^{\phi(x_0)}/\tilde p_0(x_0)`; needs a differentiable reward / likelihood. The
      published twist is ``tilt_schedule="constant"``; the default ``"snr"`` fades it at high
      noise, which keeps TDS from collapsing onto one mode of a multimodal target
      (docs/steering-results.md);
    * ``"fkc"``: Feynman–Kac correctors (Skreta et al. 2025) for a geometric target
      :math:`\prod_i p_i^{w_i}\,e^{\beta_t r}` — ``anneal=gamma`` (:math:`p^\gamma`), a
      ``model`` built by :func:`smcdiff.product` or :func:`smcdiff.cfg`, and/or a differentiable
      ``reward`` applied at :math:`x_t` with the schedule ``beta_schedule`` (``"linear"``,
      ``"snr"``, ``"constant"`` or a callable :math:`t \mapsto \beta_t`, reaching ``beta`` at
      ``t_min``); the SDE drift uses the target score, ``noise`` (``"target"``, ``"tempered"`` or
      :math:`\kappa` with :math:`h^2 = \kappa g^2`) sets the drift/weight split, and each step is
      weighted by the continuous-time FKC potential (trapezoid rule); ``divergence``
      (``"auto" | "exact" | "hutchinson"``, ``n_probes``) for the Laplacian of the reward;
    * ``"driftlite-vcg"`` / ``"driftlite-ecg"``: FKC plus DriftLite's control drift over
      ``basis`` (default: the target score and the reward gradient), refitted every step from the
      weighted particles to minimise the variance (VCG) or the energy (ECG) of the weights;
      ``ess_threshold=0`` gives the variants without resampling. See docs/fkc-driftlite.md;
    * ``"guidance"``: the same gradient shift without weights (DPS-style baseline, biased);
    * ``"none"``: the untilted sampler.

    ``path_correction`` (``"auto"``: on when ``model`` has ``log_density``) also weights out the
    discretisation error of the sampler, so that the target is exact for any ``n_steps``.
    ``tilt_schedule`` (default ``"snr"``): ``"snr"`` scales the intermediate tilt by :math:`\alpha_t^2/(\alpha_t^2+\sigma_t^2)`
    (same final target, lower variance when :math:`\phi(\hat x_0)` is overconfident at high noise);
    FK steering as published is ``tilt_schedule="constant", grid="uniform", path_correction=False``.
    ``grid``: ``"log_snr"`` (default), ``"uniform"`` or ``"edm"`` (see :func:`smcdiff.time_grid`);
    ``sampler``: ``"auto"`` (``"ancestral_upper"`` with path correction, else ``"ancestral"``),
    ``"ancestral"``, ``"ancestral_upper"``, ``"em"``, ``"ddim"`` (with ``eta``) or ``"ode"``.
    ``init``: ``"prior"`` (particles from :math:`\mathcal N(0, \sigma_{ref}^2 I)`) or ``"pcnl"`` /
    ``"mala"``: after step 0's weighting and resampling, ``init_moves`` MCMC moves (adapted step,
    initial ``init_step_size``) invariant for the step-0 target :math:`p_{t_{max}}(x)\,
    e^{\lambda_0\phi(\hat x_0(x))}` (reference Gaussian in place of :math:`p_{t_{max}}` without
    path correction), so the particles start from the tilted prior; needs a differentiable tilt.
    ``p`` is the prior at ``t_min`` (the end of the grid). ``n_runs`` runs independent particle
    systems at once (results get a leading run dimension).

    Returns an :class:`SMCResult` whose ``log_z`` estimates :math:`\log\mathbb E_p[e^{\beta r}\, p(y\mid x)]`.
    """
    if tilt_schedule is None:
        tilt_schedule = "snr"
    if init not in INITS:
        raise SMCDiffError(f"steer: init must be one of {INITS}, got {init!r}")
    if method not in METHODS:
        raise SMCDiffError(f"steer: method must be one of {METHODS}, got {method!r}")
    check_n_particles(n_particles)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise SMCDiffError(f"steer: n_steps must be a positive int, got {n_steps!r}")
    if n_runs is not None and (not isinstance(n_runs, int) or n_runs < 1):
        raise SMCDiffError(f"steer: n_runs must be a positive int or None, got {n_runs!r}")
    if proposal not in ("base", "guided"):
        raise SMCDiffError(f"steer: proposal must be 'base' or 'guided', got {proposal!r}")
    if potential not in POTENTIALS:
        raise SMCDiffError(f"steer: potential must be one of {POTENTIALS}, got {potential!r}")
    if sampler != "auto" and sampler not in SAMPLERS:
        raise SMCDiffError(f"steer: sampler must be 'auto' or one of {SAMPLERS}, got {sampler!r}")
    if not (isinstance(beta, int | float) and math.isfinite(beta)):
        raise SMCDiffError(f"steer: beta must be a finite number, got {beta!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise SMCDiffError(f"steer: ess_threshold must be in [0, 1], got {ess_threshold}")
    for name, fn in (("reward", reward), ("log_likelihood", log_likelihood)):
        if fn is not None and not callable(fn):
            raise SMCDiffError(f"steer: {name} must be a callable x0 (N, d) -> (N,)")
    if method in FKC_METHODS:
        return _steer_fkc(
            model, reward=reward, log_likelihood=log_likelihood, beta=beta, method=method,
            anneal=anneal, n_particles=n_particles, n_steps=n_steps, resampling=resampling,
            ess_threshold=ess_threshold, seed=seed, device=device, grid=grid, t_min=t_min,
            t_max=t_max, n_runs=n_runs, corrector=corrector, dtype=dtype,
            check_every=check_every, progress=progress, beta_schedule=beta_schedule,
            noise=noise, divergence=divergence, n_probes=n_probes, basis=basis,
        )  # fmt: skip
    if anneal is not None or isinstance(model, GeometricScore):
        raise SMCDiffError(
            f"steer: annealed, product and CFG targets need method='fkc' or 'driftlite-vcg'/"
            f"'driftlite-ecg' (their scores are not the marginals of one diffusion), got {method!r}"
        )
    tilt = []
    if reward is not None:
        tilt.append(TiltTerm("reward", reward, float(beta)))
    if log_likelihood is not None:
        tilt.append(TiltTerm("log_likelihood", log_likelihood, 1.0))
    if method != "none" and not tilt:
        raise SMCDiffError(f"steer: method={method!r} needs a reward or a log_likelihood")
    if not isinstance(model, ScoreModel):
        raise SMCDiffError(
            "steer: model must have .process, .dim and .score(x, t) (see smcdiff.ScoreModel)"
        )
    get_scheme(resampling)  # fail early on an unknown scheme name
    if corrector is not None and potential in ("max", "sum"):
        raise SMCDiffError(
            f"steer: potential={potential!r} depends on the whole path; a corrector needs a "
            "per-state potential ('difference' or 'final')"
        )

    model_device = getattr(model, "device", None)
    device = torch.device(device if device is not None else (model_device or "cpu"))
    if model_device is not None and torch.device(model_device).type != device.type:
        raise SMCDiffError(
            f"steer: the model lives on {model_device} but device={str(device)!r}; "
            "move the model (e.g. exact_score(dist.to(device), process)) or pass its device"
        )
    dtype = dtype or getattr(model, "dtype", None) or torch.float32
    if path_correction == "auto":
        path_correction = weighted_method(method) and has_log_density(model)
    if method == "tds":
        if proposal != "base" or potential != "difference":
            raise SMCDiffError(
                "steer: method='tds' fixes proposal='guided' and potential='difference'; "
                "use method='fk' to combine other settings"
            )
        proposal = "guided"
    weighted = weighted_method(method)
    guided = method == "guidance" or (weighted and proposal == "guided")
    if sampler == "auto":  # path weights need a proposal at least as wide as the reverse kernel
        sampler = "ancestral_upper" if path_correction else "ancestral"

    times = time_grid(model.process, n_steps, grid, t_min=t_min, t_max=t_max).tolist()
    fk = DiffusionFK(
        model,
        times,
        tilt=tilt if method != "none" else (),
        weighted=weighted,
        potential=potential,
        guided=guided,
        guidance_scale=guidance_scale,
        path_correction=bool(path_correction),
        sampler=sampler,
        eta=eta,
        tilt_schedule=tilt_schedule,
        device=device,
        dtype=dtype,
    )
    gen, seed = _generator(device, seed)
    policy = policy_from_threshold(ess_threshold) if weighted else Never()
    init_corrector = None
    if init != "prior":
        if method == "none" or not tilt:
            raise SMCDiffError(
                f"steer: init={init!r} needs a reward or a log_likelihood to tilt by"
            )
        check_int("init_moves", init_moves, 1)
        ref_var = float(model.process.prior_std) ** 2
        h0 = init_step_size or (0.5 if init == "pcnl" else 0.1 * ref_var * model.dim ** (-1 / 3))
        kwargs = {"prior_var": ref_var} if init == "pcnl" else {}
        init_corrector = mcmc_corrector(init, fk.log_target, init_moves, h0, **kwargs)

    settings = {
        "method": method,
        "n_steps": n_steps,
        "potential": potential,
        "tilt_schedule": tilt_schedule,
        "proposal": "guided" if guided else "base",
        "init": init,
        "path_correction": bool(path_correction),
        "sampler": sampler,
        "grid": grid,
        "ess_threshold": ess_threshold,
        "beta": beta,
    }
    return _run(
        fk, n_particles, n_runs, resampling, policy, gen, seed, device, check_every, progress,
        settings, corrector=corrector, init_corrector=init_corrector,
    )  # fmt: skip


def weighted_method(method: str) -> bool:
    """Methods whose particles carry importance weights (exact in the large-N limit)."""
    return method in ("fk", "tds")


def _generator(device: torch.device, seed: int | None) -> tuple[torch.Generator, int]:
    gen = torch.Generator(device=device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    gen.manual_seed(seed)
    return gen, seed


def _steer_fkc(model, *, reward, log_likelihood, beta, method, anneal, n_particles, n_steps,
               resampling, ess_threshold, seed, device, grid, t_min, t_max, n_runs, corrector,
               dtype, check_every, progress, beta_schedule, noise, divergence, n_probes,
               basis) -> SMCResult:  # fmt: skip
    """``steer`` for the FKC / DriftLite methods (see :func:`steer`)."""
    if log_likelihood is not None:
        if reward is not None:
            raise SMCDiffError(
                f"steer: method={method!r} takes one differentiable reward; fold the likelihood "
                "into it (reward = lambda x: r(x) + log_lik(x) / beta)"
            )
        reward, beta = log_likelihood, 1.0
    if anneal is not None:
        if not (isinstance(anneal, int | float) and math.isfinite(anneal) and anneal > 0):
            raise SMCDiffError(f"steer: anneal must be a positive number, got {anneal!r}")
        model = anneal_model(model, float(anneal))
    if reward is None and not isinstance(model, GeometricScore):
        raise SMCDiffError(
            f"steer: method={method!r} needs anneal=, a product/cfg model or a reward"
        )
    if corrector is not None:
        raise SMCDiffError(f"steer: method={method!r} does not take a corrector yet")
    model_device = getattr(model, "device", None)
    device = torch.device(device if device is not None else (model_device or "cpu"))
    dtype = dtype or getattr(model, "dtype", None) or torch.float32
    times = time_grid(model.process, n_steps, grid, t_min=t_min, t_max=t_max).tolist()
    fk = FKCModel(
        model, times, reward=reward, beta=beta if reward is not None else None,
        beta_schedule=beta_schedule, noise=noise, divergence=divergence, n_probes=n_probes,
        control=FKC_METHODS[method], basis=basis, device=device, dtype=dtype,
    )  # fmt: skip
    gen, seed = _generator(device, seed)
    settings = {
        "method": method,
        "n_steps": n_steps,
        "anneal": anneal,
        "beta": beta if reward is not None else None,
        "beta_schedule": beta_schedule if isinstance(beta_schedule, str) else "custom",
        "noise": noise,
        "grid": grid,
        "ess_threshold": ess_threshold,
    }
    policy = policy_from_threshold(ess_threshold)
    return _run(
        fk, n_particles, n_runs, resampling, policy, gen, seed, device, check_every, progress,
        settings,
    )  # fmt: skip


def _run(fk, n_particles, n_runs, resampling, policy, gen, seed, device, check_every, progress,
         settings, corrector=None, init_corrector=None) -> SMCResult:  # fmt: skip
    """Run an FK model with the engine and wrap it as an :class:`SMCResult` whose ``info`` holds
    ``settings`` plus the seed, device, counts and wall time."""
    t0 = time.perf_counter()
    run = run_smc(
        fk, n_particles, n_groups=n_runs or 1, resampling=resampling, policy=policy,
        corrector=corrector, init_corrector=init_corrector, generator=gen,
        check_every=check_every, progress=progress,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    name = resampling if isinstance(resampling, str) else getattr(resampling, "__name__", "custom")
    info = {
        **settings,
        "seed": seed,
        "resampling": name,
        "device": str(device),
        "nfe": int(run.trace["nfe"].sum()),
        "n_grad": int(run.trace["n_grad"].sum()),
        "n_resampled": int(run.trace["resampled"].sum()),
        "wall_time_s": time.perf_counter() - t0,
    }
    return SMCResult.from_run(run, grouped=n_runs is not None, info=info)
