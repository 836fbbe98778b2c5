"""WeightTails keeps exactly the largest log-weights of every step, and the per-step Pareto k
computed from them equals PSIS on the full weights."""

import numpy as np
import torch
from ssm import BootstrapSSM

from smcdiff.diagnostics.degeneracy import step_pareto_k
from smcdiff.diagnostics.pareto import pareto_k
from smcdiff.engine import Collector, WeightTails, run_smc
from smcdiff.engine.collectors import degeneracy_collectors, psis_tail_size


class AllWeights(Collector):
    name = "all_weights"

    def __init__(self):
        self.rows = []

    def collect(self, state, info):
        self.rows.append(state.log_weights.clone())

    def result(self):
        return torch.stack(self.rows)


def _run(n=400, groups=2, seed=1):
    return run_smc(BootstrapSSM(), n, n_groups=groups, generator=torch.Generator().manual_seed(seed),
                   collectors=[WeightTails(), AllWeights()])  # fmt: skip


def test_weight_tails_keep_the_largest_log_weights_of_every_step():
    run = _run()
    tails, full = run.collected["weight_tails"], run.collected["all_weights"]
    m = psis_tail_size(400) + 1
    assert tails["n_particles"] == 400 and tails["top"].shape == (full.shape[0], 2, m)
    expected = full.sort(dim=-1, descending=True).values[..., :m]
    assert torch.equal(tails["top"], expected.double())


def test_pareto_k_from_the_tails_equals_psis_on_all_weights():
    run = _run()
    k = step_pareto_k(run.collected["weight_tails"])
    full = run.collected["all_weights"]
    exact = pareto_k(full.reshape(-1, full.shape[-1])).numpy().reshape(k.shape)
    np.testing.assert_allclose(k, exact, rtol=1e-10, atol=1e-12)


def test_fewer_than_25_particles_have_no_pareto_k():
    run = run_smc(BootstrapSSM(), 20, generator=torch.Generator().manual_seed(0),
                  collectors=[WeightTails()])  # fmt: skip
    assert np.isnan(step_pareto_k(run.collected["weight_tails"])).all()


def test_the_front_doors_collectors_are_a_genealogy_and_the_tails():
    names = sorted(c.name for c in degeneracy_collectors())
    assert names == ["genealogy", "weight_tails"]
