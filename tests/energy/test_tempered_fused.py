"""The fused tempered loop (whole steps, masked after the end, chunked host checks) against the
engine's loop: the same numbers on the CPU, and exact log Z / moments where the answer is known."""

import math

import pytest
import torch

import smcdiff
from smcdiff.energy import sample
from smcdiff.energy import tempered_fused as tf
from smcdiff.errors import NonFiniteError
from tests.stats import assert_z_unbiased


def gaussian_target(mean, std, log_c):
    """Unnormalised N(mean, std^2 I) times e^{log_c}: log Z = log_c."""
    d = mean.shape[0]

    def log_prob(x):
        z = (x - mean) / std
        return -0.5 * (z * z).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi) + log_c

    return smcdiff.as_target(log_prob, d, "shifted gaussian")


def _run(target, **kw):
    base = dict(n_particles=300, n_runs=3, seed=7, kernel="hmc", n_moves=3, dtype=torch.float64)
    return sample(target, **{**base, **kw})


@pytest.mark.parametrize(
    "chunk", [pytest.param(1, marks=pytest.mark.slow), 3, pytest.param(50, marks=pytest.mark.slow)]
)
def test_fused_loop_gives_the_engine_loops_numbers_on_the_cpu(chunk):
    target = gaussian_target(torch.tensor([2.0, -1.0, 0.5]), 0.4, 1.5)
    ref = _run(target)
    fused = _run(target, fused=True, fused_chunk=chunk)
    assert ref.info["n_temperatures"] == fused.info["n_temperatures"] >= 4
    assert torch.equal(ref.log_z, fused.log_z)
    assert torch.equal(ref.particles, fused.particles)
    assert torch.equal(ref.log_weights, fused.log_weights)
    assert set(ref.trace) == set(fused.trace)
    for name, col in ref.trace.items():
        assert torch.equal(col.nan_to_num(-7.0), fused.trace[name].nan_to_num(-7.0)), name
    for name in ("n_target_evals", "n_grad_evals", "n_resampled"):
        assert ref.info[name] == fused.info[name]


def test_fused_loop_on_mala_with_groups_and_resampling_below_half():
    target = gaussian_target(torch.tensor([1.0, 0.0]), 0.7, -2.0)
    kw = dict(kernel="mala", n_moves=4, ess_threshold=0.5, resampling="stratified")
    ref, fused = _run(target, **kw), _run(target, fused=True, fused_chunk=2, **kw)
    assert torch.equal(ref.log_z, fused.log_z)
    assert torch.equal(ref.particles, fused.particles)


@pytest.mark.slow
def test_fused_tempered_smc_is_unbiased_for_z():
    """Exact log Z = 3 of a Gaussian (fails if the masked steps reweight after the end)."""
    target = gaussian_target(torch.tensor([2.0, -1.0, 0.5, 0.0]), 0.5, 3.0)
    res = sample(target, n_particles=500, n_runs=32, seed=0, fused=True, fused_chunk=4,
                 dtype=torch.float64)  # fmt: skip
    assert bool((res.trace["temperature"][-1] == 1.0).all())
    assert_z_unbiased(res.log_z, 3.0, n_se=4.5, max_se=0.05)


def test_fused_loop_reports_a_nan_target_with_its_step():
    def log_prob(x):
        lp = -0.5 * (x * x).sum(-1)
        return torch.where(x[:, 0] > 2.5, torch.nan, lp)

    target = smcdiff.as_target(log_prob, 2, "nan beyond 2.5")
    with pytest.raises(NonFiniteError, match="target log_prob"):
        sample(target, n_particles=200, seed=0, reference_std=3.0, fused=True, fused_chunk=3)


def test_fused_option_is_checked():
    target = gaussian_target(torch.tensor([0.0]), 1.0, 0.0)
    with pytest.raises(smcdiff.SMCDiffError, match="fused_chunk"):
        sample(target, n_particles=10, fused=True, fused_chunk=0)
    with pytest.raises(smcdiff.SMCDiffError, match="fused must be"):
        sample(target, n_particles=10, fused=1)


class AnalyticGaussian:
    """N(mean, std^2 I) times e^{log_c} with an analytic ``grad_log_prob`` (calls counted)."""

    def __init__(self, mean, std, log_c):
        self.mean, self.std, self.log_c = mean, std, log_c
        self.dim, self.n_calls = mean.shape[0], 0
        self.plain = gaussian_target(mean, std, log_c)

    def log_prob(self, x):
        return self.plain.log_prob(x)

    def grad_log_prob(self, x):
        self.n_calls += 1
        return self.log_prob(x), -(x - self.mean) / self.std**2


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["hmc", "mala"])
def test_analytic_gradients_give_the_autograd_runs_numbers(kernel):
    """Same seed, float64: the run with the target's grad_log_prob follows the autograd run
    (gradients equal to rounding); fails if the tempered gradient mixes lambda wrongly."""
    target = AnalyticGaussian(torch.tensor([2.0, -1.0, 0.5]), 0.4, 1.5)
    ref = _run(target.plain, kernel=kernel)
    fast = _run(target, kernel=kernel, fused=True, fused_chunk=2)
    assert target.n_calls > 0
    assert ref.info["n_temperatures"] == fast.info["n_temperatures"]
    torch.testing.assert_close(fast.log_z, ref.log_z, rtol=0, atol=1e-9)
    torch.testing.assert_close(fast.particles, ref.particles, rtol=0, atol=1e-6)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the CUDA path needs a GPU (CI has none; run with a GPU, as on the device)",
)
def test_fused_cuda_graphs_capture_reproduce_and_are_unbiased():
    """On CUDA: the whole-step graph is captured (no fallback warning), runs repeat by seed
    (cached graph re-seeded), differ across seeds, and log Z of a Gaussian is unbiased."""
    import warnings

    target = gaussian_target(torch.tensor([2.0, -1.0, 0.5, 0.0], device="cuda"), 0.5, 3.0)
    kw = dict(n_particles=500, n_runs=32, device="cuda", fused=True, fused_chunk=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = sample(target, seed=0, **kw)
        b = sample(target, seed=0, **kw)
        c = sample(target, seed=1, **kw)
    fell_back = [str(m.message) for m in caught if "failed" in str(m.message)]
    assert not fell_back, fell_back  # a failed capture or Triton launch warns
    assert torch.equal(a.log_z, b.log_z) and torch.equal(a.particles, b.particles)
    assert not torch.equal(a.log_z, c.log_z)
    assert bool((a.trace["temperature"][-1] == 1.0).all())
    assert_z_unbiased(a.log_z.cpu().double(), 3.0, n_se=4.5, max_se=0.05)
    engine = sample(target, seed=0, **{**kw, "fused": False})
    assert abs(float(engine.log_z.mean() - a.log_z.mean())) < 0.05


class _FakeGraph:
    """A CPU stand-in for torch.cuda.CUDAGraph: ``replay`` recomputes the captured call and
    writes its results into the captured output tensors, in place (a graph's semantics)."""

    capturing = None

    def __init__(self):
        self.call = self.out = None
        self.n_replays = 0

    def register_generator_state(self, gen):
        """A no-op: the stand-in replays with the generator it captured."""

    def replay(self):
        fn, gen = self.call
        fresh = fn(gen)
        _copy_into(self.out, fresh)
        self.n_replays += 1


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor) and 0 in dst.stride():  # an expanded constant (arange)
        assert torch.equal(dst, src)
    elif isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    elif isinstance(dst, tuple):
        for a, b in zip(dst, src, strict=True):
            _copy_into(a, b)


@pytest.fixture
def fake_graphs(monkeypatch):
    """CUDA graphs replaced by :class:`_FakeGraph` on the CPU; yields the list of graphs."""
    import contextlib

    graphs = []

    def recording_call(fn, gen):
        out = fn(gen)
        _FakeGraph.capturing.call, _FakeGraph.capturing.out = (fn, gen), out
        return out

    @contextlib.contextmanager
    def fake_capture(graph):
        _FakeGraph.capturing = graph
        graphs.append(graph)
        try:
            yield
        finally:
            _FakeGraph.capturing = None

    class _Stream:  # streams do not exist on the CPU: waiting on one is a no-op
        def __init__(self, *a, **k):
            self.waited = []

        def wait_stream(self, other):
            self.waited.append(other)

    monkeypatch.setattr(tf, "captured_call", recording_call)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    monkeypatch.setattr(tf, "_CACHE", {})

    yield graphs


@pytest.mark.slow
def test_graph_replay_plumbing_with_a_cpu_stand_in_for_cuda_graphs(fake_graphs):
    """The CUDA-graph path (static inputs copied in, outputs overwritten by each replay and
    copied out, the graph cached and re-seeded per run) run on the CPU with a stand-in graph:
    runs repeat by seed, the graph is captured once, and log Z of a Gaussian is unbiased
    (stale outputs or inputs would stall the temperatures or repeat a step)."""
    graphs = fake_graphs
    target = gaussian_target(torch.tensor([2.0, -1.0, 0.5, 0.0]), 0.5, 3.0)
    opts = smcdiff.energy.options.TemperedOptions(n_moves=2)

    def run(seed, chunk):
        fk = smcdiff.energy.TemperedSMC(target, opts, dtype=torch.float64)
        smc = tf.SMC(fk, resampling="systematic")
        gen = torch.Generator().manual_seed(seed)
        return tf.run_fused(smc, 300, 24, gen, chunk=chunk, graph_key=("fake",))

    a, b, c = run(0, 1), run(0, 1), run(1, 2)
    assert len(graphs) == 2  # init + step 1, and step k >= 2: each captured once, cached
    assert graphs[0].n_replays == 3  # one replay of the first graph per run
    # the host reads step k's flags after queueing step k+1: with chunk=1 no step after the
    # end is queued (step k's flags say whether k+1 is the last); chunk=2 may queue one more
    exact = a.completed_steps - 1 + b.completed_steps - 1
    assert graphs[1].n_replays - exact - (c.completed_steps - 1) in (0, 1)
    assert torch.equal(a.log_z, b.log_z) and not torch.equal(a.log_z, c.log_z)
    temps = a.trace["temperature"]
    assert bool((temps[-1] == 1.0).all()) and bool((temps.diff(dim=0) >= 0).all())
    assert bool((temps.diff(dim=0)[1:-1] > 0).all())  # every step but the last moves on
    assert_z_unbiased(torch.cat([a.log_z, c.log_z]), 3.0, n_se=4.5, max_se=0.08)


@pytest.mark.slow
def test_replayed_compiled_moves_report_compiled(fake_graphs, monkeypatch):
    """A run replaying cached graphs captured by an earlier run's model reports the moves'
    compile status of the capture ("compiled"), not "not called" (its own wrapper never runs);
    the aot_eager backend as in tests/mcmc/test_compiled.py."""
    from smcdiff.mcmc import compiled

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    monkeypatch.setattr(smcdiff.energy.tempered, "_COMPILED", {})
    target = gaussian_target(torch.tensor([2.0, -1.0]), 0.5, 0.0)
    opts = smcdiff.energy.options.TemperedOptions(
        n_moves=1, compile=True, kernel="hmc", kernel_options={"n_leapfrog": 2}
    )
    models = []
    for seed in (0, 1):
        fk = smcdiff.energy.TemperedSMC(target, opts, dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed)
        tf.run_fused(tf.SMC(fk), 50, 1, gen, graph_key=("fake-compiled",))
        models.append(fk)
    assert len(fake_graphs) == 2 and fake_graphs[1].n_replays > 0
    assert [m.compile_status for m in models] == ["compiled", "compiled"]
