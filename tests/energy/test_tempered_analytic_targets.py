"""The analytic gradients of the BlackJAX-benchmark targets (experiments/bench_blackjax.py) equal
the targets' own log_prob and its autograd gradient; the report's table reads its rows."""

import pytest
import torch
from smcdiff_experiments.bench_blackjax import PEER, SIZES, VARIANTS, make_target, table

from smcdiff.target import grad_log_prob


@pytest.mark.parametrize("name", list(PEER))
def test_analytic_pair_equals_log_prob_and_autograd(name):
    device = torch.device("cpu")
    wrapped = make_target(name, device, "fused+grad")
    plain = make_target(name, device, "fused")
    gen = torch.Generator().manual_seed(0)
    x = PEER[name][1] * torch.randn(500, wrapped.dim, generator=gen)
    if name == "funnel10":
        x[:, 0] = x[:, 0].clamp(-8, 8)  # e^{-x0} stays inside float32
    lp, g = wrapped.grad_log_prob(x)
    lp_ref, g_ref = grad_log_prob(plain, x)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-3)
    assert wrapped.log_z == pytest.approx(float(getattr(plain, "log_z", 0.0)))


def test_report_table_pairs_our_rows_with_the_peers():
    ours = [
        {"target": t, "n": n, "variant": v, "wall_ms": 10.0 + i, "log_z_err": 0.01, "n_temps": 5}
        for t in PEER
        for n in SIZES
        for i, v in enumerate(VARIANTS)
    ]
    peer = {"rows": [{"target": "gmm40", "n": 10_000, "inner": "hmc", "wall_s": 0.02,
                      "log_z": -0.03, "n_temps": 5}]}  # fmt: skip
    text = table({"ours": ours, "peer": peer})
    gmm_row = next(line for line in text.splitlines() if line.startswith("| gmm40_fab | 1e+04"))
    assert "11.0 (fused)" in gmm_row and "20.0" in gmm_row and "0.55x" in gmm_row
    assert "| mw5 | 1e+05 | 10.0 | 11.0 | 12.0 | 13.0 |" in text
