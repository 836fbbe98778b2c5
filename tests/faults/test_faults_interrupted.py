"""Fault corpus, kind 4: interrupted runs. A run stopped mid-way (an exception from the user's
score, reward, target or model at step k; Ctrl-C; a non-finite value) loses nothing: the error
propagates unchanged and carries ``.partial``, the run up to the last good step as an
:class:`~smcdiff.SMCResult` whose step count is right and whose ``ess``, ``resample``,
``to_arviz`` and ``diagnose`` work. See ``kit.py``."""

import pytest
import torch
import xarray as xr

import smcdiff
from smcdiff.energy import TemperingIncompleteError
from smcdiff.engine import StepOutput
from smcdiff.errors import NonFiniteError
from tests.faults.kit import (
    MCMC_SAMPLE,
    MODEL,
    NAN,
    STEER_METHODS,
    FaultyScore,
    StaticFK,
    generator,
    quadratic,
    raising,
    rows,
    sample_args,
    steer_args,
)


def exercise(part, steps: int, n: int, runs: int | None = None) -> None:
    """``part`` is an SMCResult of ``steps`` completed steps whose methods all work."""
    lead = () if runs is None else (runs,)
    assert isinstance(part, smcdiff.SMCResult)
    assert part.completed_steps == steps and part.ess.shape == (steps + 1, *lead)
    assert bool(torch.isfinite(part.ess).all()) and bool((part.ess <= n * (1 + 1e-9)).all())
    assert bool(torch.isfinite(part.particles).all())
    draws = part.resample(8, seed=0)
    assert draws.shape == (*lead, 8, *part.particles.shape[len(lead) + 1 :])
    post = part.to_arviz(n_draws=8)["posterior"]
    post = post.to_dataset() if isinstance(post, xr.DataTree) else post
    assert post["x"].shape[:2] == (runs or 1, 8)
    report = part.diagnose()
    assert report.per_step["ess"].shape[0] == steps + 1 and f"N={n}" in str(report)


# ----------------------------------------------------------------- non-finite: partial works
@pytest.mark.parametrize(
    ("method", "step"),
    [
        pytest.param(m, 3, id=f"steer-{m}/score-is-nan-at-step-3")
        for m in STEER_METHODS
    ]
    + [
        pytest.param(m, 0, id=f"steer-{m}/score-is-nan-at-step-0") for m in STEER_METHODS
    ],
)  # fmt: skip
def test_a_non_finite_error_keeps_a_working_partial_result(method, step):
    score = FaultyScore(rows(NAN, 2), after=step, only=True)
    with pytest.raises(NonFiniteError) as info:
        smcdiff.steer(score, **steer_args(method))
    part = info.value.partial
    if step == 0 and part is None:  # nothing completed, nothing kept: honest
        return
    assert not bool(part.log_weights.isnan().any())
    exercise(part, max(step - 1, 0), n=32)


def test_a_partial_result_of_two_runs_works():
    reward = quadratic

    def faulty(x):
        faulty.calls += 1
        out = reward(x)
        return rows(NAN, 1)(out) if faulty.calls == 4 else out

    faulty.calls = 0
    with pytest.raises(NonFiniteError) as info:
        smcdiff.steer(MODEL, **steer_args("fk", reward=faulty, n_runs=2))
    exercise(info.value.partial, 2, n=32, runs=2)


def test_a_tempered_run_stopped_by_max_steps_keeps_a_working_partial_result():
    target = smcdiff.as_target(lambda x: -((x - 3.0) ** 2).sum(-1) / 0.5, 2)
    with pytest.raises(TemperingIncompleteError, match=r"max_steps=3 at temperature") as info:
        smcdiff.sample(target, **sample_args("tempered", n_particles=64, max_steps=3))
    exercise(info.value.partial, 3, n=64)


def test_a_tempered_run_meeting_a_nan_keeps_a_working_partial_result():
    target = smcdiff.as_target(lambda x: -(x * x).sum(-1) / 18.0 + torch.sqrt(5.0 - x[:, 0]) * 0, 2)
    with pytest.raises(NonFiniteError) as info:
        smcdiff.sample(target, **sample_args("tempered", n_particles=64))
    exercise(info.value.partial, info.value.step - 1, n=64)


# ----------------------------------------------------------------- any exception, or Ctrl-C
INTERRUPTS = [
    ("a-runtime-error", lambda: RuntimeError("the user's network failed")),
    ("ctrl-c", KeyboardInterrupt),
]


@pytest.mark.parametrize(
    ("method", "make"),
    [
        pytest.param(m, make, id=f"steer-{m}/score-raises-{name}-at-step-3")
        for m in STEER_METHODS
        for name, make in INTERRUPTS
    ],
)  # fmt: skip
def test_an_interrupted_steer_run_raises_the_same_error_with_the_run_so_far(method, make):
    exc = make()
    score = FaultyScore(raising(exc), after=3, only=True)
    with pytest.raises(type(exc)) as info:
        smcdiff.steer(score, **steer_args(method))
    assert info.value is exc  # the user's own error, unchanged
    exercise(getattr(info.value, "partial", None), 2, n=32)


@pytest.mark.parametrize(
    "make",
    [pytest.param(make, id=f"run_smc/step-raises-{n}-at-step-3")
     for n, make in INTERRUPTS],
)  # fmt: skip
def test_an_interrupted_user_model_raises_the_same_error_with_the_run_so_far(make):
    exc = make()

    class Failing(StaticFK):
        def step(self, k, state, generator, log_weights):
            if k == 3:
                raise exc
            return StepOutput(dict(state), self._log_g(state["x"], k))

    with pytest.raises(type(exc)) as info:
        smcdiff.run_smc(Failing(), 32, generator=generator())
    assert info.value is exc
    part = getattr(info.value, "partial", None)  # the engine's SMCRun, as for NonFiniteError
    assert part is not None and part.completed_steps == 2
    exercise(smcdiff.SMCResult.from_run(part, grouped=False, info={}), 2, n=32)


def failing_after(n_calls: int, exc: BaseException):
    """A target that raises ``exc`` at its call ``n_calls + 1``."""

    def log_prob(x):
        log_prob.calls += 1
        if log_prob.calls > n_calls:
            raise exc
        return quadratic(x)

    log_prob.calls = 0
    return smcdiff.as_target(log_prob, 2)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, id=f"sample-{m}/target-raises-ctrl-c-mid-run")
     for m in ("tempered", *MCMC_SAMPLE)],
)  # fmt: skip
def test_an_interrupted_sample_run_raises_the_same_error_with_the_run_so_far(method):
    exc = KeyboardInterrupt()
    calls = 12 if method == "tempered" else 5  # ula / underdamped: 11 calls in their 10 steps
    with pytest.raises(KeyboardInterrupt) as info:
        smcdiff.sample(failing_after(calls, exc), **sample_args(method, n_particles=32))
    assert info.value is exc
    part = getattr(info.value, "partial", None)
    assert part is not None and part.completed_steps >= 0
    exercise(part, part.completed_steps, n=32)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, id=f"sample-{m}/target-is-nan-mid-run-keeps-the-chains")
     for m in MCMC_SAMPLE],
)  # fmt: skip
def test_an_mcmc_run_meeting_a_nan_keeps_the_chains(method):
    target = smcdiff.as_target(lambda x: quadratic(x) + torch.sqrt(1.0 - x[:, 0]) * 0.0, 2)
    with pytest.raises(NonFiniteError) as info:
        smcdiff.sample(target, **sample_args(method, n_particles=32, n_steps=40, step_size=0.5,
                                             reference_std=0.3))  # fmt: skip
    assert info.value.partial is not None
    exercise(info.value.partial, 0, n=32)
