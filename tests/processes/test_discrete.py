"""DiscreteVP: a DDPM alpha_bar table as a noise process, exact on its timesteps, and its grids."""

import math

import pytest
import torch

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.processes.discrete import DiscreteVP, spacing_timesteps
from smcdiff.steering.registry import CommonConfig

F64 = torch.float64


def linear_table(T: int = 1000) -> torch.Tensor:
    """diffusers' default: float32 linear betas 1e-4 .. 0.02, cumprod in float32."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, 0)


def test_alpha_bar_is_the_table_exactly_on_every_timestep():
    table = linear_table()
    p = DiscreteVP(table)
    t = p.time_of(torch.arange(-1, 1000))
    assert torch.equal(p.alpha_bar(t)[1:], table.double())  # bit for bit
    assert torch.equal(p.alpha(t)[1:], table.double().sqrt())
    assert torch.equal(p.sigma(t)[1:], (1.0 - table.double()).sqrt())
    assert float(p.alpha(t[0])) == 1.0 and float(p.sigma(t[0])) == 0.0  # t = 0: clean data
    # float32 times (what a network adapter passes) snap to the same grid points
    a32 = p.alpha(t.float())
    assert a32.dtype == torch.float32 and torch.equal(a32, p.alpha(t).float())
    assert torch.equal(p.timestep(t.float()), torch.arange(-1, 1000))
    assert torch.equal(p.timestep(t), torch.arange(-1, 1000))
    assert p.t_min == 1e-3 and p.t_max == 1.0 and p.prior_std == pytest.approx(1.0)


def test_between_timesteps_log_alpha_bar_is_linear_in_t():
    table = linear_table().double()
    p = DiscreteVP(table)
    i = torch.arange(1, 1000)
    mid = (p.time_of(i) + p.time_of(i - 1)) / 2
    assert torch.allclose(p.alpha_bar(mid), (table[i] * table[i - 1]).sqrt(), rtol=1e-12)
    quarter = p.time_of(i - 1) + 0.25 / 1000
    expect = table[i - 1] ** 0.75 * table[i] ** 0.25
    assert torch.allclose(p.alpha_bar(quarter), expect, rtol=1e-12)
    first = torch.tensor(0.3e-3, dtype=F64)  # between data (alpha_bar = 1) and timestep 0
    assert float(p.alpha_bar(first)) == pytest.approx(float(table[0]) ** 0.3, rel=1e-12)
    fine = torch.linspace(0, 1, 20001, dtype=F64)
    assert bool((p.log_snr(fine[1:]) < p.log_snr(fine[:-1])).all())  # strictly decreasing


def test_derivatives_and_sde_coefficients_within_steps():
    p = DiscreteVP(linear_table(50))
    t = (torch.arange(1, 50, dtype=F64) + 0.37) / 50  # inside the steps, away from the kinks
    h = 1e-7
    fd_a = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_s = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    assert torch.allclose(p.d_alpha(t), fd_a, rtol=1e-6)
    assert torch.allclose(p.d_sigma(t), fd_s, rtol=1e-6)
    f, g2 = p.drift(t), p.diffusion_sq(t)
    assert torch.allclose(2 * p.sigma(t) * p.d_sigma(t), 2 * f * p.sigma(t) ** 2 + g2)
    # beta(t) = -T log(1 - beta_i) is constant within step i: f = -beta/2, g^2 = beta
    betas = 1.0 - p.alphas_cumprod[1:] / p.alphas_cumprod[:-1]
    assert torch.allclose(g2, -50 * torch.log1p(-betas), rtol=1e-10)


def test_transition_between_timesteps_is_the_chain():
    table = linear_table().double()
    p = DiscreteVP(table)
    a, v = p.transition(p.time_of(199), p.time_of(699))
    assert float(a) ** 2 == pytest.approx(float(table[699] / table[199]), rel=1e-14)
    assert float(v) == pytest.approx(1.0 - float(table[699] / table[199]), rel=1e-12)


def test_from_betas_and_bad_tables():
    betas = torch.linspace(1e-4, 0.02, 100, dtype=F64)
    p = DiscreteVP.from_betas(betas)
    assert torch.allclose(p.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-15)
    with pytest.raises(SMCDiffError, match="strictly decreasing"):
        DiscreteVP(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(SMCDiffError, match="1-D"):
        DiscreteVP(torch.ones(2, 3) * 0.5)
    with pytest.raises(SMCDiffError, match="spacing"):
        DiscreteVP(linear_table(), spacing="cosine")
    zero_snr = torch.tensor([0.9, 0.5, 0.0])  # rescale_betas_zero_snr: the last entry is 0
    assert float(DiscreteVP(zero_snr).alpha_bar(1.0)) == 2.0**-24


@pytest.mark.parametrize(
    "spacing, offset, expect",
    [
        ("leading", 0, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("leading", 1, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        ("trailing", 0, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", 0, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_spacings_are_diffusers_and_the_scheduler_grid_ends_at_timestep_0(spacing, offset, expect):
    assert spacing_timesteps(spacing, 10, 1000, offset) == expect  # diffusers' values
    p = DiscreteVP(linear_table(), spacing=spacing, steps_offset=offset)
    steps = p.scheduler_timesteps(9)
    assert len(steps) == 10 and steps[-1] == 0
    if expect[-1] == 0:  # 9 steps: the spacing's 10 timesteps, already ending at 0
        assert steps == expect
    else:  # the spacing's 9 timesteps, then timestep 0 for the final step
        assert steps == [*spacing_timesteps(spacing, 9, 1000, offset), 0]
    grid = smcdiff.time_grid(p, 9, "scheduler")
    assert torch.equal(grid, p.time_of(steps)) and grid.dtype == F64


@pytest.mark.parametrize("kind", ["uniform", "log_snr", "edm"])
def test_continuous_grids_are_snapped_to_distinct_timesteps(kind):
    p = DiscreteVP(linear_table())
    for n in (10, 100, 400):
        grid = smcdiff.time_grid(p, n, kind)
        steps = p.timestep(grid)
        assert grid.shape == (n + 1,) and torch.equal(grid, p.time_of(steps))
        assert steps[0] == 999 and steps[-1] == 0 and bool((steps[1:] < steps[:-1]).all())
    sub = smcdiff.time_grid(p, 20, kind, t_min=0.1, t_max=0.5)
    assert p.timestep(sub)[0] == 499 and p.timestep(sub)[-1] == 99
    with pytest.raises(SMCDiffError, match="distinct timesteps"):
        smcdiff.time_grid(p, 50, kind, t_min=0.1, t_max=0.12)  # 20 timesteps for 50 steps


def test_grid_errors():
    p = DiscreteVP(linear_table())
    with pytest.raises(SMCDiffError, match="no t_min"):
        smcdiff.time_grid(p, 10, "scheduler", t_min=0.1)
    with pytest.raises(SMCDiffError, match="own timesteps"):
        smcdiff.time_grid(smcdiff.VP(), 10, "scheduler")
    with pytest.raises(SMCDiffError, match=r"in \[1, 1000\], got 1001"):
        p.scheduler_timesteps(1000)  # 1001 inference timesteps of 1000


def test_steer_defaults_to_the_scheduler_grid_on_a_discrete_process():
    prior = smcdiff.Gaussian(torch.zeros(2), torch.eye(2))
    p = DiscreteVP(linear_table(), spacing="trailing")
    common = CommonConfig(smcdiff.exact_score(prior, p), n_steps=10)
    assert common.grid == "scheduler"
    assert common.times() == p.time_of([*spacing_timesteps("trailing", 10, 1000), 0]).tolist()
    assert CommonConfig(smcdiff.exact_score(prior, smcdiff.VP())).grid == "log_snr"
    uniform = CommonConfig(smcdiff.exact_score(prior, p), n_steps=10, grid="uniform")
    continuous = 1.0 + (1e-3 - 1.0) * torch.linspace(0, 1, 11, dtype=F64)  # as time_grid does
    assert uniform.times() == p.time_of((continuous * 1000).round() - 1).tolist()


def test_exact_prior_on_a_discrete_process_steers_to_the_exact_posterior():
    # the marginals alpha/sigma define are the chain's: with path correction (exact for any
    # step count), FK on the scheduler grid recovers the closed-form posterior and evidence
    from tests.stats import assert_unbiased, assert_z_unbiased

    prior = smcdiff.Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.6]]))
    p = DiscreteVP(linear_table(), spacing="trailing")
    A, y, noise = torch.tensor([[1.0, 1.0]]), torch.tensor([0.8]), 0.5
    post, log_ev = prior.noised(p, p.t_min).posterior(A, y, noise_std=noise)

    def log_lik(x):
        r = (y - x @ A.T).squeeze(-1)
        return -0.5 * r**2 / noise**2 - 0.5 * math.log(2 * math.pi * noise**2)

    res = smcdiff.steer(smcdiff.exact_score(prior, p), log_likelihood=log_lik, n_particles=500,
                        n_steps=30, n_runs=16, seed=3)  # fmt: skip
    assert float(res.ess.min()) > 50  # healthy weights (12 trailing steps leave ESS 14 of 500)
    assert res.info["path_correction"] and res.info["grid"] == "scheduler"
    mean = (res.weights.unsqueeze(-1) * res.particles.double()).sum(1)
    assert_unbiased(mean, post.mean(), n_se=4.5, max_se=0.03, what="posterior mean")
    assert_z_unbiased(res.log_z, float(log_ev), n_se=4.5, max_se=0.1, what="evidence")
