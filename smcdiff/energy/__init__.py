"""Sampling energy-defined targets: adaptive tempered SMC, diffusion-path SMC with training-free
scores, MCMC baselines, and the :func:`sample` front door."""

from smcdiff.energy.sample import SAMPLE_METHODS, sample
from smcdiff.energy.tempered import TemperedSMC, next_temperature

__all__ = ["SAMPLE_METHODS", "TemperedSMC", "next_temperature", "sample"]
