"""Diffusion-path SMC with estimated scores: exact for any estimator error and step count."""

import math

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.energy import sample
from tests.stats import assert_unbiased, assert_z_unbiased


def shifted_gaussian(mean, std, log_c):
    d = mean.shape[0]

    def log_prob(x):
        z = (x - mean.to(x)) / std
        return -0.5 * (z * z).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi) + log_c

    return smcdiff.as_target(log_prob, d, "shifted gaussian")


@pytest.mark.parametrize("estimator", ["tweedie", "grad"])
def test_diffusion_smc_is_unbiased_for_z_and_moments_with_few_steps(estimator):
    # t_min = 0.3: p_{t_min} is far from pi, so a missing end correction would show
    mean = torch.tensor([1.0, -0.5, 0.3])
    target = shifted_gaussian(mean, 0.6, 2.0)
    res = sample(
        target, method="diffusion", n_particles=400, n_runs=16, seed=0, n_steps=15, n_mc=16,
        t_min=0.3, final_moves=0, estimator=estimator, dtype=torch.float64,
    )  # fmt: skip
    assert_z_unbiased(res.log_z, 2.0, n_se=4.5, max_se=0.1)
    m, _ = weighted_moments(res.particles, res.log_weights)  # (R, d)
    assert_unbiased(m, mean, n_se=4.5, what="mean")
    assert res.info["n_target_evals"] > 400 * 16 * 15 * 16 * 0.9


def test_diffusion_smc_final_moves_keep_the_target_and_baselines_run():
    mean = torch.tensor([2.0, -1.0])
    target = shifted_gaussian(mean, 0.5, 0.0)
    res = sample(target, method="diffusion", n_particles=1000, seed=1, n_steps=20, n_mc=16)
    m = (res.weights.unsqueeze(-1) * res.particles).sum(0)
    assert float((m - mean).abs().max()) < 0.1
    for method in ("rdmc", "ensemble"):
        r = sample(target, method=method, n_particles=500, seed=2, n_steps=30, n_mc=32)
        assert torch.isnan(r.log_z)
        assert float((r.particles.mean(0) - mean).abs().max()) < 0.3  # unweighted, biased
    with pytest.raises(smcdiff.SMCDiffError, match="unknown options"):
        sample(target, method="diffusion", n_particles=10, bogus=1)


def test_a_nan_target_at_inner_samples_names_the_step_and_keeps_the_partial_run():
    """The estimators do not raise from inside the step: the engine's guard names the quantity
    and the step, and the run up to the last good step comes back (target NaN beyond x0 = 2:
    rdMC's fixed common draws reach it only after a few steps; the refined estimator's fresh
    draws already at step 0, where the engine has no partial run to return)."""

    def log_prob(x):
        lp = -0.5 * (x * x).sum(-1)
        return torch.where(x[:, 0] > 2.0, torch.full_like(lp, math.nan), lp)

    target = smcdiff.as_target(log_prob, 2)
    for score in ("rdmc", "refined"):
        with pytest.raises(smcdiff.NonFiniteError, match=r"target log_prob .* at step \d+/6") as e:
            sample(target, method="diffusion", score=score, n_particles=32, n_steps=6, n_mc=8,
                   seed=0, progress=False)  # fmt: skip
        assert e.value.quantity.startswith("target log_prob")
        if score == "rdmc":
            assert e.value.step >= 1 and e.value.partial is not None
