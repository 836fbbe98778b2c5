"""The engine on a linear-Gaussian state-space model, where the Kalman filter is exact."""

import math

import pytest
import torch
from ssm import BootstrapSSM, Y, kalman

from smcdiff.engine import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.resampling import policy_from_threshold


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0], ids=["never", "ess<N/2", "always"])
def test_log_z_is_unbiased_whether_or_not_steps_resample(threshold):
    # E[Z_hat] = Z for every resampling policy; 2000 independent groups of 64 particles.
    log_z, _, _ = kalman()
    gen = torch.Generator().manual_seed(11)
    run = run_smc(
        BootstrapSSM(), 64, n_groups=2000, policy=policy_from_threshold(threshold), generator=gen
    )
    ratio = torch.exp(run.log_z - log_z)
    se = ratio.std() / math.sqrt(ratio.numel())
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(se), (float(ratio.mean()), float(se))
    n_res = int(run.trace["resampled"].sum())
    assert (n_res == 0) if threshold == 0 else (n_res > 0)
    if threshold == 1.0:
        assert bool(run.trace["resampled"][1:].all())


def test_weighted_particles_match_the_kalman_filter():
    _, means, vars_ = kalman()
    gen = torch.Generator().manual_seed(5)
    run = run_smc(BootstrapSSM(), 200_000, policy=policy_from_threshold(0.5), generator=gen)
    W = run.log_weights[0].exp()
    x = run.state["x"][:, 0]
    m = float((W * x).sum())
    v = float((W * (x - m) ** 2).sum())
    assert abs(m - means[-1]) < 0.01 and abs(v - vars_[-1]) < 0.01


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    def go(seed):
        return run_smc(BootstrapSSM(), 300, generator=torch.Generator().manual_seed(seed))

    a, b, c = go(3), go(3), go(4)
    assert torch.equal(a.state["x"], b.state["x"]) and torch.equal(a.log_z, b.log_z)
    assert not torch.equal(a.state["x"], c.state["x"])


def test_trace_has_one_row_per_step():
    run = run_smc(BootstrapSSM(), 100, n_groups=3, generator=torch.Generator().manual_seed(0))
    K = len(Y) - 1
    assert run.trace["t"].shape == (K + 1,)
    assert run.trace["ess"].shape == (K + 1, 3) and run.trace["resampled"].shape == (K + 1, 3)
    assert torch.allclose(run.trace["log_z_increment"].sum(0), run.log_z)
    assert int(run.trace["nfe"].sum()) == K + 1


def test_corrector_runs_after_reweighting_and_keeps_the_target_exact():
    """An exact draw from the filtering law is a valid (perfect) MCMC corrector."""
    _, means, vars_ = kalman()
    calls = []

    def perfect(k, state, generator):
        calls.append(k)
        n = state["x"].shape[0]
        x = means[k] + math.sqrt(vars_[k]) * torch.randn(
            n, 1, generator=generator, dtype=torch.float64
        )
        return {"x": x}, {"accept": torch.tensor(1.0)}

    gen = torch.Generator().manual_seed(2)
    run = run_smc(BootstrapSSM(), 50_000, corrector=perfect, generator=gen)
    assert calls == list(range(1, len(Y)))
    acc = run.trace["accept"]
    assert math.isnan(float(acc[0])) and bool((acc[1:] == 1).all())
    W = run.log_weights[0].exp()
    assert abs(float((W * run.state["x"][:, 0]).sum()) - means[-1]) < 0.02


def test_engine_rejects_tiny_particle_sets_and_bad_groups():
    with pytest.raises(SMCDiffError, match="n_particles must be at least 2"):
        run_smc(BootstrapSSM(), 1)
    with pytest.raises(SMCDiffError, match="n_groups"):
        run_smc(BootstrapSSM(), 10, n_groups=0)
