"""mog40_50d: the pinned variant (means as data from FAB's construction at d = 50), exact
normalisation and sampler."""

import math

import torch
from smcdiff_targets import TARGETS, Mog40, load_mog40_50d_means

from smcdiff.seeding import seeded_generator as gen
from tests.stats import assert_iid_mean, assert_proportions


def test_means_are_fabs_construction_at_d50_and_shipped_as_data():
    torch.manual_seed(0)
    want = ((torch.rand(40, 50) - 0.5) * 80).double()
    torch.testing.assert_close(load_mog40_50d_means(), want, rtol=0, atol=0)
    assert TARGETS["mog40_50d"][1] == 80 / math.sqrt(12)


def test_log_prob_is_the_normalised_mixture_of_unit_gaussians():
    """Against the formula log (1/40) sum_k N(x; m_k, I), written out; a wrong scale or weight
    moves it by O(1)."""
    target = Mog40(dtype=torch.float64)
    m = load_mog40_50d_means()
    x = m[[0, 7, 7]] + torch.randn(3, 50, generator=gen(1), dtype=torch.float64)
    d2 = torch.cdist(x, m).square()
    want = torch.logsumexp(-0.5 * d2, dim=1) - math.log(40) - 25 * math.log(2 * math.pi)
    torch.testing.assert_close(target.log_prob(x), want, rtol=0, atol=1e-9)


def test_exact_sampler_weights_and_unit_spread():
    """Mode frequencies 1/40 (5 SE), within-mode mean 0 and variance 1 per coordinate."""
    target = Mog40(dtype=torch.float64)
    x = target.sample(20_000, generator=gen(2))
    idx = target.mode_index(x)
    assert_proportions(torch.bincount(idx, minlength=40) / 20_000, torch.full((40,), 1 / 40),
                       20_000)  # fmt: skip
    resid = x - target.means[idx]
    assert_iid_mean(resid[:, :5], torch.zeros(5), torch.ones(5))
    assert abs(float(resid.var()) - 1.0) < 0.01  # 1e6 values: SE 1.4e-3
