"""GaussianMixture vs scipy, autograd, finite differences, brute-force integration, sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logsumexp

from smcdiff.distributions import Gaussian, GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE, VP, Flow
from tests.stats import assert_proportions, assert_sample_moments

F64 = torch.float64


def random_mixture(k, d, *, diag=False, seed=0, dtype=F64, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=F64) + 0.2
    m = spread * torch.randn(k, d, generator=g, dtype=F64)
    if diag:
        c = 0.3 + torch.rand(k, d, generator=g, dtype=F64)
    else:
        a = torch.randn(k, d, d, generator=g, dtype=F64) / math.sqrt(d)
        c = a @ a.transpose(-1, -2) + 0.3 * torch.eye(d, dtype=F64)
    return GaussianMixture(w, m.to(dtype), c)


def scipy_log_prob(gm, x):
    w, m, c = gm.weights.double().numpy(), gm.means.double().numpy(), gm.covs.double().numpy()
    comps = [stats.multivariate_normal(m[k], c[k]).logpdf(x) for k in range(len(w))]
    return logsumexp(np.stack(comps, -1).reshape(len(x), -1) + np.log(w), axis=-1)


def naive_score(gm, x):
    """-Σ_k r_k Σ_k⁻¹(x - m_k) per component, float64."""
    w, m, c = gm.weights.double(), gm.means.double(), gm.covs.double()
    dist = torch.distributions.MultivariateNormal(m, covariance_matrix=c)
    logc = dist.log_prob(x.unsqueeze(-2)) + w.log()
    r = torch.softmax(logc, -1)
    prec_diff = torch.linalg.solve(c, (x.unsqueeze(-2) - m).unsqueeze(-1)).squeeze(-1)
    return -(r.unsqueeze(-1) * prec_diff).sum(-2)


# ---------------------------------------------------------------- construction and densities
@pytest.mark.parametrize("d", [1, 3, 8])
@pytest.mark.parametrize("diag", [False, True])
def test_log_prob_matches_scipy(d, diag):
    gm = random_mixture(4, d, diag=diag, seed=d)
    x = 2.0 * torch.randn(50, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    np.testing.assert_allclose(gm.log_prob(x).numpy(), scipy_log_prob(gm, x.numpy()), rtol=1e-10)
    lc = gm.component_log_prob(x.view(5, 10, d))
    assert lc.shape == (5, 10, 4)
    np.testing.assert_allclose(
        torch.logsumexp(lc, -1).reshape(-1).numpy(), gm.log_prob(x).numpy(), rtol=1e-12
    )


@pytest.mark.parametrize("diag", [False, True])
def test_whitening_gives_the_density_and_score(diag):
    """``whitening()`` = (W, c, log_norm) of the fused kernel: logsumexp_k(log_norm_k -
    |W_k x + c_k|^2 / 2) is scipy's log-density, -sum_k r_k W_k^T z_k the naive score."""
    gm = random_mixture(3, 4, diag=diag, seed=7)
    w, c, log_norm = gm.whitening()
    assert w.shape == (3, 4, 4) and c.shape == (3, 4) and log_norm.shape == (3,)
    x = 2.0 * torch.randn(40, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    z = torch.einsum("kij,nj->nki", w, x) + c
    ell = log_norm - 0.5 * z.square().sum(-1)
    np.testing.assert_allclose(torch.logsumexp(ell, -1).numpy(), scipy_log_prob(gm, x.numpy()),
                               rtol=1e-10)  # fmt: skip
    r = torch.softmax(ell, -1)
    score = -torch.einsum("nk,kij,nki->nj", r, w, z)
    torch.testing.assert_close(score, naive_score(gm, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("diag", [False, True])
def test_precision_form_gives_the_density_and_score(diag):
    """``precision_form()`` = (P, b, m, log_norm) of the fused "precision" kernel: P is
    symmetric, P Sigma = I, and logsumexp_k(log_norm_k - (x - m_k).(P_k x + b_k) / 2) is scipy's
    log-density, -sum_k r_k (P_k x + b_k) the naive score."""
    gm = random_mixture(3, 4, diag=diag, seed=7)
    prec, b, m, log_norm = gm.precision_form()
    assert prec.shape == (3, 4, 4) and b.shape == (3, 4) and m.shape == (3, 4)
    assert torch.equal(prec, prec.mT)
    torch.testing.assert_close(prec @ gm.covs, torch.eye(4, dtype=F64).expand(3, 4, 4))
    x = 2.0 * torch.randn(40, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = torch.einsum("kij,nj->nki", prec, x) + b
    ell = log_norm - 0.5 * ((x[:, None, :] - m) * g).sum(-1)
    np.testing.assert_allclose(torch.logsumexp(ell, -1).numpy(), scipy_log_prob(gm, x.numpy()),
                               rtol=1e-10)  # fmt: skip
    score = -(torch.softmax(ell, -1)[..., None] * g).sum(1)
    torch.testing.assert_close(score, naive_score(gm, x), rtol=1e-9, atol=1e-9)


def test_float32_matches_float64_and_dtype_rules():
    gm64 = random_mixture(3, 4, seed=3)
    gm32 = gm64.to(dtype=torch.float32)
    assert gm32.dtype == torch.float32 and gm32.means.dtype == torch.float32
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    s32, lp32 = gm32.score_and_log_prob(x.float())
    s64, lp64 = gm64.score_and_log_prob(x)
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-4)
    # non-tensors default to float32; tensors keep their dtype
    assert GaussianMixture([1.0], np.zeros((1, 2)), np.eye(2)[None]).dtype == torch.float32
    assert Gaussian(torch.zeros(2, dtype=F64), torch.eye(2)).dtype == F64


def test_diagonal_equals_full():
    diag = random_mixture(3, 5, diag=True, seed=4)
    full = GaussianMixture(diag.weights, diag.means, diag.covs)
    assert diag.is_diagonal and not full.is_diagonal
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    for a, b in zip(diag.score_and_log_prob(x), full.score_and_log_prob(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- scores
@pytest.mark.parametrize("diag", [False, True])
def test_score_autograd_finite_differences_and_naive(diag):
    gm = random_mixture(5, 6, diag=diag, seed=5)
    x = 2.0 * torch.randn(30, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    x.requires_grad_(True)
    score, log_p = gm.score_and_log_prob(x)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_p, gm.log_prob(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(score.detach(), naive_score(gm, x.detach()), rtol=1e-10, atol=1e-10)

    h = 1e-5
    eye = torch.eye(6, dtype=F64)
    xd = x.detach()
    fd = torch.stack(
        [(gm.log_prob(xd + h * eye[i]) - gm.log_prob(xd - h * eye[i])) / (2 * h) for i in range(6)],
        -1,
    )
    torch.testing.assert_close(score.detach(), fd, rtol=1e-6, atol=1e-6)


def test_score_is_twice_differentiable_and_stable_far_out():
    gm = random_mixture(3, 3, seed=6)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(gm.score, (x,))
    at_mean = gm.means[:1].clone()  # z_k = 0 exactly for one component
    hess = torch.autograd.functional.hessian(lambda y: gm.log_prob(y).sum(), at_mean)
    jac = torch.autograd.functional.jacobian(lambda y: gm.score(y).sum(0), at_mean)
    assert torch.isfinite(hess).all()
    torch.testing.assert_close(hess[0, :, 0], jac[:, 0], rtol=1e-9, atol=1e-9)
    far = torch.full((2, 3), 1e3, dtype=F64)
    s, lp = gm.score_and_log_prob(far)
    assert torch.isfinite(s).all() and torch.isfinite(lp).all()
    torch.testing.assert_close(s, naive_score(gm, far), rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------- sampling and moments
@pytest.mark.parametrize("diag", [False, True])
def test_sample_moments_and_components(diag):
    gm = random_mixture(3, 3, diag=diag, seed=7)
    x, comp = gm.sample(100_000, torch.Generator().manual_seed(0), return_components=True)
    assert x.shape == (100_000, 3) and comp.shape == (100_000,)
    assert_sample_moments(x, gm.mean(), gm.covariance())
    freq = torch.bincount(comp, minlength=3).double() / 100_000
    assert_proportions(freq, gm.weights, 100_000, what="component frequencies")
    k = 1
    assert_sample_moments(x[comp == k], gm.means[k], gm.covs[k])
    again = gm.sample(100_000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_moments_match_quadrature_1d():
    gm = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [[0.5], [1.5]]).to(dtype=F64)
    p = lambda x: float(gm.log_prob(torch.tensor([[x]], dtype=F64)).exp())  # noqa: E731
    mu = integrate.quad(lambda x: x * p(x), -20, 20)[0]
    var = integrate.quad(lambda x: (x - mu) ** 2 * p(x), -20, 20)[0]
    assert abs(float(gm.mean()[0]) - mu) < 1e-8
    assert abs(float(gm.covariance()[0, 0]) - var) < 1e-8


# ---------------------------------------------------------------- noising
@pytest.mark.parametrize("process", [VP(), VP("cosine"), VE(sigma_max=5.0), Flow()], ids=repr)
@pytest.mark.parametrize("diag", [False, True])
def test_noised_matches_forward_process(process, diag):
    gm = random_mixture(3, 2, diag=diag, seed=8)
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(50_000, g)
    for t in (0.1, 0.5, 0.9):
        a, s = process.alpha(t), process.sigma(t)
        xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=F64)
        pt = gm.noised(process, t)
        assert pt.is_diagonal == diag
        assert_sample_moments(xt, pt.mean(), pt.covariance())
        torch.testing.assert_close(pt.means, a * gm.means)


def test_noised_exact_and_cached():
    gm = random_mixture(2, 2, seed=9)
    vp, vp2 = VP(), VP()
    pt = gm.noised(vp, 0.3)
    a, s = float(vp.alpha(0.3)), float(vp.sigma(0.3))
    torch.testing.assert_close(pt.covs, a * a * gm.covs + s * s * torch.eye(2, dtype=F64))
    torch.testing.assert_close(pt.weights, gm.weights)
    assert gm.noised(vp, 0.3) is pt
    assert gm.noised(vp, torch.tensor(0.3, dtype=F64)) is pt
    assert gm.noised(vp2, 0.3) is not pt
    assert gm.noised(vp, 0.4) is not pt
    for t in np.linspace(0.05, 0.95, 10):
        gm.noised(vp, float(t))
    assert len(gm._noised_cache) <= 4
    torch.testing.assert_close(gm.noised(vp, 0.0).covs, gm.covs)


# ---------------------------------------------------------------- posterior
def test_posterior_single_gaussian_textbook():
    g = torch.Generator().manual_seed(10)
    d, m_obs = 4, 3
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    A = torch.randn(m_obs, d, generator=g, dtype=F64)
    y = torch.randn(m_obs, generator=g, dtype=F64)
    R = 0.3**2 * torch.eye(m_obs, dtype=F64)
    post, log_ev = Gaussian(mean, cov).posterior(A, y, 0.3)
    prec = torch.linalg.inv(cov) + A.T @ torch.linalg.inv(R) @ A
    cov_ref = torch.linalg.inv(prec)
    mean_ref = cov_ref @ (torch.linalg.solve(cov, mean) + A.T @ torch.linalg.solve(R, y))
    torch.testing.assert_close(post.covs[0], cov_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(post.means[0], mean_ref, rtol=1e-9, atol=1e-11)
    ev_ref = stats.multivariate_normal(A @ mean, A @ cov @ A.T + R).logpdf(y)
    assert log_ev.dtype == F64 and abs(float(log_ev) - ev_ref) < 1e-10
    post2, log_ev2 = Gaussian(mean, cov).posterior(A, y, noise_cov=R)
    torch.testing.assert_close(post2.covs, post.covs)
    torch.testing.assert_close(log_ev2, log_ev)


def test_posterior_mixture_1d_quadrature():
    gm = GaussianMixture([0.2, 0.5, 0.3], [[-2.0], [0.5], [3.0]], [[0.4], [1.0], [0.3]])
    gm = gm.to(dtype=F64)
    a_obs, y, r = 1.3, 1.1, 0.7
    post, log_ev = gm.posterior([[a_obs]], [y], r)

    def joint_k(x, k):
        w, m, v = (float(gm.weights[k]), float(gm.means[k, 0]), float(gm.covs[k, 0, 0]))
        return w * stats.norm.pdf(x, m, math.sqrt(v)) * stats.norm.pdf(y, a_obs * x, r)

    quad = lambda f: integrate.quad(f, -15, 15, epsabs=1e-13, limit=200)[0]  # noqa: E731
    z_k = np.array([quad(lambda x, k=k: joint_k(x, k)) for k in range(3)])
    mean_k = np.array([quad(lambda x, k=k: x * joint_k(x, k)) for k in range(3)]) / z_k
    var_k = (
        np.array([quad(lambda x, k=k: (x - mean_k[k]) ** 2 * joint_k(x, k)) for k in range(3)])
        / z_k
    )
    assert abs(float(log_ev) - math.log(z_k.sum())) < 1e-9
    np.testing.assert_allclose(post.weights.numpy(), z_k / z_k.sum(), rtol=1e-8)
    np.testing.assert_allclose(post.means[:, 0].numpy(), mean_k, rtol=1e-8)
    np.testing.assert_allclose(post.covs[:, 0, 0].numpy(), var_k, rtol=1e-8)


def grid_2d(lim=9.0, n=601):
    u = torch.linspace(-lim, lim, n, dtype=F64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2), (u[1] - u[0]) ** 2


def grid_moments(log_f, pts, cell):
    """log ∫f, mean and covariance of f/∫f on a grid (f given in log space)."""
    log_z = torch.logsumexp(log_f, 0) + cell.log()
    p = torch.exp(log_f - log_z) * cell
    mean = p @ pts
    xc = pts - mean
    return log_z, mean, (p.unsqueeze(-1) * xc).T @ xc


def test_posterior_mixture_2d_grid():
    gm = random_mixture(3, 2, seed=11, spread=1.5)
    A = torch.tensor([[1.0, -0.5]], dtype=F64)
    y, r = torch.tensor([0.8], dtype=F64), 0.5
    post, log_ev = gm.posterior(A, y, r)
    pts, cell = grid_2d()
    log_f = gm.log_prob(pts) + torch.distributions.Normal(pts @ A[0], r).log_prob(y)
    log_z, mean, cov = grid_moments(log_f, pts, cell)
    assert abs(float(log_ev - log_z)) < 1e-6
    torch.testing.assert_close(post.mean(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(post.covariance(), cov, rtol=0, atol=1e-6)
    # the posterior density itself is the normalised product
    torch.testing.assert_close(
        post.log_prob(pts[::997]), log_f[::997] - log_ev, rtol=1e-9, atol=1e-9
    )


# ---------------------------------------------------------------- tilt
def test_tilt_1d_quadrature():
    gm = GaussianMixture([0.4, 0.6], [[-1.0], [1.5]], [[0.6], [0.3]]).to(dtype=F64)
    b, q, beta = 0.7, 0.8, 1.3
    tilted, log_norm = gm.tilt([b], [[q]], beta)
    f = lambda x: math.exp(  # noqa: E731
        float(gm.log_prob(torch.tensor([[x]], dtype=F64))) + beta * (b * x - 0.5 * q * x * x)
    )
    z = integrate.quad(f, -15, 15, epsabs=1e-13)[0]
    assert abs(float(log_norm) - math.log(z)) < 1e-9
    for x in (-2.0, 0.0, 0.7, 2.5):
        lt = float(tilted.log_prob(torch.tensor([[x]], dtype=F64)))
        assert abs(lt - math.log(f(x) / z)) < 1e-9


@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("with_q", [False, True])
def test_tilt_2d_grid(diag, with_q):
    gm = random_mixture(3, 2, diag=diag, seed=12, spread=1.0)
    b = torch.tensor([0.5, -0.3], dtype=F64)
    q = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=F64) if with_q else None
    beta = 0.8
    tilted, log_norm = gm.tilt(b, q, beta)
    assert tilted.is_diagonal == (diag and not with_q)
    pts, cell = grid_2d()
    energy = pts @ b - (0.5 * ((pts @ q) * pts).sum(-1) if with_q else 0.0)
    log_f = gm.log_prob(pts) + beta * energy
    log_z, mean, cov = grid_moments(log_f, pts, cell)
    assert abs(float(log_norm - log_z)) < 1e-6
    torch.testing.assert_close(tilted.mean(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(tilted.covariance(), cov, rtol=0, atol=1e-6)


def test_tilt_reproduces_posterior():
    gm = random_mixture(4, 3, seed=13)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, generator=g, dtype=F64)
    y = torch.randn(2, generator=g, dtype=F64)
    L = torch.tensor([[0.5, 0.0], [0.2, 0.3]], dtype=F64)
    R = L @ L.T
    post, log_ev = gm.posterior(A, y, noise_cov=R)
    r_inv = torch.linalg.inv(R)
    tilted, log_norm = gm.tilt(A.T @ r_inv @ y, A.T @ r_inv @ A)
    for a, b in [(tilted.weights, post.weights), (tilted.means, post.means)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tilted.covs, post.covs, rtol=1e-10, atol=1e-12)
    # p(y) = E_p[exp(yᵀR⁻¹Ax − ½xᵀAᵀR⁻¹Ax)] · exp(−½yᵀR⁻¹y) / sqrt|2πR|
    const = -0.5 * y @ r_inv @ y - 0.5 * torch.logdet(2 * math.pi * R)
    assert abs(float(log_norm + const - log_ev)) < 1e-10


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("args", "name"),
    [
        (([-0.1, 1.1], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
        (([0.0, 0.0], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
        (([float("nan"), 1.0], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
        (([1.0, 1.0, 1.0], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
        (([1.0, 1.0], [0.0, 1.0], [[1.0], [1.0]]), "means"),
        (([1.0, 1.0], [[0.0], [float("inf")]], [[1.0], [1.0]]), "means"),
        (([1.0, 1.0], [[0.0], [1.0]], [1.0, 1.0]), "covs has shape (2,)"),
        (([1.0, 1.0], [[0.0], [1.0]], [[[1.0, 0.0]], [[1.0, 0.0]]]), "covs has shape (2, 1, 2)"),
        (([1.0, 1.0], [[0.0], [1.0]], [[1.0], [-1.0]]), "covs"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "covs"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), "covs is not symmetric"),
    ],
)
def test_bad_construction(args, name):
    with pytest.raises(SMCDiffError, match=name.replace("(", r"\(").replace(")", r"\)")):
        GaussianMixture(*args)


def test_bad_method_inputs():
    gm = random_mixture(2, 3, seed=14)
    A, y = torch.ones(2, 3, dtype=F64), torch.ones(2, dtype=F64)
    cases = [
        (lambda: gm.log_prob(torch.zeros(4, 2, dtype=F64)), "x has shape"),
        (lambda: gm.score(torch.zeros(4, 3)), "x has dtype"),
        (lambda: gm.score(np.zeros((4, 3))), "x must be a torch.Tensor"),
        (lambda: gm.sample(0), "n must be"),
        (lambda: gm.noised(VP(), 1.5), "t must lie"),
        (lambda: gm.noised(VP(), torch.zeros(2)), "t must be a scalar"),
        (lambda: gm.noised("vp", 0.5), "process"),
        (lambda: gm.posterior(torch.ones(2, 2), y, 0.1), "A has shape"),
        (lambda: gm.posterior(A, torch.ones(3), 0.1), "y has shape"),
        (lambda: gm.posterior(A, y), "noise_std"),
        (lambda: gm.posterior(A, y, 0.1, noise_cov=torch.eye(2)), "exactly one"),
        (lambda: gm.posterior(A, y, -0.1), "noise_std must be"),
        (lambda: gm.posterior(A, y, noise_cov=torch.eye(3)), "noise_cov has shape"),
        (lambda: gm.posterior(A, y, noise_cov=-torch.eye(2)), "noise_cov is not positive"),
        (lambda: gm.tilt(torch.ones(2)), "b has shape"),
        (lambda: gm.tilt(None, torch.eye(2)), "Q has shape"),
        (lambda: gm.tilt(None, torch.tensor([[1.0, 1.0], [0.0, 1.0]])), "Q"),
        (lambda: gm.tilt(None, torch.eye(3), beta=-100.0), "beta"),
        (lambda: gm.tilt(None, None, beta=float("nan")), "beta"),
        (lambda: gm.to(dtype=torch.int64), "dtype"),
    ]
    for call, msg in cases:
        with pytest.raises(SMCDiffError, match=msg):
            call()


def test_repr_and_attributes():
    gm = random_mixture(3, 2, diag=True, seed=15)
    assert "n_components=3" in repr(gm) and "diag" in repr(gm)
    assert gm.n_components == 3 and gm.dim == 2 and gm.device == torch.device("cpu")
    assert gm.covs.shape == (3, 2, 2) and abs(float(gm.weights.sum()) - 1) < 1e-12
