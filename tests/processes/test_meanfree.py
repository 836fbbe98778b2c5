"""The mean-free noise process: subspace geometry, exact transition densities (normalised by
quadrature, checked by Monte Carlo), DEM's geometric VE schedule, and the closed-form score of a
mean-free Gaussian (against autograd and against denoising regression on exact samples)."""

import math

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP
from smcdiff.processes.meanfree import (
    GeometricVE,
    MeanFree,
    MeanFreeGaussian,
    center,
    helmert_basis,
)
from smcdiff.seeding import seeded_generator as gen
from tests.stats import assert_gaussian_variance, assert_iid_mean, grid_log_integral

F64 = torch.float64


def test_helmert_basis_is_orthonormal_and_spans_the_mean_free_subspace():
    for n in (2, 3, 7):
        q = helmert_basis(n)
        assert torch.allclose(q.T @ q, torch.eye(n - 1, dtype=F64), atol=1e-14)
        proj = torch.eye(n, dtype=F64) - torch.full((n, n), 1.0 / n, dtype=F64)
        assert torch.allclose(q @ q.T, proj, atol=1e-14)


def test_subspace_coordinates_round_trip_and_keep_norms():
    proc = MeanFree(VE(), 5, 3)
    x = torch.randn(11, 5, 3, generator=gen(0), dtype=F64)
    z = proc.to_subspace(x)
    assert z.shape == (11, 12)
    assert torch.allclose(proc.from_subspace(z), center(x), atol=1e-13)
    assert torch.allclose(z.norm(dim=-1), center(x).flatten(1).norm(dim=-1), atol=1e-13)
    flat = x.reshape(11, 15)
    assert torch.allclose(proc.project(flat), center(x).reshape(11, 15))
    assert proc.randn(4, gen(1)).mean(1).abs().max() < 1e-6
    with pytest.raises(SMCDiffError, match="MeanFree"):
        proc.project(torch.zeros(3, 4, 3))


@pytest.mark.parametrize("n, s", [(2, 1), (3, 1), (2, 2)])
def test_transition_density_integrates_to_one_over_the_subspace(n, s):
    """Quadrature on a grid of the k = (n-1)s orthonormal coordinates, with a start x_s that
    is not mean-free (its centre of mass must drop out)."""
    proc = MeanFree(VP(), n, s)
    x_s = torch.randn(1, n, s, generator=gen(3), dtype=F64) + 2.0
    h, k = 0.05, (n - 1) * s  # transition std ~0.9: the grid's edges at 9 std
    axis = torch.arange(-8.0, 8.0, h, dtype=F64)
    z = torch.cartesian_prod(*([axis] * k)).reshape(-1, k)
    mean_z = proc.to_subspace(float(proc.base.transition(0.3, 0.7)[0]) * x_s)
    x_t = proc.from_subspace(z + mean_z)
    lp = proc.transition_log_prob(x_t, x_s.expand_as(x_t), 0.3, 0.7)
    assert abs(grid_log_integral(lp, h, k)) < 1e-8


def test_transition_matches_monte_carlo_chi_square_and_entropy():
    """x_t | x_s draws: exact centre of mass, ||P(x_t - a x_s)||^2 / v is chi^2 with
    k = (n-1)s degrees of freedom (mean k, variance 2k), and the average log density is minus
    the entropy -k/2 (1 + log 2 pi v)."""
    n, s, m = 6, 3, 40_000
    proc = MeanFree(VP(), n, s)
    x_s = torch.randn(m, n, s, generator=gen(4), dtype=F64)
    x_t = proc.sample_transition(x_s, 0.2, 0.6, gen(5))
    a, v = (float(c) for c in proc.base.transition(0.2, 0.6))
    assert torch.allclose(x_t.mean(1), a * x_s.mean(1), atol=1e-13)
    chi2 = center(x_t - a * x_s).square().sum((1, 2)) / v
    k = proc.subspace_dim
    assert_iid_mean(chi2, k, 2 * k, what="chi-square mean")
    assert_gaussian_variance(proc.to_subspace(x_t - a * x_s).reshape(-1), v, what="coord var")
    lp = proc.transition_log_prob(x_t, x_s, 0.2, 0.6)
    entropy = 0.5 * k * (1.0 + math.log(2 * math.pi * v))
    assert_iid_mean(lp, -entropy, 0.5 * k, what="mean log density")  # var of -chi2/2 is k/2


def test_per_row_times_match_scalar_times():
    proc = MeanFree(GeometricVE(0.01, 2.0), 4, 2)
    x_s = torch.randn(5, 4, 2, generator=gen(6), dtype=F64)
    x_t = torch.randn(5, 4, 2, generator=gen(7), dtype=F64)
    s, t = torch.full((5,), 0.3, dtype=F64), torch.full((5,), 0.8, dtype=F64)
    assert torch.allclose(
        proc.transition_log_prob(x_t, x_s, s, t), proc.transition_log_prob(x_t, x_s, 0.3, 0.8)
    )


def test_geometric_ve_is_dems_schedule():
    """sigma_t^2 = int_0^t g^2 with DEM's g(t) = smin sd^t sqrt(2 log sd); derivatives exact."""
    p = GeometricVE(1e-5, 3.0)
    t = torch.linspace(0.05, 1.0, 20, dtype=F64)
    sd = 3.0 / 1e-5
    g2 = (1e-5 * sd**t) ** 2 * 2 * math.log(sd)
    assert torch.allclose(p.diffusion_sq(t), g2, rtol=1e-12)
    # quadrature of g^2 from 0 to t (Simpson, 2001 points) equals sigma_t^2
    u = torch.linspace(0, 0.7, 2001, dtype=F64)
    w = torch.ones_like(u)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    integral = float((w * p.diffusion_sq(u)).sum() * (0.7 / 2000) / 3)
    assert math.isclose(integral, float(p.sigma(0.7)) ** 2, rel_tol=1e-9)
    tt = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(p.sigma(tt).sum(), tt)
    assert torch.allclose(p.d_sigma(t), grad, rtol=1e-12)
    assert torch.allclose(GeometricVE.diffusion_sq(p, t), super(GeometricVE, p).diffusion_sq(t))
    assert float(p.sigma(0.0)) == 0.0


def test_mean_free_gaussian_score_is_the_gradient_of_its_log_density():
    proc = MeanFree(GeometricVE(0.01, 2.0), 5, 3)
    mean = torch.randn(5, 3, generator=gen(8), dtype=F64)
    model = MeanFreeGaussian(mean, 0.7, proc)
    x = torch.randn(9, 5, 3, generator=gen(9), dtype=F64).requires_grad_(True)
    t = torch.linspace(0.1, 0.9, 9, dtype=F64)
    (grad,) = torch.autograd.grad(model.log_density(x, t).sum(), x)
    score = model.score(x.detach(), t)
    assert torch.allclose(score, grad, atol=1e-12)
    assert score.mean(1).abs().max() < 1e-12  # mean-free


def test_mean_free_gaussian_score_is_the_denoising_regression():
    """On exact draws x_t = alpha x0 + sigma P eps, the least-squares regression of -eps/sigma on
    (z_t, 1) in subspace coordinates is E[-eps/sigma | x_t], which must be the closed-form score
    -(z - alpha mu)/v: slope -1/v I and intercept alpha mu / v."""
    proc = MeanFree(VP(), 3, 2)
    mean = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -0.5]], dtype=F64)
    model = MeanFreeGaussian(mean, 0.5, proc)
    m, t = 200_000, 0.4
    x0 = model.sample(m, None, gen(10))
    eps = proc.randn(m, gen(11), dtype=F64)
    a, sig = float(proc.alpha(t)), float(proc.sigma(t))
    z = proc.to_subspace(a * x0 + sig * eps)
    y = proc.to_subspace(-eps / sig)
    design = torch.cat([z, torch.ones(m, 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(design, y).solution  # (k + 1, k)
    v = a * a * 0.25 + sig * sig
    k = proc.subspace_dim
    assert torch.allclose(coef[:k], -torch.eye(k, dtype=F64) / v, atol=0.02)
    assert torch.allclose(coef[k], proc.to_subspace(a * center(mean)[None])[0] / v, atol=0.02)
    # and the model's own score agrees with the fitted regression at the samples
    fitted = design[:1000] @ coef
    exact = proc.to_subspace(model.score(proc.from_subspace(z[:1000]), t))
    assert (fitted - exact).abs().max() < 0.05


def test_marginal_equals_data_pushed_through_the_transition():
    """Chapman-Kolmogorov: x0 ~ data, x_t ~ p(. | x_0) via two transitions (0 -> s -> t) has
    the closed-form marginal's coordinate variance and mean."""
    base = VP()
    proc = MeanFree(base, 4, 2)
    mean = torch.randn(4, 2, generator=gen(12), dtype=F64)
    model = MeanFreeGaussian(mean, 0.3, proc)
    x0 = model.sample(100_000, None, gen(13))
    x_s = float(base.alpha(0.25)) * x0 + float(base.sigma(0.25)) * proc.randn(
        100_000, gen(14), dtype=F64
    )
    x_t = proc.sample_transition(x_s, 0.25, 0.75, gen(15))
    exact = model.sample(100_000, 0.75, gen(16))
    v = float(base.alpha(0.75)) ** 2 * 0.09 + float(base.sigma(0.75)) ** 2
    for draws in (x_t, exact):
        zc = proc.to_subspace(draws) - proc.to_subspace(float(base.alpha(0.75)) * center(mean))
        assert_iid_mean(zc.reshape(-1), 0.0, v, what="coordinate mean")  # iid coordinates
        assert_gaussian_variance(zc.reshape(-1), v, what="coordinate variance")
