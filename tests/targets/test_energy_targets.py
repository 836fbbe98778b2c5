"""Energy benchmark targets: definitions, ground truths and exact samplers.

Statistical checks are seeded (deterministic) and use 5 standard errors: a correct sampler fails
one with probability < 6e-7, while every bug they guard against (a flipped sign, a wrong scale,
a mode missed) moves the statistic by many more standard errors at these sample sizes.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import logsumexp
from scipy.stats import norm
from smcdiff_targets.energy import (
    _DOUBLE_WELL,
    _MW_WELL,
    MW5,
    Funnel,
    Gmm40Fab,
    ManyWell,
    load_gmm40_fab_means,
)

from smcdiff.errors import SMCDiffError
from smcdiff.seeding import seeded_generator as gen
from smcdiff.target import Target, as_target, grad_log_prob
from tests.stats import (
    assert_gaussian_variance,
    assert_iid_mean,
    assert_proportions,
    assert_unbiased,
    grid_log_integral,
)

TARGETS = [Gmm40Fab, Funnel, ManyWell, MW5]
SHARED_JSON = Path(__file__).parents[3] / "shared" / "benchmarks" / "gmm40_fab_means.json"


def _quad(f) -> float:
    """1-D integral over [-8, 8]: every integrand below is < e^-2000 of its peak outside."""
    return quad(f, -8.0, 8.0, points=[0.0], epsabs=0.0, epsrel=1e-12, limit=200)[0]


# ----------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("cls", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_shape_dtype_and_finite_gradient(cls, dtype):
    target = cls()
    assert isinstance(target, Target)
    if hasattr(target, "to"):  # targets holding tensors compute in their own dtype
        target = target.to(dtype=dtype)
    x = 2.0 * torch.randn(7, target.dim, generator=gen(0), dtype=dtype)
    lp = target.log_prob(x)
    assert lp.shape == (7,) and lp.dtype == dtype
    lp2, grad = grad_log_prob(target, x)
    assert grad.shape == x.shape and grad.dtype == dtype
    assert torch.isfinite(grad).all() and torch.equal(lp2, lp)


@pytest.mark.parametrize("cls", TARGETS)
def test_log_prob_rejects_wrong_dim(cls):
    target = cls()
    with pytest.raises(SMCDiffError, match="log_prob"):
        target.log_prob(torch.zeros(3, target.dim + 1))


def test_constructor_and_sample_errors():
    with pytest.raises(SMCDiffError, match="even"):
        ManyWell(dim=3)
    with pytest.raises(SMCDiffError, match="dim"):
        Funnel(dim=1)
    with pytest.raises(SMCDiffError, match="n must be an int >= 1"):
        MW5().sample(0)


# ----------------------------------------------------------------------------- log_prob values
def test_log_prob_matches_independent_formulas():
    g = Gmm40Fab(dtype=torch.float64)
    x = torch.randn(50, 2, generator=gen(1), dtype=torch.float64) * 25
    means = load_gmm40_fab_means().numpy()
    s = math.log(1 + math.e)
    comp = norm.logpdf(x.numpy()[:, None, :], means[None], s).sum(-1)  # (50, 40)
    ref = logsumexp(comp, axis=1) - math.log(40)
    np.testing.assert_allclose(g.log_prob(x).numpy(), ref, rtol=1e-12, atol=1e-9)

    f = Funnel()
    x = torch.randn(50, 10, generator=gen(2), dtype=torch.float64) * 2
    xn = x.numpy()
    ref = norm.logpdf(xn[:, 0], 0, 3) + norm.logpdf(xn[:, 1:], 0, np.exp(xn[:, :1] / 2)).sum(1)
    np.testing.assert_allclose(f.log_prob(x).numpy(), ref, rtol=1e-12)

    mw = ManyWell()
    pair = torch.tensor([1.0, 2.0]).repeat(16).unsqueeze(0)  # E = 1 - 6 - 0.5 + 2 = -3.5
    assert mw.log_prob(pair).item() == pytest.approx(16 * 3.5)
    pair = torch.tensor([-1.0, 0.0]).repeat(16).unsqueeze(0)  # E = 1 - 6 + 0.5 = -4.5
    assert mw.log_prob(pair).item() == pytest.approx(16 * 4.5)

    m5 = MW5()
    x = torch.tensor([[0.0] * 5, [2.0, -2.0, 2.0, 2.0, -2.0], [1.0, 0.0, 2.0, 3.0, -1.0]])
    np.testing.assert_allclose(m5.log_prob(x).numpy(), [-80.0, 0.0, -9 - 16 - 0 - 25 - 9])


# ----------------------------------------------------------------------------- log Z
def test_gmm40_fab_is_normalised_by_grid_quadrature():
    # Components have std 1.31 and means in [-40, 40]^2: [-50, 50]^2 holds all mass up to
    # e^-28; at h = 0.5 the Riemann sum of a Gaussian has relative error 2 exp(-2 pi^2 std^2 / h^2)
    # = e^-135 (Poisson summation).
    h = 0.5
    t = torch.arange(-100, 101, dtype=torch.float64) * h
    grid = torch.cartesian_prod(t, t)
    log_int = grid_log_integral(Gmm40Fab(dtype=torch.float64).log_prob(grid), h, 2)
    assert abs(log_int) < 1e-9


def test_funnel_is_normalised_by_importance_sampling():
    # Proposal: x0 ~ N(0, 3.5^2), x_i | x0 ~ N(0, 2 e^{x0}): wider than the target in every
    # direction, so the weights are bounded (by (3.5/3) 2^{4.5} < 27) and the IS standard error
    # is well estimated.
    n, f = 100_000, Funnel()
    eps = torch.randn(n, 10, generator=gen(3), dtype=torch.float64)
    x0 = 3.5 * eps[:, :1]
    x = torch.cat([x0, torch.exp(0.5 * x0) * math.sqrt(2.0) * eps[:, 1:]], 1)
    xn = x.numpy()
    log_q = norm.logpdf(xn[:, 0], 0, 3.5) + norm.logpdf(
        xn[:, 1:], 0, np.sqrt(2.0) * np.exp(xn[:, :1] / 2)
    ).sum(1)
    w = np.exp(f.log_prob(x).numpy() - log_q)
    assert_unbiased(w, 1.0, max_se=0.01, what="E_q[pi / q]")


def test_manywell_ground_truth_by_quadrature():
    z1 = _quad(lambda t: math.exp(-(t**4) + 6 * t**2 + 0.5 * t))
    z1_pos = quad(lambda t: math.exp(-(t**4) + 6 * t**2 + 0.5 * t), 0, 8, epsrel=1e-12)[0]
    log_z = 16 * (math.log(z1) + 0.5 * math.log(2 * math.pi))
    assert log_z == pytest.approx(164.69568, abs=1e-4)  # published value, 5 decimals
    assert z1_pos / z1 == pytest.approx(0.84431, abs=5e-6)
    mw = ManyWell()
    assert mw.log_z == pytest.approx(log_z, abs=1e-9)
    assert mw.prob_x1_positive == pytest.approx(z1_pos / z1, abs=1e-10)


def test_manywell_log_z_matches_its_log_prob():
    # Vary one pair on a grid, hold the other 15 pairs at (0, 0) where their energy is 0:
    # the 2-D integral of exp(log_prob) is the per-pair normaliser exp(log_z / 16).
    # The integrand is analytic, so the Riemann sum converges exponentially in 1 / h.
    h = 0.05
    t1 = torch.arange(-80, 81, dtype=torch.float64) * h
    t2 = torch.arange(-200, 201, dtype=torch.float64) * h
    grid = torch.cartesian_prod(t1, t2)
    x = torch.cat([grid, torch.zeros(grid.shape[0], 30, dtype=torch.float64)], 1)
    mw = ManyWell()
    log_int = grid_log_integral(mw.log_prob(x), h, 2)
    assert log_int == pytest.approx(mw.log_z / 16, abs=1e-8)


def test_mw5_ground_truth_by_quadrature():
    z1 = _quad(lambda t: math.exp(-((t * t - 4) ** 2)))
    assert math.log(z1) == pytest.approx(-0.10821, abs=5e-6)
    assert 5 * math.log(z1) == pytest.approx(-0.54106, abs=1e-5)
    m5 = MW5()
    assert m5.log_z == pytest.approx(5 * math.log(z1), abs=1e-10)
    # the class's own log_prob along one coordinate, the others at the mode 2 (energy 0)
    h = 0.001
    t = torch.arange(-5000, 5001, dtype=torch.float64) * h
    x = torch.cat([t[:, None], torch.full((t.shape[0], 4), 2.0, dtype=torch.float64)], 1)
    log_int = grid_log_integral(m5.log_prob(x), h, 1)
    assert 5 * log_int == pytest.approx(m5.log_z, abs=1e-8)
    abs_mean = _quad(lambda t: abs(t) * math.exp(-((t * t - 4) ** 2))) / z1
    assert m5.abs_mean == pytest.approx(abs_mean, abs=1e-10)


@pytest.mark.parametrize("well", [_DOUBLE_WELL, _MW_WELL], ids=["double_well", "mw"])
def test_rejection_envelope_dominates(well):
    # f <= e^{log_bound} g at every grid point, and the bound is not loose by more than 1.
    x = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    (mp, mm), s, (wp, wm) = well.modes, well.scale, well.weights
    log_g = torch.logaddexp(
        math.log(wp) + torch.distributions.Normal(mp, s).log_prob(x),
        math.log(wm) + torch.distributions.Normal(mm, s).log_prob(x),
    )
    ratio = well.log_f(x) - log_g
    assert ratio.max() <= well.log_bound
    assert ratio.max() > well.log_bound - 1.0


# ----------------------------------------------------------------------------- samplers
def test_gmm40_fab_sampler_and_modes():
    g = Gmm40Fab(dtype=torch.float64)
    assert torch.equal(g.mode_index(g.means), torch.arange(40))
    n = 40_000
    x = g.sample(n, gen(4))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    counts = torch.bincount(g.mode_index(x), minlength=40).double()
    # mode counts ~ Binomial(n, 1/40): 1000 ± 31.2; the nearest-mean rule misassigns < 1e-6
    # (closest pair of means is > 10 std apart)
    assert_proportions(counts / n, 1 / 40, n, what="mode fractions")
    assert_iid_mean(x, g.mixture.mean(), torch.diagonal(g.mixture.covariance()))


def test_funnel_sampler_moments():
    n = 20_000
    x = Funnel().sample(n, gen(5), dtype=torch.float64)
    assert x.shape == (n, 10)
    # Var(x0) = 9; the sample variance of a Gaussian has SE 9 sqrt(2 / (n - 1))
    assert_gaussian_variance(x[:, 0], 9.0, what="Var(x0)")
    # x_i^2 e^{-x0} ~ chi^2_1 (mean 1, var 2), independent over i and samples
    z2 = x[:, 1:].square() * torch.exp(-x[:, :1])
    assert_iid_mean(z2.reshape(-1), 1.0, 2.0, what="x_i^2 e^-x0")


def test_manywell_sampler_moments():
    n, mw = 20_000, ManyWell()
    x = mw.sample(n, gen(6))
    assert x.shape == (n, 32) and x.dtype == torch.float32
    p = mw.prob_x1_positive
    frac = (x[:, 0::2] > 0).double().mean(0)  # (16,) one per pair
    assert_proportions(frac, p, n, what="P(x1 > 0) per pair")
    assert_proportions(frac.mean(), p, 16 * n, what="P(x1 > 0) pooled")
    x2 = x[:, 1::2].double().reshape(-1)
    assert_iid_mean(x2, 0.0, 1.0, what="Gaussian coordinates")
    assert_gaussian_variance(x2, 1.0, what="Gaussian coordinates")


def test_mw5_sampler_moments_and_modes():
    n, m5 = 20_000, MW5()
    x = m5.sample(n, gen(7), dtype=torch.float64)
    assert x.shape == (n, 5)
    assert_iid_mean(x.abs(), m5.abs_mean, m5.second_moment - m5.abs_mean**2, what="E|x_i|")
    counts = torch.bincount(m5.mode_index(x), minlength=32).double()
    assert_proportions(counts / n, 1 / 32, n, what="mode fractions")
    signs = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0], [-1.0] * 5])
    assert m5.mode_index(signs).tolist() == [1 + 4 + 8, 0]


@pytest.mark.parametrize("cls", TARGETS)
def test_samplers_are_seeded(cls):
    a, b = cls().sample(64, gen(8)), cls().sample(64, gen(8))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- data and helpers
def test_gmm40_fab_means_json():
    means = load_gmm40_fab_means()
    assert means.shape == (40, 2) and means.dtype == torch.float64
    assert (means.abs() <= 40).all()
    g = Gmm40Fab()
    if SHARED_JSON.exists():  # the shipped copy is identical to the shared benchmark file
        shared = json.loads(SHARED_JSON.read_text())
        assert torch.equal(torch.tensor(shared["means"], dtype=torch.float64), means)
        # the JSON stores softplus(1) rounded to float32; the target uses the float64 value
        assert g.std == pytest.approx(shared["component_std"], abs=1e-7)
    # FAB's construction (torch.manual_seed(0) then torch.rand), by torch's stable CPU generator
    u = torch.rand(40, 2, generator=gen(0))
    assert torch.allclose(((u - 0.5) * 80).double(), means, atol=1e-5)
    assert g.to(dtype=torch.float64).log_prob(torch.zeros(1, 2, dtype=torch.float64)).dtype == (
        torch.float64
    )


def test_as_target_wraps_callable_and_checks_shapes():
    t = as_target(lambda x: -0.5 * x.square().sum(-1), dim=3, name="gauss")
    assert isinstance(t, Target) and t.dim == 3
    x = torch.randn(4, 3, generator=gen(9))
    lp, grad = grad_log_prob(t, x)
    assert lp.shape == (4,) and torch.allclose(grad, -x)
    bad = as_target(lambda x: x.sum(-1, keepdim=True), dim=3)
    with pytest.raises(SMCDiffError, match="log_prob"):
        bad.log_prob(x)
    with pytest.raises(SMCDiffError, match="shape"):
        t.log_prob(torch.zeros(4, 2))
    with pytest.raises(SMCDiffError, match="depend on x"):
        grad_log_prob(as_target(lambda x: torch.zeros(x.shape[0]), dim=3), x)
    with pytest.raises(SMCDiffError, match="dim"):
        as_target(lambda x: x, dim=0)
