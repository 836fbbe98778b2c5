"""Fault corpus, kind 1: bad inputs. Wrong option names, values and types (bools where numbers
go, negative counts, NaN numbers, unknown names), and user functions that return the wrong thing
(shape, device, dtype, a Python float) get an :class:`~smcdiff.SMCDiffError` naming the quantity
and where: the argument and the front door before any work, or the function and the step (step 0:
the first evaluation). See ``kit.py`` for the conventions of the corpus."""

import math

import pytest
import torch

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc import mcmc_corrector, run_chain
from tests.faults.kit import (
    GAUSSIAN,
    INF,
    MODEL,
    NAN,
    SAMPLE,
    STEER_METHODS,
    TILTED,
    FaultyScore,
    StaticFK,
    generator,
    quadratic,
    sample_args,
    steer_args,
)
from tests.stats import assert_z_unbiased


def raises(error: type, pattern: str, call, *args, **kwargs) -> BaseException:
    """``call(*args, **kwargs)`` raises ``error`` whose message matches ``pattern``."""
    with pytest.raises(error, match=pattern) as info:
        call(*args, **kwargs)
    return info.value


# ----------------------------------------------------------------- steer(): common options
STEER_OPTIONS = [
    ("n_particles-is-a-bool", {"n_particles": True}, r"n_particles must be an int, got bool True"),
    ("n_particles-is-negative", {"n_particles": -4}, r"n_particles must be at least 2.*got -4"),
    ("n_particles-is-a-float", {"n_particles": 10.5}, r"n_particles must be an int, got float"),
    ("n_steps-is-zero", {"n_steps": 0}, r"steer: n_steps must be an int >= 1, got 0"),
    ("n_steps-is-a-bool", {"n_steps": True}, r"steer: n_steps must be an int, got bool True"),
    ("beta-is-nan", {"beta": NAN}, r"steer: beta must be a finite number, got nan"),
    ("beta-is-a-bool", {"beta": True}, r"steer: beta must be a number, got bool True"),
    ("seed-is-a-bool", {"seed": True}, r"steer: seed must be an int or None, got bool True"),
    ("seed-is-negative", {"seed": -1}, r"steer: seed must be an int >= 0, got -1"),
    ("n_runs-is-zero", {"n_runs": 0}, r"steer: n_runs must be an int >= 1, got 0"),
    ("t_min-is-above-t_max", {"t_min": 0.8, "t_max": 0.2}, r"t_min < t_max.*t_min=0.8, t_max=0.2"),
    ("t_max-is-above-one", {"t_max": 1.5}, r"steer: t_max must be a finite number in \[0, 1\]"),
    ("grid-is-unknown", {"grid": "cosine"}, r"steer: grid must be one of .*got 'cosine'"),
    ("resampling-scheme-is-unknown", {"resampling": "fancy"}, r"unknown resampling scheme 'fancy'"),
    ("ess_threshold-is-above-one", {"ess_threshold": 1.5}, r"steer: ess_threshold must be .*1.5"),
    ("dtype-is-a-string", {"dtype": "float32"}, r"steer: dtype must be a torch.dtype"),
    ("device-is-not-the-model's", {"device": "meta"}, r"steer: the model lives on cpu"),
    ("progress-is-a-number", {"progress": 3}, r"steer: progress must be None, a bool or"),
    ("reward-is-not-callable", {"reward": 3.0}, r"steer: reward must be a callable"),
    ("option-name-is-misspelt", {"n_stepz": 3}, r"steer\(method='{m}'\) does not take 'n_stepz'"),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "pattern"),
    [
        pytest.param(m, kw, pat.format(m=m), id=f"steer-{m}/{name}")
        for m in STEER_METHODS
        for name, kw, pat in STEER_OPTIONS
    ],
)
def test_steer_refuses_a_bad_option_before_any_work(method, kwargs, pattern):
    score = FaultyScore(lambda s: s)
    raises(SMCDiffError, pattern, smcdiff.steer, score, **steer_args(method, **kwargs))
    assert score.calls == 0  # refused before the first score evaluation


STEER_METHOD_OPTIONS = [
    ("fk", "potential-is-unknown", {"potential": "mean"}, r"steer: potential must be one of"),
    ("fk", "proposal-is-unknown", {"proposal": "twisted"}, r"steer: proposal must be one of"),
    ("fk", "sampler-is-deterministic", {"sampler": "ode"}, r"sampler='ode' is deterministic"),
    ("fk", "path_correction-is-a-string", {"path_correction": "yes"}, r"path_correction must be"),
    ("fk", "init_moves-without-an-mcmc-start", {"init_moves": 5}, r"init_moves .*init='pcnl'"),
    (
        "fk",
        "guidance_scale-without-the-guided-proposal",
        {"guidance_scale": 2.0},
        r"guidance_scale .*needs proposal='guided'",
    ),
    ("fk", "corrector-is-not-callable", {"corrector": 3}, r"steer: corrector must be callable"),
    (
        "tds",
        "potential-is-fixed-by-the-method",
        {"potential": "max"},
        r"steer\(method='tds'\) does not take 'potential'.*is an option of method 'fk'",
    ),
    ("tds", "init-is-unknown", {"init": "hmc"}, r"steer: init must be one of 'prior', 'pcnl'"),
    ("fkc", "anneal-is-negative", {"anneal": -1.0}, r"steer: anneal must be a finite number"),
    ("fkc", "noise-is-unknown", {"noise": "loud"}, r"steer: noise must be one of"),
    ("fkc", "noise-is-negative", {"noise": -0.5}, r"steer: noise must be a finite number in \[0"),
    (
        "fkc",
        "n_probes-with-the-exact-divergence",
        {"divergence": "exact", "n_probes": 4},
        r"steer: n_probes is for divergence='hutchinson'",
    ),
    ("fkc", "n_probes-is-a-bool", {"n_probes": True}, r"steer: n_probes must be an int or None"),
    (
        "driftlite-vcg",
        "basis-entry-is-unknown",
        {"basis": ["velocity"]},
        r"steer: basis entry must be one of .*got 'velocity'",
    ),
    (
        "guidance",
        "guidance_scale-is-nan",
        {"guidance_scale": NAN},
        r"steer: guidance_scale must be a finite number",
    ),
    (
        "guidance",
        "ess_threshold-for-a-method-without-weights",
        {"ess_threshold": 0.5},
        r"steer\(method='guidance'\) has no weights .*'ess_threshold'",
    ),
    ("none", "eta-without-ddim", {"eta": 0.5}, r"steer: eta is the noise level of sampler='ddim'"),
    (
        "none",
        "resampling-for-a-method-without-weights",
        {"resampling": "multinomial"},
        r"steer\(method='none'\) has no weights .*'resampling'",
    ),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "pattern"),
    [pytest.param(m, kw, pat, id=f"steer-{m}/{name}") for m, name, kw, pat in STEER_METHOD_OPTIONS],
)
def test_steer_refuses_a_bad_method_option(method, kwargs, pattern):
    score = FaultyScore(lambda s: s)
    raises(SMCDiffError, pattern, smcdiff.steer, score, **steer_args(method, **kwargs))
    assert score.calls == 0


def test_steer_names_the_valid_methods():
    raises(SMCDiffError, r"steer: method must be one of 'fk', 'tds'.*got 'smc'", smcdiff.steer,
           MODEL, **steer_args("smc"))  # fmt: skip


# ----------------------------------------------------------------- steer(): the user's functions
def numpy_of(t):
    return t.detach().numpy()


TILT_FAULTS = [  # (name, reward, pattern); the run has N = 32 particles in 2-D
    ("reward-returns-a-python-float", lambda x: 1.0, r"reward must be a torch.Tensor, got float"),
    (
        "reward-returns-a-numpy-array",
        lambda x: numpy_of(quadratic(x)),
        r"reward must be a torch.Tensor, got ndarray",
    ),
    (
        "reward-returns-shape-(N,1)",
        lambda x: quadratic(x)[:, None],
        r"reward has shape \(32, 1\), expected \(32\)",
    ),
    ("reward-returns-a-scalar", lambda x: quadratic(x).sum(), r"reward has shape \(\), expected"),
    (
        "reward-is-on-another-device",
        lambda x: quadratic(x).to("meta"),
        r"reward is on meta but the particles are on cpu",
    ),
    (
        "reward-is-complex",
        lambda x: quadratic(x).to(torch.complex64),
        r"reward has complex dtype torch.complex64",
    ),
]


@pytest.mark.parametrize(
    ("method", "reward", "pattern"),
    [
        pytest.param(m, fn, pat, id=f"steer-{m}/{name}")
        for m in TILTED
        for name, fn, pat in TILT_FAULTS
    ],
)
def test_a_bad_reward_is_named_at_step_0(method, reward, pattern):
    raises(SMCDiffError, r"step 0/6 \(t=1\): " + pattern, smcdiff.steer, MODEL,
           **steer_args(method, reward=reward))  # fmt: skip


def ll_of_shape_n1(x):
    return quadratic(x)[:, None]


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("fk", id="steer-fk/log_likelihood-returns-shape-(N,1)"),
        pytest.param("tds", id="steer-tds/log_likelihood-returns-shape-(N,1)"),
        pytest.param("fkc", id="steer-fkc/log_likelihood-returns-shape-(N,1)"),
    ],
)
def test_a_bad_log_likelihood_is_named_as_such(method):
    args = steer_args(method, reward=None, log_likelihood=ll_of_shape_n1)
    raises(SMCDiffError, r"step 0/6 .*log_likelihood has shape \(32, 1\)", smcdiff.steer, MODEL,
           **args)  # fmt: skip


def constant_reward(x):
    return torch.zeros(x.shape[0])  # does not depend on x: no gradient to guide by


def indicator_reward(x):
    return (x[:, 0] > 0).double()  # a 0/1 reward: its gradient does not exist


NOT_DIFFERENTIABLE = [  # methods without weights to correct what a zero gradient misses
    pytest.param(m, fn, extra, id=f"steer-{m}/{name}")
    for m, extra in [("guidance", {}), ("fkc", {}), ("driftlite-vcg", {})]
    for name, fn in [
        ("reward-does-not-depend-on-x", constant_reward),
        ("reward-is-an-indicator", indicator_reward),
    ]
]


@pytest.mark.parametrize(("method", "reward", "extra"), NOT_DIFFERENTIABLE)
def test_a_gradient_method_says_its_reward_is_not_differentiable(method, reward, extra):
    """FKC and DriftLite apply the reward's gradient and Laplacian in their weights, guidance
    moves by the gradient alone: a reward without an autograd graph is an error there."""
    raises(SMCDiffError, r"reward.*differentiable", smcdiff.steer, MODEL,
           **steer_args(method, reward=reward, **extra))  # fmt: skip


@pytest.mark.parametrize(
    ("method", "extra", "reward", "log_z"),
    [
        pytest.param(m, extra, fn, z, id=f"steer-{label}/{name}-gives-the-exact-answer")
        for m, label, extra in [("tds", "tds", {}), ("fk", "fk-guided", {"proposal": "guided"})]
        for name, fn, z in [
            ("reward-does-not-depend-on-x", constant_reward, 0.0),
            ("reward-is-an-indicator", indicator_reward, math.log(0.5 * (1 + math.e**2))),
        ]
    ],
)
def test_a_guided_weighted_method_is_exact_for_a_reward_without_gradient(method, extra, reward,
                                                                       log_z):  # fmt: skip
    """A reward without an autograd graph guides by a zero gradient (the untilted proposal, the
    choice that lets tds run hard constraints) and the weights, path-corrected, keep the answer
    exact: E_p[e^(2 r)] = 1 for r = 0 and (1 + e^2) / 2 for r = 1{x_0 > 0}. (This case first
    expected an error; a zero gradient is the right gradient almost everywhere, and a weighted
    method stays exact, so the right outcome is the exact answer.)"""
    res = smcdiff.steer(MODEL, **steer_args(method, reward=reward, beta=2.0, n_particles=256,
                                            n_runs=32, **extra))  # fmt: skip
    assert_z_unbiased(res.log_z, log_z, n_se=4.5, max_se=0.15)


SCORE_FAULTS = [  # (name, fault on the (N, 2) score, pattern)
    ("score-returns-shape-(N,1)", lambda s: s[:, :1], r"has shape \(32, 1\), expected \(32, 2\)"),
    ("score-is-flattened", lambda s: s.reshape(-1), r"has shape \(64,\), expected \(32, 2\)"),
    ("score-is-on-another-device", lambda s: s.to("meta"), r"is on meta but the particles are on"),
    ("score-returns-a-numpy-array", numpy_of, r"must be a torch.Tensor, got ndarray"),
    ("score-is-complex", lambda s: s.to(torch.complex64), r"has complex dtype"),
]


@pytest.mark.parametrize(
    ("method", "fault", "pattern"),
    [
        pytest.param(m, fault, pat, id=f"steer-{m}/{name}")
        for m in STEER_METHODS
        for name, fault, pat in SCORE_FAULTS
    ],
)
def test_a_bad_score_is_named_at_step_0(method, fault, pattern):
    pattern = r"step 0/6 \(t=1\): score( of component 0)? " + pattern
    raises(SMCDiffError, pattern, smcdiff.steer, FaultyScore(fault), **steer_args(method))


@pytest.mark.parametrize(
    "method", [pytest.param(m, id=f"steer-{m}/event_shape-does-not-match-dim") for m in TILTED]
)
def test_a_model_whose_event_shape_contradicts_its_dim_is_refused(method):
    score = FaultyScore(lambda s: s, event_shape=(2, 2))  # 4 entries, but dim is 2
    raises(SMCDiffError, r"event_shape \(2, 2\) has 4 entries but dim is 2", smcdiff.steer, score,
           **steer_args(method))  # fmt: skip
    assert score.calls == 0


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(
            m,
            id=f"steer-{m}/score-returns-float64-for-float32-particles",
        )
        for m in STEER_METHODS
    ],
)
def test_a_score_of_another_float_dtype_does_not_change_the_particles(method):
    score = FaultyScore(lambda s: s.double())
    res = smcdiff.steer(score, **steer_args(method))
    assert res.particles.dtype == torch.float32 and score.dtypes == {torch.float32}


@pytest.mark.parametrize(
    "as_dtype",
    [
        pytest.param(lambda b: b, id="steer-fk/reward-returns-bool"),
        pytest.param(lambda b: b.long(), id="steer-fk/reward-returns-int64"),
        pytest.param(lambda b: b.double(), id="steer-fk/reward-returns-float64"),
    ],
)
def test_a_reward_of_another_real_dtype_gives_the_exact_answer(as_dtype):
    """An indicator reward 1{x_0 > 0} as bool / int / float64 for float32 particles, beta = 2:
    E_p[e^(2 r)] = (1 + e^2) / 2 exactly (fk is exact at any step count: path correction).
    Reading a bool as a constraint (0 / -inf) would give 1/2, a factor 8 off."""
    reward = lambda x: as_dtype(x[:, 0] > 0)  # noqa: E731
    res = smcdiff.steer(MODEL, **steer_args("fk", reward=reward, beta=2.0, n_particles=256,
                                            n_runs=32))  # fmt: skip
    assert_z_unbiased(res.log_z, math.log(0.5 * (1 + math.e**2)), n_se=4.5, max_se=0.15)


# ----------------------------------------------------------------- sample(): options
SAMPLE_OPTIONS = [
    ("n_particles-is-a-bool", {"n_particles": True}, r"n_particles must be an int, got bool True"),
    ("n_particles-is-negative", {"n_particles": -3}, r"n_particles must be at least 2.*got -3"),
    ("seed-is-a-float", {"seed": 1.5}, r"seed must be an int or None, got float 1.5"),
    ("n_runs-is-zero", {"n_runs": 0}, r"sample: n_runs must be an int >= 1, got 0"),
    ("ess_threshold-is-nan", {"ess_threshold": NAN}, r"sample: ess_threshold must be a finite"),
    ("resampling-scheme-is-unknown", {"resampling": "fancy"}, r"unknown resampling scheme 'fancy'"),
    ("reference_std-is-negative", {"reference_std": -1.0}, r"reference_std must be a positive"),
    ("reference_std-is-nan", {"reference_std": NAN}, r"reference_std must be a positive"),
    (
        "reference_mean-has-the-wrong-shape",
        {"reference_mean": torch.zeros(3)},
        r"reference_mean has shape \(3,\), expected \(2,\)",
    ),
    ("option-name-is-misspelt", {"n_stepz": 3}, r"sample: unknown options for method '{m}': "),
]


def sample_option_cases():
    for m in SAMPLE:
        for name, kw, pat in SAMPLE_OPTIONS:
            yield pytest.param(m, kw, pat.format(m=m), id=f"sample-{m}/{name}")
        yield pytest.param(
            m,
            {"dtype": "float64"},
            r"sample: dtype must be a torch.dtype",
            id=f"sample-{m}/dtype-is-a-string",
        )
        if m in ("tempered", "diffusion", "mala"):  # one of each kind: the check is sample's
            yield pytest.param(
                m,
                {"progress": 3},
                r"sample: progress must be None, a bool or",
                id=f"sample-{m}/progress-is-a-number",
            )
        yield pytest.param(
            m,
            {"check_every": 0},
            r"sample: check_every must be an int >= 1, got 0",
            id=f"sample-{m}/check_every-is-zero",
        )


@pytest.mark.parametrize(("method", "kwargs", "pattern"), list(sample_option_cases()))
def test_sample_refuses_a_bad_option(method, kwargs, pattern):
    calls = []
    target = smcdiff.as_target(lambda x: calls.append(1) or quadratic(x), 2)
    raises(SMCDiffError, pattern, smcdiff.sample, target, **sample_args(method, **kwargs))
    assert not calls  # refused before the first target evaluation


SAMPLE_METHOD_OPTIONS = [
    (
        "tempered",
        "target_ess-is-above-one",
        {"target_ess": 1.5},
        r"tempered SMC: target_ess must be a finite number in \(0, 1\), got 1.5",
    ),
    ("tempered", "n_moves-is-zero", {"n_moves": 0}, r"tempered SMC: n_moves must be an int >= 1"),
    (
        "tempered",
        "max_steps-is-a-bool",
        {"max_steps": True},
        r"tempered SMC: max_steps must be an int, got bool True",
    ),
    (
        "tempered",
        "nan_as_neg_inf-is-an-int",
        {"nan_as_neg_inf": 1},
        r"tempered SMC: nan_as_neg_inf must be True or False, got 1",
    ),
    ("tempered", "kernel-is-unknown", {"kernel": "nuts"}, r"unknown MCMC kernel 'nuts'; valid"),
    (
        "tempered",
        "kernel-option-is-misspelt",
        {"n_leapfrogs": 3},
        r"'n_leapfrogs'.*options of kernel 'hmc': n_leapfrog",
    ),
    (
        "tempered",
        "schedule-decreases",
        {"schedule": [0.5, 0.2, 1.0]},
        r"tempered SMC: schedule must be non-decreasing",
    ),
    ("diffusion", "n_mc-is-zero", {"n_mc": 0}, r"sample\(diffusion\): n_mc must be an int >= 1"),
    (
        "diffusion",
        "antithetic-is-a-string",
        {"antithetic": "no"},
        r"sample\(diffusion\): antithetic must be True or False, got 'no'",
    ),
    (
        "diffusion",
        "estimator-is-unknown",
        {"estimator": "magic"},
        r"sample\(diffusion\): estimator must be one of",
    ),
    (
        "rdmc",
        "score-is-fixed-by-the-method",
        {"score": "follmer"},
        r"'score' is set by method 'rdmc'",
    ),
    (
        "mala",
        "n_warmup-is-negative",
        {"n_warmup": -1},
        r"sample\(mcmc\): n_warmup must be an int >= 0, got -1",
    ),
    (
        "mala",
        "step_size-is-zero",
        {"step_size": 0.0},
        r"sample\(mcmc\): step_size must be a finite number in \(0, inf\]",
    ),
    (
        "mala",
        "target_accept-is-one",
        {"target_accept": 1.0},
        r"sample\(mcmc\): target_accept must be a finite number in \(0, 1\)",
    ),
    ("hmc", "n_leapfrog-is-zero", {"n_leapfrog": 0}, r"HMC: n_leapfrog must be an int >= 1"),
    (
        "ula",
        "nan_as_neg_inf-is-a-string",
        {"nan_as_neg_inf": "yes"},
        r"sample\(mcmc\): nan_as_neg_inf must be True or False",
    ),
    ("pcnl", "prior_var-is-negative", {"prior_var": -1.0}, r"PCNL: prior_var .*must be positive"),
]

SAMPLE_RUN_OPTIONS = [  # checked where they are used: at the start of the run
    (
        "diffusion",
        "t_min-is-above-t_max",
        {"t_min": 0.9, "t_max": 0.1},
        r"t_min < t_max .*t_min=0.9, t_max=0.1",
    ),
    (
        "hmc",
        "inv_mass-has-the-wrong-shape",
        {"inv_mass": torch.ones(3)},
        r"HMC: inv_mass has shape \(3,\), which does not broadcast against one particle of shape",
    ),
    (
        "underdamped",
        "friction-is-a-bool",
        {"friction": True},
        r"UnderdampedLangevin: friction must be a number > 0, got True",
    ),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "pattern"),
    [pytest.param(m, kw, pat, id=f"sample-{m}/{name}") for m, name, kw, pat in
     SAMPLE_METHOD_OPTIONS + SAMPLE_RUN_OPTIONS],
)  # fmt: skip
def test_sample_refuses_a_bad_method_option(method, kwargs, pattern):
    raises(SMCDiffError, pattern, smcdiff.sample, GAUSSIAN, **sample_args(method, **kwargs))


def test_sample_names_the_valid_methods_and_refuses_a_non_target():
    raises(SMCDiffError, r"sample: method must be one of .*got 'nuts'", smcdiff.sample, GAUSSIAN,
           method="nuts")  # fmt: skip
    raises(SMCDiffError, r"sample: target must have .dim and .log_prob", smcdiff.sample, quadratic)


# ----------------------------------------------------------------- sample(): the user's target
class RawTarget:
    """A target written as a class (not through as_target): nothing checks it on the way in."""

    def __init__(self, fn, dim=2, **attrs):
        self.fn, self.dim = fn, dim
        self.__dict__.update(attrs)

    def log_prob(self, x):
        return self.fn(x)


TARGET_FAULTS = [  # (name, target, pattern)
    (
        "log_prob-returns-shape-(N,1)",
        smcdiff.as_target(lambda x: quadratic(x)[:, None], 2),
        r"log_prob output has shape \(\d+, 1\), expected \(\d+\)",
    ),
    (
        "log_prob-returns-a-python-float",
        smcdiff.as_target(lambda x: 0.0, 2),
        r"log_prob output must be a torch.Tensor, got float",
    ),
    (
        "log_prob-is-on-another-device",
        smcdiff.as_target(lambda x: quadratic(x).to("meta"), 2),
        r"log_prob output is on meta but the particles are on cpu",
    ),
    (
        "log_prob-is-complex",
        smcdiff.as_target(lambda x: quadratic(x).to(torch.complex64), 2),
        r"log_prob output has complex dtype",
    ),
    (
        "raw-target-log_prob-returns-shape-(N,1)",
        RawTarget(lambda x: quadratic(x)[:, None]),
        r"log_prob.* has shape \(\d+, 1\), expected \(\d+\)",
    ),
    (
        "raw-target-event_shape-does-not-match-dim",
        RawTarget(quadratic, dim=3, event_shape=(2,)),
        r"event_shape \(2,\) has 2 entries but dim is 3",
    ),
]


@pytest.mark.parametrize(
    ("method", "target", "pattern"),
    [
        pytest.param(m, t, pat, id=f"sample-{m}/{name}")
        for m in SAMPLE
        for name, t, pat in TARGET_FAULTS
    ],
)
def test_a_bad_target_is_named(method, target, pattern):
    raises(SMCDiffError, pattern, smcdiff.sample, target, **sample_args(method))


# ----------------------------------------------------------------- run_smc(): a user's FK model
def with_steps(n):
    model = StaticFK()
    model.n_steps = n
    return model


def transposed(g):
    """The (G*N,) log-potential of 2 groups laid out (N, G): same numbers, scrambled groups."""
    return g.reshape(2, -1).T


RUN_SMC_FAULTS = [  # (name, call, pattern, marks)
    (
        "model-is-not-a-FeynmanKacModel",
        lambda: smcdiff.run_smc(object(), 8),
        r"the engine runs subclasses of smcdiff.FeynmanKacModel, got object",
        (),
    ),
    (
        "n_groups-is-zero",
        lambda: smcdiff.run_smc(StaticFK(), 8, n_groups=0),
        r"run_smc: n_groups must be an int >= 1, got 0",
        (),
    ),
    (
        "times-has-the-wrong-length",
        lambda: smcdiff.run_smc(type("T", (StaticFK,), {"times": [0.0, 1.0]})(), 8),
        r"model.times has 2 entries, expected n_steps\+1=5",
        (),
    ),
    (
        "check_every-is-zero",
        lambda: smcdiff.run_smc(StaticFK(), 8, check_every=0),
        r"run_smc: check_every must be an int >= 1, got 0",
        (),
    ),
    (
        "resampling-scheme-is-unknown",
        lambda: smcdiff.run_smc(StaticFK(), 8, resampling="fancy"),
        r"unknown resampling scheme 'fancy'",
        (),
    ),
    (
        "generator-is-an-int",
        lambda: smcdiff.run_smc(StaticFK(), 8, generator=3),
        r"run_smc: generator must be a torch.Generator",
        (),
    ),
    (
        "policy-is-a-string",
        lambda: smcdiff.run_smc(StaticFK(), 8, policy="always"),
        r"run_smc: policy must be",
        (),
    ),
    (
        "collector-is-not-a-Collector",
        lambda: smcdiff.run_smc(StaticFK(), 8, collectors=[3]),
        r"run_smc: collectors must be",
        (),
    ),
    (
        "progress-is-a-number",
        lambda: smcdiff.run_smc(StaticFK(), 8, progress=3),
        r"run_smc: progress must be",
        (),
    ),
    (
        "n_steps-is-None",
        lambda: smcdiff.run_smc(with_steps(None), 8),
        r"n_steps must be an int",
        (),
    ),
    (
        "n_steps-is-negative",
        lambda: smcdiff.run_smc(with_steps(-1), 8),
        r"n_steps must be an int >= 0, got -1",
        (),
    ),
    (
        "n_steps-is-a-float",
        lambda: smcdiff.run_smc(with_steps(2.0), 8),
        r"n_steps must be an int, got float",
        (),
    ),
    (
        "log-potential-is-a-python-float-at-step-2",
        lambda: smcdiff.run_smc(StaticFK(faults={2: lambda g: 0.0}), 8),
        r"step 2/4.*log_potential must be a torch.Tensor",
        (),
    ),
    (
        "log-potential-has-one-row-too-many-at-step-2",
        lambda: smcdiff.run_smc(StaticFK(faults={2: lambda g: torch.cat([g, g[:1]])}), 8),
        r"step 2/4.*log_potential has shape \(9,\), expected \(8\)",
        (),
    ),
    (
        "log-potential-of-2-groups-is-transposed-at-step-2",
        lambda: smcdiff.run_smc(StaticFK(faults={2: transposed}), 8, n_groups=2),
        r"step 2/4.*log_potential has shape \(8, 2\), expected \(16\)",
        (),
    ),
    (
        "log-potential-is-on-another-device-at-step-2",
        lambda: smcdiff.run_smc(StaticFK(faults={2: lambda g: g.to("meta")}), 8),
        r"step 2/4.*log_potential is on meta",
        (),
    ),
    (
        "step-returns-a-tuple",
        lambda: smcdiff.run_smc(
            type(
                "T", (StaticFK,), {"step": lambda self, k, s, g, w: (s, self._log_g(s["x"], k))}
            )(),
            8,
        ),
        r"step 1/4.*must return a StepOutput",
        (),
    ),
    (
        "state-has-no-x",
        lambda: smcdiff.run_smc(
            type(
                "T",
                (StaticFK,),
                {
                    "step": lambda self, k, s, g, w: smcdiff.StepOutput(
                        {"y": s["x"]}, self._log_g(s["x"], k)
                    )
                },
            )(),
            8,
        ),
        r"step 1/4.*state has no 'x'",
        (),
    ),
]


@pytest.mark.parametrize(
    ("call", "pattern"),
    [pytest.param(c, p, id=f"run_smc/{n}", marks=m) for n, c, p, m in RUN_SMC_FAULTS],
)
def test_run_smc_refuses_a_bad_model_or_option(call, pattern):
    raises(SMCDiffError, pattern, call)


# ----------------------------------------------------------------- MCMC kernels and corrector
def lp(x):
    return quadratic(x)


X0 = torch.zeros(16, 2)

MCMC_FAULTS = [  # (name, call, pattern)
    (
        "run_chain/step_size-is-a-bool",
        lambda: run_chain("mala", lp, X0, 5, step_size=True),
        r"run_chain: step_size must be a number or a tensor, got True",
    ),
    (
        "run_chain/step_size-is-nan",
        lambda: run_chain("mala", lp, X0, 5, step_size=NAN),
        r"run_chain: step_size must be finite and > 0",
    ),
    (
        "run_chain/seed-is-negative",
        lambda: run_chain("mala", lp, X0, 5, seed=-1),
        r"run_chain: seed must be an int >= 0, got -1",
    ),
    (
        "run_chain/n_steps-is-a-bool",
        lambda: run_chain("mala", lp, X0, True),
        r"run_chain: n_steps must be an int, got bool True",
    ),
    (
        "run_chain/thin-exceeds-n_steps",
        lambda: run_chain("mala", lp, X0, 5, thin=6),
        r"run_chain: thin=6 > n_steps=5 would keep no draws",
    ),
    (
        "run_chain/x0-has-no-event-dimension",
        lambda: run_chain("mala", lp, torch.zeros(16), 5),
        r"run_chain: x0 has shape \(16,\)",
    ),
    (
        "run_chain/x0-is-outside-the-support",
        lambda: run_chain("mala", lp, X0 + INF, 5),
        r"run_chain: log_prob or its gradient is not finite at x0 for 16 of 16 chains",
    ),
    (
        "run_chain/log_prob-returns-a-python-float",
        lambda: run_chain("mala", lambda x: 0.0, X0, 5),
        r"target log_prob must return a real torch.Tensor \(N,\), got float",
    ),
    (
        "run_chain/log_prob-returns-shape-(N,1)",
        lambda: run_chain("hmc", lambda x: lp(x)[:, None], X0, 5),
        r"run_chain: log_prob\(x0\) has shape \(16, 1\), expected \(16\)",
    ),
    (
        "run_chain/kernel-option-is-misspelt",
        lambda: run_chain("hmc", lp, X0, 5, n_leepfrog=3),
        r"run_chain \(kernel 'hmc'\) does not take 'n_leepfrog'; valid options: inv_mass, n_leapfrog",
    ),
    (
        "run_chain/generator-and-seed-both-given",
        lambda: run_chain("mala", lp, X0, 5, seed=0, generator=generator()),
        r"run_chain: pass generator or seed, not both",
    ),
    (
        "run_chain-hmc/inv_mass-has-the-wrong-shape",
        lambda: run_chain("hmc", lp, X0, 5, inv_mass=torch.ones(3)),
        r"HMC: inv_mass has shape \(3,\), which does not broadcast against one particle of shape "
        r"\(2,\)",
    ),
    (
        "run_chain-pcnl/prior_var-has-the-wrong-shape",
        lambda: run_chain("pcnl", lp, X0, 5, prior_var=torch.ones(3)),
        r"PCNL: prior_var has shape \(3,\)",
    ),
    (
        "run_chain-underdamped/friction-is-nan",
        lambda: run_chain("underdamped", lp, X0, 5, friction=NAN),
        r"UnderdampedLangevin: friction must be a number > 0, got nan",
    ),
    (
        "mcmc_corrector/n_moves-is-zero",
        lambda: mcmc_corrector("mala", lambda k, x: lp(x), 0),
        r"mcmc_corrector: n_moves must be an int >= 1, got 0",
    ),
    (
        "mcmc_corrector/gain-is-nan",
        lambda: mcmc_corrector("mala", lambda k, x: lp(x), gain=NAN),
        r"mcmc_corrector: gain must be a finite number",
    ),
    (
        "mcmc_corrector/adapt-is-a-string",
        lambda: mcmc_corrector("mala", lambda k, x: lp(x), adapt="no"),
        r"mcmc_corrector: adapt must be True or False, got 'no'",
    ),
    (
        "mcmc_corrector/log_target-is-not-callable",
        lambda: mcmc_corrector("mala", 3),
        r"mcmc_corrector: log_target must be callable",
    ),
    (
        "mcmc_corrector/kernel-is-unknown",
        lambda: mcmc_corrector("nuts", lambda k, x: lp(x)),
        r"unknown MCMC kernel 'nuts'",
    ),
]


@pytest.mark.parametrize(("call", "pattern"), [pytest.param(c, p, id=n) for n, c, p in MCMC_FAULTS])
def test_mcmc_refuses_a_bad_argument(call, pattern):
    raises(SMCDiffError, pattern, call)


# ----------------------------------------------------------------- SMCResult methods
@pytest.fixture(scope="module")
def result():
    return smcdiff.steer(MODEL, **steer_args("fk", n_particles=64))


RESULT_FAULTS = [  # (name, method call on a result, pattern, marks)
    ("resample/n-is-zero", lambda r: r.resample(0), r"n must be at least 1", ()),
    ("resample/n-is-a-bool", lambda r: r.resample(True), r"n must be an int, got bool True", ()),
    (
        "resample/scheme-is-unknown",
        lambda r: r.resample(scheme="fancy"),
        r"unknown resampling scheme 'fancy'",
        (),
    ),
    (
        "resample/seed-is-a-float",
        lambda r: r.resample(seed=1.5),
        r"seed must be an int or None, got float 1.5",
        (),
    ),
    (
        "to_arviz/n_draws-is-zero",
        lambda r: r.to_arviz(n_draws=0),
        r"to_arviz: n_draws must be an int >= 1, got 0",
        (),
    ),
    (
        "to_arviz/n_draws-is-a-float",
        lambda r: r.to_arviz(n_draws=1.5),
        r"to_arviz: n_draws must be an int, got float 1.5",
        (),
    ),
]


@pytest.mark.parametrize(
    ("call", "pattern"),
    [pytest.param(c, p, id=f"SMCResult.{n}", marks=m) for n, c, p, m in RESULT_FAULTS],
)
def test_result_methods_refuse_a_bad_argument(result, call, pattern):
    raises(SMCDiffError, pattern, call, result)


def test_an_inverted_time_grid_is_named_in_the_library_error_type():
    """time_grid is what steer and sample(method='diffusion') call with t_min / t_max."""
    err = raises(SMCDiffError, r"time_grid: need 0 <= t_min < t_max <= 1", smcdiff.time_grid,
                 smcdiff.VP(), 4, t_min=0.5, t_max=0.5)  # fmt: skip
    assert isinstance(err, ValueError)  # SMCDiffError is a ValueError: old handlers still work
