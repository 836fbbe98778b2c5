"""``steer(..., distributed=True)`` for every registered method and ``sample(method="tempered",
distributed=True)`` against closed forms, on gloo process groups of 2 and 4 CPU processes;
``result.gather()``; argument errors."""

import math

import pytest
import torch

import smcdiff
from smcdiff.steering.registry import registered_methods
from tests.conftest import make_linear_gaussian
from tests.distributed.harness import run_ranks
from tests.stats import assert_unbiased, assert_within, assert_z_unbiased, replicate_se
from tests.steering.test_fkc import gaussian, gaussian_power_product

F64 = torch.float64
ANNEAL = ([0.5, -1.0], [[1.0, 0.3], [0.3, 0.6]])  # N(m, C), annealed to p^2 by driftlite
B = [1.0, -0.5]  # fkc: N(0, I) tilted by r(x) = b.x - |x|^2/2: N(b/2, I/2), log Z = |b|^2/4 - log 2


def reward(x):
    return x @ torch.tensor(B).to(x) - 0.5 * (x * x).sum(-1)


def anneal_case(method):
    """``(model, steer options, exact mean, exact variances, exact log Z)`` of the fkc /
    driftlite cases."""
    if method == "fkc":
        b = torch.tensor(B, dtype=F64)
        truth = (b / 2, torch.full((2,), 0.5, dtype=F64), float(b @ b / 4 - math.log(2.0)))
        return gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])[0], {"reward": reward}, *truth
    m, c = (torch.tensor(v, dtype=F64) for v in ANNEAL)
    mean, cov, log_z = gaussian_power_product([(m, c, 2.0)])
    return gaussian(*ANNEAL)[0], {"anneal": 2.0}, mean, cov.diagonal(), log_z


def inverse_problem():
    """tests/conftest.py's gaussian_inverse (d = 3, two noisy observations)."""
    prior = smcdiff.Gaussian(
        torch.tensor([1.0, -1.0, 0.5]),
        torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]]),
    )
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    return make_linear_gaussian(prior, A, torch.tensor([0.7, -0.2]), 0.8)


# method -> (problem, steer options, runs); N = 256 particles unless the options say otherwise
METHODS = {
    "fk": ("inverse", {"n_steps": 10, "n_particles": 1024}, 10),  # path correction: exact
    "tds": ("inverse", {"n_steps": 10, "n_particles": 1024}, 10),
    "guidance": ("inverse", {"n_steps": 10}, 4),
    "none": ("inverse", {"n_steps": 10}, 4),
    "fkc": ("tilt", {"n_steps": 30}, 4),
    "driftlite-vcg": ("anneal", {"n_steps": 30, "step_control": "off"}, 4),
    "driftlite-ecg": ("anneal", {"n_steps": 30, "step_control": "off"}, 4),
}
N = 256


def steer_job(rank, world_size, method):
    kind, options, n_runs = METHODS[method]
    if kind == "inverse":
        p = inverse_problem()
        model, tilt = p.model, {} if method == "none" else {"log_likelihood": p.log_likelihood}
    else:
        model, tilt, *_ = anneal_case(method)
    out = []
    for seed in range(n_runs):
        res = smcdiff.steer(model, method=method, seed=seed, distributed=True, progress=False,
                            **{"n_particles": N, **options}, **tilt)  # fmt: skip
        w = res.weights.unsqueeze(-1)
        full = res.gather()
        out.append({"log_z": res.log_z, "wx": (w * res.particles).sum(0),
                    "wxx": (w * res.particles**2).sum(0), "n_local": res.particles.shape[0],
                    "gathered": None if full is None else tuple(full.particles.shape)})  # fmt: skip
    return out


def combine(ranks, key):
    """Per run, the sum over ranks (globally normalised weights: weighted moments add up)."""
    return torch.stack([torch.stack([r[key] for r in rk]) for rk in ranks]).sum(0)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_distributed_steer_matches_the_closed_form(method):
    assert method in registered_methods()
    ranks = run_ranks(steer_job, 2, method)
    log_z = torch.stack([r["log_z"] for r in ranks[0]])
    other = torch.stack([r["log_z"] for r in ranks[1]])
    assert torch.equal(log_z.nan_to_num(), other.nan_to_num())  # bitwise, NaN for unweighted
    n = METHODS[method][1].get("n_particles", N)
    assert ranks[0][0]["n_local"] == n // 2 and ranks[0][0]["gathered"][0] == n
    assert ranks[1][0]["gathered"] is None
    mean, sq = combine(ranks, "wx"), combine(ranks, "wxx")
    if METHODS[method][0] == "inverse":
        p = inverse_problem()
        if method in ("fk", "tds"):
            assert_z_unbiased(log_z, p.log_evidence, n_se=4.5, max_se=0.12)
            assert_unbiased(mean, p.posterior.mean(), n_se=4.5, max_se=0.05, what="mean")
        elif method == "none":  # the untilted sampler draws the prior at t_min
            assert bool(log_z.isnan().all())
            prior = p.model.distribution if hasattr(p.model, "distribution") else None
            truth = torch.tensor([1.0, -1.0, 0.5], dtype=F64) if prior is None else prior.mean()
            assert_unbiased(mean, truth, n_se=4.5, bias=0.01, max_se=0.05, what="prior mean")
        else:  # guidance: no weights, no estimate; its bias is tested in tests/steering
            assert bool(log_z.isnan().all())
            assert bool(mean.isfinite().all())
        return
    model, tilt, truth_mean, truth_var, truth_log_z = anneal_case(method)
    var = sq - mean**2
    # closed form, with the tolerances of tests/steering/test_steer_fkc.py widened by the
    # discretisation bias of 30 steps (one process: driftlite's variance ~0.06 low without step
    # control, fkc's log Z ~0.03 high)
    tol_mu, tol_var, tol_z = (0.05, 0.1, 0.1)
    assert float((mean.mean(0) - truth_mean).abs().max()) < tol_mu
    assert float((var.mean(0) - truth_var).abs().max()) < tol_var
    assert abs(float(log_z.mean()) - truth_log_z) < tol_z
    # and in distribution the one-process run of the same settings (16 runs)
    options = METHODS[method][1]
    one = smcdiff.steer(model, method=method, n_particles=N, n_runs=16, seed=100,
                        progress=False, **options, **tilt)  # fmt: skip
    w = one.weights.unsqueeze(-1)
    one_mean = (w * one.particles).sum(1)
    one_var = (w * one.particles**2).sum(1) - one_mean**2
    for a, b, what in ((log_z, one.log_z, "log Z"), (var, one_var, "variance")):
        se = (replicate_se(a) ** 2 + replicate_se(b) ** 2).sqrt()
        assert_within(a.mean(0), b.mean(0), se, n_se=4.5, what=f"{what}: R=2 vs one process")


def gaussian_target(mean, std, log_c):
    d = mean.shape[0]

    def log_prob(x):
        z = (x - mean) / std
        return -0.5 * (z * z).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi) + log_c

    return smcdiff.as_target(log_prob, d, "shifted gaussian")


MEAN = torch.tensor([2.0, -1.0, 0.5, 0.0], dtype=F64)


def tempered_job(rank, world_size, n_runs):
    target = gaussian_target(MEAN, 0.5, 3.0)
    out = []
    for seed in range(n_runs):
        res = smcdiff.sample(target, n_particles=512, seed=seed, dtype=F64, distributed=True,
                             progress=False)  # fmt: skip
        w = res.weights.unsqueeze(-1)
        out.append({"log_z": res.log_z, "wx": (w * res.particles).sum(0),
                    "temps": res.trace["temperature"]})  # fmt: skip
    return out


@pytest.mark.slow
def test_distributed_tempered_smc_is_unbiased_for_z_and_the_mean():
    """The ranks choose the same adaptive temperatures (from the global CESS)."""
    ranks = run_ranks(tempered_job, 2, 6)
    for rk in ranks[1:]:
        assert all(torch.equal(a["temps"], b["temps"]) for a, b in zip(rk, ranks[0], strict=True))
    log_z = torch.stack([r["log_z"] for r in ranks[0]])
    assert_z_unbiased(log_z, 3.0, n_se=4.5, max_se=0.06)
    assert_unbiased(combine(ranks, "wx"), MEAN, n_se=4.5, max_se=0.03, what="mean")


def test_distributed_runs_need_a_process_group_and_say_so():
    p = inverse_problem()
    with pytest.raises(smcdiff.SMCDiffError, match="init_process_group"):
        smcdiff.steer(p.model, log_likelihood=p.log_likelihood, n_particles=8, n_steps=2,
                      distributed=True)  # fmt: skip
