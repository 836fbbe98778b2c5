r"""Plumbing shared by the methods that run a :class:`~smcdiff.diffusion_fk.DiffusionFK` model
(``fk``, ``tds``, ``guidance``, ``none``): the sampler options, the model, the MCMC start.

All of them move particles by a reverse kernel :math:`x_s = c_x x_t + c_s s_t(x_t) + \delta +
\sqrt v z` (:mod:`smcdiff.samplers.kernels`); they differ in the shift :math:`\delta` (guided or
not) and in the weights (FK potentials, or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.diffusion_fk import DiffusionFK, build_diffusion_fk
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.processes.meanfree import MeanFree, subspace_corrector
from smcdiff.samplers.kernels import SAMPLERS
from smcdiff.scores.base import has_log_density
from smcdiff.scores.combine import GeometricScore
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["INITS", "SAMPLER_CHOICES", "SamplerConfig", "diffusion_plan", "start_corrector"]

SAMPLER_CHOICES = ("auto", *SAMPLERS)
INITS = ("prior", "pcnl", "mala")
WHERE = "steer"


@dataclass(frozen=True)
class SamplerConfig:
    """The reverse-time sampler (all options of ``method="none"``, the untilted sampler).

    ``sampler``: ``"auto"`` (``"ancestral_upper"`` with path correction, else ``"ancestral"``),
    ``"ancestral"``, ``"ancestral_upper"``, ``"em"``, ``"ddim"`` or ``"ode"``
    (:mod:`smcdiff.samplers.kernels`). ``eta``: DDIM's noise level in [0, 1] (only with
    ``sampler="ddim"``; default 1, the ancestral step).
    """

    sampler: str = "auto"
    eta: float | None = None

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SAMPLER_CHOICES, where=WHERE)
        eta = check_number("eta", self.eta, minimum=0.0, maximum=1.0, where=WHERE, allow_none=True)
        if eta is not None and self.sampler != "ddim":
            raise SMCDiffError(
                f"{WHERE}: eta is the noise level of sampler='ddim'; got sampler={self.sampler!r}"
            )
        object.__setattr__(self, "eta", eta)


def diffusion_plan(
    common: CommonConfig,
    config: Any,
    *,
    weighted: bool,
    guided: bool,
    potential: str = "difference",
) -> MethodPlan:
    r"""The plan of a DiffusionFK method: ``weighted`` (FK potentials and exact corrections) or
    not, ``guided`` (proposal shifted by :math:`c_s\gamma\nabla\lambda_k\phi(\hat x_0)`) or not.

    Options absent from ``config`` take their neutral value: no path correction (``guidance``,
    ``none``), ``guidance_scale`` 1, ``tilt_schedule`` ``"snr"``, particles started from the prior.
    """
    model = common.model
    if isinstance(model, GeometricScore):
        raise SMCDiffError(
            f"{common.where}: annealed, product and CFG targets need method='fkc' or "
            "'driftlite-vcg'/'driftlite-ecg' (their scores are not the marginals of one diffusion)"
        )
    tilted = weighted or guided
    tilt = common.tilt_terms() if tilted else []
    if tilted and not tilt:
        raise SMCDiffError(
            f"{common.where}: method={common.method!r} needs a reward or a log_likelihood"
        )
    path_correction = getattr(config, "path_correction", False)
    if path_correction == "auto":
        path_correction = weighted and has_log_density(model)
    sampler = config.sampler
    if sampler == "auto":  # path weights need a proposal at least as wide as the reverse kernel
        sampler = "ancestral_upper" if path_correction else "ancestral"
    scale = getattr(config, "guidance_scale", None)
    tilt_schedule = getattr(config, "tilt_schedule", "snr")
    adaptive = config.adaptive_tilt() if hasattr(config, "adaptive_tilt") else None
    fk = build_diffusion_fk(
        model,
        common.times(),
        tilt=tilt,
        weighted=weighted,
        potential=potential,
        guided=guided,
        guidance_scale=1.0 if scale is None else scale,
        path_correction=bool(path_correction),
        sampler=sampler,
        eta=1.0 if config.eta is None else config.eta,
        tilt_schedule="snr" if adaptive is not None else tilt_schedule,
        adaptive=adaptive,
        device=common.device,
        dtype=common.dtype,
    )
    init = getattr(config, "init", "prior")
    settings = {"proposal": "guided" if guided else "base", "sampler": sampler,
                "path_correction": bool(path_correction)}  # fmt: skip
    if tilted:
        settings["tilt_schedule"] = tilt_schedule
    if adaptive is not None:
        settings.update(tilt_cess=adaptive.cess, tilt_moves=adaptive.n_moves,
                        tilt_substeps=adaptive.max_substeps if fk.substeps else 0)  # fmt: skip
    if weighted:
        settings.update(potential=potential, init=init)
    start = start_corrector(fk, init, getattr(config, "init_moves", None),
                            getattr(config, "init_step_size", None))  # fmt: skip
    return MethodPlan(fk, settings, getattr(config, "corrector", None), start)


def start_corrector(
    fk: DiffusionFK, init: str, n_moves: int | None = None, step_size: float | None = None
) -> Any:
    r"""``None`` for ``init="prior"``; for ``"pcnl"`` / ``"mala"``, ``n_moves`` (default 20)
    adapted MCMC moves invariant for the step-0 target :math:`\gamma_0` (``fk.log_target(0, .)``)
    from the initial step size ``step_size`` (default 0.5 for pCNL, :math:`0.1\,\sigma_{ref}^2
    d^{-1/3}` for MALA)."""
    check_choice("init", init, INITS, where=WHERE)
    if init == "prior":
        return None
    n_moves = check_int("init_moves", 20 if n_moves is None else n_moves, 1, where=WHERE)
    ref_var = float(fk.process.prior_std) ** 2
    h0 = step_size or (0.5 if init == "pcnl" else 0.1 * ref_var * fk.dim ** (-1 / 3))
    kwargs = {"prior_var": ref_var} if init == "pcnl" else {}
    if isinstance(fk.process, MeanFree):  # move on the centre-of-mass-free subspace (exact)
        return subspace_corrector(fk.process, init, fk.log_target, n_moves, h0, **kwargs)
    return mcmc_corrector(init, fk.log_target, n_moves, h0, **kwargs)
