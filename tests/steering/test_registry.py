"""steer() is a registry of methods: options that do not apply are errors, common options are
checked once (NumPy numbers accepted, bools refused), and a new method is one module + one line
(the worked example of docs/adding-a-method.md is run here)."""

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.resampling.policies import ActiveWindow, Always, ESSBelow, EveryK
from smcdiff.steering import (
    get_method,
    register_method,
    registered_methods,
    unregister_method,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-method.md"
BUILTIN = ("fk", "tds", "fkc", "driftlite-vcg", "driftlite-ecg", "guidance", "none")


@pytest.fixture
def model():
    prior = smcdiff.GaussianMixture(
        weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 0.0]], covs=[[0.5, 0.5], [0.5, 0.5]]
    )
    return smcdiff.exact_score(prior, smcdiff.VP())


def reward(x):
    return -(x[:, 1] ** 2)


def small(**kw):
    return {"n_particles": 64, "n_steps": 8, "seed": 3, **kw}


def same(a, b):
    assert torch.equal(a.particles, b.particles)
    assert torch.equal(a.log_weights, b.log_weights)
    assert torch.equal(a.log_z, b.log_z) or (a.log_z.isnan().all() and b.log_z.isnan().all())


def test_builtin_methods_are_registered_with_frozen_configs():
    assert set(BUILTIN) <= set(registered_methods())
    for name in BUILTIN:
        spec = get_method(name)
        assert dataclasses.is_dataclass(spec.config_cls)
        assert spec.config_cls.__dataclass_params__.frozen
        assert name in smcdiff.steer.__doc__
    assert not get_method("guidance").weighted and not get_method("none").weighted


def test_unknown_method_lists_the_registered_ones(model):
    with pytest.raises(SMCDiffError, match="method must be one of") as e:
        smcdiff.steer(model, reward=reward, method="magic")
    assert all(repr(m) in str(e.value) for m in BUILTIN)


def test_an_option_the_method_does_not_take_is_an_error_naming_it(model):
    with pytest.raises(SMCDiffError) as e:
        smcdiff.steer(model, reward=reward, method="fkc", init="mala", potential="max")
    msg = str(e.value)
    assert "steer(method='fkc') does not take 'init', 'potential'" in msg
    for option in get_method("fkc").options:  # the method's valid options are listed
        assert option in msg
    assert "'init' is an option of method 'fk', 'tds'" in msg
    assert "'potential' is an option of method 'fk'" in msg


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("tds", {"proposal": "guided"}, r"steer\(method='tds'\) does not take 'proposal'"),
        ("tds", {"potential": "difference"}, r"does not take 'potential'.*option of method 'fk'"),
        ("fk", {"anneal": 2.0}, r"does not take 'anneal'.*'fkc', 'driftlite-vcg'"),
        ("fk", {"basis": ("x",)}, r"'basis' is an option of method 'driftlite-vcg'"),
        ("fkc", {"basis": ("x",)}, r"steer\(method='fkc'\) does not take 'basis'"),
        ("fkc", {"corrector": lambda k, s, g: (s, {})}, "does not take 'corrector'"),
        ("guidance", {"path_correction": True}, "does not take 'path_correction'"),
        ("guidance", {"init": "mala"}, "does not take 'init'"),
        ("none", {"guidance_scale": 2.0}, "does not take 'guidance_scale'"),
        ("fk", {"n_particle": 10}, "did you mean 'n_particles'"),
    ],
)
def test_options_of_other_methods_are_refused(model, method, kwargs, match):
    with pytest.raises(SMCDiffError, match=match):
        smcdiff.steer(model, reward=reward, method=method, **small(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eta": 0.5}, "eta is the noise level of sampler='ddim'"),
        ({"init_moves": 5}, "init_moves set the MCMC start; they need init="),
        ({"init_step_size": 0.1}, "init_step_size set the MCMC start"),
        ({"guidance_scale": 2.0}, "needs proposal='guided'"),
        ({"init": "mala", "init_moves": 0}, "init_moves must be an int >= 1"),
        ({"init": "mala", "init_step_size": -1.0}, "init_step_size must be a finite number"),
        ({"tilt_schedule": "cosine"}, "tilt_schedule must be one of"),
        ({"path_correction": "yes"}, "path_correction must be"),
        ({"corrector": lambda k, s, g: (s, {}), "potential": "max"}, "per-state potential"),
    ],
)
def test_options_that_need_another_setting_are_refused(model, kwargs, match):
    with pytest.raises(SMCDiffError, match=re.escape(match)):
        smcdiff.steer(model, reward=reward, **small(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_probes": 2, "divergence": "exact"}, "n_probes is for divergence='hutchinson'"),
        ({"noise": -1.0}, "noise must be a finite number"),
        ({"noise": "loud"}, "noise must be one of"),
        ({"beta_schedule": "cosine"}, "beta_schedule must be one of"),
        ({"divergence": "fast"}, "divergence must be one of"),
        ({"anneal": 0.0}, "anneal must be a finite number"),
    ],
)
def test_fkc_options_are_checked(model, kwargs, match):
    with pytest.raises(SMCDiffError, match=match):
        smcdiff.steer(model, reward=reward, method="fkc", **small(**kwargs))


def test_numpy_numbers_are_accepted_and_give_the_same_numbers(model):
    a = smcdiff.steer(model, reward=reward, beta=2.0, n_particles=64, n_steps=8, seed=3)
    b = smcdiff.steer(
        model, reward=reward, beta=np.float32(2), n_particles=np.int64(64), n_steps=np.int32(8),
        seed=np.int64(3), ess_threshold=np.float64(0.5),
    )  # fmt: skip
    same(a, b)
    assert type(b.info["seed"]) is int and b.info["beta"] == 2.0
    c = smcdiff.steer(
        model, method="driftlite-vcg", anneal=np.float64(2.0), n_probes=np.int64(1),
        **small(n_particles=np.int64(64)),
    )  # fmt: skip
    d = smcdiff.steer(model, method="driftlite-vcg", anneal=2.0, n_probes=1, **small())
    same(c, d)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_particles": True},
        {"n_steps": True},
        {"seed": True},
        {"beta": True},
        {"n_runs": True},
        {"ess_threshold": False},
        {"init": "mala", "init_moves": True},
        {"method": "fkc", "anneal": True},
    ],
)
def test_bools_are_refused_where_a_number_is_expected(model, kwargs):
    with pytest.raises(SMCDiffError, match="must be"):
        smcdiff.steer(model, reward=reward, **{**small(), **kwargs})


def test_policy_replaces_ess_threshold_and_the_two_are_exclusive(model):
    always = smcdiff.steer(model, reward=reward, **small(ess_threshold=1.0))
    every = smcdiff.steer(model, reward=reward, **small(policy=EveryK(1)))
    same(always, every)
    assert every.info["policy"] == repr(EveryK(1)) and every.info["ess_threshold"] is None
    assert bool(every.trace["resampled"][1:].all())
    window = smcdiff.steer(model, reward=reward, **small(policy=ActiveWindow(0.0, 0.3, Always())))
    t, resampled = window.trace["t"], window.trace["resampled"]
    assert not bool(resampled[t > 0.3].any()) and bool(resampled[t <= 0.3][1:].any())
    with pytest.raises(SMCDiffError, match="either policy= or ess_threshold="):
        smcdiff.steer(model, reward=reward, **small(policy=ESSBelow(0.5), ess_threshold=0.5))
    with pytest.raises(SMCDiffError, match="policy must be a ResamplingPolicy"):
        smcdiff.steer(model, reward=reward, **small(policy="always"))


@pytest.mark.parametrize("method", ["guidance", "none"])
def test_unweighted_methods_report_nan_log_z_and_refuse_resampling_options(model, method):
    res = smcdiff.steer(model, reward=reward, method=method, **small(n_runs=2))
    assert res.log_z.shape == (2,) and bool(res.log_z.isnan().all())
    assert torch.all(res.log_weights == res.log_weights[..., :1])
    assert res.info["n_resampled"] == 0
    for kw in ({"ess_threshold": 0.5}, {"policy": Always()}, {"resampling": "multinomial"}):
        with pytest.raises(SMCDiffError, match=f"has no weights.*'{next(iter(kw))}'"):
            smcdiff.steer(model, reward=reward, method=method, **small(**kw))


def test_fkc_takes_a_callable_beta_schedule(model):
    res = smcdiff.steer(
        model, method="fkc", reward=reward, beta_schedule=lambda t: 2.0 * (1.0 - t), **small()
    )
    assert torch.isfinite(res.log_z) and res.info["beta_schedule"] == "custom"
    with pytest.raises(SMCDiffError, match="leave beta unset"):
        smcdiff.steer(
            model, method="fkc", reward=reward, beta=2.0, beta_schedule=lambda t: 1 - t, **small()
        )


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (module,) = [b for b in blocks if b.startswith("# importance.py")]
    return module


@pytest.fixture
def importance_method():
    exec(compile(_doc_example(), str(DOC), "exec"), {"__name__": "importance_example"})
    yield get_method("importance")
    unregister_method("importance")


def test_the_documented_example_method_registers_and_runs(model, importance_method):
    assert importance_method.options == ("sampler",)
    kw = dict(reward=reward, beta=2.0, n_particles=256, n_steps=20, seed=0)
    res = smcdiff.steer(model, method="importance", **kw)
    fk = smcdiff.steer(model, method="fk", potential="final", path_correction=False, **kw)
    same(res, fk)
    assert math.isfinite(float(res.log_z)) and res.info["sampler"] == "ancestral"
    assert res.info["method"] == "importance"
    with pytest.raises(SMCDiffError, match=r"does not take 'potential'; valid options: sampler"):
        smcdiff.steer(model, method="importance", potential="max", **kw)
    with pytest.raises(SMCDiffError, match="needs a reward or a log_likelihood"):
        smcdiff.steer(model, method="importance", n_particles=16, n_steps=4)
    with pytest.raises(SMCDiffError, match="already registered"):
        register_method("importance", importance_method.config_cls, importance_method.builder)


def test_register_method_refuses_bad_configs():
    @dataclasses.dataclass
    class Mutable:
        x: int = 1

    @dataclasses.dataclass(frozen=True)
    class Clash:
        n_particles: int = 1

    def build(common, config):
        raise AssertionError

    with pytest.raises(SMCDiffError, match="frozen dataclass"):
        register_method("mutable", Mutable, build)
    with pytest.raises(SMCDiffError, match="redefines common options"):
        register_method("clash", Clash, build)
    with pytest.raises(SMCDiffError, match="already registered"):
        register_method("fk", Clash, build)
    assert "mutable" not in registered_methods() and "clash" not in registered_methods()
