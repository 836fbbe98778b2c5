"""run_chain: reproducibility, thinning, ArviZ output, input validation."""

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc import HMC, KERNELS, mcmc_corrector, run_chain


def log_prob(x):
    return -0.5 * (x * x).sum(-1)


X0 = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(10, 3)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_same_seed_same_samples(kernel):
    a = run_chain(kernel, log_prob, X0, 12, n_warmup=5, seed=7)
    b = run_chain(kernel, log_prob, X0, 12, n_warmup=5, seed=7)
    c = run_chain(kernel, log_prob, X0, 12, n_warmup=5, seed=8)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.step_size, b.step_size)
    assert not torch.equal(a.samples, c.samples)


def test_thinning_per_chain_step_size_and_arviz():
    h = torch.linspace(0.1, 0.5, 10, dtype=torch.float64)
    res = run_chain(HMC, log_prob, X0, 9, step_size=h, n_warmup=0, thin=2, seed=0, n_leapfrog=3)
    assert res.samples.shape == (4, 10, 3) and res.log_prob.shape == (4, 10)
    assert torch.equal(res.step_size, h)  # no warm-up: no adaptation
    assert torch.allclose(res.log_prob, log_prob(res.samples))
    idata = res.to_arviz()
    assert idata.posterior["x"].shape == (10, 4, 3)  # (chain, draw, d)
    assert idata.sample_stats["acceptance_rate"].shape == (10, 4)
    assert set(idata.sample_stats.data_vars) == {"lp", "acceptance_rate", "step_size"}


def test_unadjusted_kernels_do_not_adapt_by_default():
    res = run_chain("ula", log_prob, X0, 5, step_size=0.05, seed=0)
    assert torch.all(res.step_size == 0.05) and torch.all(res.accept_rate == 1)


def nan_for_two_chains(x):
    lp = log_prob(x)
    return torch.where(torch.arange(10) % 5 == 1, torch.nan, lp)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: run_chain("mala", log_prob, X0[0], 5), r"x0 has shape \(3,\)"),
        (lambda: run_chain("mala", log_prob, X0[:0], 5), r"x0 has shape \(0, 3\)"),
        (
            lambda: run_chain("mala", nan_for_two_chains, X0, 5),
            r"log_prob .* not finite at x0 for 2 of 10 chains \(first: chain 1\)",
        ),
        (lambda: run_chain("mala", lambda x: x, X0, 5), r"log_prob\(x0\) has shape \(10, 3\)"),
        (lambda: run_chain("mala", log_prob, X0, 0), "n_steps must be an int >= 1"),
        (lambda: run_chain("mala", log_prob, X0, 5, thin=0), "thin"),
        (lambda: run_chain("mala", log_prob, X0, 5, thin=6), "thin=6 > n_steps=5"),
        (lambda: run_chain("mala", log_prob, X0, 5, n_warmup=-1), "n_warmup"),
        (
            lambda: run_chain("nuts", log_prob, X0, 5),
            "unknown MCMC kernel 'nuts'; valid names: hmc, mala, pcnl, ula, underdamped",
        ),
        (lambda: run_chain("mala", log_prob, X0, 5, step_size=-0.1), "step_size must be"),
        (lambda: run_chain("mala", log_prob, X0, 5, step_size=torch.ones(3)), "step_size has"),
        (lambda: run_chain("mala", log_prob, X0, 5, target_accept=1.5), "target_accept"),
        (lambda: run_chain("mala", log_prob, X0, 5, seed=1, generator=torch.Generator()), "seed"),
        (lambda: run_chain("hmc", log_prob, X0, 5, n_leapfrog=0), "n_leapfrog"),
        (lambda: run_chain("pcnl", log_prob, X0, 5, prior_var=-1.0), "prior_var"),
        (lambda: run_chain("underdamped", log_prob, X0, 5, friction=0.0), "friction"),
        (lambda: mcmc_corrector("nuts", lambda k, x: log_prob(x)), "valid names"),
        (lambda: mcmc_corrector("mala", lambda k, x: log_prob(x), n_moves=0), "n_moves"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(SMCDiffError, match=match):
        call()
