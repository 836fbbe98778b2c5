"""Tempered SMC is right by default and honest when not: a run that stops below temperature 1
raises; NaN target log-densities and gradients met by the moves raise a NonFiniteError naming
the quantity and the step (nan_as_neg_inf=True makes NaN a zero density, sampled correctly);
diverging unadjusted moves warn; the unbiased option's log Z is unbiased where the adaptive
run's is visibly not."""

import math

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.energy import TemperingIncompleteError, sample
from smcdiff.mcmc import DivergenceWarning
from tests.stats import assert_outside, assert_unbiased, assert_z_unbiased, replicate_se


def gaussian(mean, std, log_c):
    """Unnormalised N(mean, std^2 I) times e^{log_c}: log Z = log_c."""
    d = mean.shape[0]

    def log_prob(x):
        z = (x - mean) / std
        return -0.5 * (z * z).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi) + log_c

    return smcdiff.as_target(log_prob, d)


def wide_nan_beyond_5(x):
    """exp(-|x|^2 / 18) (N(0, 9 I) up to 18 pi), NaN where x_0 > 5 (sqrt of a negative
    number): never hit by the N(0, I) reference draws, hit by the moves at high temperature."""
    return -(x * x).sum(-1) / 18.0 + torch.sqrt(5.0 - x[:, 0]) * 0.0


def test_stopping_below_temperature_one_raises_with_the_partial_run():
    """max_steps=3 ends at temperature ~0.55: an error, not an answer (a tempered law's
    particles and normaliser are not the target's); the partial run is kept on the error."""
    t = gaussian(torch.full((2,), 2.0), 0.5, 0.0)
    with pytest.raises(TemperingIncompleteError, match=r"max_steps=3 at temperature 0\.\d+ < 1"):
        sample(t, n_particles=200, seed=0, max_steps=3)
    try:
        sample(t, n_particles=200, n_runs=2, seed=0, max_steps=3)
    except TemperingIncompleteError as err:
        assert len(err.temperature) == 2 and max(err.temperature) < 1
        assert err.partial.particles.shape == (2, 200, 2) and err.partial.log_z.shape == (2,)
    res = sample(t, n_particles=200, seed=0, max_steps=30)  # enough steps: unchanged
    assert float(res.trace["temperature"][-1]) == 1.0


def test_a_nan_log_density_in_a_region_raises_naming_the_quantity_and_the_step():
    target = smcdiff.as_target(wide_nan_beyond_5, 2)
    with pytest.raises(smcdiff.NonFiniteError, match=r"target log_prob in MCMC move .* step \d+"):
        sample(target, n_particles=200, seed=0)
    try:
        sample(target, n_particles=200, seed=0)
    except smcdiff.NonFiniteError as err:
        assert err.quantity == "target log_prob in MCMC move" and err.step >= 2


def test_a_nan_gradient_raises():
    def nan_gradient(x):  # finite everywhere; the gradient is NaN where x_0 > 1.5
        return -0.5 * (x * x).sum(-1) + torch.where(x[:, 0] > 1.5, 0.0, torch.sqrt(1.5 - x[:, 0]))

    with pytest.raises(smcdiff.NonFiniteError, match="target gradient in MCMC move") as err:
        sample(smcdiff.as_target(nan_gradient, 2), n_particles=200, seed=0)
    assert err.value.quantity == "target gradient in MCMC move" and err.value.step >= 2


def test_nan_as_neg_inf_samples_the_truncated_gaussian():
    """NaN as zero density: the target is N(0, I) truncated to x_0 < 1 (NaN beyond), with
    Z = 2 pi Phi(1) and E[x_0] = -phi(1) / Phi(1); a third of the reference draws (std 1.5)
    land where it is NaN and get weight zero, and the moves never enter it."""

    def nan_beyond_1(x):
        return -0.5 * (x * x).sum(-1) + torch.sqrt(1.0 - x[:, 0]) * 0.0

    target = smcdiff.as_target(nan_beyond_1, 2)
    res = sample(target, n_particles=1000, n_runs=16, seed=1, dtype=torch.float64,
                 reference_std=1.5, nan_as_neg_inf=True)  # fmt: skip
    cdf = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    pdf = math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert_z_unbiased(res.log_z, math.log(2 * math.pi * cdf), n_se=4.5, max_se=0.02)
    m, _ = weighted_moments(res.particles, res.log_weights)  # (R, 2)
    assert_unbiased(m[:, 0], -pdf / cdf, n_se=4.5, what="truncated mean")
    assert bool((res.particles[..., 0] <= 1).all())


def test_diverging_ula_moves_warn():
    """ULA with h = 3 on N(2, 0.25 I) multiplies the distance to the mean by -11 per move."""
    t = gaussian(torch.full((2,), 2.0), 0.5, 0.0)
    with pytest.warns(DivergenceWarning, match="ula moves diverged"):
        res = sample(t, n_particles=200, seed=0, kernel="ula", step_size=3.0, n_moves=20)
    assert float(res.trace["diverged"].nan_to_num(0.0).sum()) > 0


def test_a_fixed_schedule_is_followed_and_checked():
    t = gaussian(torch.full((2,), 1.0), 0.7, 0.5)
    res = sample(t, n_particles=500, n_runs=2, seed=3, schedule=[0.1, 0.3, 0.6, 1.0])
    temps = res.trace["temperature"][:, 0]
    assert temps.tolist() == [0.0, 0.1, 0.3, 0.6, 1.0, 1.0]  # the last step moves at 1
    with pytest.raises(smcdiff.SMCDiffError, match="schedule must be non-decreasing"):
        sample(t, schedule=[0.5, 0.2, 1.0])
    with pytest.raises(smcdiff.SMCDiffError, match="schedule must be non-decreasing"):
        sample(t, schedule=[0.5, 0.9])
    with pytest.raises(smcdiff.SMCDiffError, match="not both"):
        sample(t, schedule=[0.5, 1.0], unbiased=True)


def test_the_unbiased_option_is_unbiased_where_the_adaptive_run_is_not():
    """A seeded z-test of Z_hat / Z over 6000 independent runs of N = 30 particles (MALA, two
    moves per temperature, CESS target 0.3: about 5 temperatures). The adaptive run's mean is
    6-7 % low (the small-N bias of choosing temperatures and step sizes from the particles,
    smaller at larger N), measured z from -7.8 to -10.2 over seeds 1-4; the second run, on each
    pilot's temperatures and step sizes, is within 1.7 SE over those seeds. SE ~0.008 per run
    type, so a bias as large as the adaptive run's would fail the first check by > 3 SE."""
    t = gaussian(torch.tensor([2.0, -1.0, 0.5, 0.0]), 0.5, 3.0)
    res = sample(t, n_particles=30, n_runs=6000, seed=1, dtype=torch.float64, kernel="mala",
                 n_moves=2, target_ess=0.3, unbiased=True)  # fmt: skip
    assert_z_unbiased(res.log_z, 3.0, n_se=4.5, max_se=0.01)  # E[Z_hat] = Z
    adaptive = torch.exp(res.info["adaptive_log_z"] - 3.0)
    assert_outside(adaptive.mean(), 1.0, replicate_se(adaptive), n_se=5.0, what="adaptive Z")
    assert float(adaptive.mean()) < 1.0  # low
    assert res.info["n_target_evals"] > 1.5 * int(res.trace["nfe"].sum())  # both runs counted
