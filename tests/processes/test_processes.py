import math

import pytest
import torch

from smcdiff.processes import VE, VP, Flow, from_score, time_grid, to_score, tweedie_x0

PROCESSES = [VP(), VP("cosine"), VE(), Flow()]
IDS = ["vp-linear", "vp-cosine", "ve", "flow"]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_derivatives_match_finite_differences(p):
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    fd_a = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_s = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    assert torch.allclose(p.d_alpha(t), fd_a, rtol=1e-6, atol=1e-8)
    assert torch.allclose(p.d_sigma(t), fd_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_transitions_compose_and_match_marginals(p):
    u, s, t = 0.1, 0.4, 0.8
    a_su, v_su = p.transition(u, s)
    a_ts, v_ts = p.transition(s, t)
    a_tu, v_tu = p.transition(u, t)
    assert math.isclose(float(a_ts * a_su), float(a_tu), rel_tol=1e-12)
    assert math.isclose(float(a_ts**2 * v_su + v_ts), float(v_tu), rel_tol=1e-10)
    # from data: x_t | x_0 has alpha_t, sigma_t^2 (t=0 is data for VP/Flow)
    if not isinstance(p, VE):
        a, v = p.transition(0.0, t)
        assert math.isclose(float(a), float(p.alpha(t)), rel_tol=1e-12)
        assert math.isclose(float(v), float(p.sigma(t) ** 2), rel_tol=1e-10)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_sde_coefficients_reproduce_the_marginal_variance_ode(p):
    # d/dt sigma^2 = 2 f sigma^2 + g^2 and d/dt alpha = f alpha
    t = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    f, g2 = p.drift(t), p.diffusion_sq(t)
    assert torch.allclose(2 * p.sigma(t) * p.d_sigma(t), 2 * f * p.sigma(t) ** 2 + g2)
    assert torch.allclose(p.d_alpha(t), f * p.alpha(t))
    assert (g2 > 0).all()


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", ["uniform", "log_snr", "edm"])
def test_grids_are_decreasing_with_exact_ends(p, kind):
    ts = time_grid(p, 25, kind)
    assert ts.shape == (26,) and float(ts[0]) == p.t_max and float(ts[-1]) == p.t_min
    assert (ts[1:] < ts[:-1]).all()
    if kind == "log_snr":
        lam = p.log_snr(ts)
        assert torch.allclose(
            lam[1:] - lam[:-1], (lam[-1] - lam[0]) / 25 * torch.ones(25).double(), rtol=1e-6
        )


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(VP(), 0)
    with pytest.raises(ValueError, match="kind"):
        time_grid(VP(), 10, "cubic")
    with pytest.raises(ValueError, match="t_min"):
        time_grid(VP(), 10, t_min=0.5, t_max=0.2)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", ["score", "eps", "x0", "v", "velocity"])
def test_parameterisations_round_trip_and_agree_with_the_forward_process(p, kind):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    t = 0.6
    a, s = float(p.alpha(t)), float(p.sigma(t))
    x = a * x0 + s * eps
    score = -eps / s  # the conditional score given (x0, eps)
    out = from_score(kind, score, x, t, p)
    expected = {
        "score": score,
        "eps": eps,
        "x0": x0,
        "v": a * eps - s * x0,
        "velocity": float(p.d_alpha(t)) * x0 + float(p.d_sigma(t)) * eps,
    }[kind]
    assert torch.allclose(out, expected, atol=1e-10)
    assert torch.allclose(to_score(kind, out, x, t, p), score, atol=1e-10)
    assert torch.allclose(tweedie_x0(x, score, a, s), x0, atol=1e-10)


def test_unknown_parameterisation_is_named():
    with pytest.raises(ValueError, match="unknown parameterisation 'logits'"):
        to_score("logits", torch.zeros(1, 1), torch.zeros(1, 1), 0.5, VP())
