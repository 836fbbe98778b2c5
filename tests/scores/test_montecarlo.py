"""Gaussian-smoothing Monte Carlo scores: the core estimator against closed forms, and the VE
Monte Carlo score (= rdMC-IS with alpha = 1) against ExactScore."""

import math

import numpy as np
import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP
from smcdiff.scores import BlendedScore, FollmerDrift, exact_score, moment_fit_score
from smcdiff.scores.montecarlo import MonteCarloScore, monte_carlo_score, smoothed_log_expectation
from smcdiff.scores.rdmc import RDMCImportanceScore, RDMCScore
from smcdiff.seeding import seeded_generator
from smcdiff.target import as_target
from tests.scores.estimator_targets import gauss, mix, rmse
from tests.stats import DEVICE, assert_unbiased, assert_z_unbiased

F64 = torch.float64


# ---------------------------------------------------------------- the core, in closed form


def test_gradient_estimator_exact_for_exponential_linear_g():
    r"""log g(y) = b·y: ∇log g = b everywhere, so Σ w_j ∇log g(y_j) = b exactly, whatever the
    draws; also checks the row order across chunks."""
    d, n = 3, 10
    b = torch.tensor([0.5, -1.0, 2.0], dtype=F64, device=DEVICE)
    m = (
        torch.randn(n, d, generator=seeded_generator(0, DEVICE), dtype=F64, device=DEVICE)
        * torch.arange(n, device=DEVICE)[:, None]
    )

    def log_g(y):
        return y @ b

    est = smoothed_log_expectation(
        log_g, m, 0.7, 16, generator=seeded_generator(1, DEVICE), estimator="grad", chunk_size=3
    )
    torch.testing.assert_close(est.grad, b.expand(n, d), rtol=0, atol=1e-12)


def test_stein_estimator_and_log_mean_consistency_and_unbiasedness():
    r"""g(y) = exp(b·y): E[g(m + cξ)] = exp(b·m + c²|b|²/2) and ∇_m log E = b."""
    d, c, n_rep = 2, 0.8, 2000
    b = torch.tensor([0.7, -0.4], dtype=F64, device=DEVICE)
    m = torch.tensor([[0.3, 1.0]], dtype=F64, device=DEVICE).expand(n_rep, d)
    exact_log = float(m[0] @ b) + 0.5 * c * c * float(b @ b)
    errs, lerrs = [], []
    for mm in (32, 512):
        est = smoothed_log_expectation(
            lambda y: y @ b, m, c, mm, generator=seeded_generator(mm, DEVICE)
        )
        errs.append(rmse(est.grad, b.expand(n_rep, d)))
        lerrs.append(rmse(est.log_mean, torch.full_like(est.log_mean, exact_log)))
        assert_z_unbiased(est.log_mean, exact_log, n_se=5.0, what="E_hat / E")  # unbiased
        assert bool((est.ess > 0).all() & (est.ess <= mm + 1e-9).all())
    assert 3.0 < errs[0] / errs[1] < 5.3, errs
    assert 3.0 < lerrs[0] / lerrs[1] < 5.3, lerrs
    # the posterior mean: q ∝ g N(m, c²) = N(m + c² b, c²)
    torch.testing.assert_close(est.mean.mean(0), m[0] + c * c * b, rtol=0, atol=0.01)


def test_antithetic_pairs_are_exact_for_linear_stein():
    r"""With g ≡ 1 (log g = 0) the Stein estimate Σ w ξ / c is the sample mean of ξ: antithetic
    pairs make it exactly 0, plain draws do not."""
    m = torch.zeros(5, 3, dtype=F64, device=DEVICE)
    zero = smoothed_log_expectation(
        lambda y: y.sum(-1) * 0, m, 0.1, 8, generator=seeded_generator(0, DEVICE), antithetic=True
    )
    assert float(zero.grad.abs().max()) < 1e-12
    plain = smoothed_log_expectation(
        lambda y: y.sum(-1) * 0, m, 0.1, 8, generator=seeded_generator(0, DEVICE)
    )
    assert float(plain.grad.abs().max()) > 0.1


# ---------------------------------------------------------------- the VE Monte Carlo score


@pytest.mark.parametrize(
    ("name", "d", "t", "m"),
    [
        ("gauss", 2, 0.25, 128),  # sigma ≈ 0.1
        ("mix", 2, 0.25, 128),
        ("mix", 2, 0.55, 128),  # sigma ≈ 1.1
        ("mix", 2, 0.7, 256),  # sigma ≈ 3.9
        ("gauss", 10, 0.25, 128),
        ("mix", 10, 0.25, 128),
    ],
)
@pytest.mark.parametrize("estimator", ["stein", "grad"])
def test_ve_monte_carlo_score_consistency(name, d, t, m, estimator):
    process = VE(sigma_min=0.01, sigma_max=50.0)
    pi = {"gauss": gauss, "mix": mix}[name](d)
    exact = exact_score(pi, process)
    n_points, n_rep = (4, 64) if d == 2 else (4, 32)
    x = exact.sample_marginal(n_points, t, seeded_generator(5, DEVICE)).repeat_interleave(n_rep, 0)
    s_true, lp_true = exact.score_and_log_density(x, t)
    errs, lerrs = [], []
    for mm in (m, 16 * m):
        s, lp = MonteCarloScore(pi, process, mm, estimator=estimator, seed=2).score_and_log_density(
            x, t
        )
        errs.append(rmse(s, s_true))
        lerrs.append(rmse(lp, lp_true))
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    assert 2.8 < lerrs[0] / lerrs[1] < 5.7, lerrs
    assert_unbiased((s - s_true).reshape(n_points, n_rep, d), 0.0, dim=1, what="score error")


def test_monte_carlo_score_is_rdmc_is_with_alpha_one():
    """One implementation: the functional form, MonteCarloScore and RDMCScore(method="is") (an
    RDMCImportanceScore) give the same numbers from the same stream (VE: alpha = 1, sigma =
    sigma_t)."""
    assert issubclass(RDMCImportanceScore, MonteCarloScore)
    process, t = VE(), 0.4
    pi = mix(2)
    x = exact_score(pi, process).sample_marginal(6, t, seeded_generator(0, DEVICE))
    sigma = float(process.sigma(t))
    for estimator in ("stein", "grad"):
        s_fn, lp_fn = monte_carlo_score(
            pi, x, sigma, 64, generator=seeded_generator(3, DEVICE), estimator=estimator
        )
        s_mc, lp_mc = MonteCarloScore(
            pi, process, 64, estimator=estimator, seed=3
        ).score_and_log_density(x, t)
        s_rd, lp_rd = RDMCScore(
            pi, process, 64, "is", estimator=estimator, seed=3
        ).score_and_log_density(x, t)
        for u, v in ((s_fn, s_mc), (s_mc, s_rd), (lp_fn, lp_mc), (lp_mc, lp_rd)):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_alpha_scaling_vp():
    """For VP the same estimator runs at m = x / a, c = s / a: the score is grad / a and the log
    density subtracts d log a (checked against the exact values, sigma/alpha ≈ 1.2)."""
    process, t = VP(), 0.3
    pi = gauss(2)
    x = exact_score(pi, process).sample_marginal(50, t, seeded_generator(1, DEVICE))
    model = MonteCarloScore(pi, process, 16384, seed=0)
    s, lp = model.score_and_log_density(x, t)
    s_true, lp_true = exact_score(pi, process).score_and_log_density(x, t)
    a = float(process.alpha(t))
    assert abs(math.log(a)) > 0.3  # a genuinely != 1
    # typical RMSE 0.015 at this M; a dropped 1/a or d log a costs > 0.3
    assert rmse(s, s_true) < 0.04
    assert rmse(lp, lp_true) < 0.04
    est = model.estimate(x, t)
    assert rmse(est.mean, (x + float(process.sigma(t)) ** 2 * s_true) / a) < 0.04


class NanGrad(torch.autograd.Function):
    """Zero in value, NaN in gradient."""

    @staticmethod
    def forward(ctx, z):
        return z.sum(-1) * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full((grad.shape[0], 2), float("nan"), dtype=grad.dtype, device=grad.device)


def test_counters_determinism_and_errors():
    process, t = VE(), 0.4
    pi = mix(2)
    x = exact_score(pi, process).sample_marginal(5, t, seeded_generator(0, DEVICE))
    model = MonteCarloScore(pi, process, 12, estimator="grad", seed=1)
    s1 = model.score(x, t)
    model.log_density(x, t)
    assert model.n_target_evals == 2 * 5 * 12 and model.n_grad_evals == 2 * 5 * 12
    torch.testing.assert_close(
        MonteCarloScore(pi, process, 12, estimator="grad", seed=1).score(x, t), s1, rtol=0, atol=0
    )
    with pytest.raises(SMCDiffError, match="scale"):
        smoothed_log_expectation(pi.log_prob, x, 0.0, 4, generator=seeded_generator(0, DEVICE))
    with pytest.raises(SMCDiffError, match="mean has shape"):
        smoothed_log_expectation(pi.log_prob, x[0], 1.0, 4, generator=seeded_generator(0, DEVICE))
    with pytest.raises(SMCDiffError, match="estimator"):
        smoothed_log_expectation(
            pi.log_prob, x, 1.0, 4, generator=seeded_generator(0, DEVICE), estimator="x"
        )
    nan_t = as_target(lambda z: pi.log_prob(z) * float("nan"), 2)
    with pytest.raises(SMCDiffError, match="target log_prob is NaN"):
        MonteCarloScore(nan_t, process, 4, seed=0, check_finite=True).score(x, t)
    # a gradient that is NaN while the value is finite is named as such
    bad_grad = as_target(lambda z: pi.log_prob(z) + NanGrad.apply(z), 2)
    with pytest.raises(SMCDiffError, match="target gradient is NaN"):
        MonteCarloScore(bad_grad, process, 4, estimator="grad", seed=0, check_finite=True).score(
            x, t
        )
    with pytest.raises(SMCDiffError, match="x has shape"):
        MonteCarloScore(pi, process, 4, seed=0).score(x[:, :1], t)
    # check_finite=False: no sync, the NaN propagates instead
    out = MonteCarloScore(nan_t, process, 4, seed=0, check_finite=False).score(x, t)
    assert bool(torch.isnan(out).all())


def test_score_model_contract_of_the_estimators():
    """Training-free estimators take one float time (scalar_time) and flat points (event_shape
    (d,)); a 0-d tensor time and NumPy ints are accepted, a time outside [0, 1] is refused."""
    process, t = VE(), 0.4
    pi = mix(2)
    x = exact_score(pi, process).sample_marginal(5, t, seeded_generator(0, DEVICE))
    mc = MonteCarloScore(pi, process, np.int64(8), seed=np.int64(2), chunk_size=np.int32(2))
    follmer = FollmerDrift(pi, 8, seed=2)
    blend = BlendedScore(mc, moment_fit_score(x, process), 1.0)
    for model in (mc, follmer, blend):
        assert model.scalar_time is True and model.event_shape == (2,)
    torch.testing.assert_close(
        mc.score(x, torch.tensor(t, dtype=F64)),
        MonteCarloScore(pi, process, 8, seed=2, chunk_size=2).score(x, t),
        rtol=0,
        atol=0,
    )
    with pytest.raises(SMCDiffError, match=r"t must lie in \[0, 1\]"):
        mc.score(x, 1.5)
    with pytest.raises(SMCDiffError, match=r"t must lie in \[0, 1\]"):
        blend.score(x, -0.1)
