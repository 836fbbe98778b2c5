"""steer() front door for FKC and DriftLite: the same exact targets as test_fkc.py, through the
public API (annealing by ``anneal=``, products by ``smcdiff.product``, reward tilts)."""

import math

import pytest
import torch

import smcdiff
from tests.steering.test_fkc import gaussian, gaussian_power_product

F64 = torch.float64


@pytest.mark.parametrize("method", ["fkc", "driftlite-vcg", "driftlite-ecg"])
def test_steer_anneals_a_gaussian_to_the_right_variance_and_log_z(method):
    model, m, c = gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.6]])
    mean, cov, log_z = gaussian_power_product([(m, c, 2.0)])
    res = smcdiff.steer(
        model, method=method, anneal=2.0, n_particles=1000, n_steps=100, n_runs=16, seed=0,
    )  # fmt: skip
    w = res.weights.unsqueeze(-1)
    mu = (w * res.particles).sum(1)
    var = (w * (res.particles - mu.unsqueeze(1)) ** 2).sum(1)
    # plain FKC sharpening has heavy-tailed weights: at N = 1000, 100 steps its variance is low
    # by ~0.05, log Z off by up to 0.25 (test_fkc.py BIAS) and one run in 16 can have its mean
    # 0.7 off (over seeds 0-4 the mean of 16 runs erred by up to 0.033, with integrator="exp"
    # and no step control by up to 0.027); DriftLite's control removes most
    tol_mu, tol_var, tol_z = (0.05, 0.08, 0.3) if method == "fkc" else (0.03, 0.03, 0.1)
    assert float((mu.mean(0) - mean).abs().max()) < tol_mu
    assert float((var.mean(0) - torch.diagonal(cov)).abs().max()) < tol_var
    assert abs(float(res.log_z.mean()) - log_z) < tol_z
    assert res.info["method"] == method and res.info["anneal"] == 2.0


def test_steer_product_of_two_gaussians():
    m1, a1, c1 = gaussian([1.0, 0.0], [[1.0, 0.0], [0.0, 0.5]])
    m2, a2, c2 = gaussian([-0.5, 0.5], [[0.7, 0.2], [0.2, 1.0]])
    mean, _, log_z = gaussian_power_product([(a1, c1, 1.0), (a2, c2, 1.0)])
    res = smcdiff.steer(
        smcdiff.product(m1, m2), method="driftlite-vcg", n_particles=1000, n_steps=100,
        n_runs=8, seed=1,
    )  # fmt: skip
    mu = (res.weights.unsqueeze(-1) * res.particles).sum(1).mean(0)
    assert float((mu - mean).abs().max()) < 0.03
    assert abs(float(res.log_z.mean()) - log_z) < 0.1


def test_steer_fkc_reward_tilt_matches_the_exact_tilt():
    model, m, c = gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([1.0, -0.5], dtype=F64)

    def reward(x):  # r(x) = b.x - |x|^2 / 2: tilt of N(m, c) stays Gaussian
        return x @ b.to(x) - 0.5 * (x * x).sum(-1)

    res = smcdiff.steer(
        model, method="fkc", reward=reward, beta=1.0, n_particles=1000, n_steps=100, n_runs=8,
        seed=2,
    )  # fmt: skip
    prec = torch.linalg.inv(c) + torch.eye(2, dtype=F64)
    exact_mean = torch.linalg.solve(prec, torch.linalg.solve(c, m) + b)
    mu = (res.weights.unsqueeze(-1) * res.particles).sum(1).mean(0)
    assert float((mu - exact_mean).abs().max()) < 0.03
    lz = (
        0.5 * exact_mean @ prec @ exact_mean - 0.5 * m @ torch.linalg.solve(c, m)
        - 0.5 * torch.logdet(c) - 0.5 * torch.logdet(prec)
    )  # fmt: skip
    assert abs(float(res.log_z.mean()) - float(lz)) < 0.25  # FKC time-discretisation bias


def test_steer_is_the_fkc_model_run_by_the_engine():
    from smcdiff.engine import run_smc
    from smcdiff.steering import FKCModel

    model, _, _ = gaussian([0.2, 0.1], [[1.0, 0.0], [0.0, 0.5]])
    res = smcdiff.steer(
        model, method="driftlite-vcg", anneal=1.7, n_particles=200, n_steps=20, seed=5,
        ess_threshold=0.0,
    )  # fmt: skip
    fk = FKCModel(
        smcdiff.anneal(model, 1.7), smcdiff.time_grid(model.process, 20, "log_snr"), control="vcg"
    )
    from smcdiff.resampling.policies import Never

    run = run_smc(fk, 200, policy=Never(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(res.particles, run.state["x"])
    assert torch.equal(res.log_z, run.log_z[0])


def test_steer_refuses_mixed_up_settings():
    model, _, _ = gaussian([0.0], [[1.0]])
    with pytest.raises(smcdiff.SMCDiffError, match="fkc"):
        smcdiff.steer(model, method="fk", anneal=2.0)
    with pytest.raises(smcdiff.SMCDiffError, match="fkc"):
        smcdiff.steer(smcdiff.product(model, model), method="fk", reward=lambda x: x[:, 0])
    with pytest.raises(smcdiff.SMCDiffError, match="anneal"):
        smcdiff.steer(model, method="fkc", anneal=-1.0)
    with pytest.raises(smcdiff.SMCDiffError, match="needs"):
        smcdiff.steer(model, method="fkc")
    assert math.isfinite(float(smcdiff.steer(model, method="fkc", anneal=1.5, n_particles=50,
                                              n_steps=10, seed=0).log_z))  # fmt: skip
