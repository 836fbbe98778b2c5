"""FKC / DriftLite on stiff rewards: no silent NaN, no silent particles thrown far away.

Issue 11: on the DW-4 reward tilt (r = -U/2, U quartic in the pair distances) the particles at
t ~ 1 are spread with sigma ~ 5, where |grad r| ~ 1e3-1e4. The explicit part of a move then
throws the tail particles to where the (cubic) gradient is larger still, and the run diverged to
NaN within one grid step (Euler on a superlinear drift; the control theta grad r of DriftLite
made it worse); and the "exp-fit" integrator, fitted to the near-degenerate weights of such a
step, took a negative slope (kappa = -1e4) and integrated exp(+|lambda| dt) = 1e15 exactly. A
quartic reward on a Gaussian prior with exact scores reproduces both: before the fix every
method raised NonFiniteError at step 1. Now the explicit displacement is tamed to ``max_move``
noise scales, expanding fitted slopes are left to the explicit part, and the run says so with a
:class:`~smcdiff.errors.StiffDriftWarning` (step, time, fraction) - while an exact Gaussian tilt
never comes near the cap.
"""

import math
import warnings

import pytest
import torch

import smcdiff
from smcdiff.errors import StiffDriftWarning
from smcdiff.steering.fkc.integrator import FittedExponential, tame
from tests.steering.test_driftlite import reward_problem

F64 = torch.float64
VE = smcdiff.VE(0.01, 5.0)  # sigma_max = 5, as the DW-4 prior's GeometricVE(0.01, 5)


def quartic_reward(x):
    """A DW-4-like double well per coordinate, r = -U/2 with U = 0.9 (x^2 - 4)^2 - 4 x^2:
    |grad r| ~ 1e3 at |x| ~ 10, cubic growth."""
    return -0.5 * (0.9 * (x.square() - 4).square() - 4 * x.square()).sum(-1)


def steer_stiff(method, **kw):
    prior = smcdiff.Gaussian(torch.zeros(4), torch.eye(4))
    extra = {"basis": ("reward", "x")} if method == "driftlite-ecg" else {}
    return smcdiff.steer(
        smcdiff.exact_score(prior, VE), method=method, reward=quartic_reward, n_particles=128,
        n_steps=8, seed=0, progress=False, max_substeps=2, **extra, **kw,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- pieces
def test_tame_leaves_steps_below_the_cap_alone_and_caps_the_others_at_it():
    step = torch.zeros(6, 2, 3, dtype=F64)
    step[:, 0, 0] = torch.tensor([0.5, 2.0, 9.9, 10.0, 30.0, 1e6])  # norms, scale 1
    out, capped, ratio = tame(step, 1.0, 10.0, n_groups=2)
    norms = out.flatten(1).norm(dim=1)
    torch.testing.assert_close(out[:4], step[:4], rtol=0, atol=0)  # bitwise unchanged
    torch.testing.assert_close(norms[4:], torch.full((2,), 10.0, dtype=F64))
    torch.testing.assert_close(out[4:] / norms[4:, None, None], step[4:] / step[4:].norm(
        dim=(1, 2), keepdim=True))  # same direction  # fmt: skip
    torch.testing.assert_close(capped, torch.tensor([0.0, 2 / 3], dtype=F64))
    torch.testing.assert_close(ratio, torch.tensor([9.9, 1e6], dtype=F64))
    # the scale divides: the same steps with noise scale 10 are all below the cap
    out, capped, ratio = tame(step, 10.0, 10.0, n_groups=1)
    assert float(capped) == 1 / 6 and torch.equal(out[:5], step[:5])
    # max_move=None: counted against 10, never changed
    out, capped, _ = tame(step, 1.0, None, n_groups=1)
    assert torch.equal(out, step) and float(capped) == 2 / 6


def test_exp_fit_integrates_contracting_slopes_exactly_and_leaves_expanding_ones_explicit():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 500, 2, generator=gen, dtype=F64).reshape(500, 2)
    explicit = x * torch.tensor([-3.0, 4.0], dtype=F64)  # slope 3 (contracting), -4 (expanding)
    lw = torch.full((1, 500), -math.log(500), dtype=F64)
    m = FittedExponential().fit(VE, 0.5, 0.1, 0.0, 1.0, 1.0, 1.0, x, explicit, lw)
    torch.testing.assert_close(m.lin[0], torch.tensor([3.0, 0.0], dtype=F64))
    torch.testing.assert_close(m.a[0], torch.tensor([math.exp(-0.3), 1.0], dtype=F64))
    assert float(m.a.max()) <= 1.0  # never exp(+|lambda| dt): the 1e15 of the DW-4 run


# ----------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("method", ["fkc", "driftlite-vcg", "driftlite-ecg"])
def test_a_stiff_quartic_reward_runs_finite_and_says_the_steps_are_too_long(method):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = steer_stiff(method)
    stiff = [str(w.message) for w in record if w.category is StiffDriftWarning]
    assert len(stiff) == 1, [str(w.message) for w in record]
    msg = stiff[0]
    assert "step 1/8 (t=" in msg and "% of the particles by more than 10 noise scales" in msg
    assert "were tamed" in msg
    assert bool(torch.isfinite(res.log_z).all()) and bool(torch.isfinite(res.particles).all())
    # every move of the explicit part is at most 10 noise scales: the particles stay near the
    # prior's scale (sigma_max = 5) instead of running off to 1e15 / NaN
    assert float(res.particles.abs().max()) < 100.0
    capped = res.trace["move_capped"]
    assert float(capped[1].max()) > 1e-3 and float(res.trace["move_ratio"][1].max()) > 10.0


def test_untamed_moves_that_throw_particles_far_are_reported():
    # a repulsive core (LJ-like, r = -|x|^-12 / 1e4 at the origin): particles that start near it
    # are thrown far, where the gradient vanishes and they stay - finite, but far from the
    # target. Untamed (max_move=None) the run must still say so.
    prior = smcdiff.Gaussian(torch.zeros(2), 0.3 * torch.eye(2))

    def core(x):
        return -1e-4 * x.square().sum(-1).clamp_min(1e-6).pow(-6)

    model = smcdiff.exact_score(prior, smcdiff.VP())
    kw = dict(method="fkc", reward=core, n_particles=256, n_steps=10, seed=0, progress=False,
              step_control="off")  # fmt: skip
    with pytest.warns(StiffDriftWarning, match="were not tamed"):
        loose = smcdiff.steer(model, max_move=None, **kw)
    assert float(loose.particles.abs().max()) > 50.0  # thrown far (prior sd 0.55): as on LJ-13
    with pytest.warns(StiffDriftWarning, match="were tamed"):
        tamed = smcdiff.steer(model, **kw)
    assert float(tamed.particles.abs().max()) < 20.0


@pytest.mark.parametrize("method", ["fkc", "driftlite-vcg"])
@pytest.mark.slow
def test_an_exact_gaussian_tilt_stays_far_below_the_cap_and_does_not_warn(method):
    model, reward, exact, log_norm = reward_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # others (degeneracy): not this test's
        warnings.simplefilter("error", StiffDriftWarning)  # first in the filter list: wins
        res = smcdiff.steer(model, method=method, reward=reward, beta=2.0, n_particles=500,
                            n_steps=50, n_runs=2, seed=1, progress=False)  # fmt: skip
    assert float(res.trace["move_capped"][1:].max()) == 0.0  # row 0: the start, no move
    assert float(res.trace["move_ratio"][1:].max()) < 5.0  # half the cap at most
    # and the run is right: the tilted mean within a loose tolerance (exactness is tested in
    # test_driftlite.py / test_steer_fkc.py with their error bars)
    mu = (res.weights.unsqueeze(-1) * res.particles).sum(1).mean(0)
    assert float((mu - exact.mean().double()).abs().max()) < 0.1
    assert abs(float(res.log_z.mean()) - log_norm) < 0.3
