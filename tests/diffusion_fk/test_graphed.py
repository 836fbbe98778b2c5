"""Graphed FK steps (smcdiff.diffusion_fk.graphed) on the CPU: without a graph the loop gives
run_smc's numbers bit for bit; with a stand-in graph (a "replay" that re-runs the captured step
on the static buffers and writes into the captured outputs in place, as a CUDA graph does) the
copy-in / copy-out and the per-step cache are exercised: a second run replaying the cached
steps equals the first, capturing, run of the same seed. The CUDA capture itself runs in the
H200 benchmark (experiments/bench_fk_step.py --graphed)."""

import pytest
import torch
from smcdiff_experiments.bench_fk_step import make_problem

from smcdiff.diffusion_fk import TiltTerm, build_diffusion_fk, graphed
from smcdiff.energy.tempered_fused import static_copy
from smcdiff.engine import run_smc
from smcdiff.processes.grids import time_grid
from smcdiff.resampling import policy_from_threshold
from smcdiff.seeding import child_generator


def _fk(n_steps=6):
    model, reward = make_problem(torch.device("cpu"), d=4, k=3)
    times = time_grid(model.process, n_steps, "log_snr").tolist()
    return build_diffusion_fk(model, times, tilt=(TiltTerm("reward", reward),),
                              tilt_schedule="snr", device="cpu")  # fmt: skip


def _run(fn, fk, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    return fn(fk, 200, policy=policy_from_threshold(0.5), generator=gen, progress=False, **kw)


def _same(a, b):
    return torch.equal(a.state["x"], b.state["x"]) and torch.equal(a.log_z, b.log_z)


def test_graphed_loop_without_a_graph_is_run_smc():
    fk = _fk()
    ref, run = _run(run_smc, fk, 3), _run(graphed.run_graphed, fk, 3, graph_key=("cpu",))
    assert _same(ref, run) and torch.equal(ref.log_weights, run.log_weights)
    for name, col in ref.trace.items():
        assert torch.equal(col.nan_to_num(-7.0), run.trace[name].nan_to_num(-7.0)), name


class _StandInGraph:
    """Re-runs the captured step body on the shared buffers, writing the step's record into
    the captured outputs in place (as a CUDA graph replay does)."""

    def __init__(self, smc, static, gen, entry):
        self.smc, self.static, self.gen, self.entry = smc, static, gen, entry

    def replay(self):
        _, apart, info = graphed.step_in_place(self.smc, self.static, self.gen)
        for name, v in apart.items():
            self.entry["apart"][name].copy_(v)
        out = self.entry["info"]
        for a, b in ((out.ess, info.ess), (out.ancestors, info.ancestors),
                     (out.log_z_increment, info.log_z_increment),
                     (out.resampled, info.resampled)):  # fmt: skip
            a.copy_(b)


def _stand_in_capture(smc, state, shared=None):
    gen = torch.Generator().manual_seed(0)
    if shared is None:
        shared = {"static": static_copy(state), "mirror": {}}
    static = shared["static"]._replace(step=state.step)
    names, apart, info = graphed.step_in_place(smc, static, gen)
    shared["mirror"].clear()  # the "capture" wrote into the buffers
    entry = {"static": static, "names": names, "apart": apart, "info": info, "gen": gen,
             "model": smc.model, "mirror": shared["mirror"]}  # fmt: skip
    entry["graph"] = _StandInGraph(smc, static, gen, entry)
    return entry


def test_cached_step_graphs_replay_the_same_run(monkeypatch):
    monkeypatch.setattr(graphed, "capture_step", _stand_in_capture)
    fk = _fk()

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        smc = graphed.SMC(fk, resampling="systematic", policy=policy_from_threshold(0.5))
        loop = graphed.GraphedLoop(smc, gen, 4, False, graph_key=("stand-in", id(fk)))
        return loop.run(loop.begin(200, 1))

    first = run(5)  # captures steps 1..K
    key = ("stand-in", id(fk))
    assert graphed.cached_steps(key) == fk.n_steps
    # the steps share one set of state buffers (the last, unguided step has the same layout)
    buffers = {id(graphed._CACHE[(*key, k)]["static"].particles["x"]) for k in range(1, 7)}
    assert len(buffers) == 1
    again, other = run(5), run(6)  # replays
    assert _same(first, again) and torch.equal(first.trace["ess"], again.trace["ess"])
    assert not torch.equal(first.state["x"], other.state["x"])
    assert bool(torch.isfinite(first.log_z).all()) and first.trace["resampled"].any()
    # the replays (seed 6: not the capturing run's inputs) are the engine's steps on step k's
    # stream, seeded s + k (s from the run's generator)
    gen = torch.Generator().manual_seed(6)
    smc = graphed.SMC(fk, resampling="systematic", policy=policy_from_threshold(0.5))
    state, _ = smc.init(200, gen, 1)
    s, step_gen = child_generator(gen, torch.device("cpu")).initial_seed(), torch.Generator()
    for k in range(1, fk.n_steps + 1):
        state, _ = smc.step(state, step_gen.manual_seed((s + k) % 2**63))
    assert torch.equal(state.particles["x"], other.state["x"])
    assert torch.equal(state.log_z, other.log_z)
    graphed.release(key)
    assert graphed.cached_steps(key) == 0 and ("static", *key) not in graphed._CACHE


@pytest.mark.parametrize("n", [10])
def test_run_graphed_checks_its_arguments(n):
    with pytest.raises(Exception, match="n_particles"):
        graphed.run_graphed(_fk(), 0)
