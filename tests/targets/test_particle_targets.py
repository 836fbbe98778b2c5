"""Particle systems (dw4, lj13, lj55): energies, symmetries, exact values, the centre-of-mass
Gaussian, and the replica-exchange MCMC reference sets.

Statistical checks are seeded and use 5 standard errors computed from independent chains
(between-chain variance of per-chain means), so they hold whatever the autocorrelation within a
chain; a correct sampler fails one with probability < 6e-7.
"""

import math

import numpy as np
import pytest
import torch
from smcdiff_targets.double_well import DoubleWell
from smcdiff_targets.particles import (
    ParticleSystem,
    cache_dir,
    dw4,
    lennard_jones_pair,
    lj13,
    lj55,
    quartic_pair,
    reference_samples,
)

from smcdiff.errors import SMCDiffError
from smcdiff.seeding import seeded_generator as gen
from smcdiff.target import Target, grad_log_prob
from tests.stats import (
    assert_gaussian_variance,
    assert_iid_mean,
    assert_unbiased,
    assert_within,
    grid_log_integral,
    replicate_se,
)

F64 = torch.float64
LJ13_MIN_PAIRS = -44.326801  # icosahedral global minimum of sum_{i<j} 4[(s/r)^12 - (s/r)^6]


def _spread(target: ParticleSystem, n: int, seed: int, scale: float) -> torch.Tensor:
    """Random configurations ``(n, dim)`` float64 with every pair distance > 1.1 = 5.5 soft
    floors, where the floor changes the squared distance by < 3e-15 (relative): energies are
    then the textbook ones to round-off."""
    x = scale * torch.randn(200 * n, target.dim, generator=gen(seed), dtype=F64)
    pos = x.view(-1, target.n_particles, target.spatial_dim)
    iu = torch.triu_indices(target.n_particles, target.n_particles, 1)
    ok = (pos[:, iu[0]] - pos[:, iu[1]]).norm(dim=-1).min(-1).values > 1.1
    assert int(ok.sum()) >= n
    return x[ok][:n]


def _direct_energy(target: ParticleSystem, x: np.ndarray, phi) -> np.ndarray:
    """Loops over configurations and ordered/unordered pairs, straight from the definition."""
    n, s = target.n_particles, target.spatial_dim
    out = np.zeros(x.shape[0])
    for k in range(x.shape[0]):
        pos = x[k].reshape(n, s)
        for i in range(n):
            for j in range(n):
                if i == j or (target.pair_weight == 1.0 and j < i):
                    continue
                out[k] += phi(np.linalg.norm(pos[i] - pos[j]))
        out[k] += 0.5 * target.harmonic * ((pos - pos.mean(0)) ** 2).sum()
    return out


def _dw4_phi(d):
    return 0.9 * (d - 4) ** 4 - 4 * (d - 4) ** 2


def _lj_phi(d):
    return (1 / d) ** 12 - 2 * (1 / d) ** 6


def _icosahedron(radius: float) -> torch.Tensor:
    """Centred icosahedron: 13 positions ``(13, 3)`` float64, the 12 vertices at ``radius``."""
    g = (1 + 5**0.5) / 2
    v = [p for a in (-1, 1) for b in (-g, g) for p in ((0, a, b), (a, b, 0), (b, 0, a))]
    v = torch.tensor(v, dtype=F64)
    return torch.cat([torch.zeros(1, 3, dtype=F64), radius * v / v.norm(dim=1, keepdim=True)])


def _random_rotation(s: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(s, s, generator=gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


# ----------------------------------------------------------------------------- definitions
def test_variants_and_protocol():
    for t, n, s, w, c in [
        (dw4(), 4, 2, 1.0, 0.0),
        (lj13(), 13, 3, 2.0, 1.0),
        (lj13("pairs"), 13, 3, 1.0, 1.0),
        (lj55(), 55, 3, 2.0, 1.0),
    ]:
        assert isinstance(t, Target) and t.log_z is None
        assert (t.n_particles, t.spatial_dim, t.dim, t.pair_weight, t.harmonic) == (
            n,
            s,
            n * s,
            w,
            c,
        )
        assert t.n_pairs == n * (n - 1) // 2
    assert [lj13().name, lj13("pairs").name, lj55().name] == ["lj13", "lj13_pairs", "lj55"]


@pytest.mark.parametrize(
    ("target", "phi", "scale"),
    [(dw4(), _dw4_phi, 2.5), (lj13(), _lj_phi, 2.5), (lj13("pairs"), _lj_phi, 2.5)],
    ids=["dw4", "lj13", "lj13_pairs"],
)
def test_energy_and_log_prob_match_direct_loops(target, phi, scale):
    x = _spread(target, 6, 0, scale) + 0.7  # off-centre: the COM term is not zero
    ref = _direct_energy(target, x.numpy(), phi)
    np.testing.assert_allclose(target.energy(x).numpy(), ref, rtol=1e-10)
    com = x.numpy().reshape(6, target.n_particles, -1).mean(1)
    s = target.spatial_dim
    ref_lp = -ref - target.n_particles * (com**2).sum(1) / 2 - 0.5 * s * math.log(2 * math.pi)
    np.testing.assert_allclose(target.log_prob(x).numpy(), ref_lp, rtol=1e-10)
    lp32 = target.log_prob(x.float())
    assert lp32.dtype == torch.float32 and lp32.shape == (6,)


def test_interatomic_distances_and_projection():
    t = lj13()
    x = _spread(t, 3, 1, 1.5)
    d = t.interatomic_distances(x)
    pos = x.view(3, 13, 3)
    iu = torch.triu_indices(13, 13, 1)
    ref = (pos[:, iu[0]] - pos[:, iu[1]]).norm(dim=-1)
    assert d.shape == (3, 78) and torch.allclose(d, ref, rtol=1e-12)
    y = t.project(x)
    assert torch.allclose(t.com(y), torch.zeros(3, 3, dtype=F64), atol=1e-12)
    assert torch.allclose(t.project(y), y, atol=1e-12)
    assert torch.allclose(y + t.com(x).repeat(1, 13), x, atol=1e-12)


@pytest.mark.parametrize("target", [dw4(), lj13()], ids=["dw4", "lj13"])
def test_gradient_matches_finite_differences(target):
    x = _spread(target, 3, 2, 2.5)
    _, grad = grad_log_prob(target, x)
    h = 1e-6
    eye = torch.eye(target.dim, dtype=F64)
    fd = torch.stack(
        [(target.log_prob(x + h * e) - target.log_prob(x - h * e)) / (2 * h) for e in eye], 1
    )
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-4 * (1 + grad.abs().max()))


# ----------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("target", [dw4(), lj13(), lj55()], ids=["dw4", "lj13", "lj55"])
def test_energy_invariances(target):
    n, s = target.n_particles, target.spatial_dim
    x = _spread(target, 4, 3, {4: 2.5, 13: 2.5, 55: 5.0}[n])
    e = target.energy(x)
    pos = x.view(4, n, s)
    shift = torch.randn(4, 1, s, generator=gen(4), dtype=F64) * 3
    rot = _random_rotation(s, 5)
    perm = torch.randperm(n, generator=gen(6))
    for moved in (pos + shift, pos @ rot.T, pos[:, perm], -pos):
        assert torch.allclose(target.energy(moved.reshape(4, -1)), e, rtol=1e-11, atol=1e-9)
    # log_prob moves under a translation by exactly the change of the COM term
    lp_shift = target.log_prob((pos + shift).reshape(4, -1)) - target.log_prob(x)
    com_new = (pos + shift).mean(1)
    com_old = pos.mean(1)
    expected = -0.5 * n * (com_new.square().sum(-1) - com_old.square().sum(-1))
    assert torch.allclose(lp_shift, expected, rtol=1e-10, atol=1e-8)


# ----------------------------------------------------------------------------- known values
def test_lj_dimer_and_triangle_at_the_pair_minimum():
    # pair minimum -eps at d = r_m = 1; a dimer and an equilateral triangle of side 1
    dimer = ParticleSystem(2, 3, lennard_jones_pair(), name="dimer")
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=F64)
    assert dimer.energy(x).item() == pytest.approx(-1.0, abs=1e-12)
    tri = ParticleSystem(3, 2, lennard_jones_pair(), pair_weight=2.0, name="tri")
    x = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.5, math.sqrt(3) / 2]], dtype=F64)
    assert tri.energy(x).item() == pytest.approx(-6.0, abs=1e-12)  # ordered pairs: 2 x 3 x -1
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tri.energy(xg).sum(), xg)
    assert g.abs().max() < 1e-10  # every pair sits at the minimum: no force


def test_lj13_icosahedral_minimum():
    from scipy.optimize import minimize_scalar

    def pair_part(target, radius):
        x = _icosahedron(radius).reshape(1, -1)
        return float(target.energy(x) - 0.5 * target.project(x).square().sum())

    pairs, dem = lj13("pairs"), lj13()
    res = minimize_scalar(
        lambda r: pair_part(pairs, r), bounds=(0.8, 1.2), method="bounded", options={"xatol": 1e-10}
    )
    assert res.fun == pytest.approx(LJ13_MIN_PAIRS, abs=2e-6)
    assert pair_part(dem, res.x) == pytest.approx(2 * LJ13_MIN_PAIRS, abs=4e-6)
    # the harmonic term of the icosahedron: 0.5 * 12 R^2
    x = _icosahedron(res.x).reshape(1, -1)
    assert float(dem.energy(x)) == pytest.approx(2 * LJ13_MIN_PAIRS + 6 * res.x**2, abs=4e-6)


def test_dw4_known_configurations():
    t = dw4()
    # a square of side 4: sides cost 0; diagonals 4 sqrt 2: 0.9 u^4 - 4 u^2, u = 4 sqrt2 - 4
    sq = torch.tensor([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]], dtype=F64)
    u = 4 * math.sqrt(2) - 4
    assert t.energy(sq).item() == pytest.approx(2 * (0.9 * u**4 - 4 * u**2), abs=1e-10)
    # each pair's minima: d = 4 +- sqrt(20/9), pair energy -40/9
    d_min = 4 + math.sqrt(20 / 9)
    phi = quartic_pair(0.9, -4.0, 4.0)
    assert phi(torch.tensor([d_min**2], dtype=F64)).item() == pytest.approx(-40 / 9, abs=1e-12)
    assert phi(torch.tensor([(8 - d_min) ** 2], dtype=F64)).item() == pytest.approx(-40 / 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target", [dw4(), lj13(), lj55()], ids=["dw4", "lj13", "lj55"])
def test_finite_at_coincident_particles(target, dtype):
    x = torch.zeros(3, target.dim, dtype=dtype)
    x[1, :3] = 1e-9  # two particles almost on top of each other
    x[2] = 0.3 * torch.randn(target.dim, generator=gen(7), dtype=dtype)
    lp, g = grad_log_prob(target, x)
    assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    if target.name != "dw4":
        assert (lp[:2] < -1e8).all()  # LJ: coincident pairs are (finitely) forbidden


# ----------------------------------------------------------------------------- COM Gaussian
@pytest.mark.parametrize(
    ("n", "weight", "k", "c", "com_std"), [(2, 1.0, 1.5, 0.0, 1.0), (3, 2.0, 1.0, 1.0, 0.7)]
)
def test_com_gaussian_normalisation_by_quadrature(n, weight, k, c, com_std):
    # 1-D particles with phi(d) = k d^2 / 2: U = a |y|^2, a = (w n k + c) / 2 on the (n-1)-dim
    # mean-free subspace, so exp(log_prob) integrates to (pi / a)^((n-1)/2) exactly; a wrong COM
    # variance (sigma^2 instead of sigma^2 / n) or normalisation changes it by a factor sqrt(n)
    t = ParticleSystem(
        n,
        1,
        lambda d2: 0.5 * k * d2,
        pair_weight=weight,
        harmonic=c,
        com_std=com_std,
        min_distance=1e-5,  # the floor moves phi by < 1e-10: invisible here
    )
    h = 0.05 if n == 2 else 0.08
    axis = torch.arange(-int(6 / h), int(6 / h) + 1, dtype=F64) * h
    grid = torch.cartesian_prod(*([axis] * n)).reshape(-1, n)
    log_int = grid_log_integral(t.log_prob(grid), h, n)
    a = (weight * n * k + c) / 2
    assert log_int == pytest.approx(0.5 * (n - 1) * math.log(math.pi / a), abs=1e-7)


def test_sample_com_law():
    t = lj13(com_std=2.0)
    c = t.sample_com(40_000, gen(8), dtype=F64).reshape(-1)
    var = 4.0 / 13
    assert_iid_mean(c, 0.0, var, what="COM mean")
    assert_gaussian_variance(c, var, what="COM variance")


# ----------------------------------------------------------------------------- reference sets
class _DoubleWellAdapter:
    """DoubleWell(2, 2, 4) with reference hooks: modes separated by a barrier of 16 in each
    coordinate, so plain chains never cross while tempered ones must; exact answers known."""

    def __init__(self):
        self.target = DoubleWell(2, 2, 4.0)
        self.dim, self.name = 2, "test_dw2"
        self.log_prob = self.target.log_prob

    def reference_init(self, n_chains, generator, device, dtype, settings):
        return 2.0 + 0.1 * torch.randn(n_chains, 2, generator=generator, device=device, dtype=dtype)


def test_replica_exchange_is_exact_on_a_double_well(tmp_path, monkeypatch):
    # all chains start in the (+, +) mode; only correct swaps spread them evenly over the four
    # modes with E|x| at the quadrature value
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    adapter, n_chains, draws = _DoubleWellAdapter(), 200, 20
    x, info = reference_samples(
        adapter,
        n_chains * draws,
        seed=0,
        dtype=F64,
        return_info=True,
        kernel="hmc",
        n_leapfrog=5,
        n_chains=n_chains,
        n_temps=6,
        beta_min=0.05,
        n_warmup=200,
        thin=5,
    )
    assert x.shape == (n_chains * draws, 2) and x.dtype == F64
    assert min(info["swap_rate"]) > 0.3
    per_chain = x.view(draws, n_chains, 2)
    mode = adapter.target.mode_index(x).view(draws, n_chains)
    for j in range(4):  # fraction in each mode: 1/4, chain means independent across chains
        assert_unbiased((mode == j).double().mean(0), 0.25, what=f"mass of mode {j}")
    absm = per_chain.abs().mean((0, 2))
    assert_unbiased(absm, adapter.target.abs_mean, what="E|x|")


@pytest.mark.slow
def test_dw4_reference_mixes_and_agrees_with_an_independent_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    # default settings (4 temperatures, thin 50) but 100 chains x 20 draws; the second run
    # differs in seed, trajectory length and temperature ladder
    t, n_chains, draws = dw4(), 100, 20
    runs = []
    for seed, extra in [(0, {}), (1, {"n_leapfrog": 6, "n_temps": 3, "beta_min": 0.4})]:
        x, info = reference_samples(
            t, n_chains * draws, seed=seed, return_info=True, n_chains=n_chains, **extra
        )
        assert x.shape == (n_chains * draws, 8) and info["draws_per_chain"] == draws
        # dispersed starts make this Gelman-Rubin: split R-hat over 200 half-chains of 10
        # draws has a sampling sd ~0.005 when the chains mix; non-mixing runs give > 1.05
        assert max(info["rhat"].values()) < 1.03, info["rhat"]
        runs.append(t.interatomic_distances(x).mean(-1).view(draws, n_chains).mean(0).double())
    # mean pair distance: per-chain means are independent, so the SE is exact up to its estimate
    (a, b) = runs
    se = (replicate_se(a) ** 2 + replicate_se(b) ** 2).sqrt()
    assert_within(a.mean(), b.mean(), se, what="mean pair distance, run 0 vs run 1")
    assert 3.5 < a.mean().item() < 4.5  # pair distances live around 2.5 and 5.5


@pytest.mark.slow
def test_plain_chains_fail_the_mixing_check(tmp_path, monkeypatch):
    # the diagnostic has teeth: without tempering, short dw4 chains do not cross the barrier
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    _, info = reference_samples(
        dw4(), 1000, return_info=True, n_chains=250, n_temps=1, thin=10, n_warmup=200
    )
    assert info["rhat"]["mean_distance"] > 1.05


@pytest.mark.slow
def test_reference_com_is_exact_and_independent(tmp_path, monkeypatch):
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    t = dw4(com_std=1.5)
    # (a cheap chain: the COM part is drawn exactly, whatever the chains did)
    x = reference_samples(t, 2000, n_chains=200, n_temps=1, thin=5, n_warmup=100, dtype=F64)
    com = t.com(x)
    var = 1.5**2 / 4
    assert_gaussian_variance(com.reshape(-1), var, what="COM variance")
    # independence of the COM and the mean-free part (reference_finalize): no correlation
    r = np.corrcoef(com.square().sum(-1).numpy(), t.interatomic_distances(x).mean(-1).numpy())
    assert_within(r[0, 1], 0.0, 1 / math.sqrt(x.shape[0]), what="correlation")


def test_reference_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    kw = {"n_chains": 10, "n_warmup": 20, "thin": 2}
    a = reference_samples(lj13(), 20, **kw)
    files = list(tmp_path.glob("lj13-n20-seed0-cpu-*.pt"))
    assert len(files) == 1
    b = reference_samples(lj13(), 20, **kw)
    assert torch.equal(a, b)
    c = reference_samples(lj13(), 20, **{**kw, "thin": 3})
    assert len(list(tmp_path.glob("lj13-*.pt"))) == 2 and not torch.equal(a, c)
    d = reference_samples(lj13(), 20, cache=False, **kw)
    assert torch.equal(a, d)  # same seed, same numbers
    assert a.shape == (20, 39) and torch.isfinite(a).all()
    assert lj13().interatomic_distances(a).min() > 0.6  # no overlapping particles


def test_reference_errors():
    with pytest.raises(SMCDiffError, match="no reference settings"):
        reference_samples(DoubleWell(2, 1, 1.0), 10)
    with pytest.raises(SMCDiffError, match="n_temps"):
        reference_samples(dw4(), 10, cache=False, n_temps=3, beta_min=1.5)
    with pytest.raises(SMCDiffError, match="convention"):
        lj13("eacf")
    with pytest.raises(SMCDiffError, match="n_particles"):
        ParticleSystem(1, 3, lennard_jones_pair())
    with pytest.raises(SMCDiffError, match="shape"):
        dw4().log_prob(torch.zeros(2, 9))
