"""NetworkScore against closed forms: a network computing the exact eps / x0 / v / score /
velocity of a noised Gaussian mixture must give ExactScore's score, and steer to the exact
posterior and evidence with FK and TDS.

The test network (``MixtureNet``) is an independent closed form: per row it recovers its time
from whatever ``time_input`` it was trained on, computes :math:`\\hat x_0 = \\mathbb E[x_0 \\mid
x_t]` from the per-component Gaussian posteriors and the responsibilities, and returns the
requested parameterisation. It shares no code with ExactScore (which differentiates
:math:`\\log p_t`) or with the adapter's conversions.

Steering without a density: a network has no ``log_density``, so path correction is off and the
weights target the sampler's own discretised marginals. Two checks keep the two error sources
apart: (1) the adapter run is the ExactScore run with ``path_correction=False`` and the same seed,
number for number (adapter error zero); (2) both are compared with the exact posterior and
evidence with a tolerance of 4.5 SE plus a discretisation allowance measured for the step count
used (see ``DISC_BIAS``).
"""

import warnings

import pytest
import torch

import smcdiff
from smcdiff.processes import coefficients
from tests.conftest import make_linear_gaussian
from tests.stats import assert_unbiased, assert_z_unbiased, mode_mass, total_variation

PROCESSES = {
    "vp": smcdiff.VP(),
    "vp-cosine": smcdiff.VP("cosine"),
    "ve": smcdiff.VE(),
    "flow": smcdiff.Flow(),
}
PREDICTIONS = ["eps", "x0", "v", "score", "velocity"]
TIME_INPUTS = ["t", "sigma", "log_snr", "scaled"]  # "scaled": a callable, t -> 1000 t


def make_prior(dtype=torch.float64) -> smcdiff.GaussianMixture:
    """Three diagonal components in 2-D (unequal weights and scales)."""
    return smcdiff.GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=dtype),
        torch.tensor([[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]], dtype=dtype),
    )


def time_input_of(kind: str):
    return (lambda t: 1000.0 * t) if kind == "scaled" else kind


def _bisect_increasing(f, y: torch.Tensor, iters: int = 80) -> torch.Tensor:
    lo, hi = torch.zeros_like(y), torch.ones_like(y)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = f(mid) < y
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class MixtureNet(torch.nn.Module):
    """The exact posterior-mean network of a diagonal mixture prior noised by ``process``.

    ``forward(x, inp, shift=None)``: ``x`` ``(N, d)``, ``inp`` ``(N,)`` the time as ``time_input``
    gives it; ``shift`` (a conditioning kwarg) moves every mean by a ``(d,)`` or ``(N, d)`` tensor.
    """

    def __init__(self, prior, process, prediction, time_input="t", dtype=torch.float64):
        super().__init__()
        self.process, self.prediction, self.time_input = process, prediction, time_input
        self.register_buffer("log_w", prior.weights.to(torch.float64).log().to(dtype))
        self.register_buffer("means", prior.means.to(dtype))
        self.register_buffer("var", prior.covs.diagonal(dim1=-2, dim2=-1).to(dtype))  # (K, d)
        self.event_shape = (prior.dim,)
        self.calls = 0

    def _time(self, inp: torch.Tensor) -> torch.Tensor:
        p = self.process
        if self.time_input == "t":
            return inp
        if self.time_input == "scaled":
            return inp / 1000.0
        if self.time_input == "log_snr":
            return p.t_from_log_snr(inp).to(inp.dtype)
        return _bisect_increasing(p.sigma, inp.double()).to(inp.dtype)  # "sigma"

    def forward(self, x, inp, shift=None):
        self.calls += 1
        t = self._time(inp)
        a, s, da, ds = coefficients(self.process, t, x)  # (N, 1) each
        means = self.means if shift is None else self.means + shift.unsqueeze(-2)  # (.., K, d)
        xk, ak, sk = x.unsqueeze(-2), a.unsqueeze(-1), s.unsqueeze(-1)
        var_t = ak * ak * self.var + sk * sk  # (N, K, d)
        resid = xk - ak * means
        log_r = self.log_w - 0.5 * (resid.square() / var_t + var_t.log()).sum(-1)
        r = torch.softmax(log_r, dim=-1).unsqueeze(-1)  # (N, K, 1)
        x0 = (r * (means + self.var * ak / var_t * resid)).sum(-2)  # E[x0 | x_t]
        eps = (x - a * x0) / s
        return {
            "eps": eps,
            "x0": x0,
            "v": a * eps - s * x0,
            "score": -eps / s,
            "velocity": da * x0 + ds * eps,
        }[self.prediction]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the tests' unseeded draws do not depend on the tests run before


# --------------------------------------------------------------------------- pointwise exactness
@pytest.mark.parametrize("pname", list(PROCESSES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_network_score_equals_the_exact_score(pname, prediction):
    process, prior = PROCESSES[pname], make_prior()
    exact = smcdiff.exact_score(prior, process)
    gen = torch.Generator().manual_seed(0)
    times = [0.02, 0.3, 0.7, min(0.98, process.t_max)]
    for time_input in TIME_INPUTS:
        net = MixtureNet(prior, process, prediction, time_input)
        model = smcdiff.NetworkScore(net, process, prediction, time_input=time_input_of(time_input))
        for t in times:
            x = exact.sample_marginal(64, t, gen)
            tt = torch.full((64,), t, dtype=torch.float64)
            got, want = model.score(x, tt), exact.score(x, t)
            scale = want.abs().max()
            assert torch.allclose(got, want, rtol=0, atol=1e-9 * scale), (time_input, t)
            assert torch.allclose(model.score(x, t), got)  # a float time is filled per row


def test_per_row_times_are_used_row_by_row():
    process, prior = smcdiff.VP(), make_prior()
    exact = smcdiff.exact_score(prior, process)
    model = smcdiff.NetworkScore(MixtureNet(prior, process, "x0"), process, "x0")
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64)
    want = torch.cat([exact.score(x[i : i + 1], float(t[i])) for i in range(6)])
    assert torch.allclose(model.score(x, t), want, atol=1e-10)
    assert torch.allclose(model.predict_as("x0", x, t), model.predict(x, t))
    assert torch.allclose(model.predict_as("score", x, t), want, atol=1e-10)


def test_index_time_input_passes_the_process_timesteps():
    class Discrete(smcdiff.VP):  # a stand-in for a discrete schedule: 1000 timesteps on [0, 1]
        def timestep(self, t):
            return torch.round(t * 999).long()

    process, prior = Discrete(), make_prior()
    seen = []

    def net(x, idx):
        seen.append(idx)
        return MixtureNet(prior, process, "eps")(x, idx.to(x.dtype) / 999)

    model = smcdiff.NetworkScore(net, process, "eps", time_input="index", event_shape=(2,))
    x = torch.randn(5, 2, dtype=torch.float64)
    t = 300 / 999
    score = model.score(x, t)
    assert seen[0].dtype == torch.int64 and seen[0].tolist() == [300] * 5
    assert torch.allclose(score, smcdiff.exact_score(prior, process).score(x, t), atol=1e-9)
    with pytest.raises(smcdiff.SMCDiffError, match="timestep"):
        smcdiff.NetworkScore(net, smcdiff.VP(), time_input="index", event_shape=2)

    # a bfloat16 net still gets exact timesteps: the time is mapped before the dtype cast
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2, dtype=torch.bfloat16)

        def forward(self, x, idx):
            seen.append(idx)
            return self.lin(x)

    half = smcdiff.NetworkScore(Half(), process, "eps", time_input="index", event_shape=2)
    steps = torch.arange(1, 999, 7)
    seen.clear()
    assert half.score(torch.randn(len(steps), 2), steps / 999).dtype == torch.float32
    assert torch.equal(seen[0], steps)


# --------------------------------------------------------------------------- mechanics
def test_chunking_gives_the_same_numbers_and_counts_calls():
    process, prior = smcdiff.VE(), make_prior()
    net = MixtureNet(prior, process, "v")
    whole = smcdiff.NetworkScore(net, process, "v")
    chunked = smcdiff.NetworkScore(net, process, "v", max_batch=7)
    x = torch.randn(30, 2, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(30, dtype=torch.float64)
    shift = torch.randn(30, 2, dtype=torch.float64)  # per-row conditioning is split with x
    a = whole.with_cond(shift=shift).score(x, t)
    b = chunked.with_cond(shift=shift).score(x, t)
    assert torch.allclose(a, b, rtol=1e-12, atol=0)  # same maths; SIMD round-off may differ
    assert chunked.counter.calls == 5 and chunked.nfe == 1 and chunked.counter.rows == 30
    chunked.reset_nfe()
    assert (chunked.nfe, chunked.counter.calls, chunked.counter.rows) == (0, 0, 0)


def test_no_graph_unless_x_requires_grad_and_grad_mode_is_on():
    process = smcdiff.VP()
    lin = torch.nn.Linear(2, 2, dtype=torch.float64)
    model = smcdiff.NetworkScore(lambda x, t: lin(x), process, "eps", event_shape=2)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert not model.score(x, 0.5).requires_grad  # parameters need grad, x does not: no graph
    xr = x.clone().requires_grad_(True)
    with torch.no_grad():
        assert not model.score(xr, 0.5).requires_grad
    s = model.score(xr, 0.5)
    (g,) = torch.autograd.grad(s.sum(), xr)  # the graph through the net, as TDS needs
    assert torch.allclose(g, (-lin.weight.sum(0) / float(process.sigma(0.5))).expand(4, 2))
    out = model.predict(x, 0.5, keep_graph=True)  # training: gradients for the parameters
    out.sum().backward()
    assert lin.weight.grad is not None


def test_float32_net_and_x_stay_float32_and_autocast_runs():
    process, prior = smcdiff.VP(), make_prior(torch.float32)
    net = MixtureNet(prior, process, "x0", dtype=torch.float32)
    model = smcdiff.NetworkScore(net, process, "x0")
    assert model.dtype == torch.float32
    x = torch.randn(8, 2)
    t = torch.full((8,), 0.4)
    assert process.alpha(t).dtype == torch.float32  # processes keep the dtype they are given
    score = model.score(x, t)
    assert score.dtype == torch.float32
    want = smcdiff.exact_score(make_prior(), process).score(x.double(), 0.4)
    assert torch.allclose(score.double(), want, atol=1e-4)
    x64 = x.double()  # a float64 x with a float32 net: called in float32, returned in float64
    assert model.score(x64, 0.4).dtype == torch.float64
    lin = torch.nn.Linear(2, 2)
    amp = smcdiff.NetworkScore(
        lambda x, t: lin(x), process, "eps", event_shape=2, autocast=torch.bfloat16
    )
    seen = []
    lin.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = amp.score(x, t)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert torch.allclose(out, -lin(x).detach() / process.sigma(t)[:, None], rtol=0.05, atol=0.05)


def test_cfg_of_two_conditionings_is_one_batched_call():
    process, prior = smcdiff.VP(), make_prior()
    net = MixtureNet(prior, process, "eps")
    base = smcdiff.NetworkScore(net, process, "eps")
    cond = base.with_cond(shift=torch.tensor([1.0, 0.0], dtype=torch.float64))
    uncond = base.with_cond(shift=torch.zeros(2, dtype=torch.float64))
    guided = smcdiff.cfg(cond, uncond, 3.0)
    x = torch.randn(10, 2, dtype=torch.float64)
    t = torch.full((10,), 0.3, dtype=torch.float64)
    net.calls = 0
    got = guided.score(x, t)
    assert net.calls == 1 and base.nfe == 2 and base.counter.rows == 20  # 2 NFE, one call
    want = 3.0 * cond.score(x, t) - 2.0 * uncond.score(x, t)
    assert torch.allclose(got, want, atol=1e-12)
    # a per-row conditioning stacks with a shared one
    rows = base.with_cond(shift=torch.zeros(10, 2, dtype=torch.float64))
    net.calls = 0
    assert torch.allclose(smcdiff.cfg(cond, rows, 3.0).score(x, t), want, atol=1e-12)
    assert net.calls == 1
    # another net, or batch_cond=False, falls back to one call each
    solo = smcdiff.NetworkScore(net, process, "eps", batch_cond=False)
    net.calls = 0
    pair = smcdiff.cfg(solo.with_cond(shift=cond.cond["shift"]), solo.with_cond(shift=None), 3.0)
    assert torch.allclose(pair.score(x, t), want, atol=1e-12) and net.calls == 2
    other = smcdiff.NetworkScore(MixtureNet(prior, process, "eps"), process, "eps")
    mixed = smcdiff.cfg(cond, other.with_cond(shift=torch.zeros(2, dtype=torch.float64)), 2.0)
    net.calls = 0
    assert torch.allclose(mixed.score(x, t), 2 * cond.score(x, t) - other.score(x, t))
    assert net.calls == 2


def test_bad_arguments_are_named():
    process = smcdiff.VP()
    with pytest.raises(smcdiff.SMCDiffError, match="prediction"):
        smcdiff.NetworkScore(lambda x, t: x, process, "logits", event_shape=2)
    with pytest.raises(smcdiff.SMCDiffError, match="time_input"):
        smcdiff.NetworkScore(lambda x, t: x, process, time_input="seconds", event_shape=2)
    with pytest.raises(smcdiff.SMCDiffError, match="event_shape"):
        smcdiff.NetworkScore(lambda x, t: x, process)
    with pytest.raises(smcdiff.SMCDiffError, match="max_batch"):
        smcdiff.NetworkScore(lambda x, t: x, process, max_batch=0, event_shape=2)
    wide = smcdiff.NetworkScore(lambda x, t: torch.cat([x, x], 1), process, event_shape=2)
    with pytest.raises(smcdiff.SMCDiffError, match="postprocess"):
        wide.score(torch.zeros(3, 2), 0.5)
    split = smcdiff.NetworkScore(
        lambda x, t: torch.cat([x, x], 1), process, event_shape=2, postprocess=lambda o: o[:, :2]
    )
    assert split.score(torch.ones(3, 2), 0.5).shape == (3, 2)
    with pytest.raises(smcdiff.SMCDiffError, match=r"x has shape \(3, 3\)"):
        split.score(torch.zeros(3, 3), 0.5)


def test_images_keep_their_event_shape():
    process = smcdiff.VP()
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    model = smcdiff.NetworkScore(lambda x, t: conv(x), process, "eps", event_shape=(3, 4, 4))
    assert model.dim == 48 and smcdiff.scores.event_shape_of(model) == (3, 4, 4)
    x = torch.randn(5, 3, 4, 4)
    t = torch.linspace(0.1, 0.9, 5)
    want = -conv(x).detach() / process.sigma(t)[:, None, None, None]
    assert torch.allclose(model.score(x, t), want)
    res = smcdiff.steer(model, method="none", n_particles=4, n_steps=3, seed=0)
    assert res.particles.shape == (4, 3, 4, 4)


# --------------------------------------------------------------------------- steering exactness
def mixture_problem(process):
    """The 2-D mixture prior observed in its first coordinate (y = 0.3, noise std 1): three
    posterior modes with masses ~(0.18, 0.30, 0.52); exact posterior and evidence of
    p_{t_min}."""
    A = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    return make_linear_gaussian(
        make_prior(), A, torch.tensor([0.3], dtype=torch.float64), 1.0, process
    )


# every parameterisation with FK and TDS on VP; VE and Flow with their usual parameterisations
STEER_CASES = [("vp", pred, m) for m in ("fk", "tds") for pred in PREDICTIONS] + [
    ("ve", "eps", "fk"),
    ("ve", "x0", "tds"),
    ("flow", "velocity", "fk"),
    ("flow", "velocity", "tds"),
]


@pytest.mark.parametrize(("pname", "prediction", "method"), STEER_CASES)
def test_steering_a_network_is_steering_the_exact_score_without_path_correction(
    pname, prediction, method
):
    # Adapter error alone: same seed, same sampler and weights, scores equal to ~1e-14, so the
    # particles, weights and log Z equal ExactScore's run with path_correction=False.
    process = PROCESSES[pname]
    p = mixture_problem(process)
    net = smcdiff.NetworkScore(MixtureNet(make_prior(), process, prediction), process, prediction)
    kw = dict(log_likelihood=p.log_likelihood, method=method, n_particles=64, n_steps=10, seed=3)
    got = smcdiff.steer(net, n_runs=2, **kw)
    want = smcdiff.steer(p.model, n_runs=2, path_correction=False, **kw)
    assert got.info["path_correction"] is False  # no density: "auto" turns it off
    assert torch.allclose(got.particles, want.particles, rtol=0, atol=1e-9)
    assert torch.allclose(got.log_weights, want.log_weights, rtol=0, atol=1e-9)
    assert torch.allclose(got.log_z, want.log_z, rtol=0, atol=1e-9)
    # one batched evaluation of all runs' particles per grid point (11 = n_steps + 1)
    assert net.nfe == 11 and net.counter.rows == 11 * 2 * 64


# Discretisation bias of FK / TDS without path correction on mixture_problem (grid "log_snr"),
# measured with ExactScore, path_correction=False, N = 4000 x 32 runs (SE ~0.002 on masses,
# ~0.003 on Z_hat / Z): it falls as 1/n_steps (mode masses off by 0.050 / 0.023 / 0.012 at
# 25 / 50 / 100 steps on VP, 0.074 / 0.034 / 0.017 on Flow; Z_hat / Z - 1 by 0.060 / 0.026 /
# 0.009 on VP, 0.097 / 0.040 / 0.016 on Flow). The allowance is 1.5 x the measured bias at the
# step count used; a wrong adapter (sign, scale, time map, parameterisation) is off by far more.
DISC_BIAS = {  # (process, n_steps): (max |mode-mass error|, |E[Z_hat / Z] - 1|)
    ("vp", 100): (0.012, 0.010),
    ("flow", 50): (0.036, 0.040),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pname", "prediction", "method", "n_steps", "n_particles"),
    [("vp", "x0", "fk", 100, 500), ("flow", "velocity", "tds", 50, 500)],
)
def test_network_steers_to_the_exact_mixture_posterior_and_evidence(
    pname, prediction, method, n_steps, n_particles
):
    process = PROCESSES[pname]
    p = mixture_problem(process)
    net = smcdiff.NetworkScore(MixtureNet(make_prior(), process, prediction), process, prediction)
    res = smcdiff.steer(
        net,
        log_likelihood=p.log_likelihood,
        method=method,
        n_particles=n_particles,
        n_steps=n_steps,
        n_runs=16,
        seed=7,
    )
    mass_bias, z_bias = DISC_BIAS[(pname, n_steps)]
    exact = p.posterior.weights.double()
    comp = p.posterior.component_log_prob(res.particles).argmax(-1)  # (R, N): nearest mode
    mass = mode_mass(comp, res.weights, 3)  # (R, 3)
    assert_unbiased(mass, exact, n_se=4.5, bias=1.5 * mass_bias, max_se=0.01, what="mode masses")
    assert_z_unbiased(
        res.log_z, p.log_evidence, n_se=4.5, bias=1.5 * z_bias, max_se=0.02, what="evidence"
    )
    assert float(total_variation(mass.mean(0), exact)) < 0.05


def test_a_net_in_training_mode_with_dropout_warns():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    with pytest.warns(UserWarning, match=r"Dropout.*eval\(\)"):
        smcdiff.NetworkScore(net, smcdiff.VP(), event_shape=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smcdiff.NetworkScore(net.eval(), smcdiff.VP(), event_shape=2)
