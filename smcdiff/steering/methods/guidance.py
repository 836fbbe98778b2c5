r"""Unweighted diffusion samplers: ``"guidance"`` (DPS-style, biased) and ``"none"`` (untilted).

Neither carries importance weights, so neither resamples and both report ``log_z = NaN``.
"""

from __future__ import annotations

from dataclasses import dataclass

from smcdiff.checks import check_choice, check_number
from smcdiff.diffusion_fk import TILT_SCHEDULES
from smcdiff.steering.methods.diffusion import WHERE, SamplerConfig, diffusion_plan
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["GuidanceConfig", "build_guidance", "build_none"]


@dataclass(frozen=True)
class GuidanceConfig(SamplerConfig):
    r"""Guidance: each reverse step's mean is shifted by :math:`c_s\,\gamma\,\nabla_{x_t}
    \lambda_t\phi(\hat x_0(x_t))` (the score of the intermediate tilt), without weights.

    ``guidance_scale``: :math:`\gamma` (default 1). ``tilt_schedule``: :math:`\lambda_t`,
    ``"snr"`` (default, :math:`\alpha_t^2/(\alpha_t^2+\sigma_t^2)`, fades the tilt at high noise)
    or ``"constant"`` (:math:`\lambda = 1`). Plus the sampler options of :class:`SamplerConfig`.
    """

    guidance_scale: float | None = None
    tilt_schedule: str = "snr"
    TILT_CHOICES = tuple(TILT_SCHEDULES)  # class attribute: the schedules this method takes

    def __post_init__(self) -> None:
        super().__post_init__()
        scale = check_number("guidance_scale", self.guidance_scale, where=WHERE, allow_none=True)
        object.__setattr__(self, "guidance_scale", scale)
        check_choice("tilt_schedule", self.tilt_schedule, self.TILT_CHOICES, where=WHERE)


def build_guidance(common: CommonConfig, config: GuidanceConfig) -> MethodPlan:
    """Guided proposal, no weights (needs a differentiable reward or likelihood)."""
    return diffusion_plan(common, config, weighted=False, guided=True)


def build_none(common: CommonConfig, config: SamplerConfig) -> MethodPlan:
    """The untilted sampler: particles from the prior's marginal at ``t_min`` (a reward or
    likelihood, if given, is not used)."""
    return diffusion_plan(common, config, weighted=False, guided=False)
