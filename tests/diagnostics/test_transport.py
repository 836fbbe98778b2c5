"""OT distances and sliced KS against exact values."""

import math

import pytest
import torch

from smcdiff.diagnostics.transport import entropic_wasserstein2, sliced_ks, wasserstein2


@pytest.mark.slow
def test_w2_of_a_translated_set_is_the_shift_and_entropic_w2_approaches_it():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    c = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    assert wasserstein2(y + c, y) == pytest.approx(float(c.norm()), rel=1e-9)
    loose = entropic_wasserstein2(y + c, y, reg=0.5)
    tight = entropic_wasserstein2(y + c, y, reg=0.01)
    assert tight <= loose  # the entropic plan's transport cost grows with reg
    assert tight == pytest.approx(float(c.norm()), rel=0.02)


def test_weights_act_as_counts():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    counts = torch.randint(1, 4, (50,), generator=gen)
    rep = x.repeat_interleave(counts, 0)
    w = counts.double()
    assert wasserstein2(x, y, w) == pytest.approx(wasserstein2(rep, y), rel=1e-9)
    assert sliced_ks(x, y, w) == pytest.approx(sliced_ks(rep, y), abs=1e-12)


@pytest.mark.slow
def test_sliced_ks_of_shifted_gaussians_matches_the_exact_ks_distance():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(20000, 1, generator=gen, dtype=torch.float64) + 0.5
    exact = math.erf(0.25 / math.sqrt(2))  # sup |Phi(s) - Phi(s - 0.5)| = 2 Phi(0.25) - 1
    assert sliced_ks(x, y, n_directions=4) == pytest.approx(exact, abs=0.015)  # KS noise ~0.01
    assert sliced_ks(x, x) == 0.0
