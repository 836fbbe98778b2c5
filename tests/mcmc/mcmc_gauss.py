"""Gaussian test targets with exact samples (tests/mcmc); the moment checks are in tests/stats.py."""

from dataclasses import dataclass

import torch


@dataclass
class Gauss:
    """N(m, S) with standard deviations (1, 2, 0.5) and all correlations 0.5 (float64)."""

    m: torch.Tensor
    S: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r = x - self.m
        return -0.5 * ((r @ torch.linalg.inv(self.S)) * r).sum(-1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.m.shape[0], generator=generator, dtype=torch.float64)
        return self.m + z @ torch.linalg.cholesky(self.S).T


def gaussian(m: torch.Tensor, S: torch.Tensor) -> Gauss:
    return Gauss(m.double(), S.double())
