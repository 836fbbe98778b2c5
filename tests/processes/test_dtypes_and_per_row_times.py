"""Processes return the dtype of a floating-point time, and the parameterisation conversions take
one time per row (what a network sees), matching the scalar-time formulas row by row."""

import pytest
import torch

from smcdiff.processes import VE, VP, Flow, coefficients, convert, from_score, to_score

PROCESSES = [VP(), VP("cosine"), VE(), Flow()]
IDS = ["vp-linear", "vp-cosine", "ve", "flow"]
METHODS = ["alpha", "sigma", "d_alpha", "d_sigma", "log_snr", "drift", "diffusion_sq"]
KINDS = ["score", "eps", "x0", "v", "velocity"]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_coefficients_keep_the_dtype_of_a_floating_time(p):
    t64 = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    for name in METHODS:
        f = getattr(p, name)
        out32 = f(t64.float())
        assert out32.dtype == torch.float32 and out32.shape == (7,), name
        assert torch.allclose(out32.double(), f(t64), rtol=1e-5, atol=1e-6), name
        assert f(0.3).dtype == torch.float64 and f(0.3).dim() == 0, name  # Python float
        assert f(torch.tensor(0)).dtype == torch.float64, name  # an integer tensor
    a, v = p.transition(0.2, t64[-3:].float())  # a float s and float32 t: float32
    assert a.dtype == v.dtype == torch.float32
    lam = p.log_snr(t64.float())
    assert p.t_from_log_snr(lam).dtype == torch.float32
    assert torch.allclose(p.t_from_log_snr(lam).double(), t64, atol=1e-5)


def test_time_gradients_flow_through_the_coefficients():
    t = torch.tensor([0.3, 0.6], requires_grad=True)
    (g,) = torch.autograd.grad(VP().alpha(t).sum(), t)
    assert torch.allclose(g, VP().d_alpha(t.detach()))


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_conversions_with_one_time_per_row_match_the_scalar_formulas(p, kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)  # event shape (2, 3)
    out = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    rows = [slice(i, i + 1) for i in range(6)]
    got = to_score(kind, out, x, t, p)
    want = torch.cat([to_score(kind, out[r], x[r], float(t[r]), p) for r in rows])
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    back = from_score(kind, got, x, t, p)
    assert torch.allclose(back, out, rtol=1e-9, atol=1e-9)  # round trip
    assert torch.allclose(convert(kind, "x0", out, x, t, p), from_score("x0", got, x, t, p))
    assert convert(kind, kind, out, x, t, p) is out
    # float32 particles and times stay float32
    got32 = to_score(kind, out.float(), x.float(), t.float(), p)
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), got, rtol=1e-4, atol=1e-4)


def test_coefficients_broadcast_over_the_event_dimensions():
    x = torch.zeros(4, 3, 8, 8)
    a, s, da, ds = coefficients(VP(), torch.full((4,), 0.5), x)
    assert a.shape == s.shape == da.shape == ds.shape == (4, 1, 1, 1)
    assert a.dtype == torch.float32
    scalars = coefficients(VP(), 0.5, x)
    assert all(isinstance(c, float) for c in scalars)
    assert abs(float(a[0]) - scalars[0]) < 1e-6
