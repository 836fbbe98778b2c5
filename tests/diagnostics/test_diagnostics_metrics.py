"""Sample-based distances and weighted moments."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from smcdiff.diagnostics import (
    energy_distance,
    gaussian_mmd,
    sliced_wasserstein,
    weighted_moments,
)
from smcdiff.diagnostics import metrics as metrics_module
from smcdiff.seeding import seeded_generator as gen

DISTANCES = [energy_distance, sliced_wasserstein, gaussian_mmd]


def test_same_distribution_near_zero_and_shift_clearly_positive():
    # N = M = 1500 in d = 2. Expected V-statistic values for two samples of one law:
    # energy: (1/N + 1/M) E|X - X'| = (2/1500) sqrt(pi) = 0.0024; MMD^2 <= 1/N + 1/M = 0.0013;
    # sliced W2 of two n-samples of a normal: O(sqrt(log n / n)), 0.05-0.075 over seeds here.
    # Tolerances are 2-5x those scales. A unit mean shift gives energy ~0.45 and MMD^2 ~0.12
    # (> 10 x tolerance), and sliced W2 = sqrt(E[(theta . mu)^2]) = |mu| / sqrt(d) = 0.71.
    n, d = 1500, 2
    y = torch.randn(n, d, generator=gen(0))
    x_same = torch.randn(n, d, generator=gen(1))
    x_shift = x_same + torch.tensor([1.0, 0.0])
    tolerances = {energy_distance: 0.012, sliced_wasserstein: 0.15, gaussian_mmd: 0.006}
    for f, tol in tolerances.items():
        assert 0 <= f(x_same, y).item() < tol, f.__name__
        assert f(y, y).item() == pytest.approx(0.0, abs=1e-12)  # identical sets: exactly zero
    assert energy_distance(x_shift, y).item() > 10 * tolerances[energy_distance]
    assert gaussian_mmd(x_shift, y).item() > 10 * tolerances[gaussian_mmd]
    assert sliced_wasserstein(x_shift, y).item() == pytest.approx(math.sqrt(0.5), abs=0.08)


def test_sliced_w2_of_shifted_1d_gaussians_is_the_shift():
    # W2(N(0,1), N(m,1)) = |m|; the empirical value is |m_hat| + O(1/N), and m_hat - m has sd
    # sqrt(2/N) = 0.022 at N = 4000: tolerance 3 sd.
    n, m = 4000, 1.5
    x = torch.randn(n, generator=gen(2))
    y = torch.randn(n, generator=gen(3)) + m
    assert sliced_wasserstein(x, y).item() == pytest.approx(m, abs=0.07)
    assert sliced_wasserstein(x, y, p=1).item() == pytest.approx(m, abs=0.07)


def test_sliced_wasserstein_is_exact_in_1d():
    x = torch.randn(700, generator=gen(4), dtype=torch.float64)
    y = torch.randn(500, generator=gen(5), dtype=torch.float64) * 1.3 + 0.2
    w = torch.rand(700, generator=gen(6), dtype=torch.float64)
    for weights in (None, w):
        u_w = None if weights is None else weights.numpy()
        ref = scipy.stats.wasserstein_distance(x.numpy(), y.numpy(), u_weights=u_w)
        assert sliced_wasserstein(x, y, weights, p=1).item() == pytest.approx(ref, rel=1e-10)
    # equal sizes, equal weights: W2^2 is the mean squared gap of the sorted samples
    y2 = y[:500].clone()
    x2 = x[:500]
    w2 = (x2.sort().values - y2.sort().values).pow(2).mean().sqrt()
    assert sliced_wasserstein(x2, y2, p=2).item() == pytest.approx(w2.item(), rel=1e-10)


def test_energy_distance_matches_scipy_in_1d():
    # scipy returns sqrt(2 int (F - G)^2) = sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|): D^2 is its square.
    x = torch.randn(600, generator=gen(7), dtype=torch.float64)
    y = torch.randn(400, generator=gen(8), dtype=torch.float64) + 0.4
    w = torch.rand(600, generator=gen(9), dtype=torch.float64)
    ref = scipy.stats.energy_distance(x.numpy(), y.numpy())
    assert energy_distance(x, y).item() == pytest.approx(ref**2, rel=1e-10)
    ref_w = scipy.stats.energy_distance(x.numpy(), y.numpy(), u_weights=w.numpy())
    assert energy_distance(x, y, w).item() == pytest.approx(ref_w**2, rel=1e-10)


@pytest.mark.parametrize("f", DISTANCES, ids=lambda f: f.__name__)
def test_weights_equal_duplication(f):
    x = torch.randn(300, 3, generator=gen(10))
    y = torch.randn(250, 3, generator=gen(11)) + 0.3
    counts = torch.randint(0, 4, (300,), generator=gen(12))  # zero counts included
    x_dup = x.repeat_interleave(counts, dim=0)
    assert f(x, y, counts).item() == pytest.approx(f(x_dup, y).item(), rel=1e-9, abs=1e-12)


def test_blocking_does_not_change_the_value(monkeypatch):
    x = torch.randn(200, 2, generator=gen(13))
    y = torch.randn(150, 2, generator=gen(14))
    w = torch.rand(200, generator=gen(15))
    whole = [energy_distance(x, y, w), gaussian_mmd(x, y, w)]
    monkeypatch.setattr(metrics_module, "_BLOCK_BYTES", 8 * 200 * 30)  # 30-row blocks
    blocked = [energy_distance(x, y, w), gaussian_mmd(x, y, w)]
    for a, b in zip(whole, blocked, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_outputs_float64_and_bandwidth():
    x = torch.randn(100, 2, generator=gen(16))
    y = torch.randn(120, 2, generator=gen(17))
    for f in DISTANCES:
        assert f(x, y).dtype == torch.float64
    # a huge bandwidth makes every kernel value ~1: MMD^2 -> 0; a tiny one: -> 1/N + 1/M
    assert gaussian_mmd(x, y, bandwidth=1e6).item() == pytest.approx(0.0, abs=1e-9)
    assert gaussian_mmd(x, y, bandwidth=1e-6).item() == pytest.approx(1 / 100 + 1 / 120)


def test_weighted_moments_match_numpy():
    x = torch.randn(4, 500, 3, generator=gen(18), dtype=torch.float64)
    lw = torch.randn(4, 500, generator=gen(19), dtype=torch.float64)
    lw[:, :10] = -math.inf
    mean, cov = weighted_moments(x, lw)
    assert mean.shape == (4, 3) and cov.shape == (4, 3, 3) and mean.dtype == torch.float64
    for r in range(4):
        w = torch.softmax(lw[r], 0).numpy()
        np.testing.assert_allclose(mean[r].numpy(), np.average(x[r].numpy(), axis=0, weights=w))
        ref = np.cov(x[r].numpy().T, aweights=w, bias=True)
        np.testing.assert_allclose(cov[r].numpy(), ref, atol=1e-12)
    m1, c1 = weighted_moments(x[0].float(), lw[0])
    assert m1.shape == (3,) and c1.dtype == torch.float64
