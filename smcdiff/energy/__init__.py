"""Sampling energy-defined targets: adaptive tempered SMC, diffusion-path SMC with training-free
scores, MCMC baselines, and the :func:`sample` front door (a registry of methods, one frozen
dataclass of options each)."""

from smcdiff.energy.options import DiffusionOptions, MCMCOptions, RunSettings, TemperedOptions
from smcdiff.energy.sample import SAMPLE_METHODS, SampleMethod, method_options, sample
from smcdiff.energy.tempered import TemperedSMC, TemperingIncompleteError, next_temperature

__all__ = [
    "SAMPLE_METHODS",
    "DiffusionOptions",
    "MCMCOptions",
    "RunSettings",
    "SampleMethod",
    "TemperedOptions",
    "TemperedSMC",
    "TemperingIncompleteError",
    "method_options",
    "next_temperature",
    "sample",
]
