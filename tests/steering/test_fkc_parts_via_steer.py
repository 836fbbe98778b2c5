"""FKC / DriftLite parts given to steer() as objects give the numbers of their names."""

import torch

import smcdiff
from smcdiff.steering.fkc import LinearBeta, RewardBasis, TargetBasis

PRIOR = smcdiff.GaussianMixture(weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 0.0]],
                                covs=[[0.5, 0.5], [0.5, 0.5]])  # fmt: skip
MODEL = smcdiff.exact_score(PRIOR, smcdiff.VP())


def reward(x):
    return -(x[:, 1] ** 2)


def run(**kw):
    return smcdiff.steer(MODEL, n_particles=128, n_steps=12, seed=4, progress=False, **kw)


def test_a_beta_schedule_object_equals_its_name():
    a = run(method="fkc", reward=reward, beta=2.0, beta_schedule="linear")
    b = run(method="fkc", reward=reward, beta_schedule=LinearBeta(2.0))
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_z, b.log_z)


def test_basis_field_objects_equal_their_names():
    a = run(method="driftlite-vcg", reward=reward, beta=2.0, basis=("target", "reward"))
    b = run(method="driftlite-vcg", reward=reward, beta=2.0, basis=[TargetBasis(), RewardBasis()])
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_z, b.log_z)
