"""EmpiricalScore: exact score and log density of a noised weighted sample set (and its kernel-
smoothed and nearest-neighbour variants), against the equivalent GaussianMixture."""

import math

import pytest
import torch

from smcdiff.distributions import GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP, Flow
from smcdiff.scores import DensityScoreModel, exact_score
from smcdiff.scores.empirical import EmpiricalScore
from smcdiff.seeding import seeded_generator
from tests.stats import DEVICE

F64 = torch.float64
PROCESSES = [VP(), VE(sigma_max=10.0), Flow()]


def data(j, d, seed=0):
    y = 2.0 * torch.randn(j, d, generator=seeded_generator(seed, DEVICE), dtype=F64, device=DEVICE)
    log_w = torch.randn(j, generator=seeded_generator(seed + 1, DEVICE), dtype=F64, device=DEVICE)
    log_w[::7] = -math.inf  # zero weights are legal
    return y, log_w


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
@pytest.mark.parametrize("d", [2, 10])
def test_equals_exact_score_of_equivalent_mixture(process, d):
    """h = 0: Σ_j w_j N(a y_j, s² I) built as a GaussianMixture; h > 0: ExactScore of the KDE
    Σ_j w_j N(y_j, h² I) under the process. Float64, 1e-10, with chunking."""
    y, log_w = data(300, d)
    w = torch.exp(log_w - torch.logsumexp(log_w, 0))
    kde = exact_score(
        GaussianMixture(w, y, torch.full((300, d), 0.3**2, dtype=F64, device=DEVICE)), process
    )
    plain = EmpiricalScore(y, process, log_weights=log_w, chunk_size=64)
    smooth = EmpiricalScore(y, process, log_weights=log_w, bandwidth=0.3, chunk_size=64)
    assert isinstance(plain, DensityScoreModel)
    for t in (0.02, 0.1, 0.5, 0.9):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        mixture = GaussianMixture(w, a * y, torch.full((300, d), s * s, dtype=F64, device=DEVICE))
        x = 1.3 * mixture.sample(40, seeded_generator(3, DEVICE))
        s_ref, lp_ref = mixture.score_and_log_prob(x)
        s_est, lp_est = plain.score_and_log_density(x, t)
        close(s_est, s_ref)
        close(lp_est, lp_ref)
        close(plain.score(x, t), s_ref)
        close(plain.log_density(x, t), lp_ref)
        close(plain.posterior_mean(x, t), (x + s * s * s_ref) / a)  # Tweedie
        s_ref, lp_ref = kde.score_and_log_density(x, t)
        close(smooth.score(x, t), s_ref)
        close(smooth.log_density(x, t), lp_ref)
        close(smooth.posterior_mean(x, t), (x + s * s * s_ref) / a)


def test_streaming_over_1e5_points():
    """10^5 data points in chunks of 4096: the same as one 10^5-component mixture."""
    process, t, d, j = VP(), 0.3, 3, 100_000
    y = torch.randn(j, d, generator=seeded_generator(0, DEVICE), dtype=F64, device=DEVICE)
    model = EmpiricalScore(y, process, chunk_size=4096)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    mixture = GaussianMixture(
        torch.ones(j, dtype=F64), a * y, torch.full((j, d), s * s, dtype=F64, device=DEVICE)
    )
    x = 2.0 * torch.randn(20, d, generator=seeded_generator(1, DEVICE), dtype=F64, device=DEVICE)
    s_ref, lp_ref = mixture.score_and_log_prob(x)
    s_est, lp_est = model.score_and_log_density(x, t)
    close(s_est, s_ref)
    close(lp_est, lp_ref)


def test_score_is_gradient_of_log_density():
    y, log_w = data(200, 3)
    model = EmpiricalScore(y, VP(), log_weights=log_w, bandwidth=0.1, chunk_size=50)
    x = torch.randn(
        10, 3, generator=seeded_generator(2, DEVICE), dtype=F64, device=DEVICE
    ).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_density(x, 0.2).sum(), x)
    close(model.score(x.detach(), 0.2), grad)


def test_nearest_neighbours():
    process, t, d = VP(), 0.2, 2
    y, log_w = data(500, d, seed=4)
    full = EmpiricalScore(y, process, log_weights=log_w)
    x = torch.randn(15, d, generator=seeded_generator(5, DEVICE), dtype=F64, device=DEVICE)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    # k = J is the full softmax
    s_all, lp_all = EmpiricalScore(
        y, process, log_weights=log_w, k=500, chunk_size=37
    ).score_and_log_density(x, t)
    close(s_all, full.score(x, t))
    close(lp_all, full.log_density(x, t))
    # k = 1 with equal weights: the nearest sample, (a y_nn - x) / s²
    nn = EmpiricalScore(y, process, k=1, chunk_size=37)
    y_nn = y[torch.cdist(x, a * y).argmin(1)]
    close(nn.score(x, t), (a * y_nn - x) / (s * s))
    # general k: the exact mixture restricted to the k largest responsibilities, per point
    k = 5
    model = EmpiricalScore(y, process, log_weights=log_w, k=k, chunk_size=37)
    s_k, lp_k = model.score_and_log_density(x, t)
    comp = GaussianMixture(
        torch.exp(log_w - torch.logsumexp(log_w, 0)),
        a * y,
        torch.full((500, d), s * s, dtype=F64, device=DEVICE),
    )
    log_terms = comp.component_log_prob(x)
    top = log_terms.topk(k, dim=1).indices
    log_wn = log_w - torch.logsumexp(log_w, 0)
    for i in range(x.shape[0]):
        sub_w = torch.exp(log_wn[top[i]] - torch.logsumexp(log_wn[top[i]], 0))
        sub = GaussianMixture(
            sub_w, a * y[top[i]], torch.full((k, d), s * s, dtype=F64, device=DEVICE)
        )
        close(s_k[i : i + 1], sub.score(x[i : i + 1]))
    close(
        lp_k, lp_all + torch.logsumexp(log_terms.gather(1, top), 1) - torch.logsumexp(log_terms, 1)
    )
    assert bool((lp_k <= lp_all + 1e-12).all())  # truncation: a lower bound


def test_memorisation_and_smoothing():
    """At small noise the empirical denoiser returns the data point x_t came from (memorisation);
    the KDE's (bandwidth h >> sigma_t) keeps most of x_t / alpha_t - y_j: it makes new points."""
    process, d, t = VP(), 2, 0.01
    grid = torch.arange(7, dtype=F64, device=DEVICE)
    y = torch.cartesian_prod(grid, grid)  # 49 points at spacing 1 >> sigma_t
    a, s = float(process.alpha(t)), float(process.sigma(t))
    x = a * y + s * torch.randn(
        49, d, generator=seeded_generator(1, DEVICE), dtype=F64, device=DEVICE
    )  # x_t | x_0 = y_j
    close(EmpiricalScore(y, process).posterior_mean(x, t), y, tol=1e-10)  # noise s ≈ 0.045
    x0_hat = EmpiricalScore(y, process, bandwidth=0.2).posterior_mean(x, t)
    kept = (x0_hat - y).norm(dim=1) / (x / a - y).norm(dim=1)
    assert float(kept.min()) > 0.5, kept


def test_float32_device_dtype_and_errors():
    y, log_w = data(100, 2)
    model32 = EmpiricalScore(y.float(), VP(), log_weights=log_w)
    x = torch.randn(7, 2, generator=seeded_generator(0, DEVICE), dtype=F64, device=DEVICE)
    s32, lp32 = model32.score_and_log_density(x.float(), 0.5)
    assert s32.dtype == torch.float32 and lp32.dtype == F64
    s64, lp64 = EmpiricalScore(y, VP(), log_weights=log_w).score_and_log_density(x, 0.5)
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lp32, lp64, rtol=1e-5, atol=1e-5)
    assert model32.n_target_evals == 0 and model32.n_grad_evals == 0
    with pytest.raises(SMCDiffError, match="dtype"):
        model32.score(x, 0.5)
    with pytest.raises(SMCDiffError, match="x has shape"):
        model32.score(x[:, :1].float(), 0.5)
    with pytest.raises(SMCDiffError, match="log_weights"):
        EmpiricalScore(
            y, VP(), log_weights=torch.full((100,), float("nan"), dtype=F64, device=DEVICE)
        )
    with pytest.raises(SMCDiffError, match="log_weights has shape"):
        EmpiricalScore(y, VP(), log_weights=log_w[:-1])
    with pytest.raises(SMCDiffError, match="variance"):
        EmpiricalScore(y, VP()).score(x, 0.0)  # sigma_0 = 0 and h = 0: no density
    EmpiricalScore(y, VP(), bandwidth=0.1).score(x, 0.0)  # the KDE has one
    with pytest.raises(SMCDiffError, match="bandwidth"):
        EmpiricalScore(y, VP(), bandwidth=-1.0)
    with pytest.raises(SMCDiffError, match="k must"):
        EmpiricalScore(y, VP(), k=0)
    model = EmpiricalScore(y, VP())
    model.update(y[:10])
    assert model.n_data == 10


@pytest.mark.parametrize("kw", [{}, {"bandwidth": 0.3}, {"k": 5, "chunk_size": 7}])
def test_event_shaped_samples_are_the_flat_score_reshaped(kw):
    """Samples (J, 2, 3) and x (N, 2, 3): the maths is per coordinate, so score, log density and
    posterior mean are those of the flattened (J, 6) set, in x's shape; one float time."""
    y, log_w = data(40, 6)
    x = torch.randn(5, 6, generator=seeded_generator(3, DEVICE), dtype=F64, device=DEVICE)
    flat = EmpiricalScore(y, VP(), log_weights=log_w, **kw)
    shaped = EmpiricalScore(y.reshape(40, 2, 3), VP(), log_weights=log_w, **kw)
    assert shaped.scalar_time is True and shaped.event_shape == (2, 3) and shaped.dim == 6
    s, lp = shaped.score_and_log_density(x.reshape(5, 2, 3), 0.4)
    s_flat, lp_flat = flat.score_and_log_density(x, 0.4)
    assert s.shape == (5, 2, 3)
    torch.testing.assert_close(s.reshape(5, 6), s_flat, rtol=0, atol=0)
    torch.testing.assert_close(lp, lp_flat, rtol=0, atol=0)
    torch.testing.assert_close(
        shaped.posterior_mean(x.reshape(5, 2, 3), 0.4).reshape(5, 6),
        flat.posterior_mean(x, 0.4),
        rtol=0,
        atol=0,
    )
    with pytest.raises(SMCDiffError, match="x has shape"):
        shaped.score(x, 0.4)
    with pytest.raises(SMCDiffError, match="samples has shape"):
        shaped.update(y)
