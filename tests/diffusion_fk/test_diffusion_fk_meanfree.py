"""Diffusion FK (steer methods fk / tds / guidance / none) on a mean-free process: particles
start on the centre-of-mass-free subspace of dimension k = (n - 1) s, the path-correction
reference is the subspace Gaussian, and a Gaussian tilt of a mean-free Gaussian matches the
closed form.

:math:`p = \\mathcal N_{\\mathcal X}(\\alpha\\mu, vI)` at ``t_min`` (``v = alpha^2 c^2 +
sigma^2``), reward :math:`r(x) = -\\lVert P(x - m)\\rVert^2 / 2w` (translation invariant):
:math:`p e^r / Z = \\mathcal N_{\\mathcal X}(v'(\\alpha\\mu/v + m/w), v'I)`, :math:`1/v' = 1/v +
1/w`, and :math:`\\log Z = \\tfrac k2\\log\\frac{w}{v + w} - \\frac{\\lVert P(m -
\\alpha\\mu)\\rVert^2}{2(v + w)}`. A full-space start (the bug this guards) made the start weight
depend on the centre of mass and counted ``n s`` instead of ``k`` dimensions in log Z.
"""

import math

import pytest
import torch

import smcdiff
from smcdiff.diffusion_fk.model import DiffusionFK
from smcdiff.diffusion_fk.path import PathCorrection
from smcdiff.processes import MeanFree, MeanFreeGaussian
from smcdiff.processes.meanfree import center
from tests.stats import assert_unbiased, assert_z_unbiased

F64 = torch.float64
N_ATOMS, SPACE = 4, 3
PROC = MeanFree(smcdiff.VP(), N_ATOMS, SPACE)
K = PROC.subspace_dim  # 9
MU = torch.tensor([[0.5, 0.0, -0.3], [0.1, 0.4, 0.0], [-0.2, 0.3, 0.2], [0.0, 0.0, 0.0]])
M = torch.tensor([[-0.4, 0.2, 0.0], [0.3, -0.1, 0.2], [0.0, 0.0, 0.5], [0.1, 0.2, 0.3]])
STD, W = 0.6, 0.5


def ess(log_g: torch.Tensor) -> float:
    w = torch.softmax(log_g.double(), 0)
    return float(1.0 / w.square().sum())


def reward(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * center(x - M.to(x)).square().sum((-2, -1)) / W


def test_start_is_on_the_subspace_and_the_start_weight_is_constant_for_the_prior():
    # VP: alpha^2 + sigma^2 = 1, so c = 1, mu = 0 gives p_t = N_X(0, I) = the prior at every t
    model = MeanFreeGaussian(torch.zeros(N_ATOMS, SPACE), 1.0, PROC)
    fk = DiffusionFK(model, smcdiff.time_grid(PROC, 30), path=PathCorrection(), dtype=F64)
    out = fk.init(4000, torch.Generator().manual_seed(0))
    assert float(out.state["x"].mean(-2).abs().max()) < 1e-12  # drawn on the subspace
    assert float(out.log_potential.max() - out.log_potential.min()) < 1e-9
    assert ess(out.log_potential) == pytest.approx(4000, rel=1e-12)


@pytest.mark.slow
def test_gaussian_tilt_of_a_mean_free_gaussian_matches_the_closed_form():
    model = MeanFreeGaussian(MU, STD, PROC)
    t = torch.tensor(PROC.t_min, dtype=F64)
    a, sig = float(PROC.alpha(t)), float(PROC.sigma(t))
    v = a * a * STD**2 + sig * sig
    v_post = 1.0 / (1.0 / v + 1.0 / W)
    am, m = a * model.mean.double(), center(M.double())
    mean_post = v_post * (am / v + m / W)
    log_z = K / 2 * math.log(W / (v + W)) - (m - am).square().sum() / (2 * (v + W))
    n, runs = 500, 16
    res = smcdiff.steer(
        model, method="fk", reward=reward, beta=1.0, n_particles=n, n_steps=30, n_runs=runs, seed=1
    )
    assert res.info["path_correction"]  # exact log density: unbiased path weights
    assert float(res.ess[0].min()) > 0.5 * n  # a mild tilt on a near-constant start weight
    x = res.particles.double()
    assert float(x.mean(-2).abs().max()) < 1e-5  # the moves stay on the subspace
    w = torch.softmax(res.log_weights.double(), 1)
    dev = x - mean_post
    var = (w * dev.square().sum((-2, -1))).sum(1) / K  # (R,) subspace variance per coordinate
    assert_unbiased(var, v_post, n_se=4.5, max_se=0.01, what="variance")
    mean = (w[..., None, None] * x).sum(1)  # (R, n, s)
    assert float((mean.mean(0) - mean_post).abs().max()) < 0.05
    assert_z_unbiased(res.log_z, float(log_z), n_se=4.5, max_se=0.1)
