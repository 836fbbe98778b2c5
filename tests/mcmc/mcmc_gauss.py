"""Gaussian test targets with exact samples, and SE-based moment checks (tests/mcmc)."""

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


def assert_moments(x: torch.Tensor, m: torch.Tensor, S: torch.Tensor, n_se: float = 5.0) -> None:
    """Mean and covariance of n iid rows ``x`` match (m, S) within ``n_se`` standard errors:
    SE(mean_i) = sqrt(S_ii / n), SE(cov_ij) = sqrt((S_ii S_jj + S_ij^2) / n)."""
    n = x.shape[0]
    var = S.diagonal()
    se_mean = (var / n).sqrt()
    se_cov = ((var[:, None] * var[None, :] + S**2) / n).sqrt()
    z_mean = (x.mean(0) - m) / se_mean
    z_cov = (torch.cov(x.T).reshape(S.shape) - S) / se_cov
    assert z_mean.abs().max() < n_se, f"mean off by {z_mean.tolist()} SE"
    assert z_cov.abs().max() < n_se, f"covariance off by {z_cov.tolist()} SE"
