"""Chains that meet a NaN target or diverge say so: NaN log-densities and gradients raise a
NonFiniteError naming the quantity and the step (or, with nan_as_neg_inf=True, are a zero
density and the chains sample the truncated law); unadjusted kernels that blow up warn."""

import math
import warnings

import pytest
import torch

from smcdiff.errors import NonFiniteError
from smcdiff.mcmc import DivergenceWarning, run_chain
from tests.stats import assert_iid_mean


def nan_above_one(x):
    """N(0, 1) in each coordinate, NaN where x_0 > 1 (sqrt of a negative number)."""
    return -0.5 * (x * x).sum(-1) + torch.sqrt(1.0 - x[:, 0]) * 0.0


def nan_gradient_above_one(x):
    """log-density finite everywhere, gradient NaN where x_0 > 1 (torch.where of a sqrt)."""
    return -0.5 * (x * x).sum(-1) + torch.where(x[:, 0] > 1, 0.0, torch.sqrt(1 - x[:, 0]))


@pytest.mark.parametrize("kernel", ["mala", "hmc", "ula", "underdamped", "pcnl"])
def test_a_nan_log_density_raises_naming_quantity_and_step(kernel):
    x0 = torch.zeros(200, 2, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"target log_prob is NaN .* at step \d+") as err:
        run_chain(kernel, nan_above_one, x0, 50, step_size=0.5, n_warmup=10, seed=0)
    assert err.value.quantity == "target log_prob" and 1 <= err.value.step <= 60
    assert "nan_as_neg_inf=True" in str(err.value)


@pytest.mark.parametrize("kernel", ["mala", "hmc", "ula", "underdamped", "pcnl"])
def test_a_nan_gradient_raises(kernel):
    x0 = torch.zeros(200, 2, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="target gradient is NaN") as err:
        run_chain(kernel, nan_gradient_above_one, x0, 50, step_size=0.5, n_warmup=0, seed=0)
    assert err.value.quantity == "target gradient" and err.value.step >= 1


@pytest.mark.parametrize("kernel", ["mala", "pcnl"])
def test_nan_as_neg_inf_samples_the_truncated_law(kernel):
    """NaN = zero density: the chains sample N(0, 1) truncated to x_0 < 1, whose mean is
    -phi(1) / Phi(1) (x_1 stays N(0, 1)). (HMC is left out: its trajectories of length ~4 swing
    through the wall and are rejected, which keeps it invariant but mixes far too slowly for
    300 steps.)"""
    n = 4000
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    res = run_chain(kernel, nan_above_one, x0, 300, step_size=0.5, seed=1, nan_as_neg_inf=True)
    x = res.samples[-1]
    assert bool((x[:, 0] <= 1).all())
    phi, cdf = math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    mean = -phi / cdf
    var = 1 - phi / cdf - mean**2  # 1 - b phi(b)/Phi(b) - mean^2 at b = 1
    assert_iid_mean(x[:, 0], mean, var, what="truncated mean")
    assert_iid_mean(x[:, 1], 0.0, 1.0, what="free coordinate")


@pytest.mark.parametrize("kernel", ["ula", "underdamped"])
def test_an_unadjusted_kernel_with_a_too_large_step_says_it_diverged(kernel):
    """ULA on N(0, 1) with h = 3: x' = -2x + sqrt(6) z grows like 2^t until the density
    underflows; the chains are held back there, and the run warns."""
    x0 = torch.zeros(100, 2)
    with pytest.warns(DivergenceWarning, match=f"{kernel} diverged: .* lower step_size"):
        res = run_chain(kernel, lambda x: -0.5 * (x * x).sum(-1), x0, 300, step_size=3.0, seed=0)
    assert res.n_diverged > 0


def test_a_stable_unadjusted_chain_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run_chain("ula", lambda x: -0.5 * (x * x).sum(-1), torch.zeros(100, 2), 100,
                        step_size=0.1, seed=0)  # fmt: skip
    assert res.n_diverged == 0
