"""Every kernel, run_chain and mcmc_corrector on particles of shape (N, 4, 3) give the numbers
of the same density on flat (N, 12) particles (every reduction is over all event dims)."""

import pytest
import torch

from smcdiff.mcmc import KERNELS, mcmc_corrector, run_chain

SHAPE = (4, 3)
MEANS = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(SHAPE)


def log_prob(x):  # (N, 4, 3) -> (N,)
    return -0.5 * ((x - MEANS) / 0.8).square().sum((-2, -1))


def flat_log_prob(x):  # (N, 12) -> (N,)
    return log_prob(x.reshape(-1, *SHAPE))


X0 = torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_run_chain_on_a_particle_system_matches_the_flat_chains(kernel):
    kw = dict(step_size=0.2, n_warmup=5, seed=3)
    if kernel == "pcnl":
        kw["prior_var"] = 0.64
    a = run_chain(kernel, log_prob, X0, 8, **kw)
    b = run_chain(kernel, flat_log_prob, X0.reshape(20, 12), 8, **kw)
    assert a.samples.shape == (8, 20, *SHAPE)
    assert torch.equal(a.samples.reshape(8, 20, 12), b.samples)
    assert torch.equal(a.accept_prob, b.accept_prob) and torch.equal(a.step_size, b.step_size)
    assert a.to_arviz().posterior["x"].shape == (20, 8, *SHAPE)  # (chain, draw, *event)


def test_hmc_with_a_diagonal_mass_of_the_event_shape():
    inv_mass = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    a = run_chain("hmc", log_prob, X0, 6, seed=1, n_leapfrog=3, inv_mass=inv_mass.reshape(SHAPE))
    b = run_chain("hmc", flat_log_prob, X0.reshape(20, 12), 6, seed=1, n_leapfrog=3,
                  inv_mass=inv_mass)  # fmt: skip
    assert torch.equal(a.samples.reshape(6, 20, 12), b.samples)


def test_mcmc_corrector_on_a_particle_system_matches_the_flat_moves():
    outs = []
    for lp, x in ((log_prob, X0), (flat_log_prob, X0.reshape(20, 12))):
        corr = mcmc_corrector("mala", lambda k, y, lp=lp: lp(y), n_moves=4, step_size=0.3)
        state, info = corr(1, {"x": x}, torch.Generator().manual_seed(5))
        outs.append((state["x"], info["accept"], info["step_size"]))
    (xa, acc_a, h_a), (xb, acc_b, h_b) = outs
    assert xa.shape == (20, *SHAPE)
    assert torch.equal(xa.reshape(20, 12), xb) and torch.equal(acc_a, acc_b)
    assert torch.equal(h_a, h_b)
