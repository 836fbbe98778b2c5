"""Moment fits (Gaussian, weighted EM mixture) and the noise-level blend."""

import itertools
import math

import pytest
import torch

from smcdiff.distributions import Gaussian, GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP
from smcdiff.scores import ExactScore, exact_score
from smcdiff.scores.empirical import EmpiricalScore
from smcdiff.scores.moment_fit import (
    BlendedScore,
    fit_gaussian,
    fit_gaussian_mixture,
    moment_fit_blend,
    moment_fit_score,
)
from smcdiff.scores.rdmc import RDMCScore
from smcdiff.seeding import seeded_generator
from tests.scores.estimator_targets import rmse
from tests.stats import DEVICE, assert_proportions, assert_within

F64 = torch.float64


def separated_mixture(d=2):
    means = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]], dtype=F64)
    covs = torch.tensor(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 0.8]], [[0.4, 0.0], [0.0, 1.2]]], dtype=F64
    )
    return GaussianMixture([0.2, 0.3, 0.5], means, covs).to(DEVICE)


def test_fit_gaussian_is_the_weighted_moments():
    y = torch.randn(
        500, 3, generator=seeded_generator(0, DEVICE), dtype=F64, device=DEVICE
    ) * torch.tensor([1.0, 2.0, 0.5], device=DEVICE)
    log_w = torch.randn(500, generator=seeded_generator(1, DEVICE), dtype=F64, device=DEVICE)
    w = torch.softmax(log_w, 0)
    mu = (w[:, None] * y).sum(0)
    cov = sum(w[j] * torch.outer(y[j] - mu, y[j] - mu) for j in range(500))  # direct, per sample
    fit = fit_gaussian(y, log_w, reg=1e-3)
    assert fit.n_components == 1 and fit.dtype == F64
    torch.testing.assert_close(fit.means[0], mu, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        fit.covs[0], cov + 1e-3 * torch.eye(3, dtype=F64, device=DEVICE), rtol=0, atol=1e-12
    )
    uniform = fit_gaussian(y.float(), reg=0.0)
    assert uniform.dtype == torch.float32
    torch.testing.assert_close(uniform.means[0].double(), y.mean(0), rtol=0, atol=1e-5)


def test_importance_weighted_gaussian_fit_recovers_the_target():
    """Samples of q = N(0, 3² I), log w = log π - log q: the weighted moments are consistent for
    π's mean and covariance (within 5 standard errors from the ESS)."""
    pi = separated_mixture()
    q = Gaussian(torch.zeros(2, dtype=F64), 9.0 * torch.ones(2, dtype=F64)).to(DEVICE)
    y = q.sample(200_000, seeded_generator(2, DEVICE))
    log_w = pi.log_prob(y) - q.log_prob(y)
    fit = fit_gaussian(y, log_w, reg=0.0)
    w = torch.softmax(log_w, 0)
    ess = float(1 / w.square().sum())
    cov = pi.covariance()
    se_mean = (cov.diagonal() / ess).sqrt()
    assert_within(fit.means[0], pi.mean(), se_mean, what="weighted mean")
    se_var = (2 * cov.diagonal().square() / ess).sqrt() * 3  # mixture kurtosis allowance
    assert_within(fit.covs[0].diagonal(), cov.diagonal(), se_var, what="weighted variance")


def match(fit, truth):
    """Component order of ``fit`` matching ``truth`` (nearest means)."""
    return torch.cdist(truth.means, fit.means).argmin(1)


def test_em_recovers_a_separated_mixture():
    truth = separated_mixture()
    n = 20_000
    y = truth.sample(n, seeded_generator(3, DEVICE))
    fit = fit_gaussian_mixture(y, None, 3, n_iter=30, seed=0)
    order = match(fit, truth)
    assert sorted(order.tolist()) == [0, 1, 2]
    w_true = truth.weights
    assert_proportions(fit.weights[order], w_true, n, what="component weights")
    var = truth.covs.diagonal(dim1=-2, dim2=-1)  # (3, d); component k holds ~n w_k draws
    se_m = (var / (n * w_true[:, None])).sqrt()
    assert_within(fit.means[order], truth.means, se_m, what="component means")
    se_c = (2 * var.square() / (n * w_true[:, None])).sqrt()
    got_c = fit.covs[order].diagonal(dim1=-2, dim2=-1)
    assert_within(got_c, var, se_c, what="component variances")
    # EM does not decrease the (weighted) log-likelihood
    ll = [
        float(fit_gaussian_mixture(y, None, 3, n_iter=k, seed=0).log_prob(y).mean())
        for k in (0, 2, 5, 30)
    ]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(ll)), ll


def test_weighted_em_equals_em_on_replicated_samples():
    """Integer weights act as repetitions: weights (1, 2, 3, ...) = the sample repeated."""
    y = separated_mixture().sample(300, seeded_generator(4, DEVICE))
    reps = torch.arange(300, device=DEVICE) % 3 + 1
    weighted = fit_gaussian_mixture(y, reps.double().log(), 3, n_iter=10, seed=1)
    repeated = fit_gaussian_mixture(y.repeat_interleave(reps, 0), None, 3, n_iter=10, seed=1)
    # same start: the seeding differs in the draws, so align by the fitted means and compare the
    # fixed point EM converges to from either side
    order = match(weighted, repeated)
    torch.testing.assert_close(weighted.means[order], repeated.means, rtol=0, atol=1e-6)
    torch.testing.assert_close(weighted.weights[order], repeated.weights, rtol=0, atol=1e-6)


def test_seeded_determinism_and_errors():
    y = separated_mixture().sample(1000, seeded_generator(5, DEVICE))
    a = fit_gaussian_mixture(y, None, 3, n_iter=3, seed=7)
    b = fit_gaussian_mixture(y, None, 3, n_iter=3, generator=seeded_generator(7, DEVICE))
    torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
    with pytest.raises(SMCDiffError, match="log_weights"):
        fit_gaussian(y, torch.full((1000,), float("nan"), dtype=F64, device=DEVICE))
    with pytest.raises(SMCDiffError, match="log_weights"):
        fit_gaussian(y, torch.full((1000,), -math.inf, dtype=F64, device=DEVICE))
    with pytest.raises(SMCDiffError, match="samples has shape"):
        fit_gaussian(y[0])
    with pytest.raises(SMCDiffError, match="non-finite"):
        fit_gaussian(torch.full((5, 2), math.nan, dtype=F64, device=DEVICE))
    with pytest.raises(SMCDiffError, match="cannot seed"):
        fit_gaussian_mixture(y[:2], None, 3)
    with pytest.raises(SMCDiffError, match="n_components"):
        fit_gaussian_mixture(y, None, 0)


def test_gaussian_fit_score_is_accurate_at_high_noise_only():
    r"""The moment-matched Gaussian's noised score error vanishes as sigma/alpha grows (the
    non-Gaussian cumulants enter as (a/s)^3: relative error 0.017 at s/a = 10, 7e-4 at 30), and
    is large at low noise."""
    truth = separated_mixture()
    process = VP()
    fit = exact_score(
        Gaussian(truth.mean().double(), truth.covariance().double()).to(DEVICE), process
    )
    exact = exact_score(truth, process)
    rel = {}
    for ratio in (0.3, 3.0, 10.0, 30.0):
        t = float(process.t_from_log_snr(torch.tensor(-2 * math.log(ratio))))
        x = exact.sample_marginal(2000, t, seeded_generator(6, DEVICE))
        s_true = exact.score(x, t)
        rel[ratio] = rmse(fit.score(x, t), s_true) / float(s_true.square().mean().sqrt())
    assert rel[0.3] > 0.3
    assert rel[10.0] < 0.05 and rel[30.0] < 0.01
    assert rel[10.0] < rel[3.0] / 5
    assert rel[10.0] / rel[30.0] > 12  # ~ (a/s)^3 = 27; (a/s)^2 would give 9


def test_moment_fit_score_and_blend():
    truth = separated_mixture()
    process = VE(sigma_max=20.0)
    y = truth.sample(4000, seeded_generator(7, DEVICE))
    fit = moment_fit_score(y, process, None, 3, n_iter=20, seed=0)
    assert isinstance(fit, ExactScore) and fit.process is process
    low = RDMCScore(truth, process, 32, seed=0)
    blend = moment_fit_blend(low, y, noise_threshold=2.0, n_components=3, seed=0)
    x = torch.randn(6, 2, generator=seeded_generator(8, DEVICE), dtype=F64, device=DEVICE)
    t_low = float(torch.log(torch.tensor(1.0 / 0.01)) / math.log(20.0 / 0.01))  # sigma = 1
    t_high = float(torch.log(torch.tensor(5.0 / 0.01)) / math.log(20.0 / 0.01))  # sigma = 5
    assert blend.model_at(t_low) is low and blend.model_at(t_high) is blend.high_noise
    torch.testing.assert_close(
        blend.score(x, t_high), blend.high_noise.score(x, t_high), rtol=0, atol=0
    )
    torch.testing.assert_close(
        blend.log_density(x, t_high), blend.high_noise.log_density(x, t_high), rtol=0, atol=0
    )
    torch.testing.assert_close(
        blend.score_and_log_density(x, t_low)[0],
        RDMCScore(truth, process, 32, seed=0).score_and_log_density(x, t_low)[0],
        rtol=0,
        atol=0,
    )
    blend.score(x, t_low)
    assert blend.n_target_evals == low.n_target_evals == 2 * 6 * 32
    with pytest.raises(SMCDiffError, match="different processes"):
        BlendedScore(low, moment_fit_score(y, VP()), 1.0)
    with pytest.raises(SMCDiffError, match="noise_threshold"):
        BlendedScore(low, fit, -1.0)
    no_density = BlendedScore(EmpiricalScore(y, process), _ScoreOnly(fit), 2.0)
    with pytest.raises(SMCDiffError, match="no log density"):
        no_density.log_density(x, t_high)


class _ScoreOnly:
    def __init__(self, model):
        self.model, self.process, self.dim = model, model.process, model.dim

    def score(self, x, t):
        return self.model.score(x, t)
