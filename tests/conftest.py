"""Shared targets with closed-form answers.

``SMCDIFF_TEST_DEVICE=cuda pytest tests/steering`` runs the exactness tests on a GPU (CI is CPU).
Shared statistical checks (seeded z-tests in standard errors) live in ``tests/stats.py``. Tests
over ~1 s carry ``@pytest.mark.slow``: ``scripts/test.sh -m "not slow"`` is the quick loop, and
CI runs everything.
"""

import math
from dataclasses import dataclass

import pytest
import torch

import smcdiff
from tests.stats import DEVICE


@dataclass
class LinearGaussianProblem:
    model: smcdiff.scores.ExactScore
    A: torch.Tensor
    y: torch.Tensor
    noise_std: float
    posterior: smcdiff.GaussianMixture  # exact posterior of p_{t_min}
    log_evidence: float

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        r = self.y.to(x) - x @ self.A.to(x).T
        m = self.y.shape[0]
        return -0.5 * (r * r).sum(-1) / self.noise_std**2 - 0.5 * m * math.log(
            2 * math.pi * self.noise_std**2
        )


def make_linear_gaussian(prior, A, y, noise_std, process=None) -> LinearGaussianProblem:
    process = process or smcdiff.VP()
    prior, A, y = prior.to(device=DEVICE), A.to(DEVICE), y.to(DEVICE)
    post, log_ev = prior.noised(process, process.t_min).posterior(
        A.double(), y.double(), noise_std=noise_std
    )
    return LinearGaussianProblem(
        smcdiff.exact_score(prior, process), A, y, noise_std, post, float(log_ev)
    )


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def gaussian_inverse() -> LinearGaussianProblem:
    """d = 3 Gaussian prior observed through a 2x3 matrix with noise std 0.8."""
    prior = smcdiff.Gaussian(
        torch.tensor([1.0, -1.0, 0.5]),
        torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]]),
    )
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    return make_linear_gaussian(prior, A, torch.tensor([0.7, -0.2]), 0.8)


@pytest.fixture
def mixture_inverse_8d() -> LinearGaussianProblem:
    """d = 8, four well-separated components, two coordinates observed with noise std 1."""
    gen = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(4, 8, generator=gen)
    prior = smcdiff.GaussianMixture(
        torch.tensor([0.4, 0.3, 0.2, 0.1]), means, 0.5 + torch.rand(4, 8, generator=gen)
    )
    A = torch.zeros(2, 8)
    A[0, 0], A[1, 1] = 1.0, 1.0
    y = 0.5 * (means[0, :2] + means[1, :2])  # between two modes: both keep weight
    return make_linear_gaussian(prior, A, y, 1.0)
