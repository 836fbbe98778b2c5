"""FK steering against closed-form posteriors and evidences.

Each test runs R independent particle systems at once and compares the across-run mean of an
estimator with the exact value using the across-run standard error (a seeded z-test, |z| < 4.5),
after checking that the standard error is small enough for the test to mean something.
"""

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from tests.stats import (
    assert_outside,
    assert_unbiased,
    assert_within,
    assert_z_unbiased,
    mode_mass,
    replicate_se,
    total_variation,
)

R = 32  # independent runs per check (enough for a stable standard error)


FK_VARIANTS = {
    "difference": {},
    "max": {"potential": "max", "ess_threshold": 0.9},
    "final-is": {"potential": "final"},
    "guided": {"proposal": "guided"},
    "constant-schedule": {"tilt_schedule": "constant"},
    "never-resample": {"ess_threshold": 0.0, "n_particles": 4000},  # plain IS: noisier
    "always-resample": {"ess_threshold": 1.0},
    "multinomial": {"resampling": "multinomial"},
    "ssp": {"resampling": "ssp"},
    "em-sampler": {"sampler": "em"},
}


@pytest.mark.parametrize("variant", list(FK_VARIANTS))
def test_fk_recovers_the_gaussian_posterior_and_evidence(gaussian_inverse, variant):
    p = gaussian_inverse
    kw = dict(FK_VARIANTS[variant])
    res = smcdiff.steer(
        p.model,
        log_likelihood=p.log_likelihood,
        n_particles=kw.pop("n_particles", 1000),
        n_steps=30,
        n_runs=R,
        seed=1,
        **kw,
    )
    assert res.info["path_correction"]  # exact prior => exact path weights by default
    mean, cov = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, p.posterior.mean(), n_se=4.5, max_se=0.06, what="posterior mean")
    assert_unbiased(cov, p.posterior.covariance(), n_se=4.5, max_se=0.035, what="posterior cov")
    # E[Z_hat] = Z
    assert_z_unbiased(res.log_z, p.log_evidence, n_se=4.5, max_se=0.25, what="evidence")


@pytest.mark.slow
def test_without_path_correction_few_steps_are_biased_and_many_steps_converge(gaussian_inverse):
    p = gaussian_inverse

    def mean_err(n_steps):
        res = smcdiff.steer(
            p.model,
            log_likelihood=p.log_likelihood,
            n_particles=4000,
            n_steps=n_steps,
            n_runs=8,
            seed=2,
            path_correction=False,
        )
        m, _ = weighted_moments(res.particles, res.log_weights)
        return float((m.mean(0) - p.posterior.mean()).norm())

    coarse, fine = mean_err(10), mean_err(200)
    assert coarse > 0.1  # the discretised sampler's own marginal is not the prior
    assert fine < coarse / 4


def test_guided_proposal_correction_keeps_the_target_of_the_base_proposal(gaussian_inverse):
    # Without path correction both proposals target the same (discretised) tilted law; dropping
    # the log p/q correction of the guided proposal would move it toward guidance's bias.
    p = gaussian_inverse
    kw = dict(
        log_likelihood=p.log_likelihood,
        n_particles=2000,
        n_steps=40,
        n_runs=16,
        path_correction=False,
    )
    base = smcdiff.steer(p.model, seed=3, **kw)
    guided = smcdiff.steer(p.model, seed=4, proposal="guided", **kw)
    base, _ = weighted_moments(base.particles, base.log_weights)
    guided, _ = weighted_moments(guided.particles, guided.log_weights)
    se = (replicate_se(base) ** 2 + replicate_se(guided) ** 2).sqrt()  # of the difference
    assert_within(guided.mean(0), base.mean(0), se, n_se=4.5, what="guided vs base mean")


def test_guidance_is_biased_and_none_samples_the_prior(gaussian_inverse):
    p = gaussian_inverse
    g = smcdiff.steer(
        p.model,
        log_likelihood=p.log_likelihood,
        method="guidance",
        n_particles=2000,
        n_steps=60,
        n_runs=8,
        seed=5,
    )
    m = g.particles.double().mean(1)  # (R, d): guidance has no weights to remove its bias
    assert_outside(m.mean(0), p.posterior.mean(), replicate_se(m), n_se=8, what="guidance")
    assert torch.all(g.log_weights == g.log_weights[..., :1])  # unweighted
    n = smcdiff.steer(p.model, method="none", n_particles=4000, n_steps=100, seed=5)
    prior_t = p.model.marginal(p.model.process.t_min)
    assert float((n.particles.double().mean(0) - prior_t.mean().double()).norm()) < 0.08


@pytest.mark.slow
def test_mixture_posterior_weights_are_recovered_and_error_shrinks_with_n(mixture_inverse_8d):
    p = mixture_inverse_8d
    exact_w = p.posterior.weights.double()
    assert int((exact_w > 0.05).sum()) >= 3  # several modes matter

    def tv_error(n):
        # path-corrected weights lose ESS in 8-D with few steps; 100 steps keep ESS/N ~ 0.65
        res = smcdiff.steer(
            p.model, log_likelihood=p.log_likelihood, n_particles=n, n_steps=100, n_runs=8, seed=6
        )
        comp = p.posterior.component_log_prob(res.particles).argmax(-1)  # (R, N)
        mass = mode_mass(comp, res.weights, p.posterior.n_components)
        return float(total_variation(mass, exact_w).mean())

    errs = [tv_error(n) for n in (250, 1000, 4000)]
    assert errs[2] < 0.05, errs
    assert errs[2] < 0.6 * errs[0], errs


@pytest.mark.slow
def test_reward_tilt_of_a_mixture_matches_the_exact_tilt(device):
    from smcdiff_targets import gmm2d_reward_problem

    prob = gmm2d_reward_problem(beta=0.7, device=device)
    model = smcdiff.exact_score(prob.prior, prob.process)
    res = smcdiff.steer(
        model, **prob.steer_kwargs(), n_particles=3000, n_steps=40, n_runs=R, seed=7
    )
    mean, _ = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, prob.exact.mean(), n_se=4.5, max_se=0.05, what="tilted mean")
    assert_z_unbiased(res.log_z, prob.log_z, n_se=4.5, max_se=0.1, what="Z_hat / Z")


def test_same_seed_same_output_and_shapes():
    from smcdiff_targets import gmm2d_reward_problem

    prob = gmm2d_reward_problem()
    model = smcdiff.exact_score(prob.prior, prob.process)
    kw = dict(**prob.steer_kwargs(), n_particles=200, n_steps=10)
    a, b, c = (smcdiff.steer(model, seed=s, **kw) for s in (0, 0, 1))
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_z, b.log_z)
    assert not torch.equal(a.particles, c.particles)
    assert a.particles.shape == (200, 2) and a.log_weights.shape == (200,)
    assert a.log_z.shape == () and a.ess.shape == (11,)
    assert torch.allclose(a.weights.sum(), torch.ones((), dtype=torch.float64))
    assert a.resample(50, seed=0).shape == (50, 2)
