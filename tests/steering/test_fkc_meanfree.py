"""FKC on a mean-free process: the start weight's reference lives on the centre-of-mass-free
subspace of dimension k = (n - 1) s, and annealing a mean-free Gaussian matches the closed form.

:math:`p = \\mathcal N_{\\mathcal X}(\\alpha\\mu, vI)` at ``t_min`` (``v = alpha^2 c^2 + sigma^2``);
:math:`p^\\gamma / Z = \\mathcal N_{\\mathcal X}(\\alpha\\mu, (v/\\gamma) I)` and
:math:`\\log Z = \\log\\int_{\\mathcal X} p^\\gamma = (1 - \\gamma)\\tfrac k2\\log(2\\pi v) - \\tfrac k2
\\log\\gamma`. A full-space reference (the bug this guards) made the start weight depend on the
centre of mass (ESS 30 of 4000 at step 0) and counted ``n s`` instead of ``k`` dimensions in log Z.
"""

import math

import pytest
import torch

import smcdiff
from smcdiff.engine import run_smc
from smcdiff.processes import MeanFree, MeanFreeGaussian
from smcdiff.scores.combine import anneal
from smcdiff.steering.fkc import FKCModel
from tests.stats import assert_unbiased, assert_z_unbiased

F64 = torch.float64
N_ATOMS, SPACE = 4, 3
PROC = MeanFree(smcdiff.VP(), N_ATOMS, SPACE)
K = PROC.subspace_dim  # 9
MU = torch.tensor([[0.5, 0.0, -0.3], [0.1, 0.4, 0.0], [-0.2, 0.3, 0.2], [0.0, 0.0, 0.0]])
GAMMA, STD = 0.5, 0.6
# Discretisation bias at K=30 steps, measured with N=4000 x R=32 (8x / 2x the test) and rounded
# up past 2 of its SE: subspace variance +0.0105 +- 0.0013 (absolute), log Z -0.137 +- 0.013
BIAS_VAR, BIAS_LOG_Z = 0.014, 0.17


def ess(log_g: torch.Tensor) -> float:
    w = torch.softmax(log_g.double(), 0)
    return float(1.0 / w.square().sum())


def start_weights(model, n=4000, dtype=torch.float32):
    fkc = FKCModel(anneal(model, GAMMA), smcdiff.time_grid(model.process, 30), dtype=dtype)
    out = fkc.init(n, torch.Generator().manual_seed(0))
    return out.state["x"], out.log_potential


def test_start_weight_is_constant_when_the_model_at_t_max_is_the_process_prior():
    # VP: alpha^2 + sigma^2 = 1, so c = 1, mu = 0 gives q_t = N_X(0, I) = the prior at every t
    x, log_g = start_weights(MeanFreeGaussian(torch.zeros(N_ATOMS, SPACE), 1.0, PROC), 4000, F64)
    assert float(x.mean(-2).abs().max()) < 1e-12  # drawn on the subspace
    assert float(log_g.max() - log_g.min()) < 1e-9
    assert ess(log_g) == pytest.approx(4000, rel=1e-12)
    # the same claim in full space (the ordinary case): N(0, I) under VP
    prior = smcdiff.Gaussian(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    _, log_g = start_weights(smcdiff.exact_score(prior, smcdiff.VP()), 4000, F64)
    assert float(log_g.max() - log_g.min()) < 1e-9


@pytest.mark.slow
def test_annealed_mean_free_gaussian_matches_the_closed_form():
    model = MeanFreeGaussian(MU, STD, PROC)
    _, log_g = start_weights(model)
    assert ess(log_g) > 0.999 * 4000  # q at t_max is N_X(0, ~1): near-constant start weight
    t = torch.tensor(PROC.t_min, dtype=F64)
    a, sig = float(PROC.alpha(t)), float(PROC.sigma(t))
    v = a * a * STD**2 + sig * sig
    log_z = (1 - GAMMA) * K / 2 * math.log(2 * math.pi * v) - K / 2 * math.log(GAMMA)
    n, runs = 500, 16
    fkc = FKCModel(anneal(model, GAMMA), smcdiff.time_grid(PROC, 30), noise="tempered")
    res = run_smc(fkc, n, n_groups=runs, generator=torch.Generator().manual_seed(1))
    x = res.state["x"].double().reshape(runs, n, N_ATOMS, SPACE)
    assert float(x.mean(-2).abs().max()) < 1e-5  # the moves stay on the subspace
    w = torch.softmax(res.log_weights.double(), 1)
    dev = x - a * model.mean.double()  # mean-free already
    var = (w * dev.square().sum((-2, -1))).sum(1) / K  # (R,) subspace variance per coordinate
    assert_unbiased(var, v / GAMMA, n_se=4.5, bias=BIAS_VAR, max_se=0.01, what="variance")
    mean = (w[..., None, None] * x).sum(1)  # (R, n, s)
    assert float((mean.mean(0) - a * model.mean.double()).abs().max()) < 0.05
    assert_z_unbiased(res.log_z, log_z, n_se=4.5, bias=math.expm1(BIAS_LOG_Z), max_se=0.1)
