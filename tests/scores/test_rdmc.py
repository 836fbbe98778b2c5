"""RDMCScore: importance-sampling and inner-MALA posterior scores against the exact noised scores
of a correlated Gaussian and a 3-component mixture (ExactScore)."""

import math

import numpy as np
import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes import VP
from smcdiff.scores import exact_score
from smcdiff.scores.montecarlo import MonteCarloScore
from smcdiff.scores.rdmc import RDMCImportanceScore, RDMCMalaScore, RDMCScore
from smcdiff.seeding import seeded_generator
from smcdiff.target import as_target
from tests.scores.estimator_targets import gauss, mix, rmse
from tests.stats import DEVICE, assert_unbiased

F64 = torch.float64
PROC = VP()


TARGETS = {"gauss": gauss, "mix": mix}


def time_at(ratio):
    return float(PROC.t_from_log_snr(torch.tensor(-2.0 * math.log(ratio))))


def points(pi, t, n_points, n_rep, seed=5):
    """``n_points`` exact draws of p_t, each repeated ``n_rep`` times (independent estimates)."""
    x = exact_score(pi, PROC).sample_marginal(n_points, t, seeded_generator(seed, DEVICE))
    return x.repeat_interleave(n_rep, 0)


CASES = [  # (target, d, sigma_t / alpha_t, M). IS at d = 10 needs SNR >~ 1 (see test_mala_*)
    ("gauss", 2, 0.1, 128),
    ("gauss", 2, 3.0, 512),
    ("mix", 2, 0.1, 128),
    ("mix", 2, 1.0, 128),
    ("mix", 2, 3.0, 512),
    ("gauss", 10, 0.1, 128),
    ("gauss", 10, 0.5, 512),
    ("mix", 10, 0.1, 128),
    ("mix", 10, 0.5, 512),
]


@pytest.mark.parametrize(("name", "d", "ratio", "m"), CASES)
def test_is_consistency(name, d, ratio, m):
    """Score and log-density errors shrink by sqrt(16) = 4 from M to 16M; no bias at 16M."""
    pi, t = TARGETS[name](d), time_at(ratio)
    n_points, n_rep = (4, 64) if d == 2 else (4, 32)
    x = points(pi, t, n_points, n_rep)
    s_true, lp_true = exact_score(pi, PROC).score_and_log_density(x, t)
    errs, lerrs = [], []
    for mm in (m, 16 * m):
        model = RDMCScore(pi, PROC, mm, seed=3)
        s, lp = model.score_and_log_density(x, t)
        assert s.shape == x.shape and lp.shape == (x.shape[0],) and lp.dtype == F64
        errs.append(rmse(s, s_true))
        lerrs.append(rmse(lp, lp_true))
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    assert 2.8 < lerrs[0] / lerrs[1] < 5.7, lerrs
    # per point and coordinate, the mean of the replicates within 5 SE of the exact score
    assert_unbiased((s - s_true).reshape(n_points, n_rep, -1), 0.0, dim=1, what="score error")


def test_is_unbiased_numerator_and_denominator():
    r"""E[(1/M) Σ π̃(x0^j)] a^{-d} = p_t(x) and E[(1/M) Σ π̃(x0^j) x0^j] a^{-d} = p_t(x) E[x0|x]."""
    pi, d, t = mix(2), 2, time_at(1.0)
    a, s = float(PROC.alpha(t)), float(PROC.sigma(t))
    n_rep = 4000
    x = points(pi, t, 1, n_rep, seed=11)
    s_true, lp_true = exact_score(pi, PROC).score_and_log_density(x[:1], t)
    post_mean = (x[:1] + s * s * s_true) / a  # Tweedie
    est = MonteCarloScore(pi, PROC, 16, seed=0).estimate(x, t)
    ratio = torch.exp(est.log_mean - d * math.log(a) - lp_true)  # unbiased for 1
    for name, v, want in (
        ("denominator", ratio.unsqueeze(-1), torch.ones(1, 1, dtype=F64, device=DEVICE)),
        ("numerator", ratio.unsqueeze(-1) * est.mean, post_mean),
    ):
        assert_unbiased(v, want[0], what=name)
    # the log of an unbiased estimate is biased low (Jensen): visible at M = 16
    log_bias = (est.log_mean - d * math.log(a) - lp_true).mean()
    assert float(log_bias) < 0


def test_log_z_of_unnormalised_target():
    pi, t = mix(2), time_at(1.0)
    shifted = as_target(lambda z: pi.log_prob(z) + 2.5, 2)
    x = points(pi, t, 8, 1)
    lp0 = RDMCScore(pi, PROC, 64, seed=1).log_density(x, t)
    lp_raw = RDMCScore(shifted, PROC, 64, seed=1).log_density(x, t)
    lp_sub = RDMCScore(shifted, PROC, 64, seed=1, log_z=2.5).log_density(x, t)
    torch.testing.assert_close(lp_raw, lp0 + 2.5, rtol=0, atol=1e-12)
    torch.testing.assert_close(lp_sub, lp0, rtol=0, atol=1e-12)


def test_grad_and_antithetic_lower_variance_at_high_snr():
    """At low noise the Stein/Tweedie error ~ 1/(s sqrt M); the gradient form and antithetic
    pairs remove that term."""
    pi, t = mix(2), time_at(0.1)
    x = points(pi, t, 4, 32)
    s_true = exact_score(pi, PROC).score(x, t)
    e_tw = rmse(RDMCScore(pi, PROC, 256, seed=1).score(x, t), s_true)
    e_gr = rmse(RDMCScore(pi, PROC, 256, seed=1, estimator="grad").score(x, t), s_true)
    e_an = rmse(RDMCScore(pi, PROC, 256, seed=1, antithetic=True).score(x, t), s_true)
    assert e_gr < e_tw / 10, (e_gr, e_tw)
    assert e_an < e_tw / 3, (e_an, e_tw)


MALA_CASES = [("gauss", 10, 3.0), ("gauss", 10, 1.0), ("mix", 2, 1.0), ("mix", 10, 1.0)]


@pytest.mark.parametrize("estimator", ["tweedie", "grad"])
@pytest.mark.parametrize(("name", "d", "ratio"), MALA_CASES)
def test_mala_consistency(name, d, ratio, estimator):
    """Inner MALA where IS fails (d = 10, SNR <= 1): error ~ 1/sqrt(M) when the chains and the
    IS initialisation grow together (with a multimodal posterior the chains keep the mode masses
    of the resampled start), no visible bias."""
    pi, t = TARGETS[name](d), time_at(ratio)
    n_points, n_rep = 2, 32
    x = points(pi, t, n_points, n_rep)
    s_true = exact_score(pi, PROC).score(x, t)
    errs = []
    for m in (4, 64):
        model = RDMCScore(
            pi, PROC, m, "mala", estimator=estimator, n_steps=20, n_burnin=40, seed=3,
            n_init_samples=64 * m,
        )  # fmt: skip
        s = model.score(x, t)
        errs.append(rmse(s, s_true))
    assert 2.8 < errs[0] / errs[1] < 5.7, errs
    # per point and coordinate, the mean of the replicates within 5 SE of the exact score
    assert_unbiased((s - s_true).reshape(n_points, n_rep, -1), 0.0, dim=1, what="score error")


def test_mala_beats_is_at_low_snr_d10():
    pi, t = gauss(10), time_at(3.0)
    x = points(pi, t, 2, 16)
    s_true = exact_score(pi, PROC).score(x, t)
    e_is = rmse(RDMCScore(pi, PROC, 1024, seed=0).score(x, t), s_true)
    e_mala = rmse(RDMCScore(pi, PROC, 16, "mala", n_steps=20, seed=0).score(x, t), s_true)
    assert e_mala < e_is / 3, (e_mala, e_is)


def test_mala_log_density_is_the_is_estimate_and_init_mean():
    pi, t = mix(2), time_at(1.0)
    x = points(pi, t, 6, 1)
    lp_is = RDMCScore(pi, PROC, 128, seed=4).log_density(x, t)
    mala = RDMCScore(pi, PROC, 8, "mala", n_init_samples=128, seed=4)
    _, lp = mala.score_and_log_density(x, t)
    torch.testing.assert_close(lp, lp_is, rtol=0, atol=1e-12)
    # init="mean" starts at x/a and draws its IS sample for the log density separately
    mean_init = RDMCScore(pi, PROC, 32, "mala", init="mean", n_steps=40, seed=4)
    s, lp2 = mean_init.score_and_log_density(x, t)
    assert s.shape == x.shape and lp2.shape == (6,) and bool(torch.isfinite(lp2).all())


class CountingTarget:
    """Counts the rows it evaluates, and those evaluated with autograd on (gradients)."""

    def __init__(self, dist):
        self.dist, self.dim = dist, dist.dim
        self.rows = self.grad_rows = 0

    def log_prob(self, x):
        self.rows += x.shape[0]
        self.grad_rows += x.shape[0] if x.requires_grad else 0
        return self.dist.log_prob(x)


@pytest.mark.parametrize(
    ("method", "estimator", "kw"),
    [
        ("is", "tweedie", {}),
        ("is", "grad", {}),
        ("is", "tweedie", {"antithetic": True, "chunk_size": 3}),
        ("mala", "tweedie", {"n_steps": 5, "n_burnin": 3, "n_init_samples": 10}),
        ("mala", "grad", {"n_steps": 5, "n_burnin": 0, "init": "mean"}),
    ],
)
def test_eval_counters(method, estimator, kw):
    target = CountingTarget(mix(2))
    x = points(target.dist, time_at(1.0), 7, 1)
    model = RDMCScore(target, PROC, 6, method, estimator=estimator, seed=0, **kw)
    model.score(x, time_at(1.0))
    model.score(x, time_at(0.1))
    assert model.n_target_evals == target.rows
    assert model.n_grad_evals == target.grad_rows
    if method == "is":
        assert target.rows == 2 * 7 * 6
        assert target.grad_rows == (2 * 7 * 6 if estimator == "grad" else 0)
    else:
        steps = 1 + kw["n_steps"] + kw["n_burnin"]
        init = kw.get("n_init_samples", 0)
        assert target.rows == 2 * 7 * (init + 6 * steps)
        assert target.grad_rows == 2 * 7 * 6 * steps


@pytest.mark.parametrize("method", ["is", "mala"])
def test_generator_determinism(method):
    pi, t = mix(2), time_at(1.0)
    x = points(pi, t, 5, 1)
    kw = {"n_steps": 4} if method == "mala" else {}

    def run(**g):
        return RDMCScore(pi, PROC, 16, method, **kw, **g).score_and_log_density(x, t)

    a, b = run(seed=7), run(seed=7)
    c = run(generator=seeded_generator(7, DEVICE))
    d = run(seed=8)
    for u, v in ((a, b), (a, c)):
        torch.testing.assert_close(u[0], v[0], rtol=0, atol=0)
        torch.testing.assert_close(u[1], v[1], rtol=0, atol=0)
    assert not torch.equal(a[0], d[0])
    # score / log_density / posterior_mean alone = the same draws as score_and_log_density
    torch.testing.assert_close(
        RDMCScore(pi, PROC, 16, method, **kw, seed=7).score(x, t), a[0], rtol=0, atol=0
    )
    if method == "is":
        torch.testing.assert_close(
            RDMCScore(pi, PROC, 16, seed=7).log_density(x, t), a[1], rtol=0, atol=0
        )
        a_t, s_t = float(PROC.alpha(t)), float(PROC.sigma(t))
        post = RDMCScore(pi, PROC, 16, seed=7).posterior_mean(x, t)  # Tweedie, same draws
        torch.testing.assert_close(post, (x + s_t**2 * a[0]) / a_t, rtol=1e-9, atol=1e-9)


def test_float32_and_chunking():
    pi = mix(2).to(dtype=torch.float32)
    t = time_at(0.1)
    x = points(pi, t, 1, 1).expand(10, 2) + torch.linspace(-3, 3, 10, device=DEVICE)[:, None]
    model = RDMCScore(pi, PROC, 4096, estimator="grad", seed=0, chunk_size=3)
    s, lp = model.score_and_log_density(x, t)
    assert s.dtype == torch.float32 and lp.dtype == F64
    s_true, lp_true = exact_score(pi, PROC).score_and_log_density(x, t)
    torch.testing.assert_close(s, s_true, rtol=0, atol=0.05)  # rows stay in order across chunks
    torch.testing.assert_close(lp, lp_true.double(), rtol=0, atol=0.05)


def test_bad_inputs():
    pi = mix(2)
    t = time_at(1.0)
    model = RDMCScore(pi, PROC, 8, seed=0)
    with pytest.raises(SMCDiffError, match="x has shape"):
        model.score(torch.zeros(4, 3, dtype=F64, device=DEVICE), t)
    with pytest.raises(SMCDiffError, match=r"t must lie in \[0, 1\]"):
        model.score(torch.zeros(4, 2, dtype=F64, device=DEVICE), 1.5)
    with pytest.raises(SMCDiffError, match="sigma_t = 0"):
        model.score(torch.zeros(4, 2, dtype=F64, device=DEVICE), 0.0)
    nan_target = as_target(lambda z: torch.where(z[:, 0] > 0, float("nan"), pi.log_prob(z)), 2)
    for method in ("is", "mala"):
        with pytest.raises(SMCDiffError, match="target log_prob is NaN"):
            RDMCScore(nan_target, PROC, 8, method, seed=0, check_finite=True).score(
                torch.zeros(4, 2, dtype=F64, device=DEVICE), t
            )
    for method in ("is", "mala"):  # unchecked (the CUDA default): the NaN reaches the output
        out = RDMCScore(nan_target, PROC, 8, method, seed=0, check_finite=False).score(
            torch.full((4, 2), 3.0, dtype=F64, device=DEVICE), t
        )
        assert bool(torch.isnan(out).all())
    zero = as_target(lambda z: torch.full_like(z[:, 0], -math.inf), 2)
    with pytest.raises(SMCDiffError, match="zero target density"):
        RDMCScore(zero, PROC, 8, seed=0, check_finite=True).log_density(
            torch.zeros(4, 2, dtype=F64, device=DEVICE), t
        )
    bad_shape = as_target(lambda z: pi.log_prob(z)[:-1], 2)
    with pytest.raises(SMCDiffError, match="log_prob output has shape"):
        RDMCScore(bad_shape, PROC, 8, seed=0).score(torch.zeros(4, 2, dtype=F64, device=DEVICE), t)
    with pytest.raises(SMCDiffError, match="method"):
        RDMCScore(pi, PROC, 8, "hmc")
    with pytest.raises(SMCDiffError, match="estimator"):
        RDMCScore(pi, PROC, 8, estimator="score")
    with pytest.raises(SMCDiffError, match="even n_samples"):
        RDMCScore(pi, PROC, 7, antithetic=True)
    with pytest.raises(SMCDiffError, match="n_samples"):
        RDMCScore(pi, PROC, 0)
    with pytest.raises(SMCDiffError, match="generator or seed"):
        RDMCScore(pi, PROC, 8, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("d", [2, 10])
@pytest.mark.parametrize("ratio", [1.0, 3.0, 30.0])
def test_reference_proposal_is_exact_in_expectation_and_wins_at_high_noise(d, ratio):
    # x0 drawn from the Gaussian posterior of a N(0, r^2) reference given x_t, weighted by
    # pi / N(0, r^2): Z p_t unbiased, and at sigma/alpha >> target scale far lower error than
    # drawing x0 from N(x/a, (s/a)^2)
    pi, t = mix(d), time_at(ratio)
    target = as_target(pi.log_prob, d)
    exact = exact_score(pi, PROC)
    x = points(pi, t, 4, 64)
    ref = RDMCScore(target, PROC, 256, reference_std=2.5, seed=1, antithetic=True)
    plain = RDMCScore(target, PROC, 256, seed=1, antithetic=True)
    s_ref, lp_ref = ref.score_and_log_density(x, t)
    s_true, lp_true = exact.score(x, t), exact.log_density(x, t)
    assert ref.score(x, t).shape == x.shape  # same path through score()
    if d == 2:  # (in 10-D, p_hat / p is too heavy-tailed for 64 replicates to estimate its
        # standard error: the z-test would pass or fail by the luck of the seed)
        ratio_p = torch.exp(lp_ref - lp_true).reshape(4, 64)  # E[p_hat / p] = 1
        assert_unbiased(ratio_p, 1.0, dim=1, what="p_hat / p")
    if ratio >= 3.0:
        s_plain, _ = plain.score_and_log_density(x, t)
        assert rmse(s_ref, s_true) < (0.5 if ratio >= 30.0 else 0.9) * rmse(s_plain, s_true)
    if ratio >= 30.0:  # high noise: the reference posterior is close to p(x0 | x_t)
        assert rmse(s_ref, s_true) < 0.2 * float(s_true.square().mean().sqrt()) + 0.05


def test_one_class_per_method_and_the_score_model_contract():
    """RDMCScore(method=...) builds RDMCImportanceScore or RDMCMalaScore; an option the chosen
    class does not take is an error; both declare scalar_time and event_shape; NumPy ints pass."""
    pi = mix(2)
    is_model = RDMCScore(pi, PROC, np.int64(8), seed=np.int64(0))
    mala = RDMCScore(pi, PROC, 8, "mala", n_steps=np.int32(3))
    assert type(is_model) is RDMCImportanceScore and type(mala) is RDMCMalaScore
    assert isinstance(is_model, MonteCarloScore) and not isinstance(mala, MonteCarloScore)
    for model in (is_model, mala):
        assert model.scalar_time is True and model.event_shape == (2,)
    assert is_model.n_samples == 8 and type(is_model.n_samples) is int and mala.n_steps == 3
    with pytest.raises(SMCDiffError, match="does not take 'n_steps'"):
        RDMCScore(pi, PROC, 8, "is", n_steps=3)
    with pytest.raises(SMCDiffError, match="does not take 'reference_std'"):
        RDMCScore(pi, PROC, 8, "mala", reference_std=1.0)
    with pytest.raises(SMCDiffError, match="t must lie in"):
        mala.score(torch.zeros(4, 2, dtype=F64, device=DEVICE), -0.5)


@pytest.mark.parametrize("init", ["is", "mean"])
def test_mala_posterior_mean_comes_from_its_chains(init):
    """RDMCMalaScore.posterior_mean averages the chains' states: with the same seed it is the
    Tweedie inverse of its score, (x + s^2 score) / a, and close to the exact posterior mean."""
    pi, t = gauss(10), time_at(1.0)
    a, s = float(PROC.alpha(t)), float(PROC.sigma(t))
    x = points(pi, t, 4, 1)
    kw = {"n_steps": 40, "init": init, "seed": 2}
    post = RDMCMalaScore(pi, PROC, 32, **kw).posterior_mean(x, t)
    score = RDMCMalaScore(pi, PROC, 32, **kw).score(x, t)
    torch.testing.assert_close(post, (x + s * s * score) / a, rtol=1e-9, atol=1e-9)
    exact = (x + s * s * exact_score(pi, PROC).score(x, t)) / a
    scale = float((exact - x / a).square().mean().sqrt())  # the prior-to-posterior move
    assert rmse(post, exact) < 0.2 * scale, (rmse(post, exact), scale)
