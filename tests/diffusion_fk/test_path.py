"""PathCorrection's step and last-step weights where a density estimate has no mass (log p =
-inf), against the closed form of the weight and a Gaussian target's exact evidence."""

import math

import torch

import smcdiff
from smcdiff.diffusion_fk import PathCorrection, build_diffusion_fk
from smcdiff.engine import run_smc
from smcdiff.processes import VP
from smcdiff.samplers.kernels import gaussian_log_prob, noise_log_prob, reverse_step
from tests.stats import assert_z_unbiased

F64 = torch.float64


def test_minus_inf_density_gives_weight_zero_and_stays_zero():
    proc, gen = VP(), torch.Generator().manual_seed(0)
    ker = reverse_step(proc, 0.6, 0.5)
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    z = torch.randn(4, 2, generator=gen, dtype=F64)
    x_new = ker.cx * x + ker.std * z
    logp = torch.tensor([-1.0, -math.inf, -2.0, -math.inf], dtype=F64)
    prev = torch.tensor([-0.5, -0.5, -math.inf, -math.inf], dtype=F64)
    w = PathCorrection().step(proc, ker, x, x_new, z, logp, prev)
    a, v = (float(c) for c in proc.transition(ker.s, ker.t))
    expected = (
        logp[0]
        - prev[0]
        + gaussian_log_prob(x, a * x_new, v, proc)[0]
        - noise_log_prob(z, ker.var, proc)[0]
    )
    assert torch.isclose(w[0], expected)
    # no mass now: weight 0; no mass before (weight already 0): still 0, never NaN or +inf
    assert w[1:].tolist() == [-math.inf] * 3


def test_finish_replaces_the_estimate_at_t_min_even_where_it_is_minus_inf():
    # the end density replaces log p_{t_min}: the estimate there is no part of the weight, so an
    # estimate of -inf (no mass) where the end density has mass gives the end density's weight
    proc, gen = VP(), torch.Generator().manual_seed(1)
    ker = reverse_step(proc, 0.05, proc.t_min)
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    z = torch.randn(4, 2, generator=gen, dtype=F64)
    x_new = ker.cx * x + ker.std * z
    logp = torch.tensor([-1.0, -math.inf, -math.inf, -2.0], dtype=F64)
    prev = torch.tensor([-0.5, -0.7, -math.inf, -0.2], dtype=F64)
    end_values = torch.tensor([0.3, -1.2, 0.1, -math.inf], dtype=F64)
    checks = {}
    w = PathCorrection(lambda y: end_values.clone()).finish(
        proc, ker, x, x_new, z, logp, prev, checks, "step 7/7"
    )
    a, v = (float(c) for c in proc.transition(ker.s, ker.t))
    rest = gaussian_log_prob(x, a * x_new, v, proc) - noise_log_prob(z, ker.var, proc)
    assert torch.allclose(w[:2], (end_values - prev + rest)[:2], rtol=1e-12, atol=1e-12)
    # no mass before (weight already 0), or none in the end density: weight 0, never NaN
    assert w[2:].tolist() == [-math.inf] * 2
    assert checks["end log_prob"].tolist() == [False] * 4
    # without an end density the estimate is the target at t_min: -inf there is weight 0
    plain = PathCorrection().finish(proc, ker, x, x_new, z, logp, prev, {}, "step 7/7")
    assert torch.equal(plain, PathCorrection().step(proc, ker, x, x_new, z, logp, prev))
    assert plain[1:3].tolist() == [-math.inf] * 2


LOG_C = 1.5  # the end density is p_{t_min} e^{LOG_C}: log Z = LOG_C


class NoMassAtTMin:
    """Exact score and log p_t of a Gaussian prior under VP, except that the log-density estimate
    at t_min is -inf where x_0 > 0.5 (the prior mean; an estimator that underflows there), where
    the exact density is positive."""

    def __init__(self, exact):
        self.exact, self.process = exact, exact.process
        self.event_shape, self.dim, self.scalar_time = (2,), 2, exact.scalar_time
        self.misses = 0

    def score(self, x, t):
        return self.exact.score(x, t)

    def log_density(self, x, t):
        return self.score_and_log_density(x, t)[1]

    def score_and_log_density(self, x, t):
        score, logp = self.exact.score_and_log_density(x, t)
        if t <= self.process.t_min:
            miss = x[:, 0] > 0.5
            self.misses += int(miss.sum())
            logp = torch.where(miss, -math.inf, logp)
        return score, logp


def _end_weighted_run(model, noised):
    times = torch.logspace(0, math.log10(model.process.t_min), 41, dtype=F64).tolist()
    times[-1] = model.process.t_min
    fk = build_diffusion_fk(model, times, path_correction=True, dtype=F64,
                            end_log_prob=lambda y: noised.log_prob(y) + LOG_C)  # fmt: skip
    return run_smc(fk, 500, n_groups=8, generator=torch.Generator().manual_seed(3))


def test_an_estimate_of_minus_inf_at_t_min_gives_the_exact_evidence():
    # closed form: the end density is the prior noised to t_min times e^LOG_C, so log Z = LOG_C;
    # the estimate says "no mass" at t_min for about half the particles (it used to give
    # -inf - (-inf) = NaN there). The weights do not depend on that estimate: the run equals,
    # number for number, the run whose estimate is exact, and its Z is unbiased.
    prior = smcdiff.Gaussian(torch.tensor([0.5, -0.3], dtype=F64),
                             torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=F64))  # fmt: skip
    proc = VP()
    exact = smcdiff.exact_score(prior, proc)
    missing = NoMassAtTMin(exact)
    noised = prior.noised(proc, proc.t_min)
    run = _end_weighted_run(missing, noised)
    assert missing.misses > 0.3 * 8 * 500
    assert torch.isfinite(run.log_weights).all() and torch.isfinite(run.log_z).all()
    reference = _end_weighted_run(exact, noised)
    assert torch.equal(run.log_z, reference.log_z)
    assert torch.equal(run.log_weights, reference.log_weights)
    assert_z_unbiased(run.log_z, LOG_C, n_se=4.5, max_se=0.05)
