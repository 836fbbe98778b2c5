"""Each kernel leaves a correlated Gaussian invariant; ULA's bias is real; pCNL is exact on a
conjugate model. Final states of N independent chains are iid draws, so SEs are the iid ones."""

import math
import warnings

import pytest
import torch

from smcdiff.errors import NonFiniteError
from smcdiff.mcmc import KERNELS, run_chain
from tests.stats import assert_gaussian_moments, assert_gaussian_variance, assert_outside

N = 4000


@pytest.mark.parametrize(
    ("kernel", "step_size", "kwargs"),
    [
        ("ula", 0.005, {}),  # O(h) variance bias h/2 = 0.0025, tolerance >= 0.028
        ("mala", 0.2, {}),
        ("hmc", 0.3, {"n_leapfrog": 5}),
        ("hmc", 0.3, {"n_leapfrog": 5, "inv_mass": torch.tensor([1.0, 4.0, 0.25])}),
        ("underdamped", 0.3, {"friction": 1.0}),  # BAOAB: x-marginal exact on Gaussians
        ("pcnl", 0.3, {"prior_var": 2.0}),
        ("pcnl", 0.3, {"prior_var": torch.tensor([1.0, 4.0, 0.25])}),
    ],
)
def test_gaussian_is_invariant(gauss, kernel, step_size, kwargs):
    gen = torch.Generator().manual_seed(0)
    x0 = gauss.sample(N, gen)
    res = run_chain(
        kernel, gauss.log_prob, x0, 40, step_size=step_size, n_warmup=0, generator=gen, **kwargs
    )
    assert res.samples.shape == (40, N, 3)
    assert res.n_nonfinite == 0
    assert 0.2 < float(res.accept_rate.mean()) <= 1.0
    assert (res.samples[-1] != x0).any(-1).float().mean() > 0.9  # the chains did move
    assert_gaussian_moments(res.samples[-1], gauss.m, gauss.S)


def test_ula_is_biased_where_mala_is_exact():
    """ULA on N(0, s^2): x' = (1 - h/s^2) x + sqrt(2h) z, stationary variance
    v = 2h / (1 - (1 - h/s^2)^2) = s^2 / (1 - h / (2 s^2)); with s = 1, h = 0.5: v = 4/3."""
    n, h = 20000, 0.5
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 1, generator=gen, dtype=torch.float64)

    def log_prob(x):
        return -0.5 * x[:, 0] ** 2

    se_1 = math.sqrt(2 / (n - 1))  # SE of the sample variance of n draws of variance 1
    x = run_chain("ula", log_prob, x0, 40, step_size=h, n_warmup=0, generator=gen).samples[-1]
    assert_gaussian_variance(x.reshape(-1), 4 / 3, what="ULA variance")
    assert_outside(x.var(), 1.0, se_1, what="ULA variance")
    x = run_chain("mala", log_prob, x0, 40, step_size=h, n_warmup=0, generator=gen).samples[-1]
    assert_gaussian_variance(x.reshape(-1), 1.0, what="MALA variance")
    assert_outside(x.var(), 4 / 3, se_1, what="MALA variance")


@pytest.mark.parametrize("prior_var", [2.0, torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])])
def test_pcnl_conjugate_posterior(prior_var):
    """Prior N(0, C), likelihood N(y; x, r I): posterior N(C y / (C + r), C r / (C + r))."""
    d, r = 5, 0.5
    c = torch.as_tensor(prior_var, dtype=torch.float64).expand(d)
    y = torch.tensor([1.0, -0.5, 2.0, 0.0, -1.5], dtype=torch.float64)

    def log_prob(x):
        return -0.5 * (x * x / c).sum(-1) - 0.5 * ((y - x) ** 2).sum(-1) / r

    gen = torch.Generator().manual_seed(2)
    x0 = c.sqrt() * torch.randn(N, d, generator=gen, dtype=torch.float64)  # prior draws
    res = run_chain("pcnl", log_prob, x0, 60, n_warmup=60, generator=gen, prior_var=prior_var)
    assert_gaussian_moments(res.samples[-1], c * y / (c + r), torch.diag(c * r / (c + r)))


@pytest.fixture(scope="module", params=["mala", "hmc"])
def bad_start(request, gauss):
    """All chains start 3 sd away; default adaptation (warm-up n_steps // 2) then sampling."""
    gen = torch.Generator().manual_seed(3)
    x0 = (gauss.m + 3 * gauss.S.diagonal().sqrt()).expand(N, 3).clone()
    n_steps, kw = (300, {}) if request.param == "mala" else (60, {"n_leapfrog": 8})
    res = run_chain(request.param, gauss.log_prob, x0, n_steps, step_size=0.5, generator=gen, **kw)
    return request.param, res


def test_exact_from_bad_start(bad_start, gauss):
    _, res = bad_start
    assert_gaussian_moments(res.samples[-1], gauss.m, gauss.S)


def test_adaptation_reaches_target(bad_start):
    name, res = bad_start
    target = KERNELS[name].default_target_accept
    assert abs(float(res.accept_rate.mean()) - target) < 0.05
    assert res.step_size.shape == (N,) and (res.step_size != 0.5).all()  # adapted per chain


def test_nonfinite_proposals_are_rejected_and_counted():
    """log_prob is NaN for x >= 1: an error by default; with nan_as_neg_inf=True (zero density
    there) chains starting below never cross, the rejections are counted, and the unadjusted
    kernels, which have no rejections of their own, say they were held back."""

    def log_prob(x):
        return torch.where(x[:, 0] < 1, -0.5 * x[:, 0] ** 2, torch.nan)

    x0 = torch.zeros(500, 1, dtype=torch.float64)
    for kernel in ["ula", "mala", "hmc", "underdamped"]:
        with pytest.raises(NonFiniteError, match="target log_prob is NaN") as err:
            run_chain(kernel, log_prob, x0, 30, step_size=0.3, n_warmup=0, seed=4)
        assert err.value.quantity == "target log_prob" and err.value.step >= 1
        with warnings.catch_warnings():
            warnings.simplefilter("error" if kernel in ("mala", "hmc") else "ignore")
            res = run_chain(
                kernel, log_prob, x0, 30, step_size=0.3, n_warmup=0, seed=4, nan_as_neg_inf=True
            )
        assert res.n_nonfinite > 0
        assert torch.isfinite(res.log_prob).all() and (res.samples < 1).all()
        assert (res.n_diverged > 0) == (kernel in ("ula", "underdamped"))
