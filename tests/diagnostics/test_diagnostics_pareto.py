"""pareto_k: PSIS k-hat against weights with a known Pareto tail."""

import math

import numpy as np
import pytest
import torch

from smcdiff.diagnostics import pareto_k
from smcdiff.errors import SMCDiffError

N = 20_000
M = math.floor(3 * math.sqrt(N))  # PSIS tail length: 424 largest weights


def pareto_log_weights(xi: float, seed: int, shape=(N,)) -> torch.Tensor:
    """log w for w ~ Pareto(alpha = 1/xi, x_m = 1): w = U^(-xi), so log w = xi * Exp(1).
    Exceedances of a Pareto over any threshold u are exactly GPD(shape xi, scale xi * u)."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return -xi * torch.log(u)


def test_uniform_weights_have_no_tail():
    k = pareto_k(torch.full((1000,), -math.log(1000), dtype=torch.float64))
    assert isinstance(k, float) and k < 0.5
    assert k == -math.inf  # bounded weights with an atom at the max: no Pareto tail at all


@pytest.mark.parametrize("xi", [0.2, 0.5, 1.0])
def test_recovers_known_tail_index(xi):
    # The GPD shape estimate from M tail points has sd about (1 + xi) / sqrt(M) (asymptotic MLE
    # sd; 0.07 at xi = 0.5); ArviZ's weak prior toward 0.5 adds a bias well below that. 3 sd.
    k = pareto_k(pareto_log_weights(xi, seed=1))
    assert abs(k - xi) < 3 * (1 + xi) / math.sqrt(M)


def test_grouped_runs_average_to_the_tail_index():
    # 16 runs at xi = 0.5: mean sd 0.073 / 4 = 0.018; tolerance 0.06 (about 3 sd plus the bias).
    lw = pareto_log_weights(0.5, seed=2, shape=(16, N))
    k = pareto_k(lw)
    assert isinstance(k, torch.Tensor) and k.shape == (16,) and k.dtype == torch.float64
    assert abs(k.mean().item() - 0.5) < 0.06
    # each row equals the single-run value
    assert k[3].item() == pytest.approx(pareto_k(lw[3]), abs=1e-12)


def test_ordering_and_invariance():
    ks = [pareto_k(pareto_log_weights(xi, seed=4)) for xi in (0.2, 0.5, 1.0)]
    assert ks[0] < ks[1] < ks[2]
    lw = pareto_log_weights(0.7, seed=5)
    # normalising (a constant shift) changes nothing; float32 input is fine
    assert pareto_k(lw - torch.logsumexp(lw, 0) + 3.0) == pytest.approx(pareto_k(lw), abs=1e-9)
    assert pareto_k(lw.float()) == pytest.approx(pareto_k(lw), abs=0.02)


def test_zero_weights_small_n_and_bad_input():
    lw = pareto_log_weights(0.5, seed=6, shape=(2000,))
    lw[:100] = -math.inf  # zero weights are legal
    assert np.isfinite(pareto_k(lw))
    assert pareto_k(torch.randn(10)) == math.inf  # too few particles for a 5-point tail fit
    with pytest.raises(SMCDiffError, match="NaN"):
        pareto_k(torch.tensor([0.0, math.nan] * 20))
    with pytest.raises(SMCDiffError, match="all log_weights are -inf"):
        pareto_k(torch.full((2, 50), -math.inf))
    with pytest.raises(SMCDiffError, match="shape"):
        pareto_k(torch.zeros(2, 3, 4))


def test_result_method(make_result):
    res = make_result(runs=2)
    k = res.pareto_k()
    assert k.shape == (2,) and torch.isfinite(k).all()
