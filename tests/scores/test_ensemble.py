"""Föllmer drift (Schrödinger–Föllmer) and the ensemble score, against closed forms."""

import math

import pytest
import torch
from scipy import integrate

from smcdiff.distributions import Gaussian, GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VP, NoiseProcess
from smcdiff.scores import exact_score
from smcdiff.scores.empirical import EmpiricalScore
from smcdiff.scores.ensemble import EnsembleScore, FollmerDrift, SchrodingerFollmer
from smcdiff.seeding import seeded_generator
from smcdiff.target import as_target
from tests.scores.estimator_targets import gauss, mix, rmse
from tests.stats import DEVICE, assert_unbiased

F64 = torch.float64
SF = SchrodingerFollmer()


def test_schrodinger_follmer_process():
    assert isinstance(SF, NoiseProcess)
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=F64)
    torch.testing.assert_close(SF.alpha(t), 1 - t)
    torch.testing.assert_close(SF.sigma(t) ** 2, t * (1 - t))
    h = 1e-6
    torch.testing.assert_close(SF.d_sigma(t), (SF.sigma(t + h) - SF.sigma(t - h)) / (2 * h))
    torch.testing.assert_close(SF.d_alpha(t), (SF.alpha(t + h) - SF.alpha(t - h)) / (2 * h))


def test_follmer_closed_form_by_quadrature():
    r"""log E_z[f(x + sqrt(1-u) z)] = log Z + d/2 log(2πu) + |x|²/(2u) + log p^SF_u(x), and its
    x-derivative b = x/u + score, checked by 1-d quadrature of the defining integral (the formula
    the Monte Carlo tests rely on)."""
    pi = GaussianMixture(
        [0.3, 0.7],
        torch.tensor([[-1.0], [0.8]], dtype=F64),
        torch.tensor([[0.3], [0.5]], dtype=F64),
    )
    log_z = 1.3

    def log_smoothed(x, u):
        c = math.sqrt(1 - u)

        def integrand(y):
            lp = float(pi.log_prob(torch.tensor([[y]], dtype=F64))) + log_z
            log_f = lp + 0.5 * y * y + 0.5 * math.log(2 * math.pi)
            return math.exp(log_f - 0.5 * ((y - x) / c) ** 2) / (c * math.sqrt(2 * math.pi))

        return math.log(
            integrate.quad(integrand, -12, 12, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        )

    exact = exact_score(pi, SF)
    for u in (0.2, 0.5, 0.9):
        for x in (-0.7, 0.1, 0.9):
            xt = torch.tensor([[x]], dtype=F64)
            score, lp = exact.score_and_log_density(xt, 1 - u)
            want = log_z + 0.5 * math.log(2 * math.pi * u) + x * x / (2 * u) + float(lp)
            assert abs(log_smoothed(x, u) - want) < 1e-8, (u, x)
            h = 1e-5
            drift = (log_smoothed(x + h, u) - log_smoothed(x - h, u)) / (2 * h)
            assert abs(drift - (x / u + float(score))) < 1e-5, (u, x)


FOLLMER_CASES = [  # (target, d, scale k, Föllmer time u, M)
    ("gauss", 2, 0.5, 0.5, 128),
    ("mix", 2, 0.5, 0.2, 256),
    ("mix", 2, 0.5, 0.5, 256),
    ("mix", 2, 1.0, 0.9, 256),
    ("gauss", 10, 1.0, 0.9, 256),
]


@pytest.mark.parametrize("estimator", ["stein", "grad"])
@pytest.mark.parametrize(("name", "d", "k", "u", "m"), FOLLMER_CASES)
def test_follmer_drift_consistency(name, d, k, u, m, estimator):
    pi = {"gauss": gauss, "mix": mix}[name](d, k)
    exact, t = exact_score(pi, SF), 1 - u
    n_points, n_rep = (4, 64) if d == 2 else (4, 32)
    x = exact.sample_marginal(n_points, t, seeded_generator(5, DEVICE)).repeat_interleave(n_rep, 0)
    s_true, lp_true = exact.score_and_log_density(x, t)
    errs, lerrs = [], []
    for mm in (m, 16 * m):
        model = FollmerDrift(pi, mm, estimator=estimator, seed=1)
        s, lp = model.score_and_log_density(x, t)
        errs.append(rmse(s, s_true))
        lerrs.append(rmse(lp, lp_true))
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    assert 2.8 < lerrs[0] / lerrs[1] < 5.7, lerrs
    assert_unbiased((s - s_true).reshape(n_points, n_rep, d), 0.0, dim=1, what="score error")
    # drift and log potential are the same draws seen in Föllmer time
    model = FollmerDrift(pi, 64, estimator=estimator, seed=2)
    b = model.drift(x[:8], u)
    s = FollmerDrift(pi, 64, estimator=estimator, seed=2).score(x[:8], t)
    torch.testing.assert_close(b - x[:8] / u, s, rtol=0, atol=1e-12)


def test_follmer_log_z_counters_determinism_errors():
    pi = mix(2, 0.5)
    shifted = as_target(lambda z: pi.log_prob(z) + 0.7, 2)
    x = exact_score(pi, SF).sample_marginal(5, 0.5, seeded_generator(0, DEVICE))
    lp = FollmerDrift(pi, 16, seed=3).log_density(x, 0.5)
    torch.testing.assert_close(
        FollmerDrift(shifted, 16, seed=3).log_density(x, 0.5), lp + 0.7, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        FollmerDrift(shifted, 16, seed=3, log_z=0.7).log_density(x, 0.5), lp, rtol=0, atol=1e-12
    )
    pot = FollmerDrift(pi, 16, seed=3).log_potential(x, 0.5)
    torch.testing.assert_close(
        pot, lp + math.log(2 * math.pi * 0.5) + x.square().sum(-1), rtol=0, atol=1e-12
    )
    model = FollmerDrift(pi, 16, estimator="grad", seed=3)
    model.drift(x, 0.3)
    model.score(x, 0.3)
    assert model.n_target_evals == model.n_grad_evals == 2 * 5 * 16
    torch.testing.assert_close(
        FollmerDrift(pi, 16, seed=3).drift(x, 0.3),
        FollmerDrift(pi, 16, seed=3).drift(x, 0.3),
        rtol=0,
        atol=0,
    )
    with pytest.raises(SMCDiffError, match="u must lie"):
        FollmerDrift(pi, 16, seed=0).drift(x, 1.0)
    with pytest.raises(SMCDiffError, match=r"t must lie in \(0, 1\)"):
        FollmerDrift(pi, 16, seed=0).score(x, 1.0)
    nan_t = as_target(lambda z: pi.log_prob(z) + float("nan"), 2)
    with pytest.raises(SMCDiffError, match="target log_prob is NaN"):
        FollmerDrift(nan_t, 16, seed=0, check_finite=True).drift(x, 0.3)
    with pytest.raises(SMCDiffError, match="x has shape"):
        FollmerDrift(pi, 16, seed=0).drift(x[:, :1], 0.3)


# ---------------------------------------------------------------- ensemble score


def test_ensemble_score_is_the_empirical_score():
    assert EnsembleScore is EmpiricalScore


ENSEMBLE_CASES = [("mix", 2, 3.0), ("mix", 2, 1.0), ("gauss", 10, 3.0), ("mix", 10, 3.0)]


@pytest.mark.parametrize(("name", "d", "ratio"), ENSEMBLE_CASES)
def test_ensemble_consistency_with_exact_samples(name, d, ratio):
    """Particles y_j ~ π as the proposal of p(x0 | x_t): error ~ 1/sqrt(J) (J vs 16 J), unbiased
    to 5 standard errors over independent ensembles."""
    process = VP()
    t = float(process.t_from_log_snr(torch.tensor(-2 * math.log(ratio))))
    pi = {"gauss": gauss, "mix": mix}[name](d)
    exact = exact_score(pi, process)
    x = exact.sample_marginal(8, t, seeded_generator(5, DEVICE))
    s_true, lp_true = exact.score_and_log_density(x, t)
    n_rep, errs, lerrs = 48, [], []
    for j in (256, 4096):
        runs = [
            EnsembleScore(pi.sample(j, seeded_generator(r, DEVICE)), process).score_and_log_density(
                x, t
            )
            for r in range(n_rep)
        ]
        e = torch.stack([s for s, _ in runs]) - s_true
        errs.append(float(e.square().mean().sqrt()))
        lerrs.append(rmse(torch.stack([lp for _, lp in runs]), lp_true))
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    assert 2.8 < lerrs[0] / lerrs[1] < 5.7, lerrs
    assert_unbiased(e, 0.0, what="score error")  # over the n_rep independent ensembles


def test_weighted_ensemble_and_update():
    """Importance-weighted particles (proposal N(0, 3² I), log w = log π - log q) give a
    consistent ensemble score; ``update`` swaps the particle set in place."""
    process = VP()
    t = float(process.t_from_log_snr(torch.tensor(-2 * math.log(2.0))))
    pi, q = mix(2), Gaussian(torch.zeros(2, dtype=F64), 9.0 * torch.ones(2, dtype=F64)).to(DEVICE)
    exact = exact_score(pi, process)
    x = exact.sample_marginal(8, t, seeded_generator(5, DEVICE))
    s_true = exact.score(x, t)
    model = EnsembleScore(q.sample(16, seeded_generator(0, DEVICE)), process)
    errs = []
    for j in (1024, 16384):
        e = []
        for r in range(32):
            y = q.sample(j, seeded_generator(100 + r, DEVICE))
            model.update(y, pi.log_prob(y) - q.log_prob(y))
            e.append(model.score(x, t) - s_true)
        e = torch.stack(e)
        errs.append(float(e.square().mean().sqrt()))
    assert model.n_data == 16384
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    assert_unbiased(e, 0.0, what="score error")  # over the 32 independent ensembles
