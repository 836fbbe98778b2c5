"""Fault corpus, kind 4 (continued): checkpoints of interrupted runs. A missing, torn, corrupt or
foreign checkpoint file gets a :class:`~smcdiff.errors.CheckpointError` naming the path; a resume
that lacks an argument the checkpoint could not store (a lambda), or that would change the run,
names the argument; an interrupted run resumed from its last checkpoint gives the uninterrupted
run's result, bitwise. See ``kit.py`` for the conventions of the corpus."""

from typing import ClassVar

import pytest
import torch

import smcdiff
from smcdiff import load_checkpoint
from smcdiff.errors import CheckpointError, NonFiniteError, SMCDiffError
from tests.faults.kit import (
    MODEL,
    NAN,
    StaticFK,
    from_call,
    generator,
    quadratic,
    rows,
    sample_args,
    steer_args,
)


def shifted(x):
    """A reward defined at module level (it pickles, so the checkpoint stores it)."""
    return quadratic(x - 0.5)


class Flaky:
    """:func:`shifted` that raises ``exc`` at its call ``k + 1`` (step k), once per process: the
    exception is kept on the class, not on the instance, so the pickled copy a checkpoint
    stores (and a resume runs) does not raise."""

    pending: ClassVar[dict[int, BaseException]] = {}

    def __init__(self, k: int, exc: BaseException):
        self.k, self.key, self.calls = k, id(exc), 0
        Flaky.pending[self.key] = exc

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.k + 1 and self.key in Flaky.pending:
            raise Flaky.pending.pop(self.key)
        return shifted(x)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A finished fk run's checkpoint (its reward pickles) and one of a run whose reward is a
    lambda (which does not), with the runs' results."""
    d = tmp_path_factory.mktemp("ckpt")
    ref = smcdiff.steer(MODEL, **steer_args("fk", reward=shifted), checkpoint=d / "run.ckpt")
    smcdiff.steer(MODEL, **steer_args("fk", reward=lambda x: quadratic(x - 0.5)),
                  checkpoint=d / "lambda.ckpt")  # fmt: skip
    return d, ref


def damaged(written, tmp_path, how):
    """A copy of the finished checkpoint, damaged ``how``; returns its path."""
    data = (written[0] / "run.ckpt").read_bytes()
    path = tmp_path / "damaged.ckpt"
    if how == "missing":
        return path
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint " * 64)
    elif how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:  # a checkpoint with a part missing
        payload = torch.load(written[0] / "run.ckpt", weights_only=False)
        del payload[how]
        torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("how", "pattern"),
    [
        pytest.param("missing", r"checkpoint .*damaged.ckpt does not exist",
                     id="resume/checkpoint-file-is-missing"),
        pytest.param("truncated", r"checkpoint .*damaged.ckpt cannot be read \(truncated or",
                     id="resume/checkpoint-file-is-torn-in-half"),
        pytest.param("empty", r"checkpoint .*damaged.ckpt cannot be read",
                     id="resume/checkpoint-file-is-empty"),
        pytest.param("garbage", r"checkpoint .*damaged.ckpt cannot be read",
                     id="resume/checkpoint-file-is-garbage"),
        pytest.param("foreign", r".*damaged.ckpt is not an smcdiff checkpoint",
                     id="resume/checkpoint-file-is-another-pickle"),
        pytest.param("state", r"checkpoint .*damaged.ckpt is incomplete",
                     id="resume/checkpoint-has-no-particle-state"),
    ],
)  # fmt: skip
def test_a_damaged_checkpoint_is_named_by_its_path(written, tmp_path, how, pattern):
    path = damaged(written, tmp_path, how)
    with pytest.raises(CheckpointError, match=pattern):
        smcdiff.resume(path)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


RESUME_FAULTS = [  # (id, checkpoint, overrides, pattern)
    ("resume/reward-was-a-lambda-and-is-not-passed-again", "lambda.ckpt", {},
     r"cannot continue the checkpointed steer\(\) run; pass again by name: reward \(does not "
     r"pickle"),
    ("resume/n_particles-would-change-the-run", "run.ckpt", {"n_particles": 64},
     r"a resumed run keeps its options: n_particles was 32 in the checkpointed run, got 64"),
    ("resume/reward-passed-again-is-another-function", "run.ckpt", {"reward": quadratic},
     r"a resumed run keeps its options: reward was .*shifted.* got .*quadratic"),
    ("resume/argument-is-not-one-of-the-call", "run.ckpt", {"n_stepz": 3},
     r"resume\(.*run.ckpt\): n_stepz not arguments of the checkpointed steer\(\) call"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "overrides", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in RESUME_FAULTS]
)
def test_a_resume_that_cannot_continue_the_run_names_the_argument(
    written, name, overrides, pattern
):
    with pytest.raises(CheckpointError, match=pattern):
        smcdiff.resume(written[0] / name, **overrides)


def test_resume_of_a_run_smc_checkpoint_says_how_to_continue_it(tmp_path):
    path = tmp_path / "user.ckpt"
    smcdiff.run_smc(StaticFK(), 16, generator=generator(), checkpoint=path)
    with pytest.raises(CheckpointError, match=r"user.ckpt was written by run_smc, which stores"):
        smcdiff.resume(path)


WRITE_FAULTS = [  # (id, call(tmp_path), pattern)
    ("steer/checkpoint_every-without-a-checkpoint-path",
     lambda d: smcdiff.steer(MODEL, **steer_args("fk"), checkpoint_every=2),
     r"steer: checkpoint_every needs checkpoint=PATH"),
    ("steer/checkpoint_every-is-zero",
     lambda d: smcdiff.steer(MODEL, **steer_args("fk"), checkpoint=d / "a.ckpt",
                             checkpoint_every=0),
     r"checkpoint_every must be an int >= 1, got 0"),
    ("steer/checkpoint-directory-does-not-exist",
     lambda d: smcdiff.steer(MODEL, **steer_args("fk"), checkpoint=d / "no" / "a.ckpt"),
     r"the directory of .*no/a.ckpt does not exist"),
    ("steer/checkpoint-path-is-a-directory",
     lambda d: smcdiff.steer(MODEL, **steer_args("fk"), checkpoint=d),
     r"is a directory, not a file"),
    ("sample-mala/checkpoint-for-a-method-without-checkpoints",
     lambda d: smcdiff.sample(smcdiff.as_target(quadratic, 2), **sample_args("mala"),
                              checkpoint=d / "a.ckpt"),
     r"sample\(method='mala'\) does not take checkpoint=: checkpoints cover the SMC methods"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in WRITE_FAULTS])
def test_a_checkpoint_that_cannot_be_written_is_refused_before_any_work(tmp_path, call, pattern):
    with pytest.raises(SMCDiffError, match=pattern):
        call(tmp_path)


# ----------------------------------------------------------------- interrupted, then resumed
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: RuntimeError("the network failed"),
                     id="steer-fk/reward-raises-at-step-3-then-resume"),
        pytest.param(KeyboardInterrupt, id="steer-fk/ctrl-c-in-the-reward-at-step-3-then-resume"),
    ],
)  # fmt: skip
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(written, tmp_path, make):
    path, exc = tmp_path / "run.ckpt", make()
    with pytest.raises(type(exc)) as info:
        smcdiff.steer(MODEL, **steer_args("fk", reward=Flaky(3, exc)), checkpoint=path)
    assert info.value is exc and info.value.partial.completed_steps == 2
    assert load_checkpoint(path).step == 2  # the last good step
    res = smcdiff.resume(path)  # the stored reward, working this time
    ref = written[1]
    assert torch.equal(res.particles, ref.particles) and torch.equal(res.log_z, ref.log_z)
    assert torch.equal(res.log_weights, ref.log_weights)


def test_a_run_stopped_by_a_nan_keeps_its_last_good_step_on_disk(tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteError, match=r"reward is not finite .* at step 3/6"):
        smcdiff.steer(MODEL, **steer_args("fk", reward=from_call(3, shifted, rows(NAN))),
                      checkpoint=path, checkpoint_every=1)  # fmt: skip
    ck = load_checkpoint(path)
    assert ck.step == 2 and not ck.finished
    assert bool(torch.isfinite(ck.snapshot.state.log_weights).all())
