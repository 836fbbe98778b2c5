"""Distributed systematic resampling against the one-process scheme, ancestor for ancestor, and
island resampling's bookkeeping; on gloo process groups of 2 and 4 CPU processes."""

import math

import pytest
import torch

from smcdiff.distributed import Comm, DistributedSystematic, redistribute, systematic_slots
from smcdiff.resampling import systematic
from tests.distributed.harness import run_ranks

N_TRIALS = 24


def global_log_weights(trial: int, n_total: int) -> torch.Tensor:
    """Normalised log-weights with heavy tails, some zero weights, and (trial 0) all weight on
    the last rank's last particle."""
    gen = torch.Generator().manual_seed(trial)
    lw = 3.0 * torch.randn(n_total, generator=gen, dtype=torch.float64)
    lw[torch.rand(n_total, generator=gen) < 0.2] = -math.inf
    if trial == 0:
        lw = torch.full((n_total,), -math.inf, dtype=torch.float64)
        lw[-1] = 0.0
    return lw - torch.logsumexp(lw, 0)


def ancestors_job(rank, world_size, n_local):
    comm = Comm()
    N = n_local * world_size
    mine = slice(rank * n_local, (rank + 1) * n_local)
    mismatches = 0
    for trial in range(N_TRIALS):
        lw = global_log_weights(trial, N)
        x = torch.randn(N, 2, generator=torch.Generator().manual_seed(1000 + trial))
        label = torch.arange(N)
        want = systematic(lw[None], generator=torch.Generator().manual_seed(trial))[0]
        u = torch.rand((), dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        first, end = systematic_slots(comm, lw[mine], u, N)
        flag, y = label % 3 == 0, x[:, :1].float().repeat(1, 3)  # rows of odd byte widths
        parts = {"flag": flag[mine], "x": x[mine], "label": label[mine], "y": y[mine]}
        new, anc = redistribute(comm, parts, first, end, n_local)
        mismatches += int((anc != want[mine]).sum())
        assert torch.equal(new["x"], x[anc]) and torch.equal(new["label"], anc)
        assert torch.equal(new["flag"], flag[anc]) and torch.equal(new["y"], y[anc])
    # the engine-facing resampler: shared generator, uniform weights, global ancestors
    shared = torch.Generator().manual_seed(7)
    res = DistributedSystematic(comm, shared, N)
    lw = global_log_weights(3, N)[mine].unsqueeze(0)
    parts, new_lw, anc = res({"x": x[mine]}, lw, torch.ones(1, dtype=torch.bool), None)
    want = systematic(global_log_weights(3, N)[None], generator=torch.Generator().manual_seed(7))
    same = torch.equal(anc[0], want[0, mine]) and torch.equal(parts["x"], x[anc[0]])
    uniform = bool((new_lw == -math.log(n_local)).all()) and float(res.log_mass) == -math.log(
        world_size
    )
    kept = res({"x": x[mine]}, lw, torch.zeros(1, dtype=torch.bool), None)
    own = torch.equal(kept[2][0], torch.arange(N)[mine])
    own = own and torch.allclose(kept[1] + res.log_mass, lw, atol=1e-12)  # rank-normalised
    return mismatches, same and uniform and own, comm.bytes_sent


@pytest.mark.slow
@pytest.mark.parametrize("world_size, n_local", [(2, 40), (4, 16)])
def test_distributed_systematic_draws_the_one_process_ancestors(world_size, n_local):
    """Same weights, same uniform: the offspring of all N particles are the one-process
    systematic ancestors, slot for slot, and each rank receives its n rows of them."""
    out = run_ranks(ancestors_job, world_size, n_local)
    assert [m for m, _, _ in out] == [0] * world_size
    assert all(ok for _, ok, _ in out)
    assert all(b > 0 for _, _, b in out)  # the rows and counts that crossed ranks were counted
