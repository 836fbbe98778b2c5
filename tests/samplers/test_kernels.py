import math

import pytest
import torch

from smcdiff.processes import VE, VP, Flow
from smcdiff.samplers import (
    gaussian_log_prob,
    noise_log_prob,
    reverse_step,
    shifted_proposal_log_ratio,
)

PROCESSES = [VP(), VP("cosine"), VE(), Flow()]
IDS = ["vp-linear", "vp-cosine", "ve", "flow"]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_ancestral_step_is_the_exact_gaussian_posterior_of_the_forward_process(p):
    # q(x_s | x_t, x0) for a known x0 and the conditional score -(x_t - a_t x0)/sigma_t^2
    t, s = 0.7, 0.55
    a_t, a_s = float(p.alpha(t)), float(p.alpha(s))
    sg_t, sg_s = float(p.sigma(t)), float(p.sigma(s))
    a, v = (float(c) for c in p.transition(s, t))
    x0, xt = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.9, 0.4]])
    score = -(xt - a_t * x0) / sg_t**2
    step = reverse_step(p, t, s, "ancestral")
    mean = a * sg_s**2 / sg_t**2 * xt + a_s * v / sg_t**2 * x0
    assert torch.allclose(step.mean(xt, score), mean, atol=1e-6)
    assert math.isclose(step.var, v * sg_s**2 / sg_t**2, rel_tol=1e-10)
    ddim1 = reverse_step(p, t, s, "ddim", eta=1.0)
    assert math.isclose(ddim1.cs, step.cs, rel_tol=1e-10) and math.isclose(ddim1.var, step.var)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_ode_step_is_deterministic_and_em_agrees_with_ancestral_for_small_steps(p):
    t, s = 0.5, 0.5 - 1e-5
    ode = reverse_step(p, t, s, "ode")
    assert ode.var == 0.0
    em, anc = reverse_step(p, t, s, "em"), reverse_step(p, t, s, "ancestral")
    assert math.isclose(em.cx, anc.cx, rel_tol=1e-4)
    assert math.isclose(em.cs, anc.cs, rel_tol=1e-3)
    assert math.isclose(em.var, anc.var, rel_tol=1e-3)


@pytest.mark.parametrize("sampler", ["ancestral", "ancestral_upper", "ode", "em"])
@pytest.mark.slow
def test_untilted_samplers_converge_to_the_prior_at_first_order(sampler):
    # With exact scores the only error is discretisation: O(1/K). (The ancestral kernel's
    # variance v s_s^2/s_t^2 is a lower bound on the true reverse variance: its constant is the
    # largest, about 0.26 at K = 50 here.)
    import smcdiff

    prior = smcdiff.Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([[1.5, 0.6], [0.6, 0.8]]))
    model = smcdiff.exact_score(prior, smcdiff.VP())
    target = prior.noised(model.process, model.process.t_min)

    def cov_err(n_steps):
        res = smcdiff.steer(
            model, method="none", sampler=sampler, n_particles=50_000, n_steps=n_steps, seed=0
        )
        x = res.particles.double()
        assert float((x.mean(0) - target.mean().double()).abs().max()) < 0.05
        return float((torch.cov(x.T) - target.covariance().double()).abs().max())

    coarse, fine = cov_err(50), cov_err(400)
    assert fine < coarse / 3 and fine < 0.06, (coarse, fine)


def test_gaussian_log_prob_and_shifted_ratio_match_torch_distributions():
    gen = torch.Generator().manual_seed(3)
    mean, z, shift = (torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    var = 0.37
    x = mean + shift + math.sqrt(var) * z
    ref = torch.distributions.Normal(mean, math.sqrt(var)).log_prob(x).sum(-1)
    assert torch.allclose(gaussian_log_prob(x, mean, var), ref)
    ref_ratio = ref - torch.distributions.Normal(mean + shift, math.sqrt(var)).log_prob(x).sum(-1)
    assert torch.allclose(shifted_proposal_log_ratio(z, shift, var), ref_ratio)
    ref_noise = torch.distributions.Normal(mean + shift, math.sqrt(var)).log_prob(x).sum(-1)
    assert torch.allclose(noise_log_prob(z, var), ref_noise)


def test_densities_sum_over_every_event_dim():
    gen = torch.Generator().manual_seed(4)
    mean, z, shift = (torch.randn(5, 2, 3, 4, generator=gen) for _ in range(3))
    x, var = mean + shift + 0.5 * z, 0.25
    flat = [a.reshape(5, -1) for a in (x, mean, z, shift)]
    for got, want in [
        (gaussian_log_prob(x, mean, var), gaussian_log_prob(flat[0], flat[1], var)),
        (noise_log_prob(z, var), noise_log_prob(flat[2], var)),
        (
            shifted_proposal_log_ratio(z, shift, var),
            shifted_proposal_log_ratio(flat[2], flat[3], var),
        ),
    ]:
        assert got.shape == (5,) and got.dtype == torch.float64
        assert torch.equal(got, want)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("data_var", [0.01, 1.0, 100.0])
def test_ancestral_variances_bracket_the_exact_gaussian_reverse_variance(p, data_var):
    # For data N(0, c I): x_s ~ N(0, P_s), P_s = alpha_s^2 c + sigma_s^2, and
    # Var[x_s | x_t] = P_s v / (a^2 P_s + v); both kernels have the exact mean.
    t, s = 0.6, 0.45
    a, v = (float(c) for c in p.transition(s, t))
    P_s = float(p.alpha(s)) ** 2 * data_var + float(p.sigma(s)) ** 2
    exact = P_s * v / (a * a * P_s + v)
    low, high = reverse_step(p, t, s, "ancestral").var, reverse_step(p, t, s, "ancestral_upper").var
    assert low <= exact * (1 + 1e-12) and exact <= high * (1 + 1e-12)
    up, anc = reverse_step(p, t, s, "ancestral_upper"), reverse_step(p, t, s, "ancestral")
    assert math.isclose(up.cx, anc.cx, rel_tol=1e-12) and math.isclose(up.cs, anc.cs, rel_tol=1e-9)
