"""TDS and MCMC-started particles against the closed-form linear-Gaussian posterior.

Same seeded z-tests as test_fk_exact.py: R independent runs, |z| < 4.5 on the across-run mean.
"""

import pytest
import torch

import smcdiff
from tests.steering.test_fk_exact import R, assert_unbiased, run_moments


@pytest.mark.parametrize("path_correction", [True, False])
def test_tds_recovers_the_gaussian_posterior_and_evidence(gaussian_inverse, path_correction):
    p = gaussian_inverse
    res = smcdiff.steer(
        p.model,
        log_likelihood=p.log_likelihood,
        method="tds",
        n_particles=1000,
        n_steps=30 if path_correction else 400,
        n_runs=R if path_correction else 8,
        seed=11,
        path_correction=path_correction,
    )
    assert res.info["proposal"] == "guided" and res.info["tilt_schedule"] == "constant"
    mean, cov = run_moments(res)
    if path_correction:  # exact for any step count
        assert_unbiased(mean, p.posterior.mean(), 0.06, "TDS posterior mean")
        assert_unbiased(cov.flatten(1), p.posterior.covariance().flatten(), 0.035, "TDS cov")
        z_ratio = torch.exp(res.log_z - p.log_evidence)
        assert_unbiased(z_ratio.unsqueeze(1), torch.ones(1), 0.25, "TDS evidence")
    else:  # TDS as published: exact only as the step count grows
        err = float((mean.mean(0) - p.posterior.mean()).norm())
        assert err < 0.05, err
        assert abs(float(res.log_z.mean() - p.log_evidence)) < 0.05


def test_tds_refuses_settings_it_fixes(gaussian_inverse):
    p = gaussian_inverse
    with pytest.raises(smcdiff.SMCDiffError, match="tds"):
        smcdiff.steer(p.model, log_likelihood=p.log_likelihood, method="tds", potential="max")


@pytest.mark.parametrize("init", ["pcnl", "mala"])
def test_mcmc_started_particles_keep_the_target_exact(gaussian_inverse, init):
    p = gaussian_inverse
    res = smcdiff.steer(
        p.model,
        log_likelihood=p.log_likelihood,
        n_particles=1000,
        n_steps=30,
        n_runs=R,
        seed=13,
        init=init,
        init_moves=10,
        t_max=0.4,  # start where x_t still carries signal, so a wrong start law would show
        tilt_schedule="constant",
    )
    assert res.info["init"] == init
    assert torch.isfinite(res.trace["accept"][0]).all()
    mean, cov = run_moments(res)
    assert_unbiased(mean, p.posterior.mean(), 0.06, f"{init} posterior mean")
    assert_unbiased(cov.flatten(1), p.posterior.covariance().flatten(), 0.035, f"{init} cov")
    z_ratio = torch.exp(res.log_z - p.log_evidence)
    assert_unbiased(z_ratio.unsqueeze(1), torch.ones(1), 0.25, f"{init} evidence")


def test_mcmc_start_without_path_correction_and_bad_init(gaussian_inverse):
    p = gaussian_inverse
    res = smcdiff.steer(
        p.model,
        log_likelihood=p.log_likelihood,
        n_particles=2000,
        n_steps=200,
        n_runs=4,
        seed=14,
        init="pcnl",
        path_correction=False,
    )
    mean, _ = run_moments(res)
    assert float((mean.mean(0) - p.posterior.mean()).norm()) < 0.05
    with pytest.raises(smcdiff.SMCDiffError, match="init"):
        smcdiff.steer(p.model, log_likelihood=p.log_likelihood, init="gibbs")
    with pytest.raises(smcdiff.SMCDiffError, match="init"):
        smcdiff.steer(p.model, method="none", init="mala")
