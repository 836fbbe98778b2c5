"""The fused Triton mixture score (smcdiff.distributions.gaussian_mixture_fused) against the
mixture's eager closed form and a float64 reference, under Triton's CPU interpreter (the CUDA
kernel itself runs in experiments/bench_fk_step.py); and ExactScore's ``fused`` switch."""

import pytest
import torch

import smcdiff
from smcdiff.errors import SMCDiffError
from tests.triton_interpreter import needs_triton, run_interpreted

INTERPRETED = """
import torch
import smcdiff
from smcdiff.distributions.gaussian_mixture_fused import KERNEL, fused_score_and_log_prob

def rel(a, b):
    return ((a.double() - b).abs() / (b.abs() + 1)).max().item()

n = 0
CASES = [  # (d, K, diagonal, kernel variant, tile): N = 300 (41) rows: no multiple of a row block
    (16, 8, False, "precision", 4096), (3, 2, False, "precision", 4096),
    (5, 4, True, "precision", 4096), (33, 3, False, "precision", 4096),
    (16, 1, False, "precision", 4096), (7, 6, False, "precision", 64),  # 2 chunks of K, 1 row
    (16, 8, False, "dot", 0), (5, 4, True, "dot", 0), (40, 3, False, "dot", 0),  # 64 columns
]
for d, k, diag, variant, tile in CASES:
    KERNEL["variant"], KERNEL["tile"] = variant, tile
    g = torch.Generator().manual_seed(d)
    means = 3 * torch.randn(k, d, generator=g)
    a = torch.randn(k, d, d, generator=g) / d**0.5
    covs = (torch.rand(k, d, generator=g) + 0.3) if diag else a @ a.mT + 0.5 * torch.eye(d)
    prior = smcdiff.GaussianMixture(torch.rand(k, generator=g) + 0.5, means, covs)
    mix = prior.noised(smcdiff.VP(), 0.3)
    rows = 300 if tile != 64 else 41  # one row per program at tile 64: slow to interpret
    x = 4 * torch.randn(rows, d, generator=g)
    x[0] = 60.0  # far out: one component's responsibility, a very negative log-density
    x[1, 0] = float("nan")
    score, log_p = fused_score_and_log_prob(mix, x)
    none, log_p2 = fused_score_and_log_prob(mix, x, want_score=False)
    assert none is None and torch.allclose(log_p, log_p2, rtol=0, atol=0, equal_nan=True)
    eager = mix.score_and_log_prob(x)
    m64 = smcdiff.GaussianMixture(mix.weights.double(), mix.means.double(), mix.covs.double())
    s64, l64 = m64.score_and_log_prob(x.double())
    assert score.isnan()[1].all() and log_p.isnan()[1], "a NaN row must stay NaN"
    ok = torch.ones(rows, dtype=torch.bool)
    ok[1] = False
    # the eager float32 path's own error against float64 sets the scale of "float rounding"
    tol_s = 2 * rel(eager[0][ok], s64[ok]) + 1e-6
    tol_l = 2 * rel(eager[1][ok], l64[ok]) + 1e-6
    assert rel(score[ok], s64[ok]) <= tol_s, (d, k, variant, rel(score[ok], s64[ok]), tol_s)
    assert rel(log_p[ok], l64[ok]) <= tol_l, (d, k, rel(log_p[ok], l64[ok]), tol_l)
    assert rel(score[ok], eager[0][ok].double()) < 3e-4  # both float32 paths' rounding
    n += 1
print("checked", n)
"""


@pytest.mark.slow
@needs_triton
def test_fused_kernel_under_the_cpu_interpreter():
    run_interpreted(INTERPRETED, "checked 9")


def _model(fused="auto"):
    g = torch.Generator().manual_seed(0)
    prior = smcdiff.GaussianMixture(
        torch.rand(3, generator=g) + 0.5,
        torch.randn(3, 4, generator=g),
        torch.eye(4).repeat(3, 1, 1),
    ).to(device="cuda" if torch.cuda.is_available() else "cpu")
    return smcdiff.exact_score(prior, smcdiff.VP(), fused=fused)


def test_fused_switch_is_checked():
    with pytest.raises(SMCDiffError, match="fused"):
        _model(fused="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel runs on CUDA")
def test_fused_on_cuda_equals_the_eager_path():
    on, off = _model(), _model("off")
    x = 2 * torch.randn(10_000, 4, device="cuda")
    for t in (0.05, 0.5):
        s1, l1 = on.score_and_log_density(x, t)
        s0, l0 = off.score_and_log_density(x, t)
        torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(on.score(x, t), s1, rtol=0, atol=0)
    xg = x[:100].clone().requires_grad_(True)  # a gradient wanted: the eager, differentiable path
    (g,) = torch.autograd.grad(on.log_density(xg, 0.5).sum(), xg)
    torch.testing.assert_close(g, off.score(x[:100], 0.5), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel runs on CUDA")
def test_default_kernel_on_cuda_has_float32_accuracy():
    """The default kernel (``"dot"``, TF32x3 products on compute capability >= 8) against a
    float64 evaluation: d = 16, K = 8 full covariances, errors at float32 rounding."""
    from smcdiff.distributions.gaussian_mixture_fused import fused_score_and_log_prob

    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 16, 16, generator=g) / 4
    prior = smcdiff.GaussianMixture(
        torch.rand(8, generator=g) + 0.5, 3 * torch.randn(8, 16, generator=g),
        a @ a.mT + 0.5 * torch.eye(16),
    )  # fmt: skip
    mix = prior.noised(smcdiff.VP(), 0.3).to(device="cuda")
    x = 4 * torch.randn(100_000, 16, generator=g).cuda()
    score, log_p = fused_score_and_log_prob(mix, x)
    s64, l64 = mix.to(dtype=torch.float64).score_and_log_prob(x.double())
    assert ((score.double() - s64).abs().max() / s64.abs().max()).item() < 1e-5
    assert ((log_p.double() - l64).abs() / (l64.abs() + 1)).max().item() < 1e-5
