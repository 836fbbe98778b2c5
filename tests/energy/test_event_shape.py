"""Particles of any shape: a Gaussian particle system on (N, 4, 3) gives the numbers of the same
density on flat (N, 12) particles, and tempered SMC's log Z matches the closed form."""

import math

import pytest
import torch

import smcdiff
from smcdiff.energy import sample
from smcdiff.mcmc import KERNELS
from tests.stats import assert_z_unbiased

SHAPE = (4, 3)
MEANS = torch.linspace(-1.0, 1.5, 12, dtype=torch.float64).reshape(SHAPE)
STD, LOG_C = 0.6, 1.7


def system_log_prob(x):
    """Four atoms in 3-D, atom i ~ N(m_i, STD^2 I), times e^{LOG_C}: log Z = LOG_C."""
    z = (x - MEANS.to(x)) / STD
    d = 12
    return (
        -0.5 * (z * z).sum((-2, -1)) - d * math.log(STD) - 0.5 * d * math.log(2 * math.pi) + LOG_C
    )


def targets():
    system = smcdiff.as_target(system_log_prob, SHAPE, "gaussian system")
    flat = smcdiff.as_target(lambda x: system_log_prob(x.reshape(-1, *SHAPE)), 12, "flat")
    return system, flat


def test_as_target_with_an_event_shape():
    system, _ = targets()
    assert system.event_shape == SHAPE and system.dim == 12
    assert system.log_prob(torch.zeros(5, *SHAPE)).shape == (5,)
    with pytest.raises(smcdiff.SMCDiffError, match="shape"):
        system.log_prob(torch.zeros(5, 12))


@pytest.mark.parametrize("kernel", ["hmc", "mala"])
def test_tempered_on_a_particle_system_matches_the_flat_target(kernel):
    system, flat = targets()
    std = torch.full(SHAPE, 1.5, dtype=torch.float64)
    kw = dict(n_particles=300, seed=3, kernel=kernel, dtype=torch.float64, n_moves=2)
    a = sample(system, reference_std=std, reference_mean=0.2 * MEANS, **kw)
    b = sample(flat, reference_std=std.reshape(12), reference_mean=0.2 * MEANS.reshape(12), **kw)
    assert a.particles.shape == (300, *SHAPE) and b.particles.shape == (300, 12)
    assert torch.equal(a.particles.reshape(300, 12), b.particles)
    assert torch.equal(a.log_weights, b.log_weights) and torch.equal(a.log_z, b.log_z)
    assert torch.equal(a.trace["temperature"], b.trace["temperature"])


def test_tempered_log_z_of_a_particle_system_against_the_closed_form():
    system, _ = targets()
    res = sample(system, n_particles=1000, n_runs=8, seed=0, dtype=torch.float64)
    assert res.particles.shape == (8, 1000, *SHAPE)
    assert_z_unbiased(res.log_z, LOG_C, n_se=4.5, max_se=0.05)  # E[Z_hat] = Z
    m = (res.weights[..., None, None] * res.particles).sum(1).mean(0)  # (4, 3)
    assert float((m - MEANS).abs().max()) < 0.05  # SE ~ 0.6 / sqrt(8 * N_eff) ~ 0.01


@pytest.mark.parametrize("method", sorted(KERNELS))
def test_mcmc_methods_on_a_particle_system_match_the_flat_target(method):
    system, flat = targets()
    a = sample(system, method=method, n_particles=50, seed=1, n_steps=20, dtype=torch.float64)
    b = sample(flat, method=method, n_particles=50, seed=1, n_steps=20, dtype=torch.float64)
    assert a.particles.shape == (50, *SHAPE)
    assert torch.equal(a.particles.reshape(50, 12), b.particles)


def test_diffusion_methods_refuse_a_particle_system_with_a_clear_error():
    system, _ = targets()
    with pytest.raises(smcdiff.SMCDiffError, match="event_shape"):
        sample(system, method="diffusion", n_particles=10, n_steps=2, n_mc=2)
