"""Fault corpus, kind 3: degenerate weights. Every particle at weight zero (a reward, potential or
target that is -inf everywhere) raises :class:`~smcdiff.DegenerateWeightsError` naming the step;
weights that collapse onto a few particles without becoming zero give a
:class:`~smcdiff.DegeneracyWarning` naming the step and the numbers, and ``diagnose()`` says so;
zero weights on part of the particles (a hard constraint) give the exact answer. See ``kit.py``."""

import math
import warnings

import pytest
import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.engine.collectors import degeneracy_collectors
from smcdiff.errors import DegeneracyWarning, DegenerateWeightsError, NonFiniteError, SMCDiffError
from tests.faults.kit import (
    INF,
    MODEL,
    StaticFK,
    everywhere,
    from_call,
    generator,
    quadratic,
    sample_args,
    steer_args,
)
from tests.stats import assert_unbiased, assert_z_unbiased

ZERO = r"all weights are zero \(every log-weight is -inf\) in {g} group\(s\) at step {k}/"


def minus_inf_from_step(k):
    return from_call(k, quadratic, everywhere(-INF))


# ----------------------------------------------------------------- every weight zero
@pytest.mark.parametrize(
    "method", [pytest.param(m, id=f"steer-{m}/reward-is-minus-inf-everywhere-from-step-3")
               for m in ("fk", "tds")],
)  # fmt: skip
def test_all_zero_weights_at_a_step_raise_naming_it(method):
    """A -inf reward before the last step is a finite penalty (a hard constraint must not lose
    support the final target has), so a reward that is -inf for every particle empties the
    weights at the last step, and the error names that step."""
    with pytest.raises(DegenerateWeightsError, match=ZERO.format(g=1, k=6) + "6") as info:
        smcdiff.steer(MODEL, **steer_args(method, reward=minus_inf_from_step(3)))
    err = info.value
    assert (err.quantity, err.step) == ("weights", 6)
    assert err.partial.completed_steps == 5 and bool(torch.isfinite(err.partial.log_z))


@pytest.mark.parametrize(
    "method", [pytest.param(m, id=f"steer-{m}/reward-is-minus-inf-everywhere-from-step-3")
               for m in ("fkc", "driftlite-vcg")],
)  # fmt: skip
def test_fkc_refuses_a_minus_inf_reward_naming_it_and_the_step(method):
    """FKC applies the reward, its gradient and Laplacian at x_t: it needs a finite reward, and
    says so at the step where it stops being finite (-inf is a hard constraint only for fk/tds)."""
    with pytest.raises(NonFiniteError, match=r"reward is not finite .* at step 3/6") as info:
        smcdiff.steer(MODEL, **steer_args(method, reward=minus_inf_from_step(3)))
    assert (info.value.quantity, info.value.step) == ("reward", 3)
    assert info.value.partial.completed_steps == 2


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("guidance", id="steer-guidance/reward-is-minus-inf-everywhere"),
    ],
)
def test_an_unweighted_method_does_not_sample_a_target_without_mass(method):
    with pytest.raises(NonFiniteError, match=r"reward.* -inf .*every particle|all weights"):
        smcdiff.steer(MODEL, **steer_args(method, reward=minus_inf_from_step(0)))


def test_guidance_run_without_mass_is_found_among_runs():
    def reward(x):  # -inf for every particle of the second run (rows 32..63) only
        return torch.cat([quadratic(x)[:32], torch.full((x.shape[0] - 32,), -INF)])

    with pytest.raises(NonFiniteError, match=r"reward is -inf for every particle"):
        smcdiff.steer(MODEL, **steer_args("guidance", reward=reward, n_runs=2))


def test_one_of_two_runs_losing_every_weight_is_named():
    def reward(x):  # -inf for every particle of the second run (rows 32..63) from step 3 on
        reward.calls += 1
        out = quadratic(x)
        if reward.calls > 3:
            out = torch.cat([out[:32], out[32:] * 0 - INF])
        return out

    reward.calls = 0
    with pytest.raises(DegenerateWeightsError, match=ZERO.format(g=1, k=6)) as info:
        smcdiff.steer(MODEL, **steer_args("fk", reward=reward, n_runs=2))
    part = info.value.partial  # -inf is a finite penalty until the last step
    assert part.particles.shape == (2, 32, 2) and part.completed_steps == 5


DEGENERATE_CASES = [  # (name, call, error, pattern, step, marks)
    (
        "run_smc/log-potential-is-minus-inf-everywhere-at-step-2",
        lambda: smcdiff.run_smc(StaticFK(faults={2: everywhere(-INF)}), 32, generator=generator()),
        DegenerateWeightsError,
        ZERO.format(g=1, k=2) + "4",
        2,
        (),
    ),
    (
        "sample-tempered/target-is-minus-inf-everywhere",
        lambda: smcdiff.sample(
            smcdiff.as_target(lambda x: quadratic(x) * 0 - INF, 2), **sample_args("tempered")
        ),
        DegenerateWeightsError,
        ZERO.format(g=1, k=1),
        1,
        (),
    ),
    (
        "sample-tempered/target-is-minus-inf-where-every-draw-lands",
        lambda: smcdiff.sample(
            smcdiff.as_target(lambda x: torch.where(x[:, 0] > 50.0, 0.0, -INF), 2),
            **sample_args("tempered"),
        ),
        DegenerateWeightsError,
        ZERO.format(g=1, k=1),
        1,
        (),
    ),
    (
        "sample-diffusion/target-is-minus-inf-everywhere",
        lambda: smcdiff.sample(
            smcdiff.as_target(lambda x: quadratic(x) * 0 - INF, 2), **sample_args("diffusion")
        ),
        DegenerateWeightsError,
        ZERO.format(g=1, k=0),
        0,
        (),
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "pattern", "step"),
    [pytest.param(*c[1:5], id=c[0], marks=c[5]) for c in DEGENERATE_CASES],
)
def test_all_zero_weights_raise_naming_the_step(call, error, pattern, step):
    with pytest.raises(error, match=pattern) as info:
        call()
    # step 0 is checked before it is kept: an error there has no partial run
    assert info.value.step == step and (info.value.partial is not None) == (step > 0)


@pytest.mark.parametrize("method", ["mala", "hmc", "pcnl"])
def test_mcmc_chains_cannot_start_where_the_target_has_no_mass(method):
    target = smcdiff.as_target(lambda x: quadratic(x) * 0 - INF, 2)
    with pytest.raises(SMCDiffError, match=r"log_prob or its gradient is not finite at x0 for 16"):
        smcdiff.sample(target, **sample_args(method))


# ----------------------------------------------------------------- collapse without zeros
def far(x):
    """A reward peaked at (2, 2), far in the tail of the N(0, I) prior."""
    return -((x - 2.0) ** 2).flatten(1).sum(-1)


COLLAPSES = [  # (id, call); each run ends with ESS ~ 1 at some step
    ("steer-fk/one-particle-takes-all-the-weight-at-the-last-step",
     lambda: smcdiff.steer(MODEL, **steer_args("fk", reward=far, beta=50.0, potential="final",
                                               n_particles=128))),
    ("steer-fk/weights-collapse-mid-run", lambda: smcdiff.steer(
        MODEL, **steer_args("fk", reward=far, beta=50.0, n_particles=128))),
    ("steer-tds/weights-collapse-mid-run", lambda: smcdiff.steer(
        MODEL, **steer_args("tds", reward=far, beta=50.0, n_particles=128))),
    ("steer-fkc/weights-collapse-mid-run", lambda: smcdiff.steer(
        MODEL, **steer_args("fkc", reward=far, beta=50.0, n_particles=128))),
    ("steer-driftlite-vcg/weights-collapse-mid-run", lambda: smcdiff.steer(
        MODEL, **steer_args("driftlite-vcg", reward=far, beta=50.0, n_particles=128))),
    ("sample-tempered/one-jump-to-a-narrow-far-target", lambda: smcdiff.sample(
        smcdiff.as_target(lambda x: -((x - 4.0) ** 2).sum(-1) / 0.02, 2),
        **sample_args("tempered", n_particles=128, schedule=[1.0]))),
]  # fmt: skip


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in COLLAPSES])
def test_a_collapsed_run_warns_naming_the_step_and_the_numbers(call):
    with pytest.warns(DegeneracyWarning) as record:
        res = call()
    report = res.diagnose()
    msg = " ".join(str(w.message) for w in record if w.category is DegeneracyWarning)
    k, ess = int(report.min_ess_step[0]), float(report.min_ess[0])
    assert ess < 2.0 and not report.ok
    assert f"the ESS fell to {ess:.1f} of N=128 at step {k}" in msg, msg  # the step, the numbers
    assert f"step {k}" in str(report) and "DEGENERATE" in str(report)
    assert res.min_ess == pytest.approx(ess)


def test_the_last_step_collapse_is_named_as_the_last_step():
    with pytest.warns(DegeneracyWarning, match=r"the ESS fell to 1\.\d of N=128 at step 6 \(t=0"):
        COLLAPSES[0][1]()


def test_a_user_model_that_collapses_is_diagnosed_at_its_step():
    """run_smc returns the raw run (no warning); its SMCResult's diagnose() names the step."""
    model = StaticFK(faults={2: lambda g: 1e7 * g})  # one particle takes the weight at step 2
    run = smcdiff.run_smc(model, 128, generator=generator(), collectors=degeneracy_collectors())
    report = smcdiff.SMCResult.from_run(run, grouped=False, info={}).diagnose()
    assert not report.ok and int(report.min_ess_step[0]) == 2
    assert "minimum 3.0 (2.3% of N) at step 2" in str(report) and "DEGENERATE" in str(report)


def test_a_healthy_run_does_not_warn():
    """The control of the warning cases: a gentle tilt keeps the weights spread. (Without path
    correction: at K = 6 steps its discretisation weights alone are heavy-tailed, and flagged.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegeneracyWarning)
        res = smcdiff.steer(MODEL, **steer_args("fk", beta=0.2, n_particles=128,
                                                path_correction=False))  # fmt: skip
    assert res.diagnose().ok


# ----------------------------------------------------------------- zero weights that are right
def test_a_hard_constraint_in_a_user_model_gives_the_exact_log_z():
    r"""Weight zero for x < 0 at step 0 (a hard constraint): Z = p(y) P(x > 0 | y), x | y
    Gaussian. Half the particles die at step 0; E[Z_hat] = Z over 256 runs of 256 (SE ~0.005:
    a zero weight clipped to e^-3 instead, a 4 % error, fails by 8 SE)."""
    model = StaticFK()
    y = torch.tensor(model.y, dtype=torch.float64)
    n = y.numel()  # x ~ N(0, 1), y_k = x + N(0, 1): x | y ~ N(sum y / (n + 1), 1 / (n + 1))
    mean, sd = float(y.sum()) / (n + 1), 1.0 / math.sqrt(n + 1)
    log_p_pos = math.log(0.5 * math.erfc(-mean / (sd * math.sqrt(2))))

    class Constrained(StaticFK):
        def _log_g(self, x, k):
            g = super()._log_g(x, k)
            return torch.where(x[:, 0] > 0, g, -INF) if k == 0 else g

    run = smcdiff.run_smc(Constrained(), 256, n_groups=256, generator=generator(3))
    assert_z_unbiased(run.log_z, model.log_z() + log_p_pos, n_se=4.5, max_se=0.01)


@pytest.mark.parametrize(
    "potential",
    [
        pytest.param("final", id="steer-fk/hard-constraint-reward-with-the-final-potential"),
        pytest.param(
            "difference",
            id="steer-fk/hard-constraint-reward-with-the-default-difference-potential",
        ),
    ],
)
def test_a_hard_constraint_reward_gives_the_exact_answer(potential):
    """fk with reward -inf for x_0 < 0 on the N(0, I) prior (path-corrected, so exact at any
    step count): E_p[e^r] = P(x_0 > 0) = 1/2 and the constrained mean of x_0 is sqrt(2 / pi)."""

    def half_plane(x):
        return torch.where(x[:, 0] > 0, 0.0, -INF)

    res = smcdiff.steer(MODEL, **steer_args("fk", reward=half_plane, potential=potential,
                                            n_particles=256, n_runs=64))  # fmt: skip
    assert_z_unbiased(res.log_z, math.log(0.5), n_se=4.5, max_se=0.08)
    mean, _ = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean[:, 0], math.sqrt(2 / math.pi), n_se=4.5, max_se=0.03, what="mean")
    outside = res.particles[..., 0] <= 0
    assert bool((res.log_weights[outside] == -INF).all())  # there, weight zero (not resampled)
