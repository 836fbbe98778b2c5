"""Resampling schemes: unbiased counts, variance, seeding, batching, n != N, boundary guard."""

import math

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.resampling import SCHEMES, get_scheme, offspring_counts, systematic
from smcdiff.resampling.schemes import normalized_cdf
from smcdiff.weights import normalize
from tests.stats import assert_within

ALL = sorted(SCHEMES)
LOW_VARIANCE = [s for s in ALL if s != "multinomial"]

# Uneven weights with a zero in the middle; repetitions of one resampling run as a (REPS, N) batch.
W = torch.tensor([0.02, 0.3, 0.0, 0.15, 0.1, 0.08, 0.07, 0.2, 0.05, 0.03], dtype=torch.float64)
N = W.numel()
REPS = 4000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def repeated_counts(scheme: str, n: int, seed: int = 0) -> torch.Tensor:
    """Offspring counts ``(REPS, N)`` of ``REPS`` independent resamplings of ``W``, in one call."""
    ancestors = SCHEMES[scheme](W.log().expand(REPS, N), n, generator=gen(seed))
    assert ancestors.shape == (REPS, n) and ancestors.dtype == torch.int64
    return offspring_counts(ancestors, N)


def test_offspring_counts_counts_each_ancestor_per_group():
    ancestors = torch.tensor([[0, 0, 2], [3, 3, 3]])
    assert offspring_counts(ancestors, 4).tolist() == [[2, 0, 1, 0], [0, 0, 0, 3]]


@pytest.mark.parametrize("n", [N, 7, 23])
@pytest.mark.parametrize("scheme", ALL)
def test_counts_are_unbiased_sum_to_n_and_skip_zero_weights(scheme, n):
    counts = repeated_counts(scheme, n).double()
    assert (counts.sum(-1) == n).all()
    assert (counts[:, W == 0] == 0).all()
    # Every scheme's count variance is at most the multinomial one, n W (1 - W), so the mean of
    # REPS draws has standard error <= sqrt(n W (1 - W) / REPS); 5 of them bound a false alarm
    # (over 150 checks) at ~1e-4. Zero weights get a zero tolerance.
    se = (n * W * (1 - W) / REPS).sqrt()
    assert_within(counts.mean(0), n * W, se, what=f"{scheme} mean offspring counts")


@pytest.mark.parametrize("scheme", LOW_VARIANCE)
def test_low_variance_schemes_have_smaller_offspring_variance_than_multinomial(scheme):
    var = repeated_counts(scheme, N).double().var(0).sum()
    var_multinomial = repeated_counts("multinomial", N).double().var(0).sum()
    assert var < var_multinomial


@pytest.mark.parametrize("n", [N, 23])
@pytest.mark.parametrize("scheme", ["systematic", "ssp"])
def test_counts_are_floor_or_ceil_of_expected_count(scheme, n):
    counts = repeated_counts(scheme, n)
    nw = n * W  # the 1e-9 absorbs round-off of W at integer n W_i (then the count is exact)
    assert ((nw + 1e-9).floor() <= counts).all() and (counts <= (nw - 1e-9).ceil()).all()


@pytest.mark.parametrize("scheme", ALL)
def test_same_seed_gives_same_ancestors_and_other_seed_differs(scheme):
    log_w = torch.randn(64, N, generator=gen(123))
    first = SCHEMES[scheme](log_w, generator=gen(7))
    assert torch.equal(first, SCHEMES[scheme](log_w, generator=gen(7)))
    assert not torch.equal(first, SCHEMES[scheme](log_w, generator=gen(8)))


@pytest.mark.parametrize("scheme", ALL)
def test_each_group_resamples_from_its_own_weights(scheme):
    # group (a, b) puts all its weight on particle 5a + b, under two leading batch dims
    log_w = torch.full((N, N), -math.inf).fill_diagonal_(0.0).reshape(2, 5, N)
    ancestors = SCHEMES[scheme](log_w, 4, generator=gen(0))
    assert torch.equal(ancestors, torch.arange(N).reshape(2, 5, 1).expand(2, 5, 4))


@pytest.mark.parametrize("scheme", ALL)
def test_batched_groups_with_random_zero_weights(scheme):
    log_w = torch.randn(2, 3, N, generator=gen(1))
    log_w[torch.rand(2, 3, N, generator=gen(2)) < 0.4] = -math.inf
    log_w[..., 0] = 0.0  # at least one positive weight per group
    counts = offspring_counts(SCHEMES[scheme](log_w, 50, generator=gen(3)), N)
    assert counts.shape == (2, 3, N)
    assert (counts.sum(-1) == 50).all()
    assert (counts[log_w == -math.inf] == 0).all()


@pytest.mark.parametrize(("n_in", "n_out"), [(1000, 50), (5, 20), (1, 3)])
@pytest.mark.parametrize("scheme", ALL)
def test_resample_to_a_different_number_of_particles(scheme, n_in, n_out):
    ancestors = SCHEMES[scheme](torch.randn(3, n_in, generator=gen(4)), n_out, generator=gen(5))
    assert ancestors.shape == (3, n_out)
    assert ancestors.min() >= 0 and ancestors.max() < n_in
    assert (offspring_counts(ancestors, n_in).sum(-1) == n_out).all()


def test_cdf_is_exactly_one_from_the_last_positive_weight_on():
    log_w = torch.randn(10**6, generator=gen(6))
    log_w[-3:] = -math.inf
    cdf = normalized_cdf(normalize(log_w.double()))
    assert (cdf[-4:] == 1.0).all()


@pytest.mark.parametrize("scheme", ALL)
def test_zero_weight_last_particle_never_chosen_float32_million_particles(scheme):
    # All weight on the first N - 1 particles, in float32 (BlackJAX's boundary case). With n = N
    # the largest systematic / stratified uniform lies in [1 - 1/N, 1): above the end of a float32
    # cumulative sum of 10^6 terms that falls short of 1, and rounded to 1.0 when computed in
    # float32; either way searchsorted would run past the last positive weight to particle N - 1.
    n_big = 10**6
    log_w = torch.zeros(n_big, dtype=torch.float32)
    log_w[-1] = -math.inf
    for seed in range(2):
        assert SCHEMES[scheme](log_w, generator=gen(seed)).max() < n_big - 1


def test_systematic_top_uniform_rounding_to_one_in_float32_skips_zero_weight():
    # The top systematic uniform is (N - 1 + V)/N; pick a seed whose V puts it within 2^-25 of 1,
    # where float32 rounds it to 1.0 and searchsorted would return N (clamped: particle N - 1).
    n_big = 10**6
    seed = next(
        s for s in range(1000) if torch.rand(1, dtype=torch.float64, generator=gen(s)) > 0.99
    )
    top = (n_big - 1 + torch.rand(1, dtype=torch.float64, generator=gen(seed))) / n_big
    assert top.float() == 1.0
    log_w = torch.zeros(n_big, dtype=torch.float32)
    log_w[-1] = -math.inf
    assert systematic(log_w, generator=gen(seed)).max() < n_big - 1


def test_unknown_scheme_name_raises_with_the_valid_names():
    with pytest.raises(SMCDiffError, match="valid names") as info:
        get_scheme("sytematic")
    assert all(name in str(info.value) for name in SCHEMES)


def test_get_scheme_accepts_names_and_callables():
    assert get_scheme("systematic") is systematic
    assert get_scheme(systematic) is systematic


@pytest.mark.parametrize(
    ("log_w", "n"),
    [(torch.zeros(5), 0), (torch.zeros(5), 2.5), (torch.zeros(5, dtype=torch.int64), None)],
)
def test_bad_input_raises(log_w, n):
    with pytest.raises(SMCDiffError):
        systematic(log_w, n)


@pytest.mark.parametrize("name", ["systematic", "stratified"])
@pytest.mark.parametrize("n", [1, 7, 64, 300])
def test_linear_time_ancestors_equal_the_binary_search_inverse_cdf(name, n):
    """The O(N) scatter + cummax construction returns exactly F^{-1}(u) for the same uniforms."""
    gen = torch.Generator().manual_seed(n)
    log_w = torch.randn(5, 64, generator=gen, dtype=torch.float64) * 2
    log_w[:, ::7] = -math.inf  # zero weights, including runs of them
    log_w[:, -3:] = -math.inf  # a zero-weight tail
    seed_gen = torch.Generator().manual_seed(123)
    got = SCHEMES[name](log_w, n, generator=seed_gen)
    ref_gen = torch.Generator().manual_seed(123)
    v_shape = (5, 1) if name == "systematic" else (5, n)
    v = torch.rand(v_shape, dtype=torch.float64, generator=ref_gen)
    u = (torch.arange(n, dtype=torch.float64) + v) / n
    cdf = torch.softmax(log_w, -1).cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    ref = torch.searchsorted(cdf, u, right=True).clamp(max=63)
    assert torch.equal(got, ref)
