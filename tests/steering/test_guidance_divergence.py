"""Guidance that diverges (finite particles running away, no NaN) raises, naming the step.

Prior N(0, I) in d = 2 under VP: every marginal is N(0, I) and the exact score is ``-x``. The
"learned" score predicts eps twice too large (score ``-2x``): then x0-hat = ``(x - sigma eps)
/ alpha`` has a Jacobian ``(alpha^2 - sigma^2)/alpha``, amplified by ``1/alpha`` at high noise, the
guided step (gain ``c_s |d x0/dx|^2 / sigma_y^2 >> 2``) overshoots and the particles grow
geometrically, as the MLP of experiments/gmm_inverse.py did on an H200 (~1e16, finite).
"""

from __future__ import annotations

import math

import pytest
import torch

import smcdiff
from smcdiff.diffusion_fk import model as fk_model
from smcdiff.errors import NonFiniteError


class ScaledGaussianScore:
    """Score ``-(1 + err) x`` of N(0, I) under VP (``err = 0``: exact)."""

    def __init__(self, err: float):
        self.err, self.process, self.dim, self.event_shape = err, smcdiff.VP(), 2, (2,)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -(1.0 + self.err) * x


def log_lik(x: torch.Tensor) -> torch.Tensor:
    """y = x_0 + 0.3 e, y = 1."""
    return -0.5 * ((x[:, 0] - 1.0) / 0.3).square()


def guide(err: float) -> smcdiff.SMCResult:
    return smcdiff.steer(ScaledGaussianScore(err), method="guidance", log_likelihood=log_lik,
                         n_particles=64, n_steps=20, seed=0, progress=False)  # fmt: skip


def test_diverging_guidance_raises_naming_the_step():
    with pytest.raises(NonFiniteError, match=r"guided particles beyond .* at step \d+/20") as err:
        guide(1.0)
    # caught early, where the overshoot starts (measured: step 3), not at the end of the run
    assert 1 <= err.value.step <= 5, err.value.step
    assert "guidance_scale" in str(err.value) and "not finite" not in str(err.value)


def test_without_the_check_the_divergence_is_silent(monkeypatch):
    """What the check catches: finite particles far beyond the prior's scale, no error."""
    monkeypatch.setattr(fk_model, "GUIDANCE_RANGE", math.inf)
    x = guide(1.0).particles
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) > 1e6


def test_normal_guidance_is_unaffected(monkeypatch):
    """The exact score: in range, and the same particles with the check off."""
    x = guide(0.0).particles
    assert float(x.abs().max()) < 10.0
    monkeypatch.setattr(fk_model, "GUIDANCE_RANGE", math.inf)
    assert torch.equal(guide(0.0).particles, x)
