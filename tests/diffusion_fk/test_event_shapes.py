"""Particles of any shape through DiffusionFK, and time as a per-row tensor for score models.

An exact Gaussian-mixture prior on 16-D vectors, seen as (1, 4, 4) images through
``reshape_score``, is steered by FK and by TDS: the image run gives the same particles, weights and
log Z as the flat run with the same seed, and both match the closed-form posterior / tilt.
"""

import math

import pytest
import torch

import smcdiff
from smcdiff.diffusion_fk import (
    DiffusionFK,
    GuidedProposal,
    PathCorrection,
    TiltTerm,
    TwistedProposal,
    build_diffusion_fk,
    snr_schedule,
)
from smcdiff.engine import run_smc
from smcdiff.resampling import policy_from_threshold
from smcdiff.scores import event_shape_of, model_time, reshape_score

F64 = torch.float64
SHAPE = (1, 4, 4)
D = 16


@pytest.fixture
def problem(device):
    """A two-component 16-D mixture prior, a linear-Gaussian likelihood and a quadratic reward."""
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.linspace(-0.6, 0.6, D), -0.3 * torch.ones(D)]).to(F64)
    covs = torch.stack([0.8 * torch.ones(D), 0.5 * torch.ones(D)]).to(F64)
    prior = smcdiff.GaussianMixture(weights=[0.4, 0.6], means=means, covs=covs).to(device=device)
    process = smcdiff.VP()
    A = torch.randn(4, D, generator=g, dtype=F64).to(device) / math.sqrt(D)
    y = torch.tensor([0.5, -0.3, 0.2, 0.8], dtype=F64, device=device)
    b = 0.3 * torch.randn(D, generator=g, dtype=F64).to(device)
    Q = 0.5 * torch.eye(D, dtype=F64, device=device)
    return prior, process, A, y, b, Q


def likelihood(A, y, noise_std=0.7):
    def log_lik(x):
        r = y - x.flatten(1) @ A.T
        return -0.5 * (r * r).sum(-1) / noise_std**2 - 0.5 * y.numel() * math.log(
            2 * math.pi * noise_std**2
        )

    return log_lik


def quadratic(b, Q):
    def reward(x):
        x = x.flatten(1)
        return x @ b - 0.5 * ((x @ Q) * x).sum(-1)

    return reward


def run(model, tilt, guided, device, n=250, groups=8, seed=11, n_steps=100):
    times = smcdiff.time_grid(model.process, n_steps, "log_snr").tolist()
    fk = build_diffusion_fk(
        model, times, tilt=tilt, guided=guided, path_correction=True, sampler="ancestral_upper",
        tilt_schedule="snr", device=device, dtype=F64,
    )  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(seed)
    return run_smc(fk, n, n_groups=groups, policy=policy_from_threshold(0.5), generator=gen)


def check_against_truth(res, truth, log_z, groups):
    """Weighted posterior means (one per group) and log Z against the closed form."""
    x = res.state["x"].reshape(groups, -1, D).double()
    W = res.log_weights.exp()
    mean = (W.unsqueeze(-1) * x).sum(1)  # (G, D)
    z = (mean.mean(0) - truth.mean().double()) / (mean.std(0) / math.sqrt(groups))
    assert float(z.abs().max()) < 5.0, z
    err = (mean.mean(0) - truth.mean().double()).abs().max()
    assert float(err) < 0.15, err  # posterior sd per coordinate ~0.7
    assert abs(float((res.log_z - log_z).mean())) < 0.3, res.log_z - log_z
    ratio = torch.exp(res.log_z - log_z)
    assert abs(float(ratio.mean()) - 1) < 5.0 * float(ratio.std()) / math.sqrt(groups)


def steering_problem(problem, method):
    """``(tilt, truth, log_z)``: FK steering with a reward (the tilted prior) or TDS on a
    likelihood (the posterior), both of the prior's marginal at ``t_min``."""
    prior, process, A, y, b, Q = problem
    end = prior.noised(process, process.t_min)
    if method == "fk":
        tilt = [TiltTerm("reward", quadratic(b, Q), 1.0)]
        return tilt, *end.tilt(b, Q)
    tilt = [TiltTerm("log_likelihood", likelihood(A, y), 1.0)]
    return tilt, *end.posterior(A, y, noise_std=0.7)


@pytest.mark.parametrize("method", ["fk", "tds"])
def test_images_steer_exactly_like_the_flat_problem(problem, device, method):
    prior, process = problem[:2]
    flat = smcdiff.exact_score(prior, process)
    image = reshape_score(flat, SHAPE)
    assert event_shape_of(image) == SHAPE and image.dim == D and image.scalar_time
    tilt, _, _ = steering_problem(problem, method)
    kw = dict(n=50, groups=2, n_steps=10)
    res_flat = run(flat, tilt, method == "tds", device, **kw)
    res_img = run(image, tilt, method == "tds", device, **kw)
    assert res_img.state["x"].shape == (100, *SHAPE) and res_flat.state["x"].shape == (100, D)
    assert torch.equal(res_img.state["x"].reshape(-1, D), res_flat.state["x"])
    assert torch.equal(res_img.log_weights, res_flat.log_weights)
    assert torch.equal(res_img.log_z, res_flat.log_z)


@pytest.mark.parametrize("method", ["fk", "tds"])
def test_images_match_the_closed_form(problem, device, method):
    prior, process = problem[:2]
    image = reshape_score(smcdiff.exact_score(prior, process), SHAPE)
    tilt, truth, log_z = steering_problem(problem, method)
    res = run(image, tilt, method == "tds", device)
    assert res.state["x"].shape == (8 * 250, *SHAPE)
    check_against_truth(res, truth, log_z, 8)


def test_twisted_proposal_is_the_guided_one_with_scale_one(problem, device):
    prior, process, A, y, _, _ = problem
    image = reshape_score(smcdiff.exact_score(prior, process), SHAPE)
    times = smcdiff.time_grid(process, 6, "log_snr").tolist()
    tilt = [TiltTerm("log_likelihood", likelihood(A, y), 1.0)]
    runs = []
    for proposal in (GuidedProposal(1.0), TwistedProposal()):
        fk = DiffusionFK(
            image, times, tilt=tilt, proposal=proposal, path=PathCorrection(),
            schedule=snr_schedule, sampler="ancestral_upper", device=device, dtype=F64,
        )  # fmt: skip
        gen = torch.Generator(device=device).manual_seed(2)
        runs.append(run_smc(fk, 50, generator=gen))
    assert torch.equal(runs[0].state["x"], runs[1].state["x"])
    assert torch.equal(runs[0].log_z, runs[1].log_z)


class PerRowTime:
    """A score model without ``scalar_time`` (like a network): it records the times it gets.

    The prior is N(0, I) under VP, so p_t = N(0, I) and the score is -x at every t."""

    def __init__(self, event_shape):
        self.process, self.event_shape = smcdiff.VP(), event_shape
        self.dim = math.prod(event_shape)
        self.seen = []

    def score(self, x, t):
        self.seen.append((t, x.shape, x.dtype))
        return -x + 0.0 * t.reshape(-1, *([1] * (x.dim() - 1)))  # t broadcasts per row


@pytest.mark.parametrize("guided", [False, True])
def test_a_model_without_scalar_time_gets_t_as_a_per_row_tensor(device, guided):
    model = PerRowTime((2, 3))
    times = smcdiff.time_grid(model.process, 5, "uniform").tolist()
    tilt = [TiltTerm("reward", lambda x: -(x.flatten(1) ** 2).sum(-1), 1.0)]
    fk = build_diffusion_fk(model, times, tilt=tilt, guided=guided, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    res = run_smc(fk, 30, n_groups=2, generator=gen)
    assert res.state["x"].shape == (60, 2, 3)
    assert len(model.seen) == len(times)
    for (t, shape, dtype), t_k in zip(model.seen, times, strict=True):
        assert isinstance(t, torch.Tensor) and t.shape == (60,) and shape == (60, 2, 3)
        assert t.dtype == dtype == torch.float32 and t.device.type == torch.device(device).type
        assert torch.equal(t, torch.full_like(t, t_k))


def test_model_time_and_event_shape_of(device):
    x = torch.zeros(7, 2, 3, dtype=F64, device=device)
    exact = smcdiff.exact_score(smcdiff.Gaussian(torch.zeros(2), torch.eye(2)), smcdiff.VP())
    assert model_time(exact, 0.25, x) == 0.25 and isinstance(model_time(exact, 0.25, x), float)
    t = model_time(PerRowTime((2, 3)), 0.25, x)
    assert t.shape == (7,) and t.dtype == F64 and bool((t == 0.25).all())
    assert model_time(exact, torch.full((7,), 0.5, device=device), x) == 0.5
    assert event_shape_of(exact) == (2,) and event_shape_of(PerRowTime((2, 3))) == (2, 3)
    with pytest.raises(smcdiff.SMCDiffError, match="event_shape"):
        reshape_score(exact, (3,))
