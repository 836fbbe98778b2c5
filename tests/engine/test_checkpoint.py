"""Checkpoint and resume: atomic writes, clear errors, and resumed runs bitwise equal to the
uninterrupted ones (engine, steer, steer with an adapting MCMC corrector, adaptive tempered SMC,
grouped runs), after a KeyboardInterrupt, a NaN, or a SIGKILL of the writing process."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ckpt_worker
import pytest
import torch
from ssm import BootstrapSSM, kalman

import smcdiff
from smcdiff.engine import Genealogy, WeightedMoments, WeightTails, run_smc
from smcdiff.engine import checkpoint as ckpt
from smcdiff.engine.checkpoint import Checkpointer, load_checkpoint
from smcdiff.errors import CheckpointError, NonFiniteError
from smcdiff.mcmc import mcmc_corrector
from smcdiff.resampling import policy_from_threshold
from smcdiff.steering.methods import FKConfig
from smcdiff.steering.methods.fk import build_fk
from smcdiff.steering.registry import CommonConfig
from tests.stats import DEVICE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


# ----------------------------------------------------------------------------- helpers
def bitwise_equal(a, b, where="") -> None:
    """Tensors with the same dtype, shape and bytes (NaN payloads and -0.0 included), in
    nested dicts / lists; other values equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.cpu().numpy().tobytes() == b.cpu().numpy().tobytes(), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            bitwise_equal(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def same_result(res, ref) -> None:
    """Particles, weights, log Z, trace and collectors bitwise; the info but the wall time."""
    for name in ("particles", "log_weights", "log_z", "trace", "collected"):
        bitwise_equal(getattr(res, name), getattr(ref, name), name)
    skip = {"wall_time_s", "resumed_from_step"}
    assert {k: v for k, v in res.info.items() if k not in skip} == {
        k: v for k, v in ref.info.items() if k not in skip
    }


CALLS = {"n": 0, "at": None}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.update(n=0, at=None)
    yield
    CALLS.update(n=0, at=None)


def fail_at_call(k: int | None) -> None:
    """Count calls afresh; ``interrupting`` raises (``nan_reward`` turns NaN) at call ``k``."""
    CALLS.update(n=0, at=k)


def interrupting(x: torch.Tensor) -> torch.Tensor:
    """Counts its calls and raises ``KeyboardInterrupt`` at call ``CALLS["at"]`` (Ctrl-C)."""
    CALLS["n"] += 1
    if CALLS["n"] == CALLS["at"]:
        raise KeyboardInterrupt
    return x


def reward(x: torch.Tensor) -> torch.Tensor:
    """The tilt of the steering tests (module level: it pickles); interruptible."""
    return -2.0 * ((interrupting(x) - torch.tensor([1.0, 0.5], device=x.device)) ** 2).sum(-1)


def nan_reward(x: torch.Tensor) -> torch.Tensor:
    """NaN for every particle from call ``CALLS["at"]`` on."""
    CALLS["n"] += 1
    r = -(x**2).sum(-1)
    return r * math.nan if CALLS["at"] is not None and CALLS["n"] >= CALLS["at"] else r


def tempered_log_prob(x: torch.Tensor) -> torch.Tensor:
    """A narrow Gaussian far from the reference (about a dozen temperatures); interruptible."""
    return -0.5 * ((interrupting(x) - 3.0) ** 2 / 0.05).sum(-1)


# ----------------------------------------------------------------------------- files
def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    run_smc(BootstrapSSM(), 50, generator=torch.Generator().manual_seed(0), checkpoint=path)
    before = path.read_bytes()
    assert load_checkpoint(path).finished

    def dying_save(obj, f):  # half a file, then the writer dies
        f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with (
        pytest.raises(CheckpointError, match=r"run.ckpt.*disk full.*previous checkpoint"),
        pytest.warns(UserWarning, match=r"the last checkpoint was not written"),
    ):
        run_smc(BootstrapSSM(), 50, generator=torch.Generator().manual_seed(1), checkpoint=path)
    assert path.read_bytes() == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "run.ckpt"
    stale = tmp_path / ".run.ckpt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.ckpt.abc.tmp"
    other.write_bytes(b"not ours")
    run_smc(BootstrapSSM(), 20, generator=torch.Generator().manual_seed(0), checkpoint=path)
    assert not stale.exists() and other.exists() and path.exists()


def test_unreadable_checkpoints_are_named(tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(CheckpointError, match=r"run.ckpt does not exist"):
        load_checkpoint(path)
    run_smc(BootstrapSSM(), 20, generator=torch.Generator().manual_seed(0), checkpoint=path)
    data = path.read_bytes()
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"torn.ckpt cannot be read"):
        load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign.pt is not an smcdiff checkpoint"):
        load_checkpoint(foreign)
    payload = torch.load(path, weights_only=False)
    payload["version"] = 99
    future = tmp_path / "future.ckpt"
    torch.save(payload, future)
    with pytest.raises(
        CheckpointError, match=r"future.ckpt has format version 99.*reads version 1"
    ):
        load_checkpoint(future)
    with pytest.raises(CheckpointError, match=r"directory of .*missing/run.ckpt does not exist"):
        run_smc(BootstrapSSM(), 20, checkpoint=tmp_path / "missing" / "run.ckpt")


def test_cadence_by_steps_or_seconds_and_bad_arguments(tmp_path):
    path, K = tmp_path / "run.ckpt", BootstrapSSM().n_steps
    saver = Checkpointer(path, every=4)
    run_smc(BootstrapSSM(), 20, checkpoint=saver)
    assert saver.n_written == 1 + K // 4 + 1 and saver.last_step == K  # step 0, 4, 8, the end
    saver = Checkpointer(path, every_seconds=1e-9)  # due after every step
    run_smc(BootstrapSSM(), 20, checkpoint=saver)
    assert saver.n_written == K + 1
    with pytest.raises(CheckpointError, match=r"checkpoint_every needs checkpoint=PATH"):
        run_smc(BootstrapSSM(), 20, checkpoint_every=2)
    with pytest.raises(CheckpointError, match=r"give checkpoint_every to the Checkpointer"):
        run_smc(BootstrapSSM(), 20, checkpoint=saver, checkpoint_every=2)
    with pytest.raises(smcdiff.SMCDiffError, match=r"checkpoint_every must be"):
        Checkpointer(path, every=0)
    with pytest.raises(smcdiff.SMCDiffError, match=r"unbiased=True.*does not take checkpoint"):
        smcdiff.sample(smcdiff.as_target(tempered_log_prob, 3), unbiased=True, checkpoint=path)


# ----------------------------------------------------------------------------- engine
def _ssm_run(**kw):
    _, means, vars_ = kalman()

    def log_target(k, x):  # the exact filtering law at step k: an invariant corrector
        return -0.5 * (x[:, 0].double() - means[k]) ** 2 / vars_[k]

    corrector = mcmc_corrector("mala", log_target, n_moves=2, step_size=2.0)
    collectors = [Genealogy(keep_ancestors=True), WeightTails(), WeightedMoments()]
    run = run_smc(
        BootstrapSSM(), 300, n_groups=3, policy=policy_from_threshold(0.5), corrector=corrector,
        generator=torch.Generator().manual_seed(3), collectors=collectors, **kw,
    )  # fmt: skip
    return run


def test_run_smc_resumes_bitwise_after_a_keyboard_interrupt(tmp_path):
    ref = _ssm_run()
    path = tmp_path / "ssm.ckpt"

    def stop_at_6(k, info):
        if k == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        _ssm_run(checkpoint=path, checkpoint_every=4, progress=stop_at_6)
    partial = caught.value.partial
    assert caught.value.checkpoint == path and partial.completed_steps == 6
    bitwise_equal(partial.trace["log_z_increment"], ref.trace["log_z_increment"][:7])
    assert partial.collected["genealogy"]["distinct"].shape[0] == 7
    ck = load_checkpoint(path)
    assert ck.step == 6 and not ck.finished and ck.call is None
    # the corrector's adapted step size is part of the state: the run depends on it
    assert ck.snapshot.correctors["corrector"]["log_h"] != math.log(2.0)
    run = _ssm_run(start=ck)
    for name in ("state", "log_weights", "log_z", "trace", "collected"):
        bitwise_equal(getattr(run, name), getattr(ref, name), name)
    assert run.completed_steps == ref.completed_steps


def test_resuming_another_run_is_refused(tmp_path):
    path = tmp_path / "ssm.ckpt"
    run_smc(BootstrapSSM(), 100, n_groups=2, checkpoint=path, checkpoint_every=3,
            generator=torch.Generator().manual_seed(0))  # fmt: skip
    ck = load_checkpoint(path)
    gen = torch.Generator()
    with pytest.raises(CheckpointError, match=r"n_particles: 100 in the checkpoint, 50 here"):
        run_smc(BootstrapSSM(), 50, n_groups=2, start=ck, generator=gen)
    with pytest.raises(CheckpointError, match=r"collectors"):
        run_smc(BootstrapSSM(), 100, n_groups=2, start=ck, generator=gen, collectors=[Genealogy()])
    with pytest.raises(CheckpointError, match=r"policy"):
        run_smc(BootstrapSSM(), 100, n_groups=2, start=ck, generator=gen,
                policy=policy_from_threshold(0.3))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"resampler.*multinomial"):
        run_smc(BootstrapSSM(), 100, n_groups=2, start=ck, generator=gen, resampling="multinomial")
    ck.meta["generator_device"] = "meta"  # as if written on another device type
    with pytest.raises(CheckpointError, match=r"device: written on meta"):
        run_smc(BootstrapSSM(), 100, n_groups=2, start=ck, generator=gen)
    with pytest.raises(CheckpointError, match=r"written by run_smc, which stores no call"):
        smcdiff.resume(path)


# ----------------------------------------------------------------------------- steer
STEER = dict(reward=reward, n_particles=64, n_steps=16, seed=5, device=DEVICE,
             tilt_schedule="snr")  # fmt: skip


@pytest.mark.parametrize("n_runs, default_tilt", [(None, False), (3, True)])
def test_steer_resumes_bitwise_after_an_interrupt_inside_the_reward(tmp_path, n_runs, default_tilt):
    model = ckpt_worker.prior_model()
    kw = {**STEER, "n_runs": n_runs}
    if default_tilt:  # the method's default tilt schedule, whatever it is
        kw = {k: v for k, v in kw.items() if k != "tilt_schedule"} | {"n_steps": 10}
    fail_at_call(None)
    ref = smcdiff.steer(model, **kw)
    path = tmp_path / "steer.ckpt"
    # a fixed tilt calls the reward once per step: call 10 is in step 9
    fail_at_call(int(0.6 * CALLS["n"]) if default_tilt else 10)
    with pytest.raises(KeyboardInterrupt) as caught:
        smcdiff.steer(model, checkpoint=path, checkpoint_every=5, **kw)
    partial, k = caught.value.partial, caught.value.partial.completed_steps
    assert isinstance(partial, smcdiff.SMCResult) and 1 <= k < kw["n_steps"]
    assert k == 8 or default_tilt  # interrupted in step 9: the last good step is 8
    assert partial.info["failed"] == "KeyboardInterrupt" and caught.value.checkpoint == path
    bitwise_equal(partial.trace["ess"], ref.trace["ess"][: k + 1])
    distinct = ref.collected["genealogy"]["distinct"]  # the collectors rolled back too
    bitwise_equal(partial.collected["genealogy"]["distinct"], distinct[: k + 1])
    assert load_checkpoint(path).step == k  # the last good step, after the every-5 one
    fail_at_call(None)
    res = smcdiff.resume(path)
    same_result(res, ref)
    assert res.info["resumed_from_step"] == k
    assert load_checkpoint(path).finished  # the resumed run kept writing to the same file
    same_result(smcdiff.resume(path), ref)  # a finished run's checkpoint returns its result


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tds", "fkc", "driftlite-vcg", "guidance"])
def test_the_other_steer_methods_resume_bitwise(tmp_path, method):
    """Whatever state a method keeps (adaptive tilts, FKC step control, DriftLite's control
    fit), the resumed run equals the uninterrupted one."""
    model = ckpt_worker.prior_model()
    kw = dict(method=method, reward=reward, n_particles=32, n_steps=8, seed=2, device=DEVICE)
    fail_at_call(None)
    ref = smcdiff.steer(model, **kw)
    path = tmp_path / f"{method}.ckpt"
    fail_at_call(CALLS["n"] // 2)
    with pytest.raises(KeyboardInterrupt) as caught:
        smcdiff.steer(model, checkpoint=path, checkpoint_every=2, **kw)
    assert caught.value.partial.completed_steps < kw["n_steps"]
    fail_at_call(None)
    same_result(smcdiff.resume(path), ref)


def test_steer_with_an_adapting_corrector_resumes_bitwise(tmp_path):
    model = ckpt_worker.prior_model()
    common = CommonConfig(model, **{k: v for k, v in STEER.items() if k != "tilt_schedule"})
    plan = build_fk(common, FKConfig(tilt_schedule="snr"))
    log_target = plan.model.log_target  # the step-k target of steer's FK model

    def corrector():  # a closure: it does not pickle, so resume asks for it
        return mcmc_corrector("mala", log_target, n_moves=2, step_size=0.5)

    ref = smcdiff.steer(model, corrector=corrector(), **STEER)
    assert ref.trace["step_size"][1:].unique().numel() > 3  # it adapts step by step
    path = tmp_path / "steer.ckpt"
    fail_at_call(12)
    with pytest.raises(KeyboardInterrupt):
        smcdiff.steer(model, corrector=corrector(), checkpoint=path, checkpoint_every=4, **STEER)
    fail_at_call(None)
    with pytest.raises(CheckpointError, match=r"pass again by name: corrector \(does not pickle"):
        smcdiff.resume(path)
    with pytest.raises(CheckpointError, match=r"keeps its options: n_steps was 16.*got 20"):
        smcdiff.resume(path, corrector=corrector(), n_steps=20)
    with pytest.raises(CheckpointError, match=r"reward was test_checkpoint.reward.*nan_reward"):
        smcdiff.resume(path, corrector=corrector(), reward=nan_reward)
    same_result(smcdiff.resume(path, corrector=corrector(), progress=False), ref)


def test_a_nan_stops_the_run_with_its_partial_result_and_a_last_checkpoint(tmp_path):
    path = tmp_path / "steer.ckpt"
    fail_at_call(7)  # NaN rewards from step 6 on
    with pytest.raises(NonFiniteError) as caught:
        smcdiff.steer(ckpt_worker.prior_model(), checkpoint=path, checkpoint_every=4,
                      **{**STEER, "reward": nan_reward})  # fmt: skip
    err = caught.value
    assert err.step == 6 and err.partial.completed_steps == 5 and err.checkpoint == path
    ck = load_checkpoint(path)
    assert ck.step == 5
    x = ck.snapshot.state.particles["x"]
    bitwise_equal(x.reshape(err.partial.particles.shape), err.partial.particles.cpu())


@pytest.mark.parametrize("method", ["tempered", "diffusion", "rdmc"])
def test_sample_resumes_bitwise(tmp_path, method):
    """Adaptive tempered SMC (temperatures and step sizes chosen from the particles),
    diffusion-path SMC (fixed common draws) and rdMC (an estimator with its own random stream:
    without its state in the checkpoint, the resumed run differs)."""
    target = smcdiff.as_target(tempered_log_prob, 3)
    kw = dict(method=method, n_particles=128, seed=3, n_runs=2, device=DEVICE)
    if method == "tempered":
        kw.update(kernel="mala", n_moves=2)
    else:
        kw.update(n_steps=10, n_mc=8, final_moves=2)
    fail_at_call(None)
    ref = smcdiff.sample(target, **kw)
    path = tmp_path / f"{method}.ckpt"
    fail_at_call(CALLS["n"] // 2)
    with pytest.raises(KeyboardInterrupt) as caught:
        smcdiff.sample(target, checkpoint=path, checkpoint_every=3, **kw)
    k = caught.value.partial.completed_steps
    assert 2 < k < ref.completed_steps and load_checkpoint(path).step == k
    fail_at_call(None)
    same_result(smcdiff.resume(path, checkpoint=None), ref)  # counts in info included
    with pytest.raises(smcdiff.SMCDiffError, match=r"'mala'.*does not take checkpoint"):
        smcdiff.sample(target, method="mala", checkpoint=tmp_path / "mala.ckpt")


# ----------------------------------------------------------------------------- SIGKILL
@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_bitwise(tmp_path):
    path = tmp_path / "killed.ckpt"
    env = {**os.environ, "SMCDIFF_SLOW_REWARD": "0.05", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "ckpt_worker.py"), str(path)], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        step = -1
        while step < 5:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker wrote no checkpoint at step 5"
            time.sleep(0.02)
            if path.exists():
                step = load_checkpoint(path).step  # never torn: atomic replace
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    ck = load_checkpoint(path)
    assert 5 <= ck.step < ckpt_worker.N_STEPS and not ck.finished
    res = smcdiff.resume(path)  # in this process, without the sleep
    ref = smcdiff.steer(ckpt_worker.prior_model(), **ckpt_worker.steer_kwargs())
    same_result(res, ref)
