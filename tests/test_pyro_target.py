r"""``from_pyro``: Pyro models as targets, checked on conjugate models in closed form.

The key identity: for a model with prior :math:`p(z)`, likelihood :math:`p(y|z)` and bijection
:math:`z = T(u)`, ``log_prob(u) = log p(T(u), y) + log|det J_T(u)|`` and the exact posterior density
of :math:`u` is :math:`q(u) = p(T(u)|y)\,|\det J_T(u)|`, so ``log_prob(u) - log q(u) = log p(y)``
at every ``u``. Every reference density, Jacobian and evidence below is written by hand (or by
autograd for a Jacobian), not taken from the distributions Pyro evaluates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc import run_chain
from smcdiff.pyro_target import PyroTarget, PyroVectorizationWarning, from_pyro
from smcdiff.target import Target, grad_log_prob

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


# ----------------------------------------------------------------------------- reference math
def normal_logpdf(x: torch.Tensor, m, s) -> torch.Tensor:
    return -0.5 * ((x - m) / s) ** 2 - torch.log(t64(s)) - 0.5 * LOG_2PI


def mvn_logpdf(x: torch.Tensor, m: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., k)``, by a Cholesky factor."""
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (x - m).unsqueeze(-1), upper=False).squeeze(-1)
    k = x.shape[-1]
    return -0.5 * (z * z).sum(-1) - chol.diagonal().log().sum() - 0.5 * k * LOG_2PI


def log_beta_fn(a: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a).sum(-1) - torch.lgamma(a.sum(-1))


def gaussian_linear_posterior(m0, c0, h, y, s):
    """Prior ``N(m0, c0)``, ``y = h z + N(0, s^2 I)``: posterior ``(mean, cov)`` and ``log p(y)``."""
    prec = torch.linalg.inv(c0) + h.T @ h / s**2
    cov = torch.linalg.inv(prec)
    mean = cov @ (torch.linalg.solve(c0, m0) + h.T @ y / s**2)
    log_ev = mvn_logpdf(y, h @ m0, h @ c0 @ h.T + s**2 * torch.eye(len(y), dtype=F64))
    return mean, cov, float(log_ev)


def log_abs_det_jacobian(
    f: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor
) -> torch.Tensor:
    """``log|det df/du|`` per row of ``u`` ``(N, d)``, ``f: (d,) -> (d,)``, by autograd."""
    return torch.stack(
        [torch.linalg.slogdet(torch.autograd.functional.jacobian(f, ui))[1] for ui in u]
    )


@dataclass
class Case:
    model: Callable
    args: tuple
    log_q: Callable[[torch.Tensor], torch.Tensor]  # exact posterior log density of u, (N,)
    log_evidence: float
    dim: int


# ----------------------------------------------------------------------------- conjugate models
Y_NN = torch.tensor([1.3, 0.4, 2.1, 1.7, 0.2, 1.1, 0.9, 2.6], dtype=F64)


def _nn_case(
    y: torch.Tensor,
    copies: int = 1,
    mask: torch.Tensor | None = None,
    mask_by_handler: bool = False,
) -> Case:
    """mu ~ N(m0, s0^2), y_i ~ N(mu, s^2); the likelihood scaled by ``copies`` (poutine.scale) or
    masked (``Distribution.mask`` or the ``poutine.mask`` handler, which sets ``site["mask"]``)."""
    m0, s0, s = 0.5, 2.0, 0.7

    def model(y):
        mu = pyro.sample("mu", dist.Normal(t64(m0), t64(s0)))
        pyro.deterministic("two_mu", 2 * mu)
        with pyro.plate("data", len(y)), poutine.scale(scale=float(copies)):
            d = dist.Normal(mu, t64(s))
            if mask is None:
                pyro.sample("y", d, obs=y)
            elif mask_by_handler:
                with poutine.mask(mask=mask):
                    pyro.sample("y", d, obs=y)
            else:
                pyro.sample("y", d.mask(mask), obs=y)

    y_eff = (y if mask is None else y[mask]).repeat(copies)
    h = torch.ones(len(y_eff), 1, dtype=F64)
    mean, cov, log_ev = gaussian_linear_posterior(t64([m0]), t64([[s0**2]]), h, y_eff, s)
    return Case(model, (y,), lambda u: normal_logpdf(u[:, 0], mean[0], cov[0, 0].sqrt()), log_ev, 1)


def normal_normal() -> Case:
    return _nn_case(Y_NN)


def normal_normal_scaled() -> Case:
    return _nn_case(Y_NN, copies=3)


MASK_NN = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)


def normal_normal_masked() -> Case:
    return _nn_case(Y_NN, mask=MASK_NN)


def normal_normal_mask_handler() -> Case:
    return _nn_case(Y_NN, mask=MASK_NN, mask_by_handler=True)


def beta_binomial() -> Case:
    a, b, n, k = 2.5, 1.5, 20, 13

    def model(k):
        p = pyro.sample("p", dist.Beta(t64(a), t64(b)))
        pyro.sample("k", dist.Binomial(n, p), obs=k)

    aa, bb = a + k, b + n - k

    def log_q(u):  # Beta(aa, bb) at p = sigmoid(u), times dp/du = p (1 - p)
        lp, l1p = torch.nn.functional.logsigmoid(u[:, 0]), torch.nn.functional.logsigmoid(-u[:, 0])
        return aa * lp + bb * l1p - log_beta_fn(t64([aa, bb]))

    log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    log_ev = log_choose + float(log_beta_fn(t64([aa, bb])) - log_beta_fn(t64([a, b])))
    return Case(model, (t64(k),), log_q, log_ev, 1)


def gamma_poisson() -> Case:
    a, b = 3.0, 2.0
    y = t64([2.0, 0.0, 3.0, 1.0, 4.0, 2.0])

    def model(y):
        lam = pyro.sample("lam", dist.Gamma(t64(a), t64(b)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(lam), obs=y)

    aa, bb = a + float(y.sum()), b + len(y)

    def log_q(u):  # Gamma(aa, rate bb) at lam = exp(u), times dlam/du = lam
        lam = u[:, 0].exp()
        return aa * math.log(bb) - math.lgamma(aa) + (aa - 1) * u[:, 0] - bb * lam + u[:, 0]

    log_ev = (
        -float(torch.lgamma(y + 1).sum())
        + a * math.log(b)
        - math.lgamma(a)
        + math.lgamma(aa)
        - aa * math.log(bb)
    )
    return Case(model, (y,), log_q, log_ev, 1)


M0_H, S0_H, TAU_H, S_H = 0.3, 1.5, 0.8, 0.6


def _hier_exact(y: torch.Tensor) -> tuple[Callable, float, torch.Tensor, torch.Tensor]:
    """mu ~ N(m0, s0^2), theta_j ~ N(mu, tau^2), y_jk ~ N(theta_j, s^2); z = (mu, theta)."""
    n_groups, k = y.shape
    c0 = torch.full((n_groups + 1, n_groups + 1), S0_H**2, dtype=F64)
    c0[1:, 1:] += TAU_H**2 * torch.eye(n_groups, dtype=F64)
    h = torch.zeros(n_groups * k, n_groups + 1, dtype=F64)
    h[torch.arange(n_groups * k), 1 + torch.arange(n_groups).repeat_interleave(k)] = 1.0
    m0 = torch.full((n_groups + 1,), M0_H, dtype=F64)
    mean, cov, log_ev = gaussian_linear_posterior(m0, c0, h, y.reshape(-1), S_H)
    return (lambda u: mvn_logpdf(u, mean, cov)), log_ev, mean, cov


Y_HIER = torch.tensor([[0.5, 1.2], [-0.7, -0.1], [2.0, 1.4]], dtype=F64)


def hierarchical_nested() -> Case:
    """The group latent theta sits in plate dim -2 (value (J, 1)); the data in a nested plate."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(t64(M0_H), t64(S0_H)))
        with pyro.plate("groups", y.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Normal(mu, t64(TAU_H)))
            with pyro.plate("obs", y.shape[1], dim=-1):
                pyro.sample("y", dist.Normal(theta, t64(S_H)), obs=y)

    log_q, log_ev, _, _ = _hier_exact(Y_HIER)
    return Case(model, (Y_HIER,), log_q, log_ev, 1 + Y_HIER.shape[0])


def hierarchical_flat() -> Case:
    """One plate with an automatically allocated dim; one observation per group."""
    y = t64([0.9, -1.1, 0.3, 2.2])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(t64(M0_H), t64(S0_H)))
        with pyro.plate("groups", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, t64(TAU_H)))
            pyro.sample("y", dist.Normal(theta, t64(S_H)), obs=y)

    log_q, log_ev, _, _ = _hier_exact(y[:, None])
    return Case(model, (y,), log_q, log_ev, 1 + len(y))


def mvn_normal() -> Case:
    """mu ~ MVN(m0, S0) (event (2,)), y_i ~ MVN(mu, S) in a plate."""
    m0 = t64([0.5, -1.0])
    s0 = t64([[2.0, 0.6], [0.6, 1.0]])
    s = t64([[0.5, -0.2], [-0.2, 0.8]])
    y = t64([[0.1, -0.5], [1.2, -1.4], [0.7, 0.2], [0.3, -0.9], [1.0, -0.3]])
    n = len(y)

    def model(y):
        mu = pyro.sample("mu", dist.MultivariateNormal(m0, s0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.MultivariateNormal(mu, s), obs=y)

    prec = torch.linalg.inv(s0) + n * torch.linalg.inv(s)
    cov = torch.linalg.inv(prec)
    mean = cov @ (torch.linalg.solve(s0, m0) + torch.linalg.solve(s, y.sum(0)))
    ones = torch.ones(n, n, dtype=F64)
    cov_y = torch.kron(ones, s0) + torch.kron(torch.eye(n, dtype=F64), s)
    log_ev = float(mvn_logpdf(y.reshape(-1), m0.repeat(n), cov_y))
    return Case(model, (y,), lambda u: mvn_logpdf(u, mean, cov), log_ev, 2)


def linreg_to_event() -> Case:
    """w ~ N(0, s0^2 I) as ``.expand([3]).to_event(1)``, y_i ~ N(x_i . w, s^2) in a plate."""
    s0, s = 1.3, 0.5
    x = t64(
        [[1.0, 0.2, -0.5], [0.3, -1.0, 0.8], [-0.6, 0.4, 1.1], [1.5, 0.9, 0.0], [0.2, -0.3, -1.2]]
    )
    y = t64([0.4, -1.2, 0.9, 1.6, -0.8])

    def model(x, y):
        w = pyro.sample("w", dist.Normal(t64(0.0), t64(s0)).expand([3]).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((x * w).sum(-1), t64(s)), obs=y)

    mean, cov, log_ev = gaussian_linear_posterior(
        torch.zeros(3, dtype=F64), s0**2 * torch.eye(3, dtype=F64), x, y, s
    )
    return Case(model, (x, y), lambda u: mvn_logpdf(u, mean, cov), log_ev, 3)


def _stick(u: torch.Tensor) -> torch.Tensor:
    return torch.distributions.biject_to(torch.distributions.constraints.simplex)(u)


def dirichlet_multinomial() -> Case:
    """p ~ Dirichlet(alpha) (simplex, stick-breaking: 3 unconstrained dims), counts ~ Mult(n, p)."""
    alpha = t64([1.5, 2.0, 0.8, 3.0])
    counts = t64([3.0, 5.0, 0.0, 7.0])
    n = int(counts.sum())

    def model(counts):
        p = pyro.sample("p", dist.Dirichlet(alpha))
        pyro.sample("counts", dist.Multinomial(n, p), obs=counts)

    post = alpha + counts

    def log_q(u):  # Dirichlet(post) density on the first K-1 coordinates, times |det d p[:-1]/du|
        p = _stick(u)
        log_dir = ((post - 1) * p.log()).sum(-1) - log_beta_fn(post)
        return log_dir + log_abs_det_jacobian(lambda v: _stick(v)[:-1], u)

    log_ev = (
        math.lgamma(n + 1)
        - float(torch.lgamma(counts + 1).sum())
        + float(log_beta_fn(post) - log_beta_fn(alpha))
    )
    return Case(model, (counts,), log_q, log_ev, 3)


def uniform_dynamic_support() -> Case:
    """theta ~ Gamma(2, 1), x ~ Uniform(0, theta): x's support depends on theta, per particle.
    No data: the posterior is the prior and the evidence is 1."""

    def model():
        theta = pyro.sample("theta", dist.Gamma(t64(2.0), t64(1.0)))
        pyro.sample("x", dist.Uniform(t64(0.0), theta))

    def to_z(v):  # (u_theta, u_x) -> (theta, x)
        theta = v[..., 0].exp()
        return torch.stack([theta, theta * torch.sigmoid(v[..., 1])], -1)

    def log_q(u):  # Gamma(theta; 2, 1) * (1 / theta) on 0 < x < theta, pushed back to u
        theta = u[:, 0].exp()
        return theta.log() - theta - theta.log() + log_abs_det_jacobian(to_z, u)

    return Case(model, (), log_q, 0.0, 2)


CASES = {
    f.__name__: f
    for f in (
        normal_normal,
        normal_normal_scaled,
        normal_normal_masked,
        normal_normal_mask_handler,
        beta_binomial,
        gamma_poisson,
        hierarchical_nested,
        hierarchical_flat,
        mvn_normal,
        linreg_to_event,
        dirichlet_multinomial,
        uniform_dynamic_support,
    )
}


def _points(target: PyroTarget, n: int = 6, seed: int = 1) -> torch.Tensor:
    """Prior draws plus the origin: several u spread over the region that matters."""
    u = target.init(n, torch.Generator().manual_seed(seed))
    return torch.cat([torch.zeros(1, target.dim, dtype=u.dtype), u])


# ----------------------------------------------------------------------------- the exact checks
@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_minus_exact_posterior_is_log_evidence(name):
    case = CASES[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PyroVectorizationWarning)
        target = from_pyro(case.model, *case.args)
    assert target.vectorized, "a plate-aware model must be vectorised in auto mode"
    assert isinstance(target, Target) and target.dim == case.dim
    u = _points(target)
    assert u.dtype == F64
    exact = case.log_q(u)
    for vec in (True, False):
        t = from_pyro(case.model, *case.args, vectorize=vec)
        lp = t.log_prob(u)
        assert lp.shape == (u.shape[0],) and lp.dtype == F64
        diff = lp - exact
        assert torch.allclose(diff, torch.full_like(diff, case.log_evidence), rtol=0, atol=1e-8), (
            name,
            vec,
            diff.tolist(),
            case.log_evidence,
        )


@pytest.mark.parametrize("name", ["hierarchical_nested", "dirichlet_multinomial", "mvn_normal"])
def test_vectorised_equals_loop_on_many_particles(name):
    case = CASES[name]()
    vec = from_pyro(case.model, *case.args, vectorize=True)
    loop = from_pyro(case.model, *case.args, vectorize=False)
    u = 1.5 * torch.randn(40, vec.dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert torch.allclose(vec.log_prob(u), loop.log_prob(u), rtol=1e-12, atol=1e-10)
    for k in vec.site_names:
        assert torch.allclose(vec.constrain(u)[k], loop.constrain(u)[k], rtol=1e-12, atol=1e-12)


def test_layout_and_shapes_of_hierarchical_model():
    target = from_pyro(hierarchical_nested().model, Y_HIER)
    assert target.site_names == ("mu", "theta")  # not the observed y, nor the plate indices
    assert target.site_shapes == {"mu": torch.Size([]), "theta": torch.Size([3, 1])}
    assert target.max_plate_nesting == 2
    u = _points(target)
    values = target.constrain(u)
    assert values["mu"].shape == (7,) and values["theta"].shape == (7, 3, 1)
    assert torch.equal(values["theta"].reshape(7, 3), u[:, 1:])  # real support: identity
    d = from_pyro(dirichlet_multinomial().model, *dirichlet_multinomial().args)
    assert d.site_shapes == {"p": torch.Size([4])} and d.dim == 3


def test_float32_model_follows_dtype():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.5, 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 0.7), obs=y)

    case = normal_normal()
    target = from_pyro(model, Y_NN.float())
    assert target.dtype == torch.float32
    u = _points(target)
    assert u.dtype == torch.float32
    lp = target.log_prob(u)
    assert lp.dtype == torch.float32
    want = case.log_q(u.double()) + case.log_evidence
    assert torch.allclose(lp.double(), want, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- gradients
def test_gradients_are_exact():
    nn = normal_normal()
    t = from_pyro(nn.model, *nn.args)
    u = _points(t).requires_grad_(True)
    (g_exact,) = torch.autograd.grad(nn.log_q(u).sum(), u)
    _, g = grad_log_prob(t, u.detach())
    assert torch.allclose(g, g_exact, rtol=1e-10, atol=1e-10)

    bb = beta_binomial()
    t = from_pyro(bb.model, *bb.args)
    u = _points(t)
    p = torch.sigmoid(u[:, 0])
    aa, bb_ = 2.5 + 13, 1.5 + 20 - 13  # d/du [aa log p + bb log(1 - p)]
    _, g = grad_log_prob(t, u)
    assert torch.allclose(g[:, 0], aa * (1 - p) - bb_ * p, rtol=1e-10, atol=1e-10)

    _, _, mean, cov = _hier_exact(Y_HIER)
    t = from_pyro(hierarchical_nested().model, Y_HIER)
    u = _points(t)
    _, g = grad_log_prob(t, u)
    assert torch.allclose(g, -(u - mean) @ torch.linalg.inv(cov), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- loop fallback
Y_LOOP = t64([0.3, -0.4, 1.1])


def _item_model(y):
    mu = pyro.sample("mu", dist.Normal(t64(0.0), t64(1.0)))
    sigma = 1.0 if mu.item() > 0 else 2.0  # not plate-aware: fails for N > 1
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, t64(sigma)), obs=y)


def _mean_model(y):
    mu = pyro.sample("mu", dist.Normal(t64(0.0), t64(1.0)))
    sigma = torch.exp(0.5 * mu.mean())  # silently mixes particles when vectorised
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def _loop_exact(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    lik = normal_logpdf(Y_LOOP[None, :], mu[:, None], sigma[:, None]).sum(-1)
    return normal_logpdf(mu, 0.0, 1.0) + lik


@pytest.mark.parametrize(
    ("model", "sigma_of_mu", "match"),
    [
        (_item_model, lambda mu: torch.where(mu > 0, 1.0, 2.0).to(F64), "RuntimeError"),
        (_mean_model, lambda mu: torch.exp(0.5 * mu), "differs"),
    ],
)
def test_loop_fallback_warns_once_and_is_right(model, sigma_of_mu, match):
    with pytest.warns(PyroVectorizationWarning, match=match):
        target = from_pyro(model, Y_LOOP)
    assert not target.vectorized
    mu = t64([-1.5, -0.3, 0.4, 2.0, -0.01, 0.02])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PyroVectorizationWarning)  # once: no second warning
        lp = target.log_prob(mu[:, None])
        lp = target.log_prob(mu[:, None])
        u0 = target.init(400, torch.Generator().manual_seed(0))
    assert torch.allclose(lp, _loop_exact(mu, sigma_of_mu(mu)), rtol=0, atol=1e-12)
    # the loop's prior draws are N(0, 1): mean within 5 standard errors (0.25)
    assert u0.shape == (400, 1) and abs(float(u0.mean())) < 5 / math.sqrt(400)
    _, g = grad_log_prob(target, mu[:, None])
    assert torch.isfinite(g).all()


def test_auto_mode_falls_back_when_a_later_batch_fails():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(t64(0.0), t64(0.3)))
        if bool((mu.abs() > 4).any()):  # only far out: passes the check at construction
            mu.item()
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, t64(1.0)), obs=y)

    with warnings.catch_warnings():
        warnings.simplefilter("error", PyroVectorizationWarning)
        target = from_pyro(model, Y_LOOP)
    assert target.vectorized
    mu = t64([0.2, -0.5, 5.0])
    with pytest.warns(PyroVectorizationWarning, match="RuntimeError"):
        lp = target.log_prob(mu[:, None])
    assert not target.vectorized
    want = normal_logpdf(mu, 0.0, 0.3) + _loop_exact(mu, torch.ones(3, dtype=F64))
    want = want - normal_logpdf(mu, 0.0, 1.0)  # _loop_exact has a N(0, 1) prior
    assert torch.allclose(lp, want, rtol=0, atol=1e-12)


def test_explicit_modes():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PyroVectorizationWarning)
        loop = from_pyro(_item_model, Y_LOOP, vectorize=False)  # no check, no warning
    assert not loop.vectorized
    forced = from_pyro(_item_model, Y_LOOP, vectorize=True)
    with pytest.raises(RuntimeError):
        forced.log_prob(t64([[0.5], [-0.5]]))
    with pytest.raises(SMCDiffError, match="vectorize"):
        from_pyro(_item_model, Y_LOOP, vectorize="yes")


# ----------------------------------------------------------------------------- rejected models
@pytest.mark.parametrize(
    "fn", [dist.Bernoulli(t64(0.3)), dist.Poisson(t64(2.0)), dist.Categorical(t64([0.2, 0.8]))]
)
def test_discrete_latent_site_is_rejected(fn):
    def model():
        pyro.sample("mu", dist.Normal(t64(0.0), t64(1.0)))
        pyro.sample("z", fn)

    with pytest.raises(SMCDiffError, match=r"latent site 'z' is discrete"):
        from_pyro(model)


def test_other_rejections():
    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(t64(0.0), t64(1.0)))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            pyro.sample("y", dist.Normal(mu, t64(1.0)), obs=y[idx])

    with pytest.raises(SMCDiffError, match="plate 'data' subsamples 2 of 3"):
        from_pyro(subsampled, Y_LOOP)

    def no_latent(y):
        pyro.sample("y", dist.Normal(t64(0.0), t64(1.0)), obs=y)

    with pytest.raises(SMCDiffError, match="no latent sample site"):
        from_pyro(no_latent, Y_LOOP)
    target = from_pyro(normal_normal().model, Y_NN)
    with pytest.raises(SMCDiffError, match="shape"):
        target.log_prob(torch.zeros(3, 2, dtype=F64))


# ----------------------------------------------------------------------------- init / prior
def test_init_prior_sample_and_round_trip():
    rng_before = torch.get_rng_state()
    t = from_pyro(hierarchical_nested().model, Y_HIER)
    u = t.init(4000, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left as it was
    assert torch.equal(u, t.init(4000, torch.Generator().manual_seed(7)))
    assert not torch.equal(u, t.init(4000, torch.Generator().manual_seed(8)))
    values = t.prior_sample(4000, torch.Generator().manual_seed(7))
    assert values["theta"].shape == (4000, 3, 1)
    assert torch.equal(values["theta"].reshape(4000, 3), u[:, 1:])
    # prior: mu ~ N(m0, s0^2), theta_j ~ N(m0, s0^2 + tau^2): means within 5 standard errors
    sd = torch.tensor([S0_H] + [math.hypot(S0_H, TAU_H)] * 3, dtype=F64)
    assert ((u.mean(0) - M0_H).abs() < 5 * sd / math.sqrt(4000)).all()
    assert ((u.std(0) / sd - 1).abs() < 5 / math.sqrt(2 * 4000)).all()

    bb = from_pyro(beta_binomial().model, *beta_binomial().args)
    p = bb.prior_sample(4000, torch.Generator().manual_seed(3))["p"]
    a, b = 2.5, 1.5
    sd_p = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert ((p > 0) & (p < 1)).all() and abs(float(p.mean()) - a / (a + b)) < 5 * sd_p / 63.2


@pytest.mark.parametrize(
    "name", ["beta_binomial", "dirichlet_multinomial", "uniform_dynamic_support"]
)
def test_constrain_unconstrain_round_trip(name):
    case = CASES[name]()
    for vec in (True, False):
        t = from_pyro(case.model, *case.args, vectorize=vec)
        u = _points(t)
        assert torch.allclose(t.unconstrain(t.constrain(u)), u, rtol=1e-10, atol=1e-10)
    if name == "uniform_dynamic_support":
        z = t.constrain(u)
        assert ((z["x"] > 0) & (z["x"] < z["theta"])).all()


# ----------------------------------------------------------------------------- ArviZ
def test_to_inference_data():
    import arviz as az

    t = from_pyro(hierarchical_nested().model, Y_HIER)
    u = _points(t)
    idata = t.to_inference_data(u)
    assert isinstance(idata, az.InferenceData)
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "theta"}
    assert post["mu"].dims == ("chain", "draw")
    assert post["theta"].dims == ("chain", "draw", "theta_dim_0", "theta_dim_1")
    assert post["theta"].shape == (1, 7, 3, 1)
    assert torch.equal(torch.from_numpy(post["theta"].values[0]), t.constrain(u)["theta"])

    bb = from_pyro(beta_binomial().model, *beta_binomial().args)
    u = _points(bb)
    lw = torch.full((7,), -math.inf, dtype=F64)
    lw[2], lw[5] = math.log(0.25), math.log(0.75)
    post = bb.to_inference_data(u, lw, n_draws=100, seed=0).posterior
    p = torch.from_numpy(post["p"].values[0])
    assert post["p"].shape == (1, 100)
    assert ((p > 0) & (p < 1)).all()
    p_all = torch.sigmoid(u[:, 0])
    n2, n5 = int((p == p_all[2]).sum()), int((p == p_all[5]).sum())
    assert n2 + n5 == 100 and abs(n2 - 25) <= 1  # systematic: counts within 1 of n W

    grouped = bb.to_inference_data(torch.stack([u, u]), torch.zeros(2, 7, dtype=F64)).posterior
    assert grouped["p"].shape == (2, 7)


# ----------------------------------------------------------------------------- MCMC sanity
def test_mala_recovers_normal_normal_posterior_mean():
    case = normal_normal()
    t = from_pyro(case.model, *case.args)
    y = Y_NN
    v_n = 1.0 / (1 / 2.0**2 + len(y) / 0.7**2)
    m_n = v_n * (0.5 / 2.0**2 + float(y.sum()) / 0.7**2)
    x0 = t.init(64, torch.Generator().manual_seed(0))
    res = run_chain("mala", t.log_prob, x0, 200, step_size=0.2, seed=0)
    chain_means = res.samples[:, :, 0].mean(0)  # (64,) independent chains
    se = float(chain_means.std() / math.sqrt(64))
    assert se < 0.1 * math.sqrt(v_n)  # the check below is tight
    assert abs(float(chain_means.mean()) - m_n) < 5 * se
