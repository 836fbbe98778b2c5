"""sample(): options as frozen dataclasses, errors that name the option and the method, NumPy
scalars, one result type (MCMC results have .ess, .to_arviz(), .resample()), progress hooks."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff.energy import (
    SAMPLE_METHODS,
    DiffusionOptions,
    MCMCOptions,
    TemperedOptions,
    method_options,
    sample,
)
from smcdiff.mcmc import run_chain


def gauss(d=3):
    return smcdiff.as_target(lambda x: -0.5 * (x * x).sum(-1), d, "gauss")


def test_every_method_has_a_frozen_options_dataclass():
    for name, entry in SAMPLE_METHODS.items():
        opts = method_options(name)
        assert isinstance(opts, entry.options)
        field = dataclasses.fields(opts)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(opts, field, None)
    assert method_options("mala").kernel == "mala"
    assert method_options("ensemble").score == "follmer"
    opts = method_options("tempered", n_moves=2, n_leapfrog=4)
    assert opts == TemperedOptions(n_moves=2, kernel_options={"n_leapfrog": 4})


def test_options_object_and_keywords_give_the_same_run():
    t = gauss()
    a = sample(t, n_particles=100, seed=0, options=TemperedOptions(n_moves=2, kernel="mala"))
    b = sample(t, n_particles=100, seed=0, n_moves=2, kernel="mala")
    c = sample(t, n_particles=100, seed=0, options=TemperedOptions(kernel="mala"), n_moves=2)
    for r in (b, c):
        assert torch.equal(a.particles, r.particles) and torch.equal(a.log_z, r.log_z)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # a typo: named, with the method and the valid options (kernel options included)
        (dict(n_move=3), r"unknown options for method 'tempered': 'n_move'.*n_moves.*n_leapfrog"),
        # an option of another method
        (dict(method="mala", n_moves=3), r"'n_moves' is an option of method 'tempered'"),
        (dict(method="tempered", n_mc=3), r"'n_mc' is an option of method 'diffusion'"),
        # an option the method sets itself
        (dict(method="rdmc", score="follmer"), r"'score' is set by method 'rdmc'"),
        (dict(method="hmc", kernel="mala"), r"'kernel' is set by method 'hmc'"),
        # a kernel option the chosen kernel does not take
        (dict(kernel="mala", n_leapfrog=3), r"unknown options .* 'n_leapfrog'"),
        (dict(method="pcnl", friction=1.0), r"'friction'.*options of kernel 'pcnl': prior_var"),
        # values, checked with their names
        (dict(n_moves=0), "n_moves must be"),
        (dict(target_ess=1.5), "target_ess"),
        (dict(method="diffusion", estimator="exact"), "estimator must be one of"),
        (dict(method="diffusion", grid="cosine"), "grid must be one of"),
        (dict(method="mala", n_steps=2.5), "n_steps must be an int"),
        (dict(options=MCMCOptions()), "options must be a TemperedOptions"),
        (dict(method="mala", options=MCMCOptions(kernel="hmc")), "kernel is set by the method"),
        (dict(n_runs=0), "n_runs"),
        (dict(ess_threshold=2.0), "ess_threshold"),
        (dict(seed=1.5), "seed must be an int"),
    ],
)
def test_bad_options_name_the_option_and_the_method(kwargs, match):
    with pytest.raises(smcdiff.SMCDiffError, match=match):
        sample(gauss(), n_particles=10, **kwargs)


def test_kernel_options_are_checked_by_run_chain_and_the_dataclasses():
    x0 = torch.zeros(4, 2)
    with pytest.raises(
        smcdiff.SMCDiffError, match=r"'n_leapfrogs'.*valid options: inv_mass, n_leapfrog"
    ):
        run_chain("hmc", lambda x: -(x * x).sum(-1), x0, 3, n_leapfrogs=2)
    with pytest.raises(smcdiff.SMCDiffError, match="'n_leapfrog'"):
        MCMCOptions(kernel="mala", kernel_options={"n_leapfrog": 2})
    assert DiffusionOptions(n_steps=np.int64(5)).n_steps == 5


def test_numpy_scalars_are_accepted():
    t = gauss()
    a = sample(t, n_particles=np.int64(100), seed=np.int64(3), n_runs=np.int64(2),
               n_moves=np.int64(2), target_ess=np.float64(0.5))  # fmt: skip
    b = sample(t, n_particles=100, seed=3, n_runs=2, n_moves=2)
    assert a.info["seed"] == 3 and type(a.info["n_particles"]) is int
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_z, b.log_z)


@pytest.mark.parametrize("n_runs", [None, 3])
def test_mcmc_results_are_full_smc_results(n_runs):
    res = sample(gauss(2), method="mala", n_particles=40, seed=0, n_steps=10, n_runs=n_runs)
    lead = () if n_runs is None else (3,)
    assert torch.isnan(res.log_z).all() and res.log_z.shape == lead
    assert res.ess.shape == (1, *lead) and torch.all(res.ess == 40)  # equal weights: ESS = N
    assert res.trace["accept_rate"].shape == (1, *lead)
    assert res.resample(7, seed=0).shape == (*lead, 7, 2)
    idata = res.to_arviz()
    assert idata.posterior["x"].shape == (n_runs or 1, 40, 2)
    assert idata["smc_trace"]["ess"].shape[-1] == 1  # one step


def test_progress_hooks_see_the_temperature_and_the_chain_steps():
    temps, steps = [], []

    def on_step(k, info):
        temps.append(float(info.extra["temperature"].min()))

    res = sample(gauss(), n_particles=100, seed=0, progress=on_step)
    assert len(temps) == res.info["n_temperatures"] and temps[-1] == 1.0
    assert temps == sorted(temps) and "t" not in res.trace  # tempering has no diffusion time
    sample(gauss(), method="hmc", n_particles=10, seed=0, n_steps=6, n_warmup=4,
           progress=lambda k, info: steps.append(k))  # fmt: skip
    assert steps == list(range(1, 11))
    for progress in (True, False):  # a bar (to stderr) or none: same numbers
        r = sample(gauss(), n_particles=100, seed=0, progress=progress)
        assert torch.equal(r.particles, res.particles)
    assert math.isfinite(float(res.log_z))
