"""EnergyNetwork against closed forms: a net returning -log p_t of a Gaussian mixture plus an
arbitrary per-time constant kappa(t).

What must hold (module docstring of smcdiff.scores.energy_network): the score is exact; MALA
(accept-reject on the energy) leaves p_t exactly invariant; path-corrected FK steering and a
path-corrected product of experts reach the exact target, and their log Z is the exact evidence
minus kappa(t_min) (kappa of every expert, summed).
"""

import math

import pytest
import torch
from torch import nn

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.diffusion_fk.model import build_diffusion_fk
from smcdiff.diffusion_fk.tilt import TiltTerm
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc import MALA, ULA, mcmc_corrector
from smcdiff.resampling.policies import ESSBelow
from smcdiff.result import SMCResult
from smcdiff.scores.energy_network import EnergyNetwork
from smcdiff.seeding import seeded_generator
from tests.stats import (
    assert_outside,
    assert_proportions,
    assert_sample_moments,
    assert_unbiased,
    assert_z_unbiased,
    mode_mass,
)

F64 = torch.float64
VP = smcdiff.VP()


def kappa(t):
    """An arbitrary smooth per-time constant (what an energy net is free to add)."""
    return 3.7 + 5.0 * t * t - 2.0 * math.sin(7.0 * t)


class MixtureEnergy(nn.Module):
    """E(x, t) = -log p_t(x) + shift * kappa(t) for a GaussianMixture p_0 noised by ``process``;
    rows may carry different times."""

    def __init__(self, dist, process=VP, shift=1.0):
        super().__init__()
        self.dist, self.process, self.shift = dist, process, shift
        self.event_shape = (dist.dim,)

    def forward(self, x, t):
        out = torch.zeros(x.shape[0], dtype=x.dtype)
        for tv in torch.unique(t).tolist():
            rows = (t == tv).to(x.dtype)
            e = -self.dist.noised(self.process, tv).log_prob(x) + self.shift * kappa(tv)
            out = out + rows * e
        return out


def mixture(means, var, weights):
    m = torch.tensor(means, dtype=F64)
    return smcdiff.GaussianMixture(torch.tensor(weights, dtype=F64), m, var * torch.ones_like(m))


PRIOR = mixture([[-2.0, 0.0], [1.5, 1.0], [2.0, -2.0]], 0.4, [0.5, 0.3, 0.2])


def test_score_and_log_density_are_exact_up_to_the_constant():
    en = EnergyNetwork(MixtureEnergy(PRIOR), VP)
    exact = smcdiff.exact_score(PRIOR, VP)
    x = 2.0 * torch.randn(50, 2, generator=seeded_generator(0), dtype=F64)
    for t in (0.01, 0.4, 0.95):
        s, lp = en.score_and_log_density(x, t)
        torch.testing.assert_close(s, exact.score(x, t), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lp, exact.log_density(x, t) - kappa(t), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(en.score(x, t), s)
        torch.testing.assert_close(en.log_density(x, t), lp)
        assert not s.requires_grad and not lp.requires_grad  # no graph kept for sampling
    # one time per row (a network's contract), chunked evaluation, conversions, NFE counts
    t = torch.tensor([0.05, 0.3, 0.9], dtype=F64).repeat_interleave(torch.tensor([20, 20, 10]))
    chunked = EnergyNetwork(MixtureEnergy(PRIOR), VP, max_batch=7)
    s = chunked.score(x, t)
    for i in (0, 17, 49):
        torch.testing.assert_close(s[i], exact.score(x[i : i + 1], float(t[i]))[0])
    assert chunked.nfe == 1 and chunked.counter.calls == 8 and chunked.counter.rows == 50
    eps = en.predict_as("eps", x, 0.4)
    torch.testing.assert_close(eps, -float(VP.sigma(0.4)) * exact.score(x, 0.4))


def test_gradients_flow_through_the_score_when_x_requires_grad():
    # a guided proposal differentiates through x0_hat(x) = (x + sigma^2 s(x)) / alpha
    en = EnergyNetwork(MixtureEnergy(PRIOR), VP)
    exact = smcdiff.exact_score(PRIOR, VP)
    x = torch.randn(20, 2, generator=seeded_generator(1), dtype=F64)
    v = torch.randn(20, 2, generator=seeded_generator(2), dtype=F64)
    grads = []
    for model in (en, exact):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((model.score(xr, 0.3) * v).sum(), xr)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


def test_bad_outputs_are_refused_with_a_message():
    with pytest.raises(SMCDiffError, match=r"one\s+scalar energy per sample"):
        EnergyNetwork(lambda x, t: x, VP, event_shape=(2,)).score(torch.zeros(3, 2), 0.5)
    with pytest.raises(SMCDiffError, match="x has shape"):
        EnergyNetwork(MixtureEnergy(PRIOR), VP).score(torch.zeros(3, 5, dtype=F64), 0.5)


def test_mala_on_the_energy_leaves_p_t_invariant_and_ula_does_not():
    # chains started from exact draws of p_t stay exact draws after any number of moves of an
    # invariant kernel; the step is large enough that ULA (no accept-reject) drifts off
    t, n, moves, h = 0.3, 4000, 30, 0.5
    en = EnergyNetwork(MixtureEnergy(PRIOR), VP)
    marginal = PRIOR.noised(VP, t)
    x0, comp = marginal.sample(n, seeded_generator(3), return_components=True)
    ends = {}
    for name, kernel in (("mala", MALA), ("ula", ULA)):
        k = kernel(lambda y: en.log_density(y, t))
        gen = seeded_generator(4)
        state = k.init(x0, gen)
        for _ in range(moves):
            state, _ = k.step(state, h, gen)
        ends[name] = state.x
    assert_sample_moments(ends["mala"], marginal.mean(), marginal.covariance(), n_se=5)
    labels = marginal.component_log_prob(ends["mala"]).argmax(-1)
    start = mode_mass(comp[None], torch.full((1, n), 1.0 / n, dtype=F64), 3)[0]
    assert_proportions(mode_mass(labels[None], torch.full((1, n), 1.0 / n), 3)[0],
                       start, n, n_se=5)  # fmt: skip
    spread = ends["ula"].double().var(0)
    se = marginal.covariance().diagonal() * math.sqrt(2 / (n - 1))
    assert_outside(spread, marginal.covariance().diagonal(), se, n_se=8, what="ULA variance")


R = 16  # independent runs per check


def _problem():
    """Observe x_1 + noise (std 0.7) of the 2-D mixture prior at t_min."""
    A = torch.tensor([[1.0, 0.0]], dtype=F64)
    post, log_ev = PRIOR.noised(VP, VP.t_min).posterior(A, torch.tensor([0.5], dtype=F64), 0.7)

    def log_lik(x):
        r = 0.5 - x[..., 0]
        return -0.5 * r * r / 0.49 - 0.5 * math.log(2 * math.pi * 0.49)

    return post, float(log_ev), log_lik


@pytest.mark.slow
def test_path_corrected_fk_with_an_energy_net_is_exact_and_log_z_lacks_kappa():
    post, log_ev, log_lik = _problem()
    en = EnergyNetwork(MixtureEnergy(PRIOR), VP)
    res = smcdiff.steer(en, log_likelihood=log_lik, n_particles=1000, n_steps=30, n_runs=R,
                        seed=5, dtype=F64, tilt_schedule="snr")  # fmt: skip
    assert res.info["path_correction"]  # on by default: the energy net has a log-density
    labels = post.component_log_prob(res.particles).argmax(-1)
    masses = mode_mass(labels, res.weights, 3)
    assert_unbiased(masses, post.weights, n_se=4.5, max_se=0.02, what="posterior mode masses")
    mean, _ = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, post.mean(), n_se=4.5, max_se=0.05, what="posterior mean")
    # log Z estimates log E_p[lik] - kappa(t_min): the evidence minus the net's constant
    assert_z_unbiased(res.log_z, log_ev - kappa(VP.t_min), n_se=4.5, max_se=0.1)
    with pytest.raises(AssertionError):
        assert_z_unbiased(res.log_z, log_ev, n_se=4.5)


@pytest.mark.slow
def test_mala_corrector_inside_path_corrected_smc_keeps_the_exact_posterior():
    post, _, log_lik = _problem()
    en = EnergyNetwork(MixtureEnergy(PRIOR), VP)
    times = smcdiff.time_grid(VP, 15, "log_snr").tolist()
    fk = build_diffusion_fk(en, times, tilt=[TiltTerm("log_likelihood", log_lik)],
                            path_correction=True, sampler="ancestral_upper", dtype=F64)  # fmt: skip
    corr = mcmc_corrector("mala", fk.log_target, n_moves=3, step_size=0.2)
    run = smcdiff.run_smc(fk, 1000, n_groups=R, corrector=corr, policy=ESSBelow(0.5),
                          generator=seeded_generator(6), progress=False)  # fmt: skip
    res = SMCResult.from_run(run, grouped=True, info={})
    accept = run.trace["accept"][1:].double()
    assert float(accept.nanmean()) > 0.5  # the moves do move
    labels = post.component_log_prob(res.particles).argmax(-1)
    masses = mode_mass(labels, res.weights, 3)
    assert_unbiased(masses, post.weights, n_se=4.5, max_se=0.02, what="posterior mode masses")
    mean, cov = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, post.mean(), n_se=4.5, max_se=0.05, what="posterior mean")
    assert_unbiased(cov, post.covariance(), n_se=4.5, max_se=0.05, what="posterior cov")


def product_of_mixtures(p, q):
    """The normalised product p q of two GaussianMixtures and log of its integral."""
    comps, logits = [], []
    for w, m, c in zip(q.weights.double(), q.means.double(), q.covs.double(), strict=True):
        cov = torch.diag(c) if c.dim() == 1 else c
        prec = torch.linalg.inv(cov)
        tilted, log_norm = p.tilt(prec @ m, prec)
        # N(x; m, C) = exp(b'x - x'Qx/2) exp(-m'Qm/2) / sqrt(det(2 pi C))
        log_c = -0.5 * m @ prec @ m - 0.5 * torch.logdet(2 * math.pi * cov)
        comps.append(tilted)
        logits.append(torch.log(w) + log_c + log_norm)
    logits = torch.stack(logits)
    log_int = torch.logsumexp(logits, 0)
    w = torch.cat(
        [torch.exp(lg - log_int) * c.weights.double() for lg, c in zip(logits, comps, strict=True)]
    )
    means = torch.cat([c.means.double() for c in comps])
    covs = torch.cat([c.covs.double() for c in comps])
    return smcdiff.GaussianMixture(w, means, covs), float(log_int)


@pytest.mark.slow
def test_product_of_two_energy_networks_with_density_ratios_is_the_exact_product():
    p1 = mixture([[-2.0, 0.0], [2.0, 1.0]], 0.5, [0.6, 0.4])
    p2 = mixture([[-1.5, 0.5], [1.0, -1.0]], 1.0, [0.3, 0.7])
    e1 = EnergyNetwork(MixtureEnergy(p1, shift=1.0), VP)
    e2 = EnergyNetwork(MixtureEnergy(p2, shift=-0.5), VP)
    model = smcdiff.product(e1, e2)
    t_min = VP.t_min
    exact, log_int = product_of_mixtures(p1.noised(VP, t_min), p2.noised(VP, t_min))
    times = smcdiff.time_grid(VP, 40, "log_snr").tolist()
    fk = build_diffusion_fk(model, times, path_correction=True, sampler="ancestral_upper",
                            dtype=F64)  # fmt: skip
    run = smcdiff.run_smc(fk, 2000, n_groups=R, policy=ESSBelow(0.5),
                          generator=seeded_generator(7), progress=False)  # fmt: skip
    res = SMCResult.from_run(run, grouped=True, info={})
    mean, cov = weighted_moments(res.particles, res.log_weights)
    assert_unbiased(mean, exact.mean(), n_se=4.5, max_se=0.03, what="product mean")
    assert_unbiased(cov, exact.covariance(), n_se=4.5, max_se=0.08, what="product cov")
    # log Z: log of the integral of p1 p2 at t_min, minus both constants
    shift = kappa(t_min) - 0.5 * kappa(t_min)
    assert_z_unbiased(res.log_z, log_int - shift, n_se=4.5, max_se=0.1, what="product Z")


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "method", ["fk", "tds", pytest.param("fkc", marks=SLOW), pytest.param("ecg", marks=SLOW)]
)
def test_same_seed_same_particles_as_the_exact_model_and_log_z_shifted_by_the_constant(method):
    # the constant is the same for every particle: normalised weights, resampling and particles
    # are those of the exact (normalised) model; log Z moves by exactly -kappa(t_min) (path
    # correction) or by -sum_i w_i kappa_i(t_max) (FKC, whose start weight alone uses log q;
    # DriftLite-ECG's potentials log q_i are centred, so the constants cancel there too)
    kw = dict(method=method, n_particles=200, n_steps=10, seed=11, dtype=F64, n_runs=2)
    if method == "ecg":
        kw.update(method="driftlite-ecg", basis=("scores",))
    if method in ("fkc", "ecg"):
        p1 = mixture([[-2.0, 0.0], [2.0, 1.0]], 0.5, [0.6, 0.4])
        p2 = mixture([[-1.5, 0.5], [1.0, -1.0]], 1.0, [0.3, 0.7])
        energy = smcdiff.product(EnergyNetwork(MixtureEnergy(p1), VP),
                                 EnergyNetwork(MixtureEnergy(p2, shift=-0.5), VP))  # fmt: skip
        exact = smcdiff.product(smcdiff.exact_score(p1, VP), smcdiff.exact_score(p2, VP))
        shift = -0.5 * kappa(VP.t_max)
    else:
        kw.update(log_likelihood=_problem()[2], tilt_schedule="snr")
        energy = EnergyNetwork(MixtureEnergy(PRIOR), VP)
        exact = smcdiff.exact_score(PRIOR, VP)
        shift = -kappa(VP.t_min)
    a, b = smcdiff.steer(energy, **kw), smcdiff.steer(exact, **kw)
    torch.testing.assert_close(a.particles, b.particles, rtol=0, atol=1e-10)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=1e-9)
    torch.testing.assert_close(a.log_z - b.log_z, torch.full((2,), shift, dtype=F64))
