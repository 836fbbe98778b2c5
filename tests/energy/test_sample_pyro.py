"""sample() on Pyro models: the evidence of conjugate models and named ArviZ output."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from tests.stats import assert_unbiased, assert_z_unbiased


def normal_normal(y):
    mu = pyro.sample("mu", dist.Normal(0.5, 2.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def beta_binomial(k, n):
    p = pyro.sample("p", dist.Beta(2.0, 3.0))
    pyro.sample("k", dist.Binomial(n, p), obs=k)


def test_tempered_sample_of_a_pyro_model_gives_its_evidence_and_posterior():
    y = torch.tensor([1.2, 0.4, 2.1, 1.7, 0.9], dtype=torch.float64)
    target = smcdiff.from_pyro(normal_normal, y)
    res = smcdiff.sample(target, n_particles=1000, n_runs=16, seed=0, dtype=torch.float64)
    # exact: y ~ N(0.5 * 1, I + 4 * 11^T)
    cov = torch.eye(5, dtype=torch.float64) + 4.0
    log_ev = float(
        torch.distributions.MultivariateNormal(torch.full((5,), 0.5).double(), cov).log_prob(y)
    )
    assert_z_unbiased(res.log_z, log_ev, n_se=4.5, max_se=0.05)
    post_var = 1.0 / (1 / 4.0 + 5.0)
    post_mean = post_var * (0.5 / 4.0 + float(y.sum()))
    m, _ = weighted_moments(res.particles, res.log_weights)  # (R, 1)
    assert_unbiased(m, post_mean, n_se=4.5, bias=1e-3, what="posterior mean")
    idata = smcdiff.SMCResult(res.particles[0], res.log_weights[0], res.log_z[0], {}, target=target)
    post = idata.to_arviz().posterior
    assert "mu" in post and post["mu"].shape[-1] == 1000


@pytest.mark.slow
def test_tempered_sample_of_beta_binomial_evidence():
    k, n = torch.tensor(7.0), torch.tensor(20.0)
    target = smcdiff.from_pyro(beta_binomial, k, n)
    res = smcdiff.sample(target, n_particles=1000, n_runs=16, seed=1, dtype=torch.float64)
    # p(k) = C(n, k) B(k + a, n - k + b) / B(a, b)
    lb = lambda a, b: math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)  # noqa: E731
    log_ev = math.lgamma(21) - math.lgamma(8) - math.lgamma(14) + lb(9.0, 16.0) - lb(2.0, 3.0)
    assert_z_unbiased(res.log_z, log_ev, n_se=4.5, max_se=0.05)
    post = res.to_arviz().posterior
    assert float(post["p"].min()) > 0 and float(post["p"].max()) < 1
    assert abs(float(post["p"].mean()) - 9.0 / 25.0) < 0.02  # Beta(9, 16) mean, SE ~0.003
