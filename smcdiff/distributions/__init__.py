"""Distributions with closed-form densities, scores and transformations."""

from smcdiff.distributions.gaussian_mixture import Gaussian, GaussianMixture

__all__ = ["Gaussian", "GaussianMixture"]
