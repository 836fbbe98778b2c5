"""``steer()``: the front door for tilting a diffusion prior at inference time.

``steer`` checks the options common to every method (:class:`~smcdiff.steering.registry.
CommonConfig`), looks the method up in the registry (:mod:`smcdiff.steering.registry`; the
built-in methods live in :mod:`smcdiff.steering.methods`), builds its config from the remaining
keywords (an option the method does not take is an error), lets the method's builder make a
Feynman–Kac model and runs it with :func:`smcdiff.run_smc`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

import smcdiff.steering.methods  # noqa: F401  (registers the built-in methods)
from smcdiff.distributed.front import distributed_runner
from smcdiff.engine.checkpoint import (
    Checkpoint,
    Checkpointer,
    RunCall,
    as_checkpointer,
    register_call,
)
from smcdiff.engine.collectors import degeneracy_collectors
from smcdiff.engine.smc import run_smc
from smcdiff.resampling.policies import ResamplingPolicy
from smcdiff.result import SMCResult
from smcdiff.scores.base import ScoreModel
from smcdiff.seeding import make_generator
from smcdiff.steering.registry import (
    DEFAULT_ESS_THRESHOLD,
    CommonConfig,
    MethodPlan,
    common_options,
    get_method,
)

__all__ = ["run_plan", "steer", "steer_call"]


def steer(
    model: ScoreModel,
    *,
    method: str = "fk",
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    beta: float | None = None,
    n_particles: int = 1000,
    n_steps: int = 100,
    grid: str | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    resampling: str | Callable | None = None,
    ess_threshold: float | None = None,
    policy: ResamplingPolicy | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    n_runs: int | None = None,
    check_every: int | None = None,
    progress: bool | Callable | None = None,
    checkpoint: str | os.PathLike | Checkpointer | None = None,
    checkpoint_every: int | None = None,
    distributed: bool = False,
    **options: Any,
) -> SMCResult:
    r"""Sample :math:`\pi(x) \propto p(x)\, e^{\beta r(x)}\, p(y \mid x)` from a diffusion prior ``model``.

    ``reward`` and ``log_likelihood`` map ``x0`` of shape ``(N, *event_shape)`` to ``(N,)`` (either or both;
    they need not be differentiable unless a guided proposal or guidance uses their gradient);
    ``-inf`` is a legal value (a hard constraint), NaN is an error. ``beta`` (default 1) scales
    the reward.

    Methods (``method=``; each takes the keywords above plus its own ``**options``, listed by
    its config class; an option the method does not take is an error naming it):

    * ``"fk"`` (:class:`~smcdiff.steering.methods.FKConfig`): Feynman–Kac steering: potentials
      (``potential`` in ``difference | max | sum | final``) on the intermediate tilt
      :math:`\phi(\hat x_0(x_t))`, resampling when the ESS falls below ``ess_threshold * N``
      (0: never, 1: every step); ``proposal="guided"`` shifts each step by the gradient of the
      intermediate tilt (times ``guidance_scale``) and corrects the weights exactly;
    * ``"tds"`` (:class:`~smcdiff.steering.methods.TDSConfig`): the twisted diffusion sampler
      (Wu et al. 2023): FK steering with the twisted proposal (``proposal="guided"``) and
      ``potential="difference"``, both fixed (passing them is an error): twist
      :math:`\tilde p_k(x) = e^{\phi(\hat x_0(x_k))}`, proposal
      mean shifted by :math:`c_s \nabla\log\tilde p_k`, weight :math:`p(x_{k-1}\mid x_k)\,\tilde
      p_{k-1}(x_{k-1}) / (\tilde p_k(x_k)\, q(x_{k-1}\mid x_k))` and the exact final correction
      :math:`e^{\phi(x_0)}/\tilde p_0(x_0)`; needs a differentiable reward / likelihood. The
      published twist is ``tilt_schedule="constant"``; the default ``"snr"`` fades it at high
      noise, which keeps TDS from collapsing onto one mode of a multimodal target
      (docs/steering-results.md);
    * ``"fkc"`` (:class:`~smcdiff.steering.methods.FKCConfig`): Feynman–Kac correctors
      (Skreta et al. 2025) for a geometric target
      :math:`\prod_i p_i^{w_i}\,e^{\beta_t r}` — ``anneal=gamma`` (:math:`p^\gamma`), a
      ``model`` built by :func:`smcdiff.product` or :func:`smcdiff.cfg`, and/or a differentiable
      ``reward`` applied at :math:`x_t` with the schedule ``beta_schedule`` (``"linear"``,
      ``"snr"``, ``"constant"`` or a callable :math:`t \mapsto \beta_t`, reaching ``beta`` at
      ``t_min``); the SDE drift uses the target score, ``noise`` (``"target"``, ``"tempered"`` or
      :math:`\kappa` with :math:`h^2 = \kappa g^2`) sets the drift/weight split, and each step is
      weighted by the continuous-time FKC potential (trapezoid rule); ``divergence``
      (``"auto" | "exact" | "hutchinson"``, ``n_probes``) for the Laplacian of the reward;
    * ``"driftlite-vcg"`` / ``"driftlite-ecg"``
      (:class:`~smcdiff.steering.methods.DriftLiteConfig`): FKC plus DriftLite's control drift
      over ``basis`` (default: the target score and the reward gradient), refitted every step
      from the weighted particles to minimise the variance (VCG) or the energy (ECG) of the
      weights; ``ess_threshold=0`` gives the variants without resampling. See
      docs/fkc-driftlite.md;
    * ``"guidance"`` (:class:`~smcdiff.steering.methods.GuidanceConfig`): the same gradient shift
      without weights (DPS-style baseline, biased);
    * ``"none"`` (:class:`~smcdiff.steering.methods.SamplerConfig`): the untilted sampler;
    * ``"mcgdiff"`` (:class:`~smcdiff.steering.methods.MCGdiffConfig`): MCGdiff (Cardoso et al.
      2024) for a linear-Gaussian ``observation=LinearGaussianObservation(A, y, sigma)`` on a VP
      prior: SMC in the SVD basis of ``A``, exact as N grows (up to the ancestral sampler's
      discretisation), with ``log_z``;
    * ``"ddrm"`` (:class:`~smcdiff.steering.methods.DDRMConfig`): DDRM (Kawar et al. 2022) for
      the same ``observation`` (``eta``, ``eta_b``): an unweighted baseline, not exact.

    ``path_correction`` (fk, tds; ``"auto"``: on when ``model`` has ``log_density``) also
    weights out the discretisation error of the sampler, so that the target is exact for any
    ``n_steps``. ``tilt_schedule`` (default ``"snr"``; fk and tds also take ``"adaptive"``):
    ``"adaptive"`` chooses each step's tilt strength from the particles so that the conditional
    ESS stays above ``tilt_cess`` (default 0.9) of N, capped by ``"snr"``, with ``tilt_moves``
    (default 5) MALA moves after a resampling or a held strength and sub-steps at ``t_min`` (at
    most ``tilt_substeps``, default 100) that raise it to 1 (:mod:`smcdiff.diffusion_fk.adaptive`;
    moves and sub-steps need path correction): right on sharp tilts where the fixed schedules
    collapse, at several times the NFE. A reward or likelihood of ``-inf`` (a hard constraint)
    is a finite penalty :math:`\log(1 - \alpha_t^2/(\alpha_t^2+\sigma_t^2))` before the last
    step, so no intermediate target loses support the final one has, and exact at the end.
    ``"snr"`` scales the intermediate tilt by
    :math:`\alpha_t^2/(\alpha_t^2+\sigma_t^2)` (same final target, lower variance when
    :math:`\phi(\hat x_0)` is overconfident at high noise); FK steering as published is
    ``tilt_schedule="constant", grid="uniform", path_correction=False``.
    ``grid``: ``"log_snr"`` (default), ``"uniform"`` or ``"edm"`` (see :func:`smcdiff.time_grid`);
    ``"scheduler"``, the default for a model from :func:`smcdiff.from_diffusers`: its scheduler's
    own timesteps;
    ``sampler``: ``"auto"`` (``"ancestral_upper"`` with path correction, else ``"ancestral"``),
    ``"ancestral"``, ``"ancestral_upper"``, ``"em"``, ``"ddim"`` (with ``eta``) or ``"ode"``.
    ``init`` (fk, tds): ``"prior"`` (particles from :math:`\mathcal N(0, \sigma_{ref}^2 I)`) or
    ``"pcnl"`` / ``"mala"``: after step 0's weighting and resampling, ``init_moves`` MCMC moves
    (adapted step, initial ``init_step_size``) invariant for the step-0 target
    :math:`p_{t_{max}}(x)\, e^{\lambda_0\phi(\hat x_0(x))}` (reference Gaussian in place of
    :math:`p_{t_{max}}` without path correction), so the particles start from the tilted prior;
    needs a differentiable tilt. ``p`` is the prior at ``t_min`` (the end of the grid).

    Common options: ``n_particles`` per run; ``n_runs`` runs independent particle systems at once
    (results get a leading run dimension); ``resampling``: a scheme name or callable (default
    ``"systematic"``); *when* to resample: ``ess_threshold`` (default 0.5) or a ``policy``
    (:mod:`smcdiff.resampling.policies`, e.g. ``ActiveWindow(0, 0.5, ESSBelow(0.5))`` or
    ``EveryK(5)``), not both. Unweighted methods (``guidance``, ``none``) never resample and
    refuse these three. ``seed`` (Python or NumPy int; ``None`` draws one, reported in
    ``info["seed"]``): same seed and device, same numbers. ``device`` / ``dtype``: default from
    the model, else CPU / float32. ``check_every``: steps between finiteness checks (see
    :func:`smcdiff.run_smc`); ``progress``: ``None`` (a bar when stderr is a terminal),
    ``True`` / ``False`` or a callable ``progress(k, info)``.

    Checkpoints (docs/checkpoint.md): ``checkpoint`` (a path, or a
    :class:`~smcdiff.engine.checkpoint.Checkpointer` for a time-based cadence) writes the run's
    whole state atomically at step 0, every ``checkpoint_every`` steps, at the end and when the
    run stops on an exception or ``KeyboardInterrupt``, with this call's arguments (those that
    pickle); :func:`smcdiff.resume` continues it, bitwise equal to the uninterrupted run on the
    same device type. An exception or ``KeyboardInterrupt`` during the run is re-raised with
    ``err.partial``, the run up to the last step checked finite, as an :class:`SMCResult` (and
    ``err.checkpoint``, the path written, when checkpointing).

    Returns an :class:`SMCResult` whose ``log_z`` estimates
    :math:`\log\mathbb E_p[e^{\beta r}\, p(y\mid x)]` (for FKC / DriftLite: the log normaliser of
    their geometric target); methods without weights (``guidance``, ``none``) have no estimate and
    report ``log_z = NaN``. ``info`` holds the resolved settings, the seed, counts and wall time.
    New methods plug in with :func:`smcdiff.steering.register_method` (docs/adding-a-method.md).

    ``distributed=True`` (docs/distributed.md): one run over the ranks of an initialised
    ``torch.distributed`` group (launched by ``torchrun``), ``n_particles`` split evenly, with
    global normalisation and distributed systematic resampling
    (:func:`smcdiff.distributed.run_smc_distributed`); each rank's result holds its particles
    with globally normalised log-weights and the global ``log_z``; ``result.gather()``.
    """
    args = dict(
        model=model, method=method, reward=reward, log_likelihood=log_likelihood, beta=beta,
        n_particles=n_particles, n_steps=n_steps, grid=grid, t_min=t_min, t_max=t_max,
        resampling=resampling, ess_threshold=ess_threshold, policy=policy, seed=seed,
        device=device, dtype=dtype, n_runs=n_runs, **options,
    )  # fmt: skip
    if distributed:
        args["distributed"] = True
    control = {"check_every": check_every, "progress": progress}
    return steer_call(args, control, as_checkpointer(checkpoint, checkpoint_every, "steer"))


def steer_call(
    args: dict[str, Any],
    control: dict[str, Any],
    saver: Checkpointer | None = None,
    start: Checkpoint | None = None,
) -> SMCResult:
    """:func:`steer` on its arguments ``args`` (all but the run controls ``check_every`` and
    ``progress``, in ``control``), writing checkpoints with ``saver`` (which then stores
    ``args``), continuing ``start`` if given."""
    spec = get_method(args["method"])
    common_names = set(common_options())
    if saver is not None and args["seed"] is None:  # the resumed run must report this seed
        args = {**args, "seed": make_generator(None)[1]}
    common = CommonConfig(**{k: v for k, v in args.items() if k in common_names}, **control)
    config = spec.make_config({k: v for k, v in args.items()
                               if k not in common_names and k != "distributed"})  # fmt: skip
    spec.check_common(common)
    if saver is not None:
        saver.call = RunCall.capture("steer", args, saver.max_argument_bytes)
    plan = spec.builder(common, config)
    return run_plan(plan, common, weighted=spec.weighted, checkpoint=saver, start=start,
                    distributed=bool(args.get("distributed")))  # fmt: skip


register_call("steer", steer_call)


def run_plan(
    plan: MethodPlan,
    common: CommonConfig,
    *,
    weighted: bool = True,
    checkpoint: Checkpointer | None = None,
    start: Checkpoint | None = None,
    distributed: bool = False,
) -> SMCResult:
    """Run a method's plan with the engine and wrap it as an :class:`SMCResult` whose ``info``
    holds the method, grid and resampling settings, ``plan.settings``, the seed, device, counts
    and wall time; ``weighted=False``: ``log_z`` is NaN (no estimate) and nothing is resampled.
    ``checkpoint`` / ``start``: as in :func:`smcdiff.run_smc` (``info["resumed_from_step"]``
    says where a resumed run started)."""
    gen, seed = make_generator(common.seed, common.device)
    t0 = time.perf_counter()
    runner = distributed_runner(common, plan) if distributed else run_smc
    try:
        run = runner(
            plan.model, common.n_particles, n_groups=common.n_runs or 1,
            resampling=common.resampling_scheme, policy=common.resampling_policy(weighted),
            corrector=plan.corrector, init_corrector=plan.init_corrector, generator=gen,
            check_every=common.check_every, progress=common.progress,
            collectors=degeneracy_collectors(), checkpoint=checkpoint, start=start,
        )  # fmt: skip
    except BaseException as err:  # its partial run (if any) becomes an SMCResult
        info = {"method": common.method, **plan.settings, "seed": seed}
        SMCResult.wrap_partial(err, grouped=common.n_runs is not None, info=info,
                               has_log_z=weighted)  # fmt: skip
        raise
    if common.device.type == "cuda":
        torch.cuda.synchronize(common.device)
    scheme = common.resampling_scheme
    info = {
        "method": common.method,
        "n_steps": common.n_steps,
        "grid": common.grid,
        "beta": 1.0 if common.beta is None else common.beta,
        **plan.settings,
        "seed": seed,
        "device": str(common.device),
        "nfe": int(run.trace["nfe"].sum()),
        "n_grad": int(run.trace["n_grad"].sum()),
        "wall_time_s": time.perf_counter() - t0,
    }
    if start is not None:
        info["resumed_from_step"] = start.step
    if weighted:
        info.update(_resampling_info(common, scheme))
    info["n_resampled"] = int(run.trace["resampled"].sum())
    # MCMC moves after the start (a corrector, adaptive tilting) make coalesced lineages harmless
    info["mcmc_moves"] = plan.corrector is not None or info.get("tilt_schedule") == "adaptive"
    result = SMCResult.from_run(run, grouped=common.n_runs is not None, info=info,
                                has_log_z=weighted)  # fmt: skip
    result.diagnose(full=False).warn(stacklevel=4)
    return result


def _resampling_info(common: CommonConfig, scheme: str | Callable) -> dict[str, Any]:
    name = scheme if isinstance(scheme, str) else getattr(scheme, "__name__", "custom")
    if common.policy is not None:
        return {"resampling": name, "policy": repr(common.policy), "ess_threshold": None}
    threshold = DEFAULT_ESS_THRESHOLD if common.ess_threshold is None else common.ess_threshold
    return {"resampling": name, "ess_threshold": threshold}
