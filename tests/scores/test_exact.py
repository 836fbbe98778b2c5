"""ExactScore: the DensityScoreModel of a noised Gaussian mixture."""

import math

import pytest
import torch
from scipy import integrate

from smcdiff.distributions import GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP, Flow
from smcdiff.scores import DensityScoreModel, ExactScore, exact_score
from tests.stats import assert_iid_mean

F64 = torch.float64
PROCESSES = [VP(), VE(sigma_max=10.0), Flow()]


def mixture(d, dtype=F64):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(3, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=F64)
    means = 2.0 * torch.randn(3, d, generator=g, dtype=F64)
    return GaussianMixture([0.2, 0.3, 0.5], means.to(dtype), covs)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_score_is_gradient_of_log_density(process):
    model = exact_score(mixture(3), process)
    assert isinstance(model, ExactScore) and isinstance(model, DensityScoreModel)
    assert model.dim == 3 and model.process is process
    x = 3.0 * torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (0.0, 0.05, 0.5, 0.95):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.log_density(xr, t).sum(), xr)
        score, log_p = model.score_and_log_density(x, t)
        torch.testing.assert_close(model.score(x, t), grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(log_p, model.log_density(x, t))


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_log_density_normalised_1d(process):
    model = exact_score(mixture(1), process)
    for t in (0.0, 0.1, 0.5, 0.9):

        def dens(x, t=t):
            return math.exp(float(model.log_density(torch.tensor([[x]], dtype=F64), t)))

        total = integrate.quad(dens, -math.inf, math.inf, epsabs=1e-12, limit=200)[0]
        assert abs(total - 1.0) < 1e-8, (t, total)


def test_marginal_and_sample_marginal():
    process = VP()
    model = exact_score(mixture(2), process)
    pt = model.marginal(0.4)
    assert pt is model.marginal(torch.tensor(0.4, dtype=F64))
    x = model.sample_marginal(40_000, 0.4, torch.Generator().manual_seed(1))
    assert x.shape == (40_000, 2)
    assert_iid_mean(x, pt.mean(), pt.covariance().diagonal())
    a, s = float(process.alpha(0.4)), float(process.sigma(0.4))
    cov_ref = a * a * model.dist.covariance() + s * s * torch.eye(2, dtype=F64)
    torch.testing.assert_close(pt.covariance(), cov_ref)


def test_precompute_keeps_the_grid_marginals(monkeypatch):
    """``precompute(times)`` builds p_t at each time once and keeps it (a grid longer than the
    mixture's own cache of 4): later scores at those times do no factorisation, and give the
    numbers of a fresh model."""
    import smcdiff.scores.exact as exact

    model, fresh = exact_score(mixture(3), VP()), exact_score(mixture(3), VP())
    times = [1.0 - 0.09 * i for i in range(11)]
    kept = model.precompute(times)
    assert len(kept) == 11 and all(p is model.marginal(t) for p, t in zip(kept, times, strict=True))
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", None)  # a factorisation would raise
    for t in times:
        s, logp = model.score_and_log_density(x, t)
        monkeypatch.undo()
        s_ref, logp_ref = fresh.score_and_log_density(x, t)
        monkeypatch.setattr(torch.linalg, "cholesky_ex", None)
        assert torch.equal(s, s_ref) and torch.equal(logp, logp_ref)
    monkeypatch.undo()
    monkeypatch.setattr(exact, "FIXED_BYTES", 0)  # the cache keeps at least 64 entries, oldest out
    many = exact_score(mixture(2), VP())
    grid = [0.001 * i for i in range(1, 70)]
    many.precompute(grid)
    assert len(many._fixed) == 64 and grid[0] not in many._fixed and grid[-1] in many._fixed


def test_float32_model():
    model = exact_score(mixture(4, dtype=torch.float32), Flow())
    x = torch.randn(8, 4)
    score, log_p = model.score_and_log_density(x, 0.3)
    assert score.dtype == torch.float32 and log_p.shape == (8,)


def test_bad_inputs():
    model = exact_score(mixture(3), VP())
    cases = [
        (lambda: model.score(torch.zeros(5, 2, dtype=F64), 0.5), r"ExactScore.score: x has shape"),
        (lambda: model.log_density(torch.zeros(5, dtype=F64), 0.5), "ExactScore.log_density: x"),
        (lambda: model.score_and_log_density(torch.zeros(5, 3), 0.5), "x has dtype"),
        (lambda: model.score(torch.zeros(5, 3, dtype=F64), 1.5), "t must lie"),
        (lambda: model.score(torch.zeros(5, 3, dtype=F64), torch.ones(2)), "t must be a scalar"),
        (lambda: exact_score("not a mixture", VP()), "dist"),
        (lambda: exact_score(mixture(3), None), "process"),
    ]
    for call, msg in cases:
        with pytest.raises(SMCDiffError, match=msg):
            call()
