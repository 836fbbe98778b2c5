"""Per-rank checkpoints that resume bitwise, a non-finite potential on one rank stopping every
rank at the same step (no rank left waiting in a collective), and the argument errors."""

import math
import os

import pytest
import torch
import torch.distributed as dist

import smcdiff
from smcdiff.distributed import rank_path, run_smc_distributed
from smcdiff.resampling import ESSBelow
from tests.distributed.harness import run_ranks
from tests.distributed.test_front_doors import inverse_problem
from tests.engine.ssm import BootstrapSSM


def resume_job(rank, world_size, directory):
    p = inverse_problem()
    kw = dict(log_likelihood=p.log_likelihood, n_particles=64, n_steps=10, seed=3,
              distributed=True)  # fmt: skip
    full = smcdiff.steer(p.model, progress=False, **kw)

    def stop(k, info):
        if k == 6:
            raise KeyboardInterrupt

    path = os.path.join(directory, "run.pt")
    try:
        smcdiff.steer(p.model, progress=stop, checkpoint=path, checkpoint_every=2, **kw)
    except KeyboardInterrupt as err:
        written = err.checkpoint
    again = smcdiff.resume(written)
    same = all(torch.equal(getattr(full, a), getattr(again, a))
               for a in ("particles", "log_weights", "log_z"))  # fmt: skip
    return same, os.path.basename(str(written)), again.info["resumed_from_step"]


@pytest.mark.slow
def test_each_rank_checkpoints_its_own_file_and_resumes_bitwise(tmp_path):
    out = run_ranks(resume_job, 2, str(tmp_path))
    assert [o[1] for o in out] == ["run.rank0of2.pt", "run.rank1of2.pt"]
    assert all(o[0] for o in out) and all(o[2] == 6 for o in out)
    assert rank_path(tmp_path / "run.rank1of2.pt", 1, 2) == str(tmp_path / "run.rank1of2.pt")


class NaNOnRankOne(BootstrapSSM):
    """The bootstrap filter, with a NaN potential on rank 1 at step 3."""

    def step(self, k, state, generator, log_weights):
        out = super().step(k, state, generator, log_weights)
        if k == 3 and dist.get_rank() == 1:
            out.log_potential[0] = math.nan
        return out


def guard_job(rank, world_size):
    try:
        run_smc_distributed(NaNOnRankOne(), 32, generator=torch.Generator().manual_seed(0),
                            policy=ESSBelow(0.5))  # fmt: skip
    except smcdiff.NonFiniteError as err:
        return err.partial.completed_steps, "step 3" in str(err)
    return None


def errors_job(rank, world_size):
    p = inverse_problem()
    cases = {
        "not a multiple": dict(n_particles=63),
        "distributed systematic": dict(resampling="multinomial"),
        "n_runs": dict(n_runs=2),
        "tilt_schedule='adaptive'": dict(tilt_schedule="adaptive"),
    }
    seen = {}
    for text, kw in cases.items():
        try:
            smcdiff.steer(p.model, log_likelihood=p.log_likelihood, n_steps=2, distributed=True,
                          **{"n_particles": 64, **kw})  # fmt: skip
        except smcdiff.SMCDiffError as err:
            seen[text] = text in str(err)
    try:
        run_smc_distributed(BootstrapSSM(), 64, policy=lambda lw, k, t: lw[:, 0] > 0)
    except smcdiff.SMCDiffError as err:
        seen["policy"] = "cannot be decided globally" in str(err)
    return seen


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_that_step_and_errors_name_the_problem():
    assert run_ranks(guard_job, 2) == [(2, True), (2, True)]
    for seen in run_ranks(errors_job, 2):
        assert seen == {k: True for k in ("not a multiple", "distributed systematic", "n_runs",
                                          "tilt_schedule='adaptive'", "policy")}  # fmt: skip
