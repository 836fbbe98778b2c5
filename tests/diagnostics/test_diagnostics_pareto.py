"""pareto_k / tail_pareto_k: PSIS k-hat against weights with a known Pareto tail, against
exact top order statistics of 10^7 Pareto draws, and against ArviZ's psislw."""

import math

import numpy as np
import pytest
import torch

from smcdiff.diagnostics import pareto as pareto_module
from smcdiff.diagnostics import pareto_k
from smcdiff.diagnostics.arviz import import_arviz
from smcdiff.diagnostics.degeneracy import step_pareto_k
from smcdiff.diagnostics.pareto import tail_pareto_k
from smcdiff.engine.collectors import psis_tail_size
from smcdiff.errors import SMCDiffError

N = 20_000
M = math.floor(3 * math.sqrt(N))  # PSIS tail length: 424 largest weights


def pareto_log_weights(xi: float, seed: int, shape=(N,)) -> torch.Tensor:
    """log w for w ~ Pareto(alpha = 1/xi, x_m = 1): w = U^(-xi), so log w = xi * Exp(1).
    Exceedances of a Pareto over any threshold u are exactly GPD(shape xi, scale xi * u)."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return -xi * torch.log(u)


def test_uniform_weights_have_no_tail():
    k = pareto_k(torch.full((1000,), -math.log(1000), dtype=torch.float64))
    assert isinstance(k, float) and k < 0.5
    assert k == -math.inf  # bounded weights with an atom at the max: no Pareto tail at all


@pytest.mark.parametrize("xi", [0.2, 0.5, 1.0])
def test_recovers_known_tail_index(xi):
    # The GPD shape estimate from M tail points has sd about (1 + xi) / sqrt(M) (asymptotic MLE
    # sd; 0.07 at xi = 0.5); ArviZ's weak prior toward 0.5 adds a bias well below that. 3 sd.
    k = pareto_k(pareto_log_weights(xi, seed=1))
    assert abs(k - xi) < 3 * (1 + xi) / math.sqrt(M)


def test_grouped_runs_average_to_the_tail_index():
    # 16 runs at xi = 0.5: mean sd 0.073 / 4 = 0.018; tolerance 0.06 (about 3 sd plus the bias).
    lw = pareto_log_weights(0.5, seed=2, shape=(16, N))
    k = pareto_k(lw)
    assert isinstance(k, torch.Tensor) and k.shape == (16,) and k.dtype == torch.float64
    assert abs(k.mean().item() - 0.5) < 0.06
    # each row equals the single-run value
    assert k[3].item() == pytest.approx(pareto_k(lw[3]), abs=1e-12)


def test_ordering_and_invariance():
    ks = [pareto_k(pareto_log_weights(xi, seed=4)) for xi in (0.2, 0.5, 1.0)]
    assert ks[0] < ks[1] < ks[2]
    lw = pareto_log_weights(0.7, seed=5)
    # normalising (a constant shift) changes nothing; float32 input is fine
    assert pareto_k(lw - torch.logsumexp(lw, 0) + 3.0) == pytest.approx(pareto_k(lw), abs=1e-9)
    assert pareto_k(lw.float()) == pytest.approx(pareto_k(lw), abs=0.02)


def test_zero_weights_small_n_and_bad_input():
    lw = pareto_log_weights(0.5, seed=6, shape=(2000,))
    lw[:100] = -math.inf  # zero weights are legal
    assert np.isfinite(pareto_k(lw))
    assert pareto_k(torch.randn(10)) == math.inf  # too few particles for a 5-point tail fit
    with pytest.raises(SMCDiffError, match="NaN"):
        pareto_k(torch.tensor([0.0, math.nan] * 20))
    with pytest.raises(SMCDiffError, match="all log_weights are -inf"):
        pareto_k(torch.full((2, 50), -math.inf))
    with pytest.raises(SMCDiffError, match="shape"):
        pareto_k(torch.zeros(2, 3, 4))


def test_result_method(make_result):
    res = make_result(runs=2)
    k = res.pareto_k()
    assert k.shape == (2,) and torch.isfinite(k).all()


def arviz_khat(log_weights: torch.Tensor) -> np.ndarray:
    """k-hat of ArviZ 0.x's psislw on full rows (the reference our tail-only fit reproduces)."""
    az, major = import_arviz()
    if major != 0:
        pytest.skip("the reference is ArviZ 0.x's psislw (gone in ArviZ 1.x): install arviz<1")
    return np.asarray(az.psislw(log_weights.numpy().copy(), reff=1.0)[1])


def student_t_log_weights(seed: int, n: int = 5000, rows: int = 4) -> torch.Tensor:
    """log w = log t_1(x) - log t_4(x), x ~ t_4: Cauchy target, t_4 proposal (tail k -> 0.75)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, n, generator=g, dtype=torch.float64)
    e = torch.empty(2, rows, n, dtype=torch.float64).exponential_(generator=g)
    x = z / torch.sqrt(2 * e.sum(0) / 4)  # chi2 with 4 dof = 2 (E1 + E2)
    t1 = torch.distributions.StudentT(torch.tensor(1.0, dtype=torch.float64))
    t4 = torch.distributions.StudentT(torch.tensor(4.0, dtype=torch.float64))
    return t1.log_prob(x) - t4.log_prob(x)


@pytest.mark.parametrize("source", ["pareto", "student_t", "zero_weights"])
def test_tail_fit_equals_arviz_psislw_on_the_full_weights(source):
    if source == "student_t":
        lw = student_t_log_weights(seed=7)
    else:
        lw = pareto_log_weights(0.6, seed=8, shape=(4, 5000))
    if source == "zero_weights":
        lw[:, ::3] = -math.inf
    n = lw.shape[-1]
    top = torch.topk(lw, psis_tail_size(n) + 1, dim=-1).values  # (4, M + 1): all it is given
    expected = arviz_khat(lw)
    np.testing.assert_allclose(tail_pareto_k(top, n), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pareto_k(lw).numpy(), expected, rtol=1e-9, atol=1e-12)


def exact_top_log_weights(xi: float, n: int, rows: int, seed: int) -> torch.Tensor:
    """Exact draws of the M + 1 largest of n log-weights log w = xi * Exp(1) (Pareto weights),
    up to a shift per row (k-hat ignores it): by Renyi's representation the j-th largest of n
    Exp(1) draws minus the (M+1)-th largest is sum_{i=j}^{M} Z_i / i, Z_i iid Exp(1)."""
    M = psis_tail_size(n)
    g = torch.Generator().manual_seed(seed)
    z = torch.empty(rows, M, dtype=torch.float64).exponential_(generator=g)
    spacings = (z / torch.arange(1, M + 1, dtype=torch.float64)).flip(-1).cumsum(-1).flip(-1)
    return xi * torch.cat([spacings, torch.zeros(rows, 1, dtype=torch.float64)], dim=-1)


@pytest.mark.parametrize("xi", [0.3, 1.0])
def test_tail_fit_recovers_the_tail_index_of_ten_million_weights(xi):
    # M = 9487 tail points: the shape sd is about (1 + xi) / sqrt(M) (0.013 at xi = 0.3); the
    # prior's pull toward 0.5 is 10 / M of the distance (< 0.001). 4 sd per row, 3 sd the mean.
    n, rows = 10**7, 6
    sd = (1 + xi) / math.sqrt(psis_tail_size(n))
    k = tail_pareto_k(exact_top_log_weights(xi, n, rows, seed=3), n)
    assert np.all(np.abs(k - xi) < 4 * sd)
    assert abs(k.mean() - xi) < 3 * sd / math.sqrt(rows)


def test_step_pareto_k_fits_only_the_kept_tail(monkeypatch):
    # a WeightTails record of 10^7 particles holds M + 1 = 9488 values per step and group; the
    # fit is handed exactly those rows (never N values), at the steps it is asked for
    n, M = 10**7, psis_tail_size(10**7)
    top = exact_top_log_weights(0.5, n, rows=6, seed=4).reshape(3, 2, M + 1)
    seen = []

    def spy(rows, n_particles):
        seen.append((tuple(rows.shape), n_particles))
        return tail_pareto_k(rows, n_particles)

    monkeypatch.setattr(pareto_module, "tail_pareto_k", spy)
    where = np.array([[True, False], [False, False], [True, True]])
    k = step_pareto_k({"top": top, "n_particles": n}, where)
    assert seen == [((3, M + 1), n)]
    assert np.isnan(k[~where]).all()
    np.testing.assert_array_equal(k[where], tail_pareto_k(top[torch.as_tensor(where)], n))


def test_tail_fit_reads_only_the_first_m_plus_one_columns_and_needs_them():
    n = 5000
    M = psis_tail_size(n)
    lw = pareto_log_weights(0.5, seed=9, shape=(2, n))
    top = torch.topk(lw, M + 50, dim=-1).values
    padded = top.clone()
    padded[:, M + 1 :] = math.nan  # past the (M+1)-th largest: never read
    np.testing.assert_array_equal(tail_pareto_k(padded, n), tail_pareto_k(top[:, : M + 1], n))
    with pytest.raises(SMCDiffError, match="psis_tail_size"):
        tail_pareto_k(top[:, :M], n)
    flat = torch.zeros(1, M + 1, dtype=torch.float64)  # M largest equal: no Pareto tail
    assert tail_pareto_k(flat, n)[0] == -math.inf
    assert tail_pareto_k(top[:, :3], 20)[0] == math.inf  # fewer than 25 particles
