"""The shared checks of tests/stats.py can fail: they pass on a correct estimate and fail on a
shifted one, a NaN, or a standard error too large to test."""

import math

import pytest
import torch

from smcdiff.seeding import seeded_generator
from tests.stats import (
    assert_gaussian_moments,
    assert_gaussian_variance,
    assert_iid_mean,
    assert_outside,
    assert_proportions,
    assert_sample_moments,
    assert_unbiased,
    assert_within,
    assert_z_unbiased,
    grid_log_integral,
    mode_mass,
    total_variation,
)

N = 20_000


def draws(seed: int = 0, d: int = 2) -> torch.Tensor:
    return torch.randn(N, d, generator=seeded_generator(seed), dtype=torch.float64)


def test_within_is_elementwise_and_refuses_nan():
    assert_within(torch.tensor([1.0, 2.0]), [1.4, 2.0], [0.1, 0.0])  # 4 SE; exact equality
    with pytest.raises(AssertionError, match="off by more than"):
        assert_within(torch.tensor([1.0, 2.0]), [1.6, 2.0], 0.1)
    with pytest.raises(AssertionError):
        assert_within(torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-12], [0.1, 0.0])
    with pytest.raises(AssertionError):
        assert_within(torch.tensor([math.nan]), 0.0, 1.0)


def test_outside_needs_one_element_far_off_and_refuses_nan():
    assert_outside(torch.tensor([1.0, 2.0]), [1.0, 2.6], 0.1)  # the second is 6 SE off
    with pytest.raises(AssertionError, match="expected more than"):
        assert_outside(torch.tensor([1.0, 2.0]), [1.4, 2.4], 0.1)  # 4 SE: not far enough
    with pytest.raises(AssertionError):
        assert_outside(torch.tensor([math.nan, 2.0]), [1.0, 2.6], 0.1)
    x = draws()  # a shifted mean is seen, the true one is not
    se = 1 / math.sqrt(N)
    assert_outside(x.mean(0), 10 * se, se)
    with pytest.raises(AssertionError):
        assert_outside(x.mean(0), 0.0, se)


def test_iid_checks_pass_on_the_law_and_fail_off_it():
    x = draws()
    assert_iid_mean(x, torch.zeros(2), 1.0)
    assert_gaussian_variance(x, 1.0)
    assert_gaussian_moments(x, torch.zeros(2), torch.eye(2))
    assert_sample_moments(x, torch.zeros(2), torch.eye(2))
    shift = 10 / math.sqrt(N)  # 10 standard errors of the mean
    with pytest.raises(AssertionError):
        assert_iid_mean(x + shift, torch.zeros(2), 1.0)
    with pytest.raises(AssertionError):
        assert_gaussian_variance(1.1 * x, 1.0)  # variance 1.21: 15 SE off
    with pytest.raises(AssertionError):
        assert_gaussian_moments(x + shift, torch.zeros(2), torch.eye(2))
    with pytest.raises(AssertionError):
        assert_sample_moments(x, torch.zeros(2), 1.1 * torch.eye(2))


def test_replicate_checks_and_max_se():
    runs = 1.0 + 0.1 * draws(1, 1)[:64, 0]  # 64 replicates, SE 0.0125
    assert_unbiased(runs, 1.0, max_se=0.02)
    with pytest.raises(AssertionError, match="too large to test"):
        assert_unbiased(runs, 1.0, max_se=0.01)
    with pytest.raises(AssertionError):
        assert_unbiased(runs, 1.1)
    assert_unbiased(runs, 1.1, bias=0.1)  # a known bias is allowed for
    per_point = 0.1 * draws(2, 64).reshape(-1, 64, 8)  # replicates on dim 1
    assert_unbiased(per_point, 0.0, dim=1)
    log_z = 3.0 + torch.log(runs)  # Z_hat / Z = runs, unbiased for 1
    assert_z_unbiased(log_z, 3.0, max_se=0.02)
    with pytest.raises(AssertionError):
        assert_z_unbiased(log_z, 2.8)


def test_proportions_mode_mass_and_tv():
    labels = (draws(3, 1)[:, 0] > 0).long()  # fair coin
    assert_proportions(torch.bincount(labels).double() / N, 0.5, N)
    with pytest.raises(AssertionError):
        assert_proportions(torch.bincount(labels).double() / N, [0.45, 0.55], N)
    weights = torch.full((2, N), 1.0 / N, dtype=torch.float64)
    mass = mode_mass(labels.expand(2, N), weights, 3)
    assert mass.shape == (2, 3) and torch.allclose(mass.sum(-1), torch.ones(2, dtype=mass.dtype))
    assert float(mass[0, 2]) == 0.0
    tv = total_variation(mass, [0.5, 0.5, 0.0])
    assert tv.shape == (2,) and float(tv.max()) < 0.02
    assert float(total_variation(torch.tensor([1.0, 0.0]), [0.0, 1.0])) == 1.0


def test_grid_log_integral_of_a_gaussian():
    h = 0.05
    t = torch.arange(-200, 201, dtype=torch.float64) * h
    grid = torch.cartesian_prod(t, t)
    log_f = -0.5 * grid.square().sum(-1)  # integral 2 pi
    assert grid_log_integral(log_f, h, 2) == pytest.approx(math.log(2 * math.pi), abs=1e-10)
