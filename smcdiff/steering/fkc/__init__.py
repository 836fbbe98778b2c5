r"""Feynman–Kac correctors (Skreta et al., 2025) with optional DriftLite drift control.

:class:`FKCModel` (in :mod:`~smcdiff.steering.fkc.model`, with the maths) composes parts, each an
object chosen once per model:

* a beta schedule (:mod:`~smcdiff.steering.fkc.schedules`: linear, snr, constant, callable);
* the drift/weight split :class:`~smcdiff.steering.fkc.integrator.NoiseSplit`, the move
  integrator (``exp-fit`` / ``exp`` / ``em``) and the weight rule (``trapezoid`` / ``left``)
  (:mod:`~smcdiff.steering.fkc.integrator`);
* a divergence estimator (exact / Hutchinson, :mod:`~smcdiff.steering.fkc.divergence`);
* DriftLite basis fields (:mod:`~smcdiff.steering.fkc.basis`) and a control solver
  (:class:`~smcdiff.steering.driftlite.VCG` / :class:`~smcdiff.steering.driftlite.ECG`);
* the point evaluation of scores, reward and divergences (:mod:`~smcdiff.steering.fkc.point`);
* the step control (:mod:`~smcdiff.steering.fkc.stepping`): sub-steps where the estimated
  discretisation error of a grid step exceeds a tolerance.
"""

from smcdiff.steering.fkc.basis import (
    BASES,
    BasisField,
    PositionBasis,
    RewardBasis,
    ScoreBasis,
    TargetBasis,
)
from smcdiff.steering.fkc.divergence import (
    DIVERGENCES,
    DivergenceEstimator,
    ExactDivergence,
    HutchinsonDivergence,
    divergence,
)
from smcdiff.steering.fkc.integrator import (
    INTEGRATORS,
    NOISES,
    WEIGHT_RULES,
    EulerMaruyama,
    ExponentialIntegrator,
    Integrator,
    LeftPoint,
    NoiseSplit,
    Trapezoid,
    WeightRule,
)
from smcdiff.steering.fkc.model import FKCModel
from smcdiff.steering.fkc.point import FKCPoint
from smcdiff.steering.fkc.schedules import (
    BETA_SCHEDULES,
    BetaSchedule,
    CallableBeta,
    ConstantBeta,
    LinearBeta,
    SNRBeta,
)
from smcdiff.steering.fkc.stepping import STEP_CONTROLS, StepControl

__all__ = [
    "BASES",
    "BETA_SCHEDULES",
    "DIVERGENCES",
    "INTEGRATORS",
    "NOISES",
    "STEP_CONTROLS",
    "WEIGHT_RULES",
    "BasisField",
    "BetaSchedule",
    "CallableBeta",
    "ConstantBeta",
    "DivergenceEstimator",
    "EulerMaruyama",
    "ExactDivergence",
    "ExponentialIntegrator",
    "FKCModel",
    "FKCPoint",
    "HutchinsonDivergence",
    "Integrator",
    "LeftPoint",
    "LinearBeta",
    "NoiseSplit",
    "PositionBasis",
    "RewardBasis",
    "SNRBeta",
    "ScoreBasis",
    "StepControl",
    "TargetBasis",
    "Trapezoid",
    "WeightRule",
    "divergence",
]
