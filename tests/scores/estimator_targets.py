"""Shared test targets of the score-estimator tests: a correlated Gaussian and a 3-component
mixture with exact noised scores, on the test device, float64."""

import math

import torch

from smcdiff.distributions import Gaussian, GaussianMixture
from tests.stats import DEVICE

F64 = torch.float64


def gauss(d, k=1.0):
    """A correlated Gaussian in ``d`` dims; ``k`` scales the whole law."""
    g = torch.Generator().manual_seed(100 + d)
    a = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=F64)
    return Gaussian(k * torch.randn(d, generator=g, dtype=F64), k * k * cov).to(DEVICE)


def mix(d, k=1.0):
    """3 components; ``k`` scales the whole law (k < 1 keeps f = π / N(0, I) light-tailed)."""
    g = torch.Generator().manual_seed(d)
    a = torch.randn(3, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=F64)
    means = 2.0 * torch.randn(3, d, generator=g, dtype=F64)
    return GaussianMixture([0.2, 0.3, 0.5], k * means, k * k * covs).to(DEVICE)


def rmse(a, b):
    return float((a - b).square().mean().sqrt())
