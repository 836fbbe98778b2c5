"""mcmc_corrector inside the SMC engine: tempering from N(0, 4I) to the correlated Gaussian with
no model move, so the MALA corrector is the only thing that moves particles."""

import math

import torch

from smcdiff.diagnostics import weighted_moments
from smcdiff.engine import FeynmanKacModel, StepOutput, run_smc
from smcdiff.mcmc import mcmc_corrector
from tests.stats import assert_within, replicate_se

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
