"""Noise processes, time grids, transition densities and parameterisation conversions."""

from smcdiff.processes.discrete import DiscreteVP, ScheduledFlow
from smcdiff.processes.grids import time_grid
from smcdiff.processes.meanfree import GeometricVE, MeanFree, MeanFreeGaussian
from smcdiff.processes.parameterization import (
    coefficients,
    convert,
    from_score,
    to_score,
    tweedie_x0,
)
from smcdiff.processes.schedules import VE, VP, Flow, NoiseProcess

__all__ = [
    "VE",
    "VP",
    "DiscreteVP",
    "Flow",
    "GeometricVE",
    "MeanFree",
    "MeanFreeGaussian",
    "NoiseProcess",
    "ScheduledFlow",
    "coefficients",
    "convert",
    "from_score",
    "time_grid",
    "to_score",
    "tweedie_x0",
]
