"""Bayesian logistic regression: the density, the Laplace approximation and the MCMC reference.

Exact references come from small synthetic posteriors (1-D and 2-D) integrated on grids; the
breast-cancer posterior (31-D) is checked for internal consistency. Statistical checks are
seeded and use 5 standard errors from independent chains.
"""

import math
import sys

import numpy as np
import pytest
import torch
from smcdiff_targets.logistic import LogisticRegression, load_dataset
from smcdiff_targets.particles import reference_samples

from smcdiff.errors import SMCDiffError
from smcdiff.seeding import seeded_generator as gen
from smcdiff.target import Target, grad_log_prob
from tests.stats import assert_unbiased, grid_log_integral, replicate_se

F64 = torch.float64

pytest.importorskip(
    "sklearn", reason="the logistic data set comes from scikit-learn (pip install -e .[test])"
)


def _synthetic(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, p))
    w = np.linspace(1.0, -0.5, p)
    y = (rng.random(n) < 1 / (1 + np.exp(-a @ w))).astype(float)
    return a, y


@pytest.fixture(scope="module")
def cancer() -> LogisticRegression:
    return LogisticRegression(dtype=F64)


def test_breast_cancer_log_prob_matches_numpy(cancer):
    assert isinstance(cancer, Target)
    assert (cancer.dim, cancer.n_data, cancer.name) == (31, 569, "logreg_breast_cancer_s1")
    feats, y = load_dataset("breast_cancer")
    a = (feats - feats.mean(0)) / feats.std(0)
    a = np.hstack([a, np.ones((569, 1))])
    theta = 0.3 * np.random.default_rng(0).normal(size=(5, 31))
    ref = np.empty(5)
    for k in range(5):  # loop over particles, numpy only
        eta = a @ theta[k]
        ref[k] = (y * eta - np.logaddexp(0, eta)).sum()
        ref[k] += -0.5 * (theta[k] ** 2).sum() - 15.5 * math.log(2 * math.pi)
    out = cancer.log_prob(torch.tensor(theta))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    t32 = cancer.to(dtype=torch.float32)
    lp32 = t32.log_prob(torch.tensor(theta, dtype=torch.float32))
    assert lp32.dtype == torch.float32 and torch.allclose(lp32.double(), out, rtol=1e-5)


def test_options_change_the_design():
    a, y = _synthetic(40, 3, 1)
    raw = LogisticRegression((a, y), prior_std=2.0, standardize=False, intercept=False, dtype=F64)
    assert raw.dim == 3 and torch.equal(raw.features, torch.tensor(a))
    assert raw.name.startswith("logreg_custom") and raw.name.endswith("_s2_raw_noint")
    theta = torch.randn(4, 3, generator=gen(0), dtype=F64)
    eta = theta @ torch.tensor(a).T
    ll = (torch.tensor(y) * eta - torch.log1p(torch.exp(eta))).sum(-1)
    lp = ll - theta.square().sum(-1) / 8 - 1.5 * math.log(8 * math.pi)
    assert torch.allclose(raw.log_prob(theta), lp, rtol=1e-12)
    std = LogisticRegression((a, y), dtype=F64)
    assert std.dim == 4 and torch.allclose(std.features[:, :3].mean(0), torch.zeros(3, dtype=F64))


def test_laplace_mode_is_stationary_and_covariance_is_inverse_hessian(cancer):
    lap = cancer.laplace()
    assert lap.grad_norm < 1e-10 and lap.n_iter < 30
    _, g = grad_log_prob(cancer, lap.mean[None])
    assert g.abs().max() < 1e-9
    hess = torch.autograd.functional.hessian(lambda th: cancer.log_prob(th[None])[0], lap.mean)
    assert torch.allclose(lap.cov @ (-hess), torch.eye(31, dtype=F64), atol=1e-8)
    assert cancer.laplace() is lap  # cached


def test_laplace_log_z_against_quadrature_1d():
    # 1-D posterior from 2000 cases: Laplace's relative error is O(1/n); quadrature is exact
    a, y = _synthetic(2000, 1, 2)
    t = LogisticRegression((a, y), standardize=False, intercept=False, dtype=F64)
    lap = t.laplace()
    sd = math.sqrt(float(lap.cov))
    h = sd / 50
    grid = float(lap.mean) + torch.arange(-600, 601, dtype=F64)[:, None] * h
    log_z = grid_log_integral(t.log_prob(grid), h, 1)
    assert abs(lap.log_z - log_z) < 2e-3
    # the exact posterior mean is within a fraction of a posterior sd of the mode
    w = torch.softmax(t.log_prob(grid), 0)
    assert abs(float((w * grid[:, 0]).sum()) - float(lap.mean)) < 0.05 * sd


@pytest.mark.slow
def test_reference_samples_match_quadrature_2d(tmp_path, monkeypatch):
    # a skewed 2-D posterior (30 cases): posterior mean and covariance by grid quadrature
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    a, y = _synthetic(30, 2, 3)
    t = LogisticRegression((a, y), standardize=False, intercept=False, dtype=F64)
    h = 0.02
    ax = torch.arange(-300, 301, dtype=F64) * h
    grid = torch.cartesian_prod(ax, ax)
    w = torch.softmax(t.log_prob(grid), 0)
    mean = (w[:, None] * grid).sum(0)
    var = (w[:, None] * (grid - mean) ** 2).sum(0)
    n_chains, draws = 200, 20
    x, info = reference_samples(t, n_chains * draws, dtype=F64, return_info=True)
    assert max(info["rhat"].values()) < 1.03
    per_chain = x.view(draws, n_chains, 2).mean(0)  # independent across chains
    assert_unbiased(per_chain, mean, what="posterior mean")
    assert ((x.var(0) - var).abs() < 0.1 * var).all()  # 4000 draws: sd of the variance < 3 %
    se = replicate_se(per_chain)
    assert ((t.laplace().mean - mean).abs() > 3 * se).any()  # the mode is not the mean here


@pytest.mark.slow
def test_mala_reference_mean_is_close_to_laplace_mean(cancer, tmp_path, monkeypatch):
    # Loose by design: the posterior is skewed (31-D, near-separable classes), and long HMC runs
    # put its mean 0.33 - 0.36 Laplace sds from the mode in the worst coordinate (rms 0.16);
    # the Monte Carlo error of this mean is < 0.1 sd. A sampler off by a step-size effect or a
    # wrong acceptance would not be caught; a broken density, whitening or gradient would.
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    x, info = reference_samples(
        cancer, 2000, kernel="mala", n_chains=100, n_warmup=500, thin=10, return_info=True
    )
    assert x.shape == (2000, 31) and torch.isfinite(x).all()
    assert 0.4 < info["accept_rate"] < 0.75
    lap = cancer.laplace()
    z = (x.double().mean(0) - lap.mean) / lap.cov.diagonal().sqrt()
    assert z.abs().max() < 0.75 and z.square().mean().sqrt() < 0.3


def test_errors(monkeypatch):
    a, y = _synthetic(10, 2, 4)
    with pytest.raises(SMCDiffError, match="labels must be 0 or 1"):
        LogisticRegression((a, 2 * y - 1))
    with pytest.raises(SMCDiffError, match="features"):
        LogisticRegression((a, y[:5]))
    with pytest.raises(SMCDiffError, match="prior_std"):
        LogisticRegression((a, y), prior_std=0.0)
    with pytest.raises(SMCDiffError, match="unknown dataset"):
        LogisticRegression("iris")
    with pytest.raises(SMCDiffError, match="shape"):
        LogisticRegression((a, y)).log_prob(torch.zeros(2, 5))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if not installed
    with pytest.raises(SMCDiffError, match="pip install scikit-learn"):
        LogisticRegression()
