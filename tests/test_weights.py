import math

import numpy as np
import torch

from smcdiff.weights import conditional_ess, ess, log_mean_exp, log_normalize, normalize


def test_ess_is_n_for_uniform_and_one_for_a_single_particle():
    assert torch.allclose(
        ess(torch.zeros(3, 50, dtype=torch.float64)), torch.full((3,), 50.0).double()
    )
    one_hot = torch.full((40,), -math.inf, dtype=torch.float64)
    one_hot[7] = 3.0
    assert float(ess(one_hot)) == 1.0


def test_ess_matches_the_definition_and_survives_huge_log_weights():
    gen = torch.Generator().manual_seed(0)
    lw = torch.randn(2, 100, generator=gen, dtype=torch.float64) * 3
    w = lw.exp()
    ref = w.sum(-1) ** 2 / (w * w).sum(-1)
    assert torch.allclose(ess(lw), ref, rtol=1e-12)
    assert torch.allclose(ess(lw + 1e4), ref, rtol=1e-9)  # exp would overflow


def test_normalisation_and_log_mean_exp():
    lw = torch.tensor([[0.0, 1.0, -math.inf, 2.0]], dtype=torch.float64)
    W = normalize(lw)
    assert torch.allclose(W.sum(-1), torch.ones(1, dtype=torch.float64))
    assert W[0, 2] == 0
    assert torch.allclose(log_normalize(lw).exp(), W)
    ref = math.log(np.mean(np.exp([0.0, 1.0, 0.0, 2.0]) * [1, 1, 0, 1]))
    assert math.isclose(float(log_mean_exp(lw)), ref, rel_tol=1e-12)


def test_conditional_ess_reduces_to_ess_under_uniform_weights_and_matches_definition():
    gen = torch.Generator().manual_seed(1)
    lg = torch.randn(64, generator=gen, dtype=torch.float64)
    assert torch.allclose(conditional_ess(torch.zeros(64, dtype=torch.float64), lg), ess(lg))
    lw = torch.randn(64, generator=gen, dtype=torch.float64)
    W, G = normalize(lw), lg.exp()
    ref = 64 * (W * G).sum() ** 2 / (W * G * G).sum()
    assert torch.allclose(conditional_ess(lw, lg), ref, rtol=1e-12)
