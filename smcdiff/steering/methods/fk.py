r"""Feynman–Kac steering (``"fk"``) and the twisted diffusion sampler (``"tds"``).

Both weight the particles toward :math:`p(x)\,e^{\phi(x)}` with FK potentials on the intermediate
tilt :math:`\lambda_k\phi(\hat x_0(x_k))` (:mod:`smcdiff.diffusion_fk.potentials`), resample by the
common ``policy`` / ``ess_threshold``, and are exact in the large-particle limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.diffusion_fk import POTENTIALS, TILT_SCHEDULES
from smcdiff.diffusion_fk.adaptive import AdaptiveTilt
from smcdiff.errors import SMCDiffError
from smcdiff.steering.methods.diffusion import INITS, WHERE, diffusion_plan
from smcdiff.steering.methods.guidance import GuidanceConfig
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["PROPOSALS", "FKConfig", "TDSConfig", "build_fk", "build_tds"]

PROPOSALS = ("base", "guided")


@dataclass(frozen=True)
class TDSConfig(GuidanceConfig):
    r"""The twisted diffusion sampler (Wu et al. 2023): FK steering with the twisted proposal and
    the ``"difference"`` potential, both fixed.

    Twist :math:`\tilde p_k(x) = e^{\lambda_k\phi(\hat x_0(x_k))}`, proposal mean shifted by
    :math:`c_s\gamma\nabla\log\tilde p_k`, weight :math:`p(x_{k-1}\mid x_k)\,\tilde
    p_{k-1}(x_{k-1}) / (\tilde p_k(x_k)\, q(x_{k-1}\mid x_k))` and the exact final correction
    :math:`e^{\phi(x_0)}/\tilde p_0(x_0)`; needs a differentiable reward / likelihood. The
    published twist is ``tilt_schedule="constant"``; the default ``"snr"`` fades it at high
    noise, which keeps TDS from collapsing onto one mode of a multimodal target
    (docs/steering-results.md).

    ``path_correction`` (``"auto"``: on when the model has ``log_density``) also weights out the
    sampler's discretisation error, so the target is exact for any ``n_steps``. ``init``:
    ``"prior"`` (particles from :math:`\mathcal N(0, \sigma_{ref}^2 I)`) or ``"pcnl"`` /
    ``"mala"``: after step 0's weighting and resampling, ``init_moves`` (default 20) MCMC moves
    (adapted step, initial ``init_step_size``) invariant for the step-0 target
    :math:`p_{t_{max}}(x)\,e^{\lambda_0\phi(\hat x_0(x))}` (reference Gaussian in place of
    :math:`p_{t_{max}}` without path correction). ``corrector``: an MCMC corrector
    ``corrector(k, state, generator)`` after every step (e.g. ``mcmc_corrector("mala",
    fk.log_target)``). Plus the options of :class:`GuidanceConfig`.
    """

    path_correction: bool | str = "auto"
    init: str = "prior"
    init_moves: int | None = None
    init_step_size: float | None = None
    corrector: Callable | None = None
    tilt_schedule: str = "snr"
    TILT_CHOICES = (*TILT_SCHEDULES, "adaptive")
    tilt_cess: float | None = None
    tilt_moves: int | None = None
    tilt_substeps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_adaptive()
        if self.path_correction != "auto" and not isinstance(self.path_correction, bool):
            raise SMCDiffError(
                f"{WHERE}: path_correction must be 'auto', True or False, "
                f"got {self.path_correction!r}"
            )
        check_choice("init", self.init, INITS, where=WHERE)
        moves = check_int("init_moves", self.init_moves, 1, where=WHERE, allow_none=True)
        object.__setattr__(self, "init_moves", moves)
        if self.init == "prior":
            given = [n for n in ("init_moves", "init_step_size") if getattr(self, n) is not None]
            if given:
                raise SMCDiffError(
                    f"{WHERE}: {', '.join(given)} set the MCMC start; they need init='pcnl' or "
                    "'mala'"
                )
        step = check_number("init_step_size", self.init_step_size, minimum=0.0, strict_min=True,
                            where=WHERE, allow_none=True)  # fmt: skip
        object.__setattr__(self, "init_step_size", step)
        if self.corrector is not None and not callable(self.corrector):
            raise SMCDiffError(f"{WHERE}: corrector must be callable (k, state, generator)")

    def _check_adaptive(self) -> None:
        given = [n for n in ADAPTIVE_OPTIONS if getattr(self, n) is not None]
        if self.tilt_schedule != "adaptive":
            if given:
                raise SMCDiffError(f"{WHERE}: {', '.join(given)} set adaptive tilting; they need "
                                   "tilt_schedule='adaptive'")  # fmt: skip
            return
        if self.corrector is not None or self.init != "prior":
            raise SMCDiffError(
                f"{WHERE}: a corrector or init={self.init!r} moves the particles with a fixed "
                "step target; with tilt_schedule='adaptive' the strength is chosen from the "
                "particles. Use tilt_schedule='snr' (the default) or 'constant'"
            )
        self.adaptive_tilt()  # checks the values

    def adaptive_tilt(self) -> AdaptiveTilt | None:
        """The :class:`~smcdiff.diffusion_fk.adaptive.AdaptiveTilt` of these options, or ``None``
        for a fixed schedule."""
        if self.tilt_schedule != "adaptive":
            return None
        names = {"tilt_cess": "cess", "tilt_moves": "n_moves", "tilt_substeps": "max_substeps"}
        given = {
            names[n]: getattr(self, n) for n in ADAPTIVE_OPTIONS if getattr(self, n) is not None
        }
        return AdaptiveTilt(**given)


@dataclass(frozen=True)
class FKConfig(TDSConfig):
    r"""Feynman–Kac steering: potentials ``potential`` in ``difference | max | sum | final`` on
    the intermediate tilt :math:`\lambda_k\phi(\hat x_0(x_t))`; ``proposal="guided"`` shifts each
    step by the gradient of the intermediate tilt (scale ``guidance_scale``) and corrects the
    weights exactly. FK steering as published is ``tilt_schedule="constant", grid="uniform",
    path_correction=False``. Plus the options of :class:`TDSConfig`.
    """

    potential: str = "difference"
    proposal: str = "base"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("potential", self.potential, POTENTIALS, where=WHERE)
        check_choice("proposal", self.proposal, PROPOSALS, where=WHERE)
        if self.guidance_scale is not None and self.proposal != "guided":
            raise SMCDiffError(f"{WHERE}: guidance_scale scales the guided proposal; "
                               "it needs proposal='guided'")  # fmt: skip
        if self.corrector is not None and self.potential in ("max", "sum"):
            raise SMCDiffError(
                f"{WHERE}: potential={self.potential!r} depends on the whole path; a corrector "
                "needs a per-state potential ('difference' or 'final')"
            )


ADAPTIVE_OPTIONS = ("tilt_cess", "tilt_moves", "tilt_substeps")


def build_fk(common: CommonConfig, config: FKConfig) -> MethodPlan:
    """FK steering with the chosen potential and proposal."""
    guided = config.proposal == "guided"
    return diffusion_plan(common, config, weighted=True, guided=guided, potential=config.potential)


def build_tds(common: CommonConfig, config: TDSConfig) -> MethodPlan:
    """TDS: FK steering with the twisted (guided) proposal and the difference potential."""
    return diffusion_plan(common, config, weighted=True, guided=True, potential="difference")
