"""DDRM (``steer(method="ddrm")``): one step against the paper's formulas written out by hand,
the noiseless fully observed case (it returns ``A^{-1} y``), and its option checks. DDRM is a
biased baseline: no test claims it samples the posterior."""

import math

import pytest
import torch

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.steering.methods.ddrm import DDRMModel

PRIOR = smcdiff.Gaussian(torch.tensor([1.0, -1.0, 0.5]), torch.diag(torch.tensor([1.0, 0.8, 0.5])))


def _rotation(d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]


def test_one_step_matches_the_papers_update():
    """Three coordinates of the SVD basis: observed with little noise (rho < sigma_lo: pulled
    to y), observed with much noise (rho > sigma_lo: a step toward y), and unobserved."""
    proc = smcdiff.VP()
    prior = PRIOR.to(dtype=torch.float64)
    model = smcdiff.exact_score(prior, proc)
    vmat, umat = _rotation(3, 0), _rotation(2, 1)
    s = torch.tensor([2.0, 0.1], dtype=torch.float64)
    a = umat @ torch.diag(s) @ vmat[:, :2].T
    y = torch.tensor([0.3, -0.4], dtype=torch.float64)
    sigma = 0.2  # r = sigma / s = (0.1, 2.0)
    obs = smcdiff.LinearGaussianObservation(a, y, sigma)
    times = [1.0, 0.6, 0.25, 0.001]
    eta, eta_b = 0.7, 0.9
    ddrm = DDRMModel(model, times, obs, 1, torch.float64, eta=eta, eta_b=eta_b)
    k, n = 2, 5  # the step 0.6 -> 0.25
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = ddrm.step(k, {"x": x}, torch.Generator().manual_seed(3), None)
    z = torch.randn(1, n, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]

    al = [float(proc.alpha(t)) for t in times]
    sg = [float(proc.sigma(t)) for t in times]
    v = [(b / c) ** 2 for b, c in zip(sg, al, strict=True)]
    score = prior.noised(proc, times[k - 1]).score(x)
    x0 = (x + sg[k - 1] ** 2 * score) / al[k - 1]  # Tweedie
    vb = obs.V[0]  # x_bar = V^T x; columns 0, 1 observed
    ub, x0b = (x / al[k - 1]) @ vb, x0 @ vb
    y_bar = (torch.linalg.pinv(a) @ y) @ vb[:, :2]  # diag(s)^-1 U^T y in obs.V's signs
    yt = y_bar / al[-1]
    rho = torch.sqrt((sigma / s / al[-1]) ** 2 + v[-1])
    sd_lo, sd_hi = math.sqrt(v[k]), math.sqrt(v[k - 1])
    assert float(rho[0]) < sd_lo < float(rho[1])
    want = torch.empty(n, 3, dtype=torch.float64)
    want[:, 0] = (1 - eta_b) * x0b[:, 0] + eta_b * yt[0]
    want[:, 0] += math.sqrt(sd_lo**2 - eta_b**2 * float(rho[0]) ** 2) * z[:, 0]
    c = math.sqrt(1 - eta**2) * sd_lo
    want[:, 1] = x0b[:, 1] + c * (yt[1] - x0b[:, 1]) / rho[1] + eta * sd_lo * z[:, 1]
    want[:, 2] = x0b[:, 2] + c * (ub[:, 2] - x0b[:, 2]) / sd_hi + eta * sd_lo * z[:, 2]
    torch.testing.assert_close(out.state["x"], al[k] * want @ vb.T)
    assert out.nfe == 1 and bool((out.log_potential == 0).all())


def test_noiseless_full_observation_returns_the_preimage():
    """``A`` square and invertible, sigma_y ~ 0: every coordinate is observed and DDRM (eta_b =
    1) ends at ``A^{-1} y`` up to the last step's noise level (sqrt(v) ~ 0.03)."""
    a = _rotation(3, 4) @ torch.diag(torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64))
    y = torch.tensor([4.0, -3.0, 2.0], dtype=torch.float64)  # far from the prior's mass
    obs = smcdiff.LinearGaussianObservation(a, y, 1e-5)
    res = smcdiff.steer(smcdiff.exact_score(PRIOR, smcdiff.VP()), method="ddrm",
                        observation=obs, n_particles=200, n_steps=30, seed=0)  # fmt: skip
    pre = torch.linalg.solve(a, y).float()
    err = (res.particles - pre).abs().max()
    assert float(err) < 0.15, float(err)
    assert float((pre - PRIOR.mean()).abs().max()) > 2.0  # the prior alone would not get there
    assert math.isnan(float(res.log_z)) and res.info["eta"] == 0.85 and res.info["eta_b"] == 1.0


def test_ddrm_options_are_checked():
    model = smcdiff.exact_score(PRIOR, smcdiff.VP())
    obs = smcdiff.LinearGaussianObservation(torch.eye(2, 3), [0.0, 1.0], 0.1)
    kw = dict(method="ddrm", observation=obs, n_particles=8, n_steps=3)
    with pytest.raises(SMCDiffError, match="eta"):
        smcdiff.steer(model, eta=1.5, **kw)
    with pytest.raises(SMCDiffError, match="never resamples"):
        smcdiff.steer(model, ess_threshold=0.5, **kw)
    with pytest.raises(SMCDiffError, match="variance-preserving"):
        smcdiff.steer(smcdiff.exact_score(PRIOR, smcdiff.VE()), **kw)
