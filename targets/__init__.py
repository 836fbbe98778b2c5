"""Benchmark and application targets with their ground truth (installed as ``smcdiff_targets``).

The repository folder is ``targets/`` but the import name is ``smcdiff_targets``, so installing
smcdiff never shadows a generic top-level ``targets`` package in a user's environment.
"""

from smcdiff_targets.alanine import AlanineDipeptide, dihedral
from smcdiff_targets.double_well import DoubleWell, dw5, dw50
from smcdiff_targets.energy import MW5, Funnel, Gmm40Fab, ManyWell, load_gmm40_fab_means
from smcdiff_targets.logistic import LaplaceApprox, LogisticRegression
from smcdiff_targets.mog40 import Mog40, load_mog40_50d_means
from smcdiff_targets.particles import ParticleSystem, dw4, lj13, lj55, reference_samples
from smcdiff_targets.registry import TARGETS, get_target
from smcdiff_targets.steering_toys import (
    SteeringProblem,
    gmm2d_likelihood_problem,
    gmm2d_prior,
    gmm2d_reward_problem,
    linear_gaussian_problem,
)

__all__ = [
    "MW5",
    "TARGETS",
    "AlanineDipeptide",
    "DoubleWell",
    "Funnel",
    "Gmm40Fab",
    "LaplaceApprox",
    "LogisticRegression",
    "ManyWell",
    "Mog40",
    "ParticleSystem",
    "SteeringProblem",
    "dihedral",
    "dw4",
    "dw5",
    "dw50",
    "get_target",
    "gmm2d_likelihood_problem",
    "gmm2d_prior",
    "gmm2d_reward_problem",
    "linear_gaussian_problem",
    "lj13",
    "lj55",
    "load_gmm40_fab_means",
    "load_mog40_50d_means",
    "reference_samples",
]
