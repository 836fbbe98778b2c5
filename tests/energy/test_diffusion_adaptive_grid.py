"""Diffusion-path SMC on the adaptive (conditional-ESS) time grid: exact against a closed form,
honest evaluation counts, the step cap and the grid reported."""

import itertools
import math

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.energy import sample
from tests.stats import assert_unbiased, assert_z_unbiased

MEAN = torch.tensor([1.0, -0.5, 0.3])
STD, LOG_C = 0.6, 2.0


def shifted_gaussian():
    """N(MEAN, STD^2 I) times e^LOG_C: log Z = LOG_C."""
    d = MEAN.shape[0]

    def log_prob(x):
        z = (x - MEAN.to(x)) / STD
        return -0.5 * (z * z).sum(-1) - d * math.log(STD) - 0.5 * d * math.log(2 * math.pi) + LOG_C

    return smcdiff.as_target(log_prob, d, "shifted gaussian")


def run(seed, **kw):
    # t_min = 0.3: p_{t_min} is far from pi, so a missing end correction would show
    opts = {"n_particles": 300, "n_steps": 40, "n_mc": 8, "t_min": 0.3, "final_moves": 0}
    return sample(shifted_gaussian(), method="diffusion", grid="adaptive", seed=seed,
                  dtype=torch.float64, progress=False, **{**opts, **kw})  # fmt: skip


@pytest.mark.slow
def test_adaptive_grid_is_unbiased_for_z_and_the_mean():
    """Independent runs (a grid is shared by the groups of one run, so groups are not
    independent replicates): Z_hat / Z averages to 1, the weighted mean to the exact mean."""
    runs = [run(seed) for seed in range(12)]
    log_z = torch.tensor([float(r.log_z) for r in runs])
    assert_z_unbiased(log_z, LOG_C, n_se=4.5, max_se=0.1)
    means = torch.stack([weighted_moments(r.particles, r.log_weights)[0] for r in runs])
    assert_unbiased(means, MEAN, n_se=4.5, max_se=0.05, what="mean")
    grid = runs[0].info["grid"]
    assert grid[0] == 1.0 and grid[-1] == 0.3 and all(a > b for a, b in itertools.pairwise(grid))


def test_every_candidate_is_counted_and_the_cap_holds():
    res = run(0, n_particles=64, n_steps=6, target_ess=0.99)
    grid, passes = res.info["grid"], res.trace["passes"]
    assert len(grid) - 1 == res.info["n_steps"] <= 6 and grid[-1] == 0.3
    # init (1 pass) + every candidate of every step, n_mc draws per particle and pass
    assert res.info["n_target_evals"] == 64 * 8 * (1 + int(passes[1:].sum()))
    assert int(passes[1:].sum()) > len(grid) - 1  # the search tried more than one time a step
    rel = run(0, n_particles=64, n_steps=6, cess_relative=True, search_fraction=0.5)
    assert rel.info["grid"][-1] == 0.3 and len(rel.info["grid"]) <= 7
    assert rel.info["n_target_evals"] == 64 * 8 * (1 + float(rel.trace["passes"][1:].sum()))
    with pytest.raises(smcdiff.SMCDiffError, match="only method='diffusion'"):
        sample(shifted_gaussian(), method="rdmc", grid="adaptive", n_particles=8)
    with pytest.raises(smcdiff.SMCDiffError, match="search_fraction"):
        run(0, search_fraction=0.0)
