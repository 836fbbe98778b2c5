"""GeometricScore and the anneal / product / cfg constructors."""

import math

import pytest
import torch
from scipy import integrate

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.scores import DensityScoreModel, ScoreModel
from smcdiff.scores.combine import GeometricDensityScore, GeometricScore, anneal, cfg, product

F64 = torch.float64
VP = smcdiff.VP()


def model(mean, cov, process=VP):
    return smcdiff.exact_score(
        smcdiff.Gaussian(torch.tensor(mean, dtype=F64), torch.tensor(cov, dtype=F64)), process
    )


class ScoreOnly:
    """A score model without a log density (like a trained network)."""

    scalar_time = True  # it hands t on to an ExactScore

    def __init__(self, inner):
        self.inner, self.process, self.dim = inner, inner.process, inner.dim

    def score(self, x, t):
        return self.inner.score(x, t)


@pytest.fixture
def pair():
    return model([1.0, 0.0], [[1.0, 0.3], [0.3, 0.5]]), model([-1.0, 2.0], [[0.4, 0.0], [0.0, 2.0]])


def points(n=30, d=2):
    return 2.0 * torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_score_and_log_density_are_the_weighted_sums(pair):
    m1, m2 = pair
    g = GeometricScore([m1, m2], [1.5, -0.25])
    assert isinstance(g, GeometricDensityScore) and isinstance(g, DensityScoreModel)
    assert g.dim == 2 and g.process is VP and g.total_weight == 1.25 and g.n_components == 2
    x = points()
    for t in (0.001, 0.3, 0.9):
        comps = g.component_scores(x, t)
        assert comps.shape == (2, 30, 2)
        torch.testing.assert_close(comps[0], m1.score(x, t))
        want = 1.5 * m1.score(x, t) - 0.25 * m2.score(x, t)
        torch.testing.assert_close(g.score(x, t), want)
        log_rho = 1.5 * m1.log_density(x, t) - 0.25 * m2.log_density(x, t)
        torch.testing.assert_close(g.log_density(x, t), log_rho)
        s, lp = g.score_and_log_density(x, t)
        torch.testing.assert_close(s, want)
        torch.testing.assert_close(lp, log_rho)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(g.log_density(xr, t).sum(), xr)
        torch.testing.assert_close(grad, want)


def test_log_density_is_unnormalised():
    # int N(x; 0, v)^gamma dx = (2 pi v)^{(1-gamma)/2} gamma^{-1/2} in 1-D, not 1
    m = smcdiff.exact_score(smcdiff.Gaussian(torch.zeros(1, dtype=F64), torch.ones(1, 1)), VP)
    g, gamma, t = anneal(m, 3.0), 3.0, 0.2
    v = float(VP.alpha(t)) ** 2 + float(VP.sigma(t)) ** 2

    def dens(u):
        return math.exp(float(g.log_density(torch.tensor([[u]], dtype=F64), t)))

    mass, _ = integrate.quad(dens, -20, 20)
    assert mass == pytest.approx(
        (2 * math.pi * v) ** ((1 - gamma) / 2) / math.sqrt(gamma), rel=1e-8
    )
    assert abs(mass - 1.0) > 0.5


def test_constructors(pair):
    m1, m2 = pair
    a = anneal(m1, 2.5)
    assert a.models == (m1,) and a.weights == (2.5,)
    p = product(m1, m2)
    assert p.models == (m1, m2) and p.weights == (1.0, 1.0) and p.total_weight == 2.0
    c = cfg(m1, m2, 3.0)
    assert c.models == (m1, m2) and c.weights == (3.0, -2.0) and c.total_weight == 1.0
    assert cfg(m1, m2, 1.0).models == (m1,)  # zero weight: the unconditional is not evaluated
    nested = anneal(product(m1, m2), 2.0)  # flattened: the FKC weights need the diffusion marginals
    assert nested.models == (m1, m2) and nested.weights == (2.0, 2.0)
    merged = product(m1, m1)  # same object: evaluated once
    assert merged.models == (m1,) and merged.weights == (2.0,)
    x = points()
    torch.testing.assert_close(merged.score(x, 0.5), anneal(m1, 2.0).score(x, 0.5))


def test_log_density_only_when_every_component_has_one(pair):
    m1, m2 = pair
    g = product(m1, ScoreOnly(m2))
    assert type(g) is GeometricScore and isinstance(g, ScoreModel)
    assert not isinstance(g, DensityScoreModel)
    assert not hasattr(g, "log_density")
    x = points()
    torch.testing.assert_close(g.score(x, 0.4), m1.score(x, 0.4) + m2.score(x, 0.4))


def test_errors_name_the_problem(pair):
    m1, m2 = pair
    other = model([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], process=smcdiff.VP(beta_max=10.0))
    three = model([0.0, 0.0, 0.0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cases = [
        (lambda: GeometricScore([], []), "at least one"),
        (lambda: GeometricScore([m1, m2], [1.0]), "weights"),
        (lambda: GeometricScore([m1], [float("nan")]), "finite"),
        (lambda: GeometricScore([m1, "m2"], [1.0, 1.0]), "not a ScoreModel"),
        (lambda: GeometricScore([m1, other], [1.0, 1.0]), "process"),
        (lambda: GeometricScore([m1, three], [1.0, 1.0]), "dim"),
        (lambda: GeometricScore([m1, m2], [1.0, -1.5]), "positive"),
        (lambda: GeometricScore([m1], [0.0]), "zero"),
        (lambda: anneal(m1, 0.0), "gamma"),
        (lambda: product(m1), "two"),
        (lambda: cfg(m1, m2, float("inf")), "finite"),
    ]
    for make, match in cases:
        with pytest.raises(SMCDiffError, match=match):
            make()
    same = model([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], process=smcdiff.VP())  # equal, not identical
    assert GeometricScore([m1, same], [1, 1]).n_components == 2


class PerRow:
    """A score model without ``scalar_time`` (like a network): t must be a (N,) tensor."""

    def __init__(self, inner):
        self.inner, self.process, self.dim = inner, inner.process, inner.dim

    def score(self, x, t):
        assert isinstance(t, torch.Tensor) and t.shape == (x.shape[0],)
        return self.inner.score(x, float(t[0]))


def test_time_reaches_each_component_in_its_own_form(pair):
    m1, m2 = pair
    assert GeometricScore([m1, m2], [1.0, 1.0]).scalar_time  # all closed forms: a float
    g = GeometricScore([m1, PerRow(m2)], [1.0, 0.5])
    assert not g.scalar_time and g.event_shape == (2,)
    x = points()
    t = smcdiff.scores.model_time(g, 0.3, x)
    assert t.shape == (30,)
    torch.testing.assert_close(g.score(x, t), m1.score(x, 0.3) + 0.5 * m2.score(x, 0.3))
