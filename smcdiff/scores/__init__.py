"""Score models: the ScoreModel protocol, exact (closed-form) scores, and training-free estimators
of the noised scores of an unnormalised target (rdMC, Monte Carlo, Föllmer, empirical, moment fit).
"""

from smcdiff.scores.base import (
    DensityScoreModel,
    ScoreModel,
    event_shape_of,
    has_log_density,
    model_time,
)
from smcdiff.scores.combine import GeometricDensityScore, GeometricScore, anneal, cfg, product
from smcdiff.scores.empirical import EmpiricalScore
from smcdiff.scores.energy_network import EnergyNetwork
from smcdiff.scores.ensemble import EnsembleScore, FollmerDrift, SchrodingerFollmer
from smcdiff.scores.exact import ExactScore, exact_score
from smcdiff.scores.from_diffusers import from_diffusers
from smcdiff.scores.moment_fit import (
    BlendedScore,
    fit_gaussian,
    fit_gaussian_mixture,
    moment_fit_blend,
    moment_fit_score,
)
from smcdiff.scores.montecarlo import (
    MonteCarloScore,
    SmoothingEstimate,
    monte_carlo_score,
    smoothed_log_expectation,
)
from smcdiff.scores.network import NetworkScore
from smcdiff.scores.rdmc import RDMCImportanceScore, RDMCMalaScore, RDMCScore
from smcdiff.scores.refined import RDMCRefinedScore
from smcdiff.scores.reshape import ReshapedDensityScore, ReshapedScore, reshape_score

__all__ = [
    "BlendedScore",
    "DensityScoreModel",
    "EmpiricalScore",
    "EnergyNetwork",
    "EnsembleScore",
    "ExactScore",
    "FollmerDrift",
    "GeometricDensityScore",
    "GeometricScore",
    "MonteCarloScore",
    "NetworkScore",
    "RDMCImportanceScore",
    "RDMCMalaScore",
    "RDMCRefinedScore",
    "RDMCScore",
    "ReshapedDensityScore",
    "ReshapedScore",
    "SchrodingerFollmer",
    "ScoreModel",
    "SmoothingEstimate",
    "anneal",
    "cfg",
    "event_shape_of",
    "exact_score",
    "fit_gaussian",
    "fit_gaussian_mixture",
    "from_diffusers",
    "has_log_density",
    "model_time",
    "moment_fit_blend",
    "moment_fit_score",
    "monte_carlo_score",
    "product",
    "reshape_score",
    "smoothed_log_expectation",
]
