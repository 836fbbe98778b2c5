"""Fault corpus, kind 2: non-finite values mid-run. A score, reward, likelihood, log-potential or
target that turns NaN or +inf at step k raises a :class:`~smcdiff.NonFiniteError` whose message,
``quantity`` and ``step`` name it and step k, and whose ``partial`` keeps the run up to the last
good step; a documented NaN-as-zero-density option gives the right answer. See ``kit.py``."""

import math

import pytest
import torch

import smcdiff
from smcdiff.checks import nonfinite_rows
from smcdiff.diagnostics import weighted_moments
from smcdiff.engine import StepOutput
from smcdiff.errors import NonFiniteError
from smcdiff.mcmc import mcmc_corrector
from tests.faults.kit import (
    GRADIENT,
    INF,
    MCMC_SAMPLE,
    MODEL,
    NAN,
    STEER_METHODS,
    TILTED,
    WEIGHTED,
    FaultyScore,
    K,
    StaticFK,
    from_call,
    generator,
    quadratic,
    rows,
    sample_args,
    steer_args,
)
from tests.stats import assert_unbiased, assert_z_unbiased


def nonfinite(call, quantity: str, step: int, pattern: str) -> NonFiniteError:
    """``call()`` raises a NonFiniteError for ``quantity`` at ``step``, message matching."""
    with pytest.raises(NonFiniteError, match=pattern) as info:
        call()
    err = info.value
    assert (err.quantity, err.step) == (quantity, step), (err.quantity, err.step)
    return err


def check_partial(err: NonFiniteError, steps: int, weighted: bool = True) -> None:
    """The error kept the run up to ``steps``, every particle finite, ``log_z`` finite if the
    method has weights (NaN, 'no estimate', if not)."""
    part = err.partial
    assert isinstance(part, smcdiff.SMCResult)
    assert part.completed_steps == steps and part.ess.shape[0] == steps + 1
    assert bool(torch.isfinite(part.particles).all())
    assert math.isfinite(float(part.log_z)) == weighted


# ----------------------------------------------------------------- steer(): the score
@pytest.mark.parametrize("method", STEER_METHODS)
def test_calls_are_one_per_step(method):
    """The convention the injectors rely on: score and reward are called once per step."""
    score, reward = FaultyScore(lambda s: s), from_call(10**9, quadratic, lambda r: r)
    smcdiff.steer(score, **steer_args(method, reward=reward))
    assert score.calls == K + 1
    assert reward.calls[0] == (K + 1 if method != "none" else 0)


@pytest.mark.parametrize(
    ("method", "value"),
    [
        pytest.param(m, v, id=f"steer-{m}/score-{name}-at-step-3-only")
        for m in STEER_METHODS
        for name, v in [("is-nan", NAN), ("is-plus-inf", INF)]
    ],
)
def test_a_score_that_is_not_finite_at_one_step_is_named(method, value):
    score = FaultyScore(rows(value, 2), after=3, only=True)  # call 4 = step 3, 2 of 32 rows
    err = nonfinite(lambda: smcdiff.steer(score, **steer_args(method)), "score", 3,
                    r"score is not finite \(NaN or inf\) for 2 of 32 particles at step 3/6")  # fmt: skip
    check_partial(err, 2, weighted=method in WEIGHTED)


# ----------------------------------------------------------------- steer(): reward, likelihood
@pytest.mark.parametrize(
    ("method", "value"),
    [
        pytest.param(m, v, id=f"steer-{m}/reward-{name}-at-step-3")
        for m in TILTED
        for name, v in [("is-nan", NAN), ("is-plus-inf", INF)]
    ],
)
def test_a_reward_that_turns_non_finite_is_named_with_its_step(method, value):
    reward = from_call(3, quadratic, rows(value, 3))
    err = nonfinite(lambda: smcdiff.steer(MODEL, **steer_args(method, reward=reward)), "reward",
                    3, r"reward is not finite .* for 3 of 32 particles at step 3/6")  # fmt: skip
    check_partial(err, 2, weighted=method in WEIGHTED)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("fk", id="steer-fk/log_likelihood-is-nan-at-step-3"),
        pytest.param("tds", id="steer-tds/log_likelihood-is-nan-at-step-3"),
        pytest.param("fkc", id="steer-fkc/log_likelihood-is-nan-at-step-3"),
    ],
)  # fmt: skip
def test_a_nan_log_likelihood_is_named_as_such(method):
    ll = from_call(3, quadratic, rows(NAN, 3))
    args = steer_args(method, reward=None, log_likelihood=ll)
    err = nonfinite(lambda: smcdiff.steer(MODEL, **args), "log_likelihood", 3,
                    r"log_likelihood is not finite .* at step 3/6")  # fmt: skip
    check_partial(err, 2)


def test_a_nan_reward_in_one_of_two_runs_names_the_step_and_keeps_both_runs():
    def reward(x):  # NaN for 3 particles of the second run (rows N..2N-1) from step 3 on
        out = quadratic(x)
        reward.calls += 1
        if reward.calls > 3:
            out = out.clone()
            out[32:35] = NAN
        return out

    reward.calls = 0
    err = nonfinite(lambda: smcdiff.steer(MODEL, **steer_args("fk", reward=reward, n_runs=2)),
                    "reward", 3, r"reward is not finite .* for 3 of 64 particles at step 3/6")  # fmt: skip
    part = err.partial
    assert part.particles.shape == (2, 32, 2) and part.log_z.shape == (2,)
    assert part.completed_steps == 2 and bool(torch.isfinite(part.log_z).all())


def gradient_nan_beyond(c):
    """A reward finite everywhere whose gradient is NaN where x_0 > c (``torch.where`` of a
    sqrt), recording the first call that evaluated it there (that call's step)."""

    def reward(x):
        reward.calls += 1
        hit = x[:, 0] > c
        if reward.first is None and bool(hit.any()):
            reward.first = reward.calls - 1
        return quadratic(x) + torch.where(hit, torch.zeros_like(x[:, 0]), torch.sqrt(c - x[:, 0]))

    reward.calls, reward.first = 0, None
    return reward


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        pytest.param(m, extra, id=f"steer-{label}/reward-gradient-is-nan-in-a-region")
        for m, label, extra in [
            ("fk", "fk-guided", {"proposal": "guided"}),
            ("tds", "tds", {}),
            ("guidance", "guidance", {}),
            ("fkc", "fkc", {}),
            ("driftlite-vcg", "driftlite-vcg", {}),
        ]
    ],
)
def test_a_nan_reward_gradient_is_named_as_the_gradient(method, extra):
    assert method in GRADIENT or extra
    reward = gradient_nan_beyond(0.5)
    with pytest.raises(NonFiniteError, match=r"gradient.* at step \d+/6") as info:
        smcdiff.steer(MODEL, **steer_args(method, reward=reward, n_particles=64, **extra))
    assert info.value.step == reward.first


# ----------------------------------------------------------------- steer(): an MCMC corrector
def nan_beyond(c):
    """log N(0, I) up to a constant, NaN where x_0 > c (the sqrt of a negative number)."""
    return lambda x: quadratic(x) + torch.sqrt(c - x[:, 0]) * 0.0


def test_steer_fk_with_a_corrector_meeting_a_nan_target_names_it_and_the_step():
    """Proposals of the corrector (step 0.5) cross x_0 = 1, where its log-target is NaN; before
    the fix it rejected them silently (a wrong 'invariant' move, no error)."""
    log_target = nan_beyond(1.0)
    corrector = mcmc_corrector("mala", lambda k, x: log_target(x), n_moves=3, step_size=0.5)
    with pytest.raises(NonFiniteError, match=r"mcmc_corrector: target log_prob is NaN .* "
                       r"in the mala moves at SMC step \d+") as info:  # fmt: skip
        smcdiff.steer(MODEL, **steer_args("fk", corrector=corrector))
    assert info.value.quantity == "target log_prob in MCMC corrector" and info.value.step >= 1


class MovingFK(StaticFK):
    """:class:`StaticFK` whose particles are reported (``checks``) and can be broken at a step."""

    def __init__(self, bad_step: int | None = None):
        super().__init__()
        self.bad_step = bad_step

    def step(self, k, state, generator, log_weights):
        x = state["x"]
        if k == self.bad_step:
            x = x.clone()
            x[:2] = NAN
        return StepOutput({"x": x}, self._log_g(state["x"], k), {"particles": nonfinite_rows(x)})


def test_run_smc_with_a_corrector_meeting_a_nan_target_names_it_and_the_step():
    corrector = mcmc_corrector("mala", lambda k, x: nan_beyond(0.5)(x), n_moves=2, step_size=0.5)
    with pytest.raises(NonFiniteError, match=r"at SMC step 1") as info:
        smcdiff.run_smc(StaticFK(), 64, corrector=corrector, generator=generator())
    assert info.value.quantity == "target log_prob in MCMC corrector" and info.value.step == 1


# ----------------------------------------------------------------- run_smc(): a user's FK model
RUN_SMC_CASES = [  # (name, model, kwargs, quantity, step, pattern[, xfail])
    (
        "log-potential-is-nan-at-step-2",
        StaticFK(faults={2: rows(NAN, 64)}),
        {},
        "log-potential (incremental log-weight)",
        2,
        r"for 64 of 64 particles at step 2/4",
    ),
    (
        "log-potential-is-plus-inf-for-one-particle-at-step-3",
        StaticFK(faults={3: rows(INF, 1)}),
        {},
        "log-potential (incremental log-weight)",
        3,
        r"is not finite \(NaN or inf\) for 1 of 64 particles at step 3/4",
    ),
    (
        "particles-are-nan-at-step-2",
        MovingFK(bad_step=2),
        {},
        "particles",
        2,
        r"particles is not finite \(NaN or inf\) for 2 of 64 particles at step 2/4",
    ),
    (
        "log-potential-is-nan-at-step-2-checked-every-3-steps",
        StaticFK(faults={2: rows(NAN, 4)}),
        {"check_every": 3},
        "log-potential (incremental log-weight)",
        2,
        r"at step 2/4",
    ),
]


@pytest.mark.parametrize(
    ("model", "kwargs", "quantity", "step", "pattern"),
    [pytest.param(*c[1:6], id=f"run_smc/{c[0]}", marks=c[6:]) for c in RUN_SMC_CASES],
)
def test_run_smc_names_the_quantity_and_step_and_keeps_the_last_checked_state(
    model, kwargs, quantity, step, pattern
):
    err = nonfinite(lambda: smcdiff.run_smc(model, 64, generator=generator(), **kwargs),
                    quantity, step, pattern)  # fmt: skip
    part = err.partial  # the engine's SMCRun up to the last checked good step
    every = kwargs.get("check_every", 1)
    assert part.completed_steps == (step - 1) // every * every
    assert bool(torch.isfinite(part.state["x"]).all()) and bool(torch.isfinite(part.log_z).all())
    assert part.trace["ess"].shape[0] == part.completed_steps + 1


# ----------------------------------------------------------------- sample(): tempered SMC
def nan_gradient_beyond(c):
    """log N(0, I) up to a constant, finite everywhere, its gradient NaN where x_0 > c."""
    return lambda x: (
        quadratic(x) + torch.where(x[:, 0] > c, torch.zeros_like(x[:, 0]), torch.sqrt(c - x[:, 0]))
    )


def test_tempered_names_a_nan_target_in_the_reference_draws_at_step_0():
    """NaN where x_0 > 0.5: reference draws land there, so step 0 (their weighting) fails."""
    target = smcdiff.as_target(nan_beyond(0.5), 2)
    err = nonfinite(lambda: smcdiff.sample(target, **sample_args("tempered", n_particles=64)),
                    "target log_prob", 0, r"target log_prob is not finite .* at step 0/")  # fmt: skip
    assert err.partial is None  # step 0 is checked before it is kept: no good step, no partial


TEMPERED_MOVE_CASES = [  # (name, log-density, quantity); N(0, 9 I) reached by the moves
    ("log-density-is-nan-in-a-region-the-moves-reach",
     lambda x: -(x * x).sum(-1) / 18.0 + torch.sqrt(5.0 - x[:, 0]) * 0.0,
     "target log_prob in MCMC move"),
    ("gradient-is-nan-in-a-region-the-moves-reach",
     lambda x: -(x * x).sum(-1) / 18.0 + torch.where(
         x[:, 0] > 3.0, torch.zeros_like(x[:, 0]), torch.sqrt(3.0 - x[:, 0])),
     "target gradient in MCMC move"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("log_prob", "quantity"),
    [pytest.param(f, q, id=f"sample-tempered/{n}") for n, f, q in TEMPERED_MOVE_CASES],
)
def test_tempered_names_a_nan_met_by_its_moves_with_the_step(log_prob, quantity):
    """The reference N(0, I) draws never reach the NaN region; the moves at the wide
    intermediate temperatures do."""
    target = smcdiff.as_target(log_prob, 2)
    with pytest.raises(NonFiniteError, match=quantity + r" is not finite .* at step \d+/") as info:
        smcdiff.sample(target, **sample_args("tempered", n_particles=128))
    err = info.value
    assert err.quantity == quantity and err.step >= 2  # moves start at step 2
    check_partial(err, err.step - 1)


def test_tempered_nan_as_neg_inf_is_exact_on_a_truncated_gaussian():
    """``nan_as_neg_inf=True``: NaN is a zero density. Target N(0, I) truncated to x_0 < 1 (NaN
    beyond): Z = 2 pi Phi(1), E[x_0] = -phi(1) / Phi(1). A third of the reference draws (std 1.5)
    land in the NaN region and must get weight zero; a NaN counted as anything else (or the
    region's particles kept) moves Z_hat / Z and the mean by many SE (SE ~0.017 on the ratio)."""
    target = smcdiff.as_target(nan_beyond(1.0), 2)
    res = smcdiff.sample(target, n_particles=256, n_runs=16, seed=1, dtype=torch.float64,
                         reference_std=1.5, nan_as_neg_inf=True, progress=False)  # fmt: skip
    cdf = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    pdf = math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert_z_unbiased(res.log_z, math.log(2 * math.pi * cdf), n_se=4.5, max_se=0.03)
    mean, _ = weighted_moments(res.particles, res.log_weights)  # (R, 2)
    assert_unbiased(mean[:, 0], -pdf / cdf, n_se=4.5, what="truncated mean")
    assert bool((res.particles[..., 0] <= 1).all())


# ----------------------------------------------------------------- sample(): MCMC and diffusion
@pytest.mark.parametrize(
    ("method", "log_prob", "quantity"),
    [
        pytest.param(m, f, q, id=f"sample-{m}/{name}")
        for m in MCMC_SAMPLE
        for name, f, q in [
            ("log-density-is-nan-in-a-region", nan_beyond(1.0), "target log_prob"),
            ("gradient-is-nan-in-a-region", nan_gradient_beyond(1.0), "target gradient"),
        ]
    ],
)
def test_mcmc_names_a_nan_target_and_the_step(method, log_prob, quantity):
    """Chains start at N(0, I) draws inside x_0 < 1 (the start is checked: chains starting
    where the target is NaN are an input error) and step across x_0 = 1."""
    target = smcdiff.as_target(log_prob, 2)
    with pytest.raises(NonFiniteError, match=quantity + r" is NaN .* at step \d+") as info:
        smcdiff.sample(target, **sample_args(method, n_particles=64, n_steps=40, step_size=0.5,
                                             reference_std=0.3))  # fmt: skip
    assert info.value.quantity == quantity and info.value.step >= 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mala", "ula"])
def test_mcmc_checked_every_k_steps_names_the_same_first_step(method):
    """check_every=7 (and 1000, more than the run's steps: only the final check) reads the
    device record less often, so the chains run on past the bad step (to the next check); the
    step named is still the first step a chain met the NaN, and the chains kept are finite."""
    target = smcdiff.as_target(nan_beyond(1.0), 2)
    steps, ran = [], []
    for every in (1, 7, 1000):
        with pytest.raises(NonFiniteError) as info:
            smcdiff.sample(target, **sample_args(method, n_particles=64, n_steps=40, step_size=0.5,
                                                 reference_std=0.3, check_every=every))  # fmt: skip
        steps.append(info.value.step)
        ran.append(info.value.partial.info["chain_steps"])
        assert bool(torch.isfinite(info.value.partial.particles).all())
    assert steps[0] == steps[1] == steps[2] and steps[0] >= 1, steps
    total = 40 + (20 if method == "mala" else 0)  # MALA adapts over n_steps // 2 warm-up steps
    assert ran[0] == steps[0] - 1 and ran[1] == steps[0] - 1 + (-steps[0]) % 7, (steps, ran)
    assert ran[2] == total, ran


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, id=f"sample-{m}/log-density-is-nan-in-a-region")
     for m in ("diffusion", "rdmc", "ensemble")],
)  # fmt: skip
def test_diffusion_samplers_name_a_nan_target_and_the_step(method):
    """The score estimators' inner samples reach x_0 > 2 (NaN) at some step, often step 0
    (t = 1, the widest). The run so far is kept when there is one: step 0 is checked before it
    is kept, so an error there has no partial (as for tempered SMC above)."""
    target = smcdiff.as_target(nan_beyond(2.0), 2)
    with pytest.raises(NonFiniteError, match=r"target log_prob .* at step \d+/4") as info:
        smcdiff.sample(target, **sample_args(method, n_particles=32))
    err = info.value
    if err.step == 0:
        assert err.partial is None
    else:
        check_partial(err, err.step - 1, weighted=method == "diffusion")
