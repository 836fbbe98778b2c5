"""Adaptive tilting and hard constraints in diffusion FK steering, against exact answers.

Priors are closed-form Gaussians (path correction on), so every target below has an exact log Z:
:math:`\\log P(x > c)` for a constraint, :math:`-\\tfrac12\\log(1 + 2\\beta)` for
:math:`e^{-\\beta x^2}` under N(0, 1).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

import smcdiff
from smcdiff.diffusion_fk.adaptive import AdaptiveTilt
from smcdiff.weights import cess_fraction, conditional_ess, largest_keeping_cess

F64 = torch.float64


def test_cess_fraction_matches_its_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(3, 50, generator=gen, dtype=F64), -1)
    log_g = torch.randn(3, 50, generator=gen, dtype=F64)
    w, g = log_w.exp(), log_g.exp()
    expected = (w * g).sum(-1) ** 2 / (w * g * g).sum(-1)
    torch.testing.assert_close(cess_fraction(log_w, log_g), expected)
    dead = torch.full((1, 4), -math.inf, dtype=F64)
    assert cess_fraction(log_w[:1, :4], dead).item() == 0.0
    # conditional_ess is the same number times N, from unnormalised weights
    cess = conditional_ess(log_w + 3.0, log_g)
    torch.testing.assert_close(cess, 50 * expected)


@pytest.mark.parametrize("n_grid", [0, 17])
def test_largest_keeping_cess_finds_the_cess_crossing(n_grid: int) -> None:
    """For increments lam * f under uniform weights the CESS falls with lam; the search returns
    the crossing (CESS = target there, below it just above)."""
    f = torch.linspace(-3.0, 3.0, 400, dtype=F64)[None]
    log_w = torch.full_like(f, -math.log(400))

    def frac_of(lam: torch.Tensor) -> torch.Tensor:
        return cess_fraction(log_w, lam[:, None] * f)

    lo, hi = torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64)
    lam = largest_keeping_cess(frac_of, lo, hi, 0.5, iters=40, n_grid=n_grid)
    assert frac_of(lam).item() >= 0.5
    assert frac_of(lam + 1e-6).item() < 0.5
    assert 0.05 < lam.item() < 1.0
    # scoring hi first (the adaptive time grid's way) changes nothing but the calls made
    calls = []

    def counted(lam: torch.Tensor) -> torch.Tensor:
        calls.append(lam.clone())
        return frac_of(lam)

    first = largest_keeping_cess(counted, lo, hi, 0.5, iters=40, n_grid=n_grid, hi_first=True)
    assert torch.equal(first, lam) and calls[0].item() == 1.0
    # a target already met at hi returns hi (with hi_first: after that one call)
    assert largest_keeping_cess(frac_of, lo, hi, 1e-6, n_grid=n_grid).item() == 1.0
    calls.clear()
    met = largest_keeping_cess(counted, lo, hi, 1e-6, n_grid=n_grid, hi_first=True)
    assert met.item() == 1.0 and len(calls) == 1


def test_adaptive_options_are_checked() -> None:
    with pytest.raises(smcdiff.SMCDiffError, match="cess"):
        AdaptiveTilt(cess=1.0)
    with pytest.raises(smcdiff.SMCDiffError, match="tilt_cess set adaptive tilting"):
        smcdiff.steer(_gauss(), reward=lambda x: -x[:, 0], tilt_schedule="snr", tilt_cess=0.5)
    with pytest.raises(smcdiff.SMCDiffError, match="fixed step target"):
        smcdiff.steer(_gauss(), reward=lambda x: -x[:, 0], tilt_schedule="adaptive", init="mala")


def _gauss() -> smcdiff.ScoreModel:
    prior = smcdiff.GaussianMixture(weights=[1.0], means=[[0.0]], covs=[[1.0]])
    return smcdiff.exact_score(prior, smcdiff.VP())


def _above(c: float):
    def reward(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0] > c, 0.0, -math.inf).to(x)

    return reward


def _run(reward, **kw) -> smcdiff.SMCResult:
    return smcdiff.steer(
        _gauss(), reward=reward, n_particles=1024, n_runs=4, n_steps=40, seed=0, **kw
    )


@pytest.mark.slow
@pytest.mark.parametrize("c", [0.0, 0.5])
@pytest.mark.parametrize("schedule", ["snr", "adaptive"])
def test_hard_constraint_is_exact(c: float, schedule: str) -> None:
    """x > c on N(0, 1): log Z = log P(x > c), E[x] = pdf(c) / sf(c). Intermediate steps see a
    finite penalty, so the particles that will satisfy the constraint survive; before, the
    default lost them (log Z -4.7 for c = 0, every weight zero at step 0 for c = 0.5)."""
    res = _run(_above(c), tilt_schedule=schedule)
    exact = math.log(norm.sf(c))
    log_z = res.log_z.double()
    assert (log_z - exact).abs().max() < 0.4, (log_z, exact)  # one run of N = 1024
    assert abs(log_z.mean() - exact) < 0.1, (log_z, exact)
    w = torch.softmax(res.log_weights.double(), -1)
    x = res.particles[..., 0].double()
    assert bool((x[w > 0] > c).all())  # the constraint holds exactly at the end
    mean = (w * x).sum(-1).mean()
    assert abs(mean - norm.pdf(c) / norm.sf(c)) < 0.05


@pytest.mark.slow
def test_sharp_tilt_log_z_with_adaptive_tilting() -> None:
    """beta = 100, reward -x^2, prior N(0, 1): log Z = -log(201)/2 = -2.652 (the fixed schedule
    gives -5.3 +- 0.3 here)."""
    res = _run(lambda x: -(x**2).sum(-1), beta=100.0, tilt_schedule="adaptive")
    exact = -0.5 * math.log(201.0)
    assert abs(res.log_z.double().mean() - exact) < 0.1, res.log_z
    assert res.info["tilt_schedule"] == "adaptive"
    assert "tilt" in res.trace


def test_a_nan_reward_names_the_diffusion_step_not_the_engine_step() -> None:
    """A NaN reward (met by a step or by the adaptive moves) is an error naming the reward and
    the step of the user's grid (``step k/K``, not the engine's count with sub-steps), and the
    run before it survives as ``.partial``."""

    def reward(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0] > 2.5, torch.nan, -(x[:, 0] ** 2))

    with pytest.raises(smcdiff.NonFiniteError, match=r"reward.* at step \d+/20 ") as err:
        smcdiff.steer(
            _gauss(),
            reward=reward,
            beta=50.0,
            n_particles=512,
            n_steps=20,
            seed=0,
            tilt_schedule="adaptive",
        )
    assert err.value.partial is not None
