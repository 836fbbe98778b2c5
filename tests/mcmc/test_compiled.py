"""Compiled HMC transitions (smcdiff.mcmc.compiled) against the eager ones on the same random
numbers, inside tempered SMC (sample(compile=True)), and the reported eager fallback.

The CPU tests compile with the ``aot_eager`` backend: dynamo and AOTAutograd trace the whole
transition into one graph (the step that fails for an uncompilable target) without inductor's
C++ code generation, which takes minutes on a busy 2-core machine. Inductor's kernels run in the
H200 benchmark (experiments/bench_blackjax.py, variant ``fused+grad+compiled-moves``), which
reports their log Z beside the eager variants'."""

import functools
import math
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import smcdiff
from smcdiff.energy import next_temperature, sample, tempered
from smcdiff.mcmc import compiled
from smcdiff.mcmc.base import value_and_grad
from smcdiff.mcmc.compiled import (
    CompiledFunction,
    CompileFallbackWarning,
    compile_transition,
    func_value_and_grad,
)
from smcdiff.mcmc.hmc import HMC, hmc_transition

MEAN, STD, LOG_C = torch.tensor([2.0, -1.0, 0.5]), 0.4, 1.5


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def gaussian_log_prob(x):
    """Unnormalised N(MEAN, STD^2 I) times e^{LOG_C}: log Z = LOG_C."""
    z = (x - MEAN.to(x)) / STD
    return -0.5 * (z * z).sum(-1) - 3 * math.log(STD) - 1.5 * math.log(2 * math.pi) + LOG_C


class AnalyticGaussian:
    """The same target with an analytic ``grad_log_prob``."""

    dim = 3

    def log_prob(self, x):
        return gaussian_log_prob(x)

    def grad_log_prob(self, x):
        return gaussian_log_prob(x), -(x - MEAN.to(x)) / STD**2


def _sample(target, **kw):
    base = dict(n_particles=40, n_runs=2, seed=3, n_moves=2, dtype=torch.float64, progress=False,
                kernel_options={"n_leapfrog": 2})  # fmt: skip
    return sample(target, **{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("analytic", [False, True])
def test_compiled_tempered_moves_equal_the_eager_ones(aot_eager, analytic):
    """Same random numbers, same tempered density: the runs agree to rounding, temperatures,
    counts and all (fails if the compiled pair drops the temperature or the draws reorder)."""
    target = AnalyticGaussian() if analytic else smcdiff.as_target(gaussian_log_prob, 3, "g")
    ref = _sample(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # the compiled path must run
        com = _sample(target, compile=True)
    assert ref.info["compile"] == "off" and com.info["compile"] == "compiled"
    assert ref.info["n_temperatures"] == com.info["n_temperatures"] >= 4
    torch.testing.assert_close(com.particles, ref.particles, rtol=0, atol=1e-10)
    torch.testing.assert_close(com.log_z, ref.log_z, rtol=0, atol=1e-10)
    torch.testing.assert_close(com.trace["accept"], ref.trace["accept"], equal_nan=True)
    for name in ("n_target_evals", "n_grad_evals", "n_resampled"):
        assert com.info[name] == ref.info[name]
    searches = [v[1] for k, v in tempered._COMPILED.items() if k[0] == "reweight"]
    assert searches and all(s.status == "compiled" for s in searches)  # compiled with the moves
    if analytic:  # N is a symbolic size: another N runs the same compiled graph
        graphs = counters["stats"]["unique_graphs"]
        again = _sample(target, compile=True, n_particles=60)
        assert again.info["compile"] == "compiled" and counters["stats"]["unique_graphs"] == graphs
        ref60 = _sample(target, n_particles=60)
        torch.testing.assert_close(again.log_z, ref60.log_z, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_a_transition_that_cannot_compile_warns_and_runs_eagerly(aot_eager):
    """A host sync (.tolist()) breaks the graph: one warning naming the reason, then the eager
    transition on the same random numbers, so the run equals compile=False bit for bit."""

    def log_prob(x):
        scale = max((x[:1, 0] * 0 + 1).tolist())  # a host sync: no single graph
        return gaussian_log_prob(x) * scale

    target = smcdiff.as_target(log_prob, 3, "syncing")
    ref = _sample(target, kernel_options={"n_leapfrog": 2})
    with pytest.warns(CompileFallbackWarning, match=r"torch.compile .* failed \(\w+"):
        com = _sample(target, compile=True, kernel_options={"n_leapfrog": 2})
    assert com.info["compile"].startswith("eager (")
    assert torch.equal(com.particles, ref.particles) and torch.equal(com.log_z, ref.log_z)
    assert com.info["n_target_evals"] == ref.info["n_target_evals"]


def test_func_pair_equals_autograd_and_the_move_is_hmc():
    """Without compiling: the torch.func pair is autograd's, and the move function that gets
    compiled is HMC.step on the same draws."""
    kern = HMC(gaussian_log_prob, n_leapfrog=3)
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lp, g = func_value_and_grad(lambda y, c: gaussian_log_prob(y) * c)(x, torch.tensor(2.0))
    lp_ref, g_ref = value_and_grad(gaussian_log_prob, x)
    torch.testing.assert_close(lp, 2 * lp_ref)
    torch.testing.assert_close(g, 2 * g_ref)
    state = kern.init(x)
    ref, info_ref = kern.step(state, 0.2, torch.Generator().manual_seed(1))
    p, u = kern.draws(state, torch.Generator().manual_seed(1))
    pair = func_value_and_grad(lambda y, c: gaussian_log_prob(y) * c)
    move = compile_transition(hmc_transition, pair, "test", n_leapfrog=3)
    h = torch.full((20, 1), 0.2, dtype=torch.float64)
    new, info = move.fn(state, p, u, h, kern.inv_mass_tensor(x), (torch.tensor(1.0),))
    torch.testing.assert_close(new.x, ref.x)
    assert torch.equal(info.accepted, info_ref.accepted)
    assert move.status == "not called"


def test_compile_option_is_checked():
    target = smcdiff.as_target(gaussian_log_prob, 3, "g")
    with pytest.raises(
        smcdiff.SMCDiffError, match="compile must be True, False, 'auto' or 'static'"
    ):
        _sample(target, compile="yes")
    with pytest.raises(smcdiff.SMCDiffError, match="HMC moves only"):
        _sample(target, compile=True, kernel="mala", kernel_options={})
    assert _sample(target, compile="auto", n_particles=10).info["compile"] == "off"  # CPU

    class OwnReference(tempered.TemperedSMC):
        def log_reference(self, x):
            return super().log_reference(x) + 1.0

    opts = smcdiff.energy.options.TemperedOptions(compile=True)
    with pytest.raises(smcdiff.SMCDiffError, match="its own log_reference"):
        OwnReference(target, opts)
    auto = OwnReference(target, smcdiff.energy.options.TemperedOptions(compile="auto"))
    assert not auto.compile_moves


def test_benchmark_table_pairs_eager_and_compiled_moves():
    from smcdiff_experiments.bench_blackjax import table

    row = dict(target="mw5", n=10_000, n_temps=7, log_z_err=0.1, log_z_abs_err_mean=0.05)
    ours = [
        {**row, "variant": "fused+grad", "wall_ms": 90.0},
        {**row, "variant": "fused+grad+compiled-moves", "wall_ms": 30.0, "warmup_s": 41.0,
         "compile": "compiled", "log_z_abs_err_mean": 0.04},
    ]  # fmt: skip
    text = table({"ours": ours, "peer": {}})
    line = next(x for x in text.splitlines() if x.startswith("| mw5 | 1e+04 | fused+grad |"))
    assert "| 90.0 | 30.0 | 3.00x | 0.050 / 0.040 | 7 / 7 | 41.0 | compiled |" in line


def _cess(log_w, ell, delta):
    """Conditional ESS fraction of the increments ``delta`` (G,), computed directly."""
    g = torch.where(ell == -math.inf, ell, delta[:, None] * ell)
    a, b = torch.logsumexp(log_w + g, -1), torch.logsumexp(log_w + 2 * g, -1)
    return torch.exp(2 * a - b)


@pytest.mark.slow
def test_compiled_temperature_search_equals_the_eager_one(aot_eager):
    """The compiled search (traced whole) gives the eager search's increments, and both are
    the CESS root: CESS(delta) >= 0.5 N > CESS(delta (1 + 1e-5)) (or delta = 1 - lam)."""
    gen = torch.Generator().manual_seed(0)
    G, N = 3, 400
    ell = 4.0 * torch.randn(G, N, generator=gen, dtype=torch.float64)
    ell[0, :9] = -math.inf  # zero-density particles
    log_w = torch.log_softmax(torch.randn(G, N, generator=gen, dtype=torch.float64), -1)
    lam = torch.tensor([0.0, 0.3, 0.9999], dtype=torch.float64)
    fn = functools.partial(next_temperature, target_ess=0.5)
    search = CompiledFunction(fn, "test", what="the search", batch_dim=1)
    got = search(log_w, ell, lam, batch=(log_w, ell))
    assert search.status == "compiled"
    ref = next_temperature(log_w, ell, lam, 0.5)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert bool((_cess(log_w, ell, got) >= 0.5).all())
    inner = got < 1.0 - lam
    assert bool(inner[:2].all()) and not bool(inner[2])  # the last group reaches 1
    assert bool((_cess(log_w, ell, got * (1 + 1e-5))[inner] < 0.5).all())


def test_benchmark_writes_profiled_rows_and_the_static_variant(tmp_path):
    from smcdiff_experiments.bench_blackjax import compile_option, write

    assert compile_option("fused+grad+compiled-moves-static") == "static"
    assert compile_option("fused+grad+compiled-moves") is True
    assert compile_option("fused+grad") is False
    prof = dict(target="mw5", n=100_000, variant="fused+grad+compiled-moves", n_steps=8,
                kernels=4321, gpu_busy_ms=30.25, gpu_span_ms=41.0, wall_ms_profiled=55.5)  # fmt: skip
    write({"ours": [], "peer": {}, "profile": [prof]}, tmp_path)
    text = (tmp_path / "speed.md").read_text()
    assert "| mw5 | 1e+05 | fused+grad+compiled-moves | 8 | 4321 | 30.2 | 41.0 | 55.5 |" in text


@pytest.mark.slow
def test_static_shapes_compile_once_per_n_and_agree(aot_eager):
    """``dynamic=False`` (``compile="static"``): one compiled graph per number of chains (the
    symbolic-N default compiles one for every N: the tempered test above), each giving the
    eager transition's numbers."""
    dynamic = False
    pair = func_value_and_grad(lambda y, c: gaussian_log_prob(y) * c)
    move = compile_transition(hmc_transition, pair, "test", dynamic=dynamic, n_leapfrog=1)
    kern = HMC(gaussian_log_prob, n_leapfrog=1)
    before = counters["stats"]["unique_graphs"]
    for n in (20, 30):
        state = kern.init(torch.randn(n, 3, dtype=torch.float64))
        p, u = kern.draws(state, torch.Generator().manual_seed(n))
        h = torch.full((n, 1), 0.1, dtype=torch.float64)
        args = (state, p, u, h, kern.inv_mass_tensor(state.x), (torch.tensor(1.0),))
        new, _ = move(*args, batch=(state.x, state.log_prob, state.grad, p, u, h))
        ref, _ = move.fn(*args)
        torch.testing.assert_close(new.x, ref.x, rtol=0, atol=1e-12)
    assert move.status == "compiled"
    assert counters["stats"]["unique_graphs"] - before == (1 if dynamic else 2)
