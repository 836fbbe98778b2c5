"""A distributed run of the engine against the Kalman filter: log Z and the filtering mean of a
linear-Gaussian state-space model, on 2 and 4 gloo CPU processes, with global and island
resampling; the ranks agree bitwise on everything global, and a seed repeats a run."""

import math

import pytest
import torch
import torch.distributed as dist

from smcdiff.distributed import run_smc_distributed
from smcdiff.engine import FeynmanKacModel, StepOutput, run_smc
from smcdiff.resampling import ESSBelow, systematic
from smcdiff.seeding import child_generator
from tests.distributed.harness import run_ranks
from tests.engine.ssm import BootstrapSSM, kalman
from tests.stats import assert_unbiased, assert_z_unbiased

N_RUNS, N = 16, 128


def filter_job(rank, world_size, islands, threshold):
    out = []
    for seed in range(N_RUNS):
        run = run_smc_distributed(
            BootstrapSSM(), N, policy=ESSBelow(0.5), generator=torch.Generator().manual_seed(seed),
            islands=islands, island_threshold=threshold,
        )  # fmt: skip
        w = run.log_weights.exp()[0]
        out.append({
            "log_z": run.log_z[0], "mass": w.sum(), "mean": (w * run.state["x"][:, 0]).sum(),
            "ess": run.trace["ess"][:, 0], "info": run.collected["distributed"],
            "x": run.state["x"],
        })  # fmt: skip
    again = run_smc_distributed(
        BootstrapSSM(), N, policy=ESSBelow(0.5), generator=torch.Generator().manual_seed(0),
        islands=islands, island_threshold=threshold,
    )  # fmt: skip
    out[0]["repeat"] = torch.equal(again.state["x"], out[0]["x"]) and torch.equal(
        again.log_z[0], out[0]["log_z"]
    )
    return out


CASES = {
    "global-2": (2, False, 0.5),
    "global-4": (4, False, 0.5),
    "islands-always-copied-2": (2, True, 1.0),  # island resampling at (almost) every step
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_distributed_bootstrap_filter_matches_the_kalman_filter(case):
    world_size, islands, threshold = CASES[case]
    ranks = run_ranks(filter_job, world_size, islands, threshold)
    log_lik, means, _ = kalman()
    log_z = torch.stack([r["log_z"] for r in ranks[0]])
    for other in ranks[1:]:  # one global log Z and ESS trace, bitwise, on every rank
        assert torch.equal(torch.stack([r["log_z"] for r in other]), log_z)
        assert all(torch.equal(a["ess"], b["ess"]) for a, b in zip(other, ranks[0], strict=True))
    mass = torch.stack([torch.stack([r["mass"] for r in rk]) for rk in ranks]).sum(0)
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-12)  # globally normalised
    mean = torch.stack([torch.stack([r["mean"] for r in rk]) for rk in ranks]).sum(0)
    assert_z_unbiased(log_z, log_lik, n_se=4.5, max_se=0.08)
    assert_unbiased(mean, means[-1], n_se=4.5, max_se=0.03, what="filtering mean")
    assert all(rk[0]["repeat"] for rk in ranks)  # same seed and world size, same run
    info = ranks[0][0]["info"]
    assert info["world_size"] == world_size and info["n_particles_local"] == N // world_size
    if islands and threshold == 1.0:
        assert info["n_island_resampled"] > 0
    assert math.isfinite(info["comm_bytes_per_step"]) and info["comm_bytes_per_step"] > 0


class Deterministic(FeynmanKacModel):
    """A deterministic move and potential, and a fixed start (global particle j at
    ``-2 + 4 j / N``): a run's only randomness is resampling, so a distributed run and a
    one-process run with the same uniforms must agree particle for particle."""

    n_steps = 8

    def init(self, n, generator):
        rank = dist.get_rank() if dist.is_initialized() else 0
        j = torch.arange(n, dtype=torch.float64) + rank * n
        total = n * (dist.get_world_size() if dist.is_initialized() else 1)
        x = (-2.0 + 4.0 * j / total).unsqueeze(1)
        return StepOutput({"x": x}, -0.5 * (x[:, 0] - 0.7) ** 2 / 0.3)

    def step(self, k, state, generator, log_weights):
        x = 0.9 * state["x"] + 0.3 * torch.sin(3.0 * state["x"]) + 0.1 * k
        return StepOutput({"x": x}, -0.5 * (x[:, 0] - math.cos(k)) ** 2 / 0.2)


def exact_job(rank, world_size):
    run = run_smc_distributed(Deterministic(), 64, policy=ESSBelow(0.7),
                              generator=torch.Generator().manual_seed(11))  # fmt: skip
    return run.state["x"], run.log_weights[0], run.trace["log_z_increment"][:, 0], run.log_z[0]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_run_equals_the_one_process_run_with_the_same_uniforms(world_size):
    """Global normalisation, decisions and systematic resampling are those of one process: with
    the shared generator's uniforms, the one-process engine run gives the same particles,
    weights and log-Z increments."""
    ranks = run_ranks(exact_job, world_size)
    shared = child_generator(torch.Generator().manual_seed(11))  # what every rank's run used

    def same_uniforms(log_w, n=None, *, generator=None):
        return systematic(log_w, n, generator=shared)

    one = run_smc(Deterministic(), 64, policy=ESSBelow(0.7), resampling=same_uniforms,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert int(one.trace["resampled"].sum()) >= 3  # resampling happened, several times
    assert torch.equal(torch.cat([r[0] for r in ranks]), one.state["x"])
    assert torch.allclose(torch.cat([r[1] for r in ranks]), one.log_weights[0], atol=1e-12)
    assert torch.allclose(ranks[0][2], one.trace["log_z_increment"][:, 0], atol=1e-12)
    assert abs(float(ranks[0][3] - one.log_z[0])) < 1e-12
