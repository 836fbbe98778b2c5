"""MCGdiff (``steer(method="mcgdiff")``) and ``LinearGaussianObservation`` against closed forms.

Each exactness test runs R independent particle systems of one problem at once (``n_runs=R``
with an unbatched observation) and z-tests the across-run mean of an estimator against the exact
posterior of :math:`p_{t_{min}}` and its evidence. MCGdiff is exact as N grows for the
*discretised* reverse process (the ancestral sampler of ``method="none"``), so a measured
discretisation ``bias`` is allowed on top of the SEs; the bugs the tests
guard against (a wrong proposal variance, weight or Jacobian) move the estimates far more.
"""

import math

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.errors import SMCDiffError
from tests.conftest import make_linear_gaussian
from tests.stats import (
    assert_unbiased,
    assert_within,
    assert_z_unbiased,
    mode_mass,
)

R = 16
PRIOR_MEAN = torch.tensor([1.0, -1.0, 0.5])
PRIOR_COV = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])
A3 = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
Y3 = torch.tensor([0.7, -0.2])


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.8, 0.05])
def test_gaussian_prior_evidence_and_posterior_mean(sigma):
    """Single Gaussian prior, 2 of 3 directions observed (noisy and nearly noiseless); few steps
    keep the weights light-tailed enough for a sharp evidence test (Jacobian and all)."""
    p = make_linear_gaussian(smcdiff.Gaussian(PRIOR_MEAN, PRIOR_COV), A3, Y3, sigma)
    obs = smcdiff.LinearGaussianObservation(A3, Y3, sigma)
    res = smcdiff.steer(p.model, method="mcgdiff", observation=obs, n_particles=1500,
                        n_steps=30, n_runs=R, seed=2)  # fmt: skip
    assert res.info["nfe"] == 30
    assert_z_unbiased(res.log_z, p.log_evidence, n_se=4.5, bias=0.1, max_se=0.12,
                      what="evidence")  # fmt: skip
    mean, _ = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, p.posterior.mean(), n_se=5, bias=0.04, max_se=0.02, what="mean")


@pytest.mark.slow
def test_observed_direction_variances():
    """Observed directions at 100 steps: the posterior's variances, minus the ancestral (DDPM)
    kernel's known deficit. After absorption a coordinate's variance is built by the bridge
    steps alone, each adding v_lo (v_hi - v_lo) / v_hi instead of v_hi - v_lo: at 100 log-SNR
    steps (v_lo / v_hi = 0.83) that is ~19 % low (~50 % at 30 steps), vanishing as the steps
    shrink. The prior's variances along these directions are many times larger."""
    p = make_linear_gaussian(smcdiff.Gaussian(PRIOR_MEAN, PRIOR_COV), A3, Y3, 0.3)
    obs = smcdiff.LinearGaussianObservation(A3, Y3, 0.3)
    res = smcdiff.steer(p.model, method="mcgdiff", observation=obs, n_particles=500,
                        n_steps=100, n_runs=8, seed=4)  # fmt: skip
    _, cov = weighted_moments(res.particles, res.log_weights)
    v_obs = obs.V[0][:, :2].double()
    got = torch.einsum("ia,rij,ja->ra", v_obs, cov.double(), v_obs)  # (R, 2) variances
    want = torch.einsum("ia,ij,ja->a", v_obs, p.posterior.covariance().double(), v_obs)
    prior = torch.einsum("ia,ij,ja->a", v_obs, PRIOR_COV.double(), v_obs)
    assert bool((prior > 3 * want).all())
    assert_unbiased(
        got, 0.81 * want, n_se=5, bias=0.12 * want, max_se=0.01, what="observed-direction variances"
    )


@pytest.mark.slow
def test_mixture_posterior_mode_weights_and_evidence(mixture_inverse_8d):
    """Four-mode prior in 8-D, two coordinates observed between two modes."""
    p = mixture_inverse_8d
    obs = smcdiff.LinearGaussianObservation(p.A, p.y, p.noise_std)
    exact_w = p.posterior.weights.double()
    assert int((exact_w > 0.05).sum()) >= 3
    res = smcdiff.steer(p.model, method="mcgdiff", observation=obs, n_particles=1000,
                        n_steps=30, n_runs=R, seed=3)  # fmt: skip
    comp = p.posterior.component_log_prob(res.particles).argmax(-1)  # (R, N)
    mass = mode_mass(comp, res.weights, p.posterior.n_components)
    assert_unbiased(mass, exact_w, n_se=5, bias=0.03, max_se=0.03, what="mode weights")
    assert_z_unbiased(res.log_z, p.log_evidence, n_se=4.5, bias=0.1, max_se=0.1,
                      what="evidence")  # fmt: skip


@pytest.mark.slow
def test_discrete_vp_prior_from_a_diffusers_schedule():
    """A ``DiscreteVP`` (a DDPM beta table, its scheduler's timesteps as the grid): the posterior
    mean within the SEs plus a discretisation bias."""
    proc = smcdiff.DiscreteVP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    p = make_linear_gaussian(smcdiff.Gaussian(PRIOR_MEAN, PRIOR_COV), A3, Y3, 0.5, process=proc)
    obs = smcdiff.LinearGaussianObservation(A3, Y3, 0.5)
    res = smcdiff.steer(p.model, method="mcgdiff", observation=obs, n_particles=500,
                        n_steps=40, n_runs=8, seed=0)  # fmt: skip
    assert res.info["grid"] == "scheduler"
    mean, _ = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, p.posterior.mean(), n_se=5, bias=0.03, max_se=0.03, what="mean")


def test_batched_problems_each_run_solves_its_own():
    """``A`` ``(R, d_y, d)``: run r targets problem r (posterior means far apart)."""
    prior = smcdiff.Gaussian(PRIOR_MEAN, PRIOR_COV)
    a = torch.stack([A3, A3.flip(0)])
    y = torch.tensor([[3.0, 2.0], [-3.0, -2.0]])
    obs = smcdiff.LinearGaussianObservation(a, y, torch.tensor([0.3, 0.5]))
    model = smcdiff.exact_score(prior, smcdiff.VP())
    res = smcdiff.steer(model, method="mcgdiff", observation=obs, n_particles=400, n_steps=40,
                        n_runs=2, seed=0)  # fmt: skip
    mean, _ = weighted_moments(res.particles, res.log_weights)
    for r in range(2):
        post = make_linear_gaussian(prior, a[r], y[r], float(obs.sigma[r])).posterior
        assert_within(mean[r], post.mean(), 0.35, n_se=1, what=f"run {r} mean")
        other = make_linear_gaussian(prior, a[1 - r], y[1 - r], float(obs.sigma[1 - r])).posterior
        assert float((mean[r] - other.mean()).abs().max()) > 2.0
    assert res.log_z.shape == (2,) and bool(torch.isfinite(res.log_z).all())


def test_observation_log_likelihood_and_svd():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    sig = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    obs = smcdiff.LinearGaussianObservation(a, y, sig)
    x = torch.randn(3 * 4, 5, generator=gen, dtype=torch.float64)
    got = obs.log_likelihood(x).reshape(3, 4)
    for r in range(3):
        ref = torch.distributions.Normal(x[4 * r : 4 * r + 4] @ a[r].T, sig[r]).log_prob(y[r])
        torch.testing.assert_close(got[r], ref.sum(-1))
        # in the V basis: y_bar = V^T x + (sigma / s) eps, log p = sum log N(y_bar; .) - sum log s
        xb = x[4 * r : 4 * r + 4] @ obs.V[r][:, :2]
        alt = torch.distributions.Normal(xb, obs.noise_std_bar[r]).log_prob(obs.y_bar[r]).sum(-1)
        torch.testing.assert_close(got[r], alt - obs.singular_values[r].log().sum())
    one = smcdiff.LinearGaussianObservation(a[0], y[0], 0.1)
    torch.testing.assert_close(one(x[:4]), got[0])


def test_mcgdiff_refuses_what_it_cannot_solve():
    prior = smcdiff.Gaussian(PRIOR_MEAN, PRIOR_COV)
    model = smcdiff.exact_score(prior, smcdiff.VP())
    obs = smcdiff.LinearGaussianObservation(A3, Y3, 0.5)
    kw = dict(method="mcgdiff", n_particles=8, n_steps=3)
    with pytest.raises(SMCDiffError, match="variance-preserving"):
        smcdiff.steer(smcdiff.exact_score(prior, smcdiff.VE()), observation=obs, **kw)
    with pytest.raises(SMCDiffError, match="not a log_likelihood callable"):
        smcdiff.steer(model, log_likelihood=lambda x: -x.square().sum(-1), **kw)
    with pytest.raises(SMCDiffError, match="reward"):
        smcdiff.steer(model, observation=obs, reward=lambda x: x[:, 0], **kw)
    with pytest.raises(SMCDiffError, match="needs observation"):
        smcdiff.steer(model, **kw)
    with pytest.raises(SMCDiffError, match="n_runs"):
        batched = smcdiff.LinearGaussianObservation(A3[None].repeat(2, 1, 1), Y3[None].repeat(2, 1),
                                                    0.5)  # fmt: skip
        smcdiff.steer(model, observation=batched, n_runs=3, **kw)
    with pytest.raises(SMCDiffError, match="columns"):
        smcdiff.steer(
            model, observation=smcdiff.LinearGaussianObservation(torch.ones(1, 4), [0.0], 1.0), **kw
        )
    with pytest.raises(SMCDiffError, match="rank-deficient"):
        smcdiff.LinearGaussianObservation(torch.ones(2, 3), Y3, 0.5)
    with pytest.raises(SMCDiffError, match="sigma"):
        smcdiff.LinearGaussianObservation(A3, Y3, 0.0)
    with pytest.raises(SMCDiffError, match="observation must be"):
        smcdiff.steer(model, observation="y", **kw)
    # given as the log-likelihood, the observation is used (same numbers as observation=)
    a = smcdiff.steer(model, log_likelihood=obs, seed=0, **kw)
    b = smcdiff.steer(model, observation=obs, seed=0, **kw)
    torch.testing.assert_close(a.particles, b.particles)
    assert math.isfinite(float(a.log_z))
