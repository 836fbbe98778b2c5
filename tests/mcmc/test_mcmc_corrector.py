"""mcmc_corrector inside the SMC engine: tempering from N(0, 4I) to the correlated Gaussian with
no model move, so the MALA corrector is the only thing that moves particles."""

import math

import pytest
import torch

from smcdiff.diagnostics import weighted_moments
from smcdiff.engine import FeynmanKacModel, StepOutput, run_smc
from smcdiff.mcmc import mcmc_corrector
from tests.stats import (
    assert_gaussian_moments,
    assert_gaussian_variance,
    assert_iid_mean,
    assert_within,
    replicate_se,
)

G, N, K = 16, 500, 10


class Tempering(FeynmanKacModel):
    """pi_k ∝ N(0, 4I)^(1 - beta_k) N(m, S)^beta_k; M_0 = N(0, 4I), moves = identity,
    log G_k = (beta_k - beta_{k-1}) (log N(x; m, S) - log N(x; 0, 4I)) (unnormalised)."""

    def __init__(self, target):
        self.target = target
        self.betas = torch.linspace(0, 1, K + 1).tolist()
        self.n_steps, self.times = K, self.betas

    def log_ref(self, x):
        return -0.125 * (x * x).sum(-1)

    def log_target(self, k, x):
        b = self.betas[k]
        return (1 - b) * self.log_ref(x) + b * self.target.log_prob(x)

    def init(self, n, generator):
        x = 2 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return StepOutput({"x": x, "tag": torch.arange(n)}, torch.zeros(n, dtype=torch.float64))

    def step(self, k, state, generator, log_weights):
        x = state["x"]
        db = self.betas[k] - self.betas[k - 1]
        return StepOutput(state, db * (self.target.log_prob(x) - self.log_ref(x)))


def test_mala_corrector_in_engine(gauss):
    model = Tempering(gauss)
    corrector = mcmc_corrector("mala", model.log_target, n_moves=5, step_size=0.5)
    run = run_smc(
        model, N, n_groups=G, corrector=corrector, generator=torch.Generator().manual_seed(5)
    )
    assert set(run.state) == {"x", "tag"}  # other entries pass through
    acc, h = run.trace["accept"], run.trace["step_size"]
    assert (
        acc.shape == (K + 1,) and math.isnan(acc[0]) and ((acc[1:] > 0.3) & (acc[1:] < 0.9)).all()
    )
    assert abs(acc[-1] - 0.574) < 0.1 and h[-1] < h[1]  # adapted, tracking a narrowing target

    # per-group weighted moments; SE from the spread over the G independent groups, floored
    # at the iid SE of G*N draws (SMC is never better than iid sampling)
    mean, cov = weighted_moments(run.state["x"].reshape(G, N, 3), run.log_weights)
    var = gauss.S.diagonal()
    for est, truth, se_iid, what in [
        (mean, gauss.m, (var / (G * N)).sqrt(), "mean"),
        (cov, gauss.S, ((var[:, None] * var[None, :] + gauss.S**2) / (G * N)).sqrt(), "cov"),
    ]:
        se = torch.maximum(replicate_se(est), se_iid)
        assert_within(est.mean(0), truth, se, n_se=6, what=what)


# ------------------------------------------------------------------ per-particle step sizes
D, S_PIT, FRAC = 4, 0.02, 0.45
PIT = torch.tensor([20.0, 0.0, 0.0, 0.0], dtype=torch.float64)


def pit_mixture(k, y):
    """(1 - FRAC) N(0, I_4) + FRAC N(PIT, S_PIT^2 I_4): a wide mode and a narrow "pit" 20 away
    (1e-88 of the wide mode's mass reaches the pit's region x_0 > 10)."""
    wide = -0.5 * (y * y).sum(-1) + math.log(1 - FRAC)
    pit = -0.5 * ((y - PIT) ** 2).sum(-1) / S_PIT**2 - D * math.log(S_PIT) + math.log(FRAC)
    return torch.logaddexp(wide, pit)


def run_pit(per_particle, n=4000):
    """Exact draws of the mixture (the first FRAC * n in the pit), 60 adapted MALA moves from
    h = 1, then 10 moves at the adapted (population) step size; returns the start, the state
    after the first call, the end and the first call's info."""
    gen = torch.Generator().manual_seed(3)
    n_pit = int(FRAC * n)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    x[:n_pit] = PIT + S_PIT * x[:n_pit]
    adapt = mcmc_corrector("mala", pit_mixture, 60, 1.0, gain=1.0, per_particle=per_particle)
    mid, info = adapt(0, {"x": x}, gen)
    frozen = mcmc_corrector("mala", pit_mixture, 10, 1.0, adapt=False)
    frozen.load_state_dict(adapt.state_dict())
    end, _ = frozen(1, mid, gen)
    return x, mid["x"], end["x"], info


def test_per_particle_step_sizes_exact_and_no_stall():
    """Particles in a narrow pit (45% of them) accept nothing at the wide mode's step size. With
    one shared step size adapted on the mean acceptance they drag it down for everyone; with
    per-particle step sizes the wide mode's particles keep theirs, and both modes keep their
    exact Gaussian moments (5 SE at ~2000 draws each: gross errors; the adaptation's own small
    bias is the next test's)."""
    x0, mid, end, info = run_pit(per_particle=True)
    pit = end[:, 0] > 10
    assert pit.sum() == int(FRAC * x0.shape[0])  # no particle changed mode
    assert_gaussian_moments(end[~pit], torch.zeros(D), torch.eye(D))
    assert_gaussian_moments((end[pit] - PIT) / S_PIT, torch.zeros(D), torch.eye(D))  # the pit
    assert info["step_size_min"] < 0.01 < 0.5 < info["step_size_max"]  # adapted apart
    # the wide mode's particles: movement over the 10 frozen moves, per-particle vs shared
    wide = ~pit
    jump = ((end - mid)[wide] ** 2).sum(-1).mean()
    _, mid_s, end_s, info_s = run_pit(per_particle=False)
    jump_shared = ((end_s - mid_s)[wide] ** 2).sum(-1).mean()
    assert info_s["step_size"] < 0.1 < 0.5 < info["step_size"]  # shared: dragged down
    assert jump > 0.75 * 2 * D  # ~ two independent draws of N(0, I_4): E|x - y|^2 = 2D
    assert jump > 2 * jump_shared


@pytest.mark.slow
def test_per_particle_adaptation_bias_is_below_resolution_at_1e5_draws():
    """A particle's step size depends on its own past acceptances, hence on its position: an
    adaptive-MCMC bias, which the decaying gain keeps small. 1e5 exact N(0, I_3) draws, 50
    moves from h = 0.1 (far from tuned): variance and E x^4 exact within 5 SE. A constant gain
    of 0.5 instead biases the variance by -2% (8 SE here)."""
    n, d = 100_000, 3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    corr = mcmc_corrector("mala", lambda k, y: -0.5 * (y * y).sum(-1), 50, 0.1, per_particle=True)
    y, info = corr(0, {"x": x}, gen)
    y = y["x"].reshape(-1)  # n d iid N(0, 1) coordinates if exact (rows independent, cols too)
    assert float(info["step_size_max"]) > 1.3 * float(info["step_size_min"])  # adapted per particle
    assert_gaussian_variance(y, 1.0)
    assert_iid_mean(y**4, 3.0, 96.0, what="E x^4")  # Var x^4 = E x^8 - 9 = 105 - 9
