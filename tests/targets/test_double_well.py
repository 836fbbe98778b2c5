"""DW family (``dw5``, ``dw50``): definition, exact log Z, exact sampler, modes.

Statistical checks are seeded and use 5 standard errors (a correct sampler fails one with
probability < 6e-7); the bugs they guard against (a wrong delta, a lost Gaussian block, a biased
sign) move the statistics by many more standard errors at these sizes.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from smcdiff_targets.double_well import VARIANTS, DoubleWell, _well, dw5, dw50
from smcdiff_targets.energy import MW5

from smcdiff.errors import SMCDiffError
from smcdiff.seeding import seeded_generator as gen
from smcdiff.target import Target, grad_log_prob
from tests.stats import (
    assert_gaussian_variance,
    assert_iid_mean,
    assert_proportions,
    grid_log_integral,
)


def _direct_log_prob(x: np.ndarray, m: int, delta: float) -> np.ndarray:
    """Loop over samples and coordinates, straight from the definition."""
    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[n] += -((x[n, i] ** 2 - delta) ** 2) if i < m else -0.5 * x[n, i] ** 2
    return out


def _quad_log_z_well(delta: float) -> float:
    # every integrand is < e^-400 of its peak outside [-8, 8] for delta <= 4
    return math.log(
        quad(lambda t: math.exp(-((t * t - delta) ** 2)), -8, 8, epsrel=1e-13, limit=200)[0]
    )


TARGETS = [dw5(), dw50(), DoubleWell(7, 3, 1.5)]


def test_variants_are_pinned():
    assert set(VARIANTS) == {"dw5", "dw50"}
    a, b = VARIANTS["dw5"](), VARIANTS["dw50"]()
    assert (a.name, a.dim, a.n_wells, a.delta, a.n_modes) == ("dw5", 5, 5, 4.0, 32)
    assert (b.name, b.dim, b.n_wells, b.delta, b.n_modes) == ("dw50", 50, 5, 2.0, 32)
    assert isinstance(a, Target) and a.to("cpu", torch.float64) is a


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_log_prob_matches_direct_formula(target):
    x = 2.0 * torch.randn(20, target.dim, generator=gen(0), dtype=torch.float64)
    ref = _direct_log_prob(x.numpy(), target.n_wells, target.delta)
    np.testing.assert_allclose(target.log_prob(x).numpy(), ref, rtol=1e-12, atol=1e-10)
    lp32 = target.log_prob(x.float())
    assert lp32.dtype == torch.float32 and lp32.shape == (20,)


def test_dw5_is_mw5():
    x = 2.0 * torch.randn(50, 5, generator=gen(1), dtype=torch.float64)
    assert torch.allclose(dw5().log_prob(x), MW5().log_prob(x), rtol=1e-14)
    assert dw5().log_z == pytest.approx(MW5().log_z, abs=1e-10)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_gradient_matches_finite_differences(target):
    x = 1.5 * torch.randn(4, target.dim, generator=gen(2), dtype=torch.float64)
    _, grad = grad_log_prob(target, x)
    h = 1e-6
    eye = torch.eye(target.dim, dtype=torch.float64)
    fd = torch.stack(
        [(target.log_prob(x + h * e) - target.log_prob(x - h * e)) / (2 * h) for e in eye], dim=1
    )
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_log_z_matches_independent_quadrature(target):
    m, d = target.n_wells, target.dim
    ref = m * _quad_log_z_well(target.delta) + 0.5 * (d - m) * math.log(2 * math.pi)
    assert target.log_z == pytest.approx(ref, abs=1e-9)


def test_published_and_pinned_log_z_values():
    assert dw5().log_z == pytest.approx(-0.54106, abs=1e-5)  # BENCHMARKS.md, 5 x -0.10821
    # dw50: 5 log int e^{-(t^2-2)^2} dt + 45/2 log 2 pi, by an independent Riemann sum
    t = np.linspace(-6, 6, 120_001)
    z1 = np.exp(-((t * t - 2.0) ** 2)).sum() * (t[1] - t[0])
    assert dw50().log_z == pytest.approx(5 * math.log(z1) + 22.5 * math.log(2 * math.pi), abs=1e-9)


def test_log_z_matches_the_class_log_prob_on_a_grid():
    # DoubleWell(2, 1, 2.0): exp(log_prob) on a 2-D grid integrates to exp(log_z)
    target = DoubleWell(2, 1, 2.0)
    h = 0.02
    t = torch.arange(-400, 401, dtype=torch.float64) * h
    grid = torch.cartesian_prod(t, t)
    log_int = grid_log_integral(target.log_prob(grid), h, 2)
    assert log_int == pytest.approx(target.log_z, abs=1e-8)


@pytest.mark.parametrize("delta", [4.0, 2.0, 1.5])
def test_rejection_envelope_dominates(delta):
    well = _well(delta)
    x = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    (mp, mm), s, (wp, wm) = well.modes, well.scale, well.weights
    log_g = torch.logaddexp(
        math.log(wp) + torch.distributions.Normal(mp, s).log_prob(x),
        math.log(wm) + torch.distributions.Normal(mm, s).log_prob(x),
    )
    ratio = well.log_f(x) - log_g
    assert ratio.max() <= well.log_bound < ratio.max() + 1.0
    assert math.exp(well.log_z - well.log_bound) > 0.45  # acceptance rate


@pytest.mark.parametrize("target", [dw5(), dw50()], ids=lambda t: t.name)
def test_sampler_moments_and_modes(target):
    n, m = 20_000, target.n_wells
    x = target.sample(n, gen(3), dtype=torch.float64)
    assert x.shape == (n, target.dim) and x.dtype == torch.float64
    wells = x[:, :m]
    # E|x_i| and E x_i^2 of every well coordinate against quadrature
    m1, m2 = target.abs_mean, target.second_moment
    assert_iid_mean(wells.abs(), m1, m2 - m1**2, what="E|x_i|")
    t = np.linspace(-8, 8, 160_001)
    f = np.exp(-((t * t - target.delta) ** 2))
    m4 = (t**4 * f).sum() / f.sum()
    assert_iid_mean(wells.square(), m2, m4 - m2**2, what="E x_i^2")
    # the Gaussian block: mean 0, variance 1 (pooled)
    gauss = x[:, m:].reshape(-1)
    if gauss.numel():
        assert_iid_mean(gauss, 0.0, 1.0, what="Gaussian block")
        assert_gaussian_variance(gauss, 1.0, what="Gaussian block")
    # 32 modes of equal weight
    counts = torch.bincount(target.mode_index(x), minlength=32).double()
    assert counts.shape == (32,)
    assert_proportions(counts / n, 1 / 32, n, what="mode fractions")


def test_mode_index_and_seeding():
    target = dw50()
    x = torch.zeros(2, 50)
    x[0, :5] = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    x[1, 5:] = 1.0  # Gaussian coordinates do not enter the mode
    assert target.mode_index(x).tolist() == [1 + 4 + 8, 0]
    assert torch.equal(target.sample(64, gen(4)), target.sample(64, gen(4)))


def test_errors():
    with pytest.raises(SMCDiffError, match="n_wells"):
        DoubleWell(3, 4, 1.0)
    with pytest.raises(SMCDiffError, match="delta"):
        DoubleWell(3, 2, 0.0)
    with pytest.raises(SMCDiffError, match="dim"):
        DoubleWell(0, 1, 1.0)
    with pytest.raises(SMCDiffError, match="log_prob"):
        dw5().log_prob(torch.zeros(3, 6))
    with pytest.raises(SMCDiffError, match="n must be an int >= 1"):
        dw5().sample(0)
