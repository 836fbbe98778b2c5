"""sample() runs every method on every registered target (tiny sizes: a smoke test of shapes,
finiteness and counts; accuracy is tested elsewhere against exact answers)."""

import math

import pytest
import torch
from smcdiff_targets import TARGETS, get_target

from smcdiff.energy import SAMPLE_METHODS, sample

TINY = {
    "tempered": {"n_moves": 1, "max_steps": 4},
    "diffusion": {"n_steps": 3, "n_mc": 4, "final_moves": 1},
    "rdmc": {"n_steps": 3, "n_mc": 4},
    "ensemble": {"n_steps": 3, "n_mc": 4},
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_method_runs_on_every_target(name):
    target, std = get_target(name)
    for method in sorted(SAMPLE_METHODS):
        opts = TINY.get(method, {"n_steps": 3})
        res = sample(target, method=method, n_particles=16, seed=0, reference_std=std, **opts)
        assert res.particles.shape == (16, target.dim), (name, method)
        assert torch.isfinite(res.particles).all(), (name, method)
        assert math.isclose(float(res.weights.sum()), 1.0, rel_tol=1e-9), (name, method)
        assert res.info["n_target_evals"] > 0, (name, method)
