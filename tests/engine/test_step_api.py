"""The step API, swappable resampling and collectors, on the Kalman-exact state-space model."""

import math

import pytest
import torch
from ssm import BootstrapSSM, Y, kalman

from smcdiff.engine import (
    SMC,
    FeynmanKacModel,
    Genealogy,
    LocalResampler,
    Resampler,
    StepOutput,
    WeightedMoments,
    run_smc,
)
from smcdiff.errors import SMCDiffError
from smcdiff.resampling import policy_from_threshold
from smcdiff.resampling.policies import ActiveWindow, Always, Never


def test_a_hand_written_loop_over_the_step_api_equals_run_smc():
    policy = policy_from_threshold(0.5)
    run = run_smc(BootstrapSSM(), 500, n_groups=2, policy=policy,
                  generator=torch.Generator().manual_seed(7))  # fmt: skip
    gen = torch.Generator().manual_seed(7)
    smc = SMC(BootstrapSSM(), policy=policy)
    state, info = smc.init(500, gen, n_groups=2)
    incs = [info.log_z_increment]
    for _ in range(len(Y) - 1):
        state, info = smc.step(state, gen)
        incs.append(info.log_z_increment)
    assert state.step == len(Y) - 1
    assert torch.equal(state.particles["x"], run.state["x"])
    assert torch.equal(state.log_z, run.log_z) and torch.equal(state.log_weights, run.log_weights)
    assert torch.equal(torch.stack(incs), run.trace["log_z_increment"])


def test_weighted_moments_collector_follows_the_kalman_filter_means():
    _, means, vars_ = kalman()
    moments = WeightedMoments(lambda x: torch.cat([x, x**2], dim=1), name="m")
    run = run_smc(BootstrapSSM(), 100_000, policy=policy_from_threshold(0.5),
                  generator=torch.Generator().manual_seed(1), collectors=[moments])  # fmt: skip
    m = run.collected["m"][:, 0]  # (K+1, 2)
    assert m.shape == (len(Y), 2)
    exact = torch.tensor(means, dtype=torch.float64)
    second = exact**2 + torch.tensor(vars_, dtype=torch.float64)
    # 1e5 particles, posterior sd <= 0.8: 5 standard errors of the mean < 0.02 even after ESS loss
    assert torch.allclose(m[:, 0], exact, atol=0.02) and torch.allclose(m[:, 1], second, atol=0.04)


def _distinct_by_tracing(ancestors: torch.Tensor) -> torch.Tensor:
    """Distinct step-0 origins per step by following every path back (slow, obviously right)."""
    K1, G, N = ancestors.shape
    out = torch.zeros(K1, G, dtype=torch.long)
    for k in range(K1):
        for g in range(G):
            idx = torch.arange(N)
            for j in range(k, -1, -1):
                idx = ancestors[j, g, idx]
            out[k, g] = idx.unique().numel()
    return out


@pytest.mark.parametrize("policy", [Always(), policy_from_threshold(0.5)], ids=["always", "ess"])
def test_genealogy_counts_distinct_ancestors(policy):
    gen = Genealogy(keep_ancestors=True)
    run = run_smc(BootstrapSSM(), 64, n_groups=3, policy=policy,
                  generator=torch.Generator().manual_seed(3), collectors=[gen])  # fmt: skip
    rec = run.collected["genealogy"]
    assert rec["ancestors"].shape == (len(Y), 3, 64)
    assert torch.equal(rec["distinct"], _distinct_by_tracing(rec["ancestors"]))
    assert int(rec["distinct"][0].min()) == 64 and int(rec["distinct"][-1].max()) < 64


def test_genealogy_without_resampling_keeps_every_ancestor():
    run = run_smc(BootstrapSSM(), 32, policy=Never(), generator=torch.Generator().manual_seed(0),
                  collectors=[Genealogy()])  # fmt: skip
    assert bool((run.collected["genealogy"]["distinct"] == 32).all())


class CountingResampler(Resampler):
    def __init__(self):
        self.inner, self.calls = LocalResampler("multinomial"), 0

    def __call__(self, particles, log_w, mask, generator):
        self.calls += 1
        return self.inner(particles, log_w, mask, generator)


def test_a_resampler_object_replaces_the_scheme():
    res = CountingResampler()
    a = run_smc(BootstrapSSM(), 200, resampling=res, generator=torch.Generator().manual_seed(4))
    b = run_smc(BootstrapSSM(), 200, resampling="multinomial",
                generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert res.calls == len(Y) - 1
    assert torch.equal(a.state["x"], b.state["x"]) and torch.equal(a.log_z, b.log_z)


class NoTimes(FeynmanKacModel):
    """Three steps of a Gaussian random walk with constant potentials; no times."""

    n_steps = 3

    def init(self, n, generator):
        x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return StepOutput({"x": x}, torch.zeros(n, dtype=torch.float64))

    def step(self, k, state, generator, log_weights):
        return StepOutput(state, torch.full((state["x"].shape[0],), -1.0, dtype=torch.float64))


def test_models_without_times_run_and_time_policies_say_why_they_cannot():
    run = run_smc(NoTimes(), 10, generator=torch.Generator().manual_seed(0))
    assert "t" not in run.trace and run.trace["ess"].shape == (4, 1)
    assert math.isclose(float(run.log_z), -3.0, abs_tol=1e-12)
    window = ActiveWindow(0.0, 0.5, Always())
    with pytest.raises(SMCDiffError, match="ActiveWindow needs the model's times"):
        run_smc(NoTimes(), 10, policy=window, generator=torch.Generator().manual_seed(0))


def test_the_engine_refuses_objects_that_are_not_models_and_reports_progress():
    class Duck:
        n_steps, times = 1, None

    with pytest.raises(SMCDiffError, match=r"subclasses of smcdiff\.FeynmanKacModel"):
        run_smc(Duck(), 10)
    seen = []
    run_smc(NoTimes(), 10, progress=lambda k, info: seen.append((k, info.step)))
    assert seen == [(1, 1), (2, 2), (3, 3)]
