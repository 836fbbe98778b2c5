"""Statistical checks shared by the tests: estimates against exact values, in standard errors.

Every check compares an estimate with an exact value and allows ``n_se`` standard errors (plus,
where a test knows one, a deterministic ``bias`` such as a time-discretisation bias):

    |estimate - truth| <= n_se * se + bias      (elementwise; NaN anywhere fails)

Why these checks do not flake:

- **Seeded.** A test draws every random number from a seeded ``torch.Generator``, so a check
  gives the same answer on every run on one device: it cannot fail one time in a thousand.
- **Sized.** A test's sample size makes a correct implementation sit far inside the tolerance
  (a Gaussian statistic leaves 5 SE with probability 6e-7, 4.5 SE with 7e-6, so a new seed or a
  new device would pass too), while the bugs it guards against (a wrong sign, scale, weight term
  or a lost mode) move the statistic by many standard errors. ``max_se`` makes a check fail when
  the standard error is too large for the comparison to mean anything, instead of passing.
- **Honest standard errors.** The SE is either exact (known variance, binomial counts) or taken
  from the spread of independent replicates (runs, chains, repeated estimates), never from
  correlated draws within one chain or one particle system.

Functions return nothing and raise ``AssertionError`` with the offending values; the helpers that
compute (``replicate_se``, ``binomial_se``, ``mode_mass``, ``total_variation``,
``grid_log_integral``) return float64 tensors or floats.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

F64 = torch.float64
# The device of the tests that honour it: ``SMCDIFF_TEST_DEVICE=cuda pytest tests/steering``.
DEVICE = torch.device(os.environ.get("SMCDIFF_TEST_DEVICE", "cpu"))

__all__ = [
    "DEVICE",
    "assert_gaussian_moments",
    "assert_gaussian_variance",
    "assert_iid_mean",
    "assert_outside",
    "assert_proportions",
    "assert_sample_moments",
    "assert_unbiased",
    "assert_within",
    "assert_z_unbiased",
    "binomial_se",
    "grid_log_integral",
    "mode_mass",
    "replicate_se",
    "total_variation",
]


def _f64(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=F64, device=device)


def _listed(x: torch.Tensor) -> Any:
    """Short printable form: the values when few, else the shape."""
    return x.tolist() if x.numel() <= 16 else f"tensor of shape {tuple(x.shape)}"


# ------------------------------------------------------------------------------- the core test
def assert_within(
    estimate: Any, truth: Any, se: Any, *, n_se: float = 5.0, bias: float = 0.0, what: str = "value"
) -> None:
    """``|estimate - truth| <= n_se * se + bias`` elementwise (all three broadcast together).

    The building block of every check below: ``se`` is the estimate's standard error, exact or
    estimated. A zero ``se`` (and ``bias``) asks for exact equality, as for a count that must be 0.
    """
    estimate = _f64(estimate)
    truth, se = _f64(truth, estimate), _f64(se, estimate)
    err = (estimate - truth).abs()
    tol = n_se * se + bias
    if not bool((err <= tol).all()):
        z = err / se
        raise AssertionError(
            f"{what}: off by more than {n_se} SE + bias {bias}: estimate {_listed(estimate)}, "
            f"truth {_listed(truth)}, SE {_listed(se)}, |error| / SE {_listed(z)}"
        )


def assert_outside(
    estimate: Any, value: Any, se: Any, *, n_se: float = 5.0, what: str = "value"
) -> None:
    """Some element of ``estimate`` lies more than ``n_se`` SE from ``value``: ``|estimate -
    value| > n_se * se`` somewhere (NaN fails). The other side of :func:`assert_within`: it shows
    that a test can see a known bias (guidance without weights, ULA's step-size bias), so that the
    exact methods' passes mean something. Seeded and sized like the checks above: the bias is many
    SE, so the check does not flake either way.
    """
    estimate = _f64(estimate)
    value, se = _f64(value, estimate), _f64(se, estimate)
    z = (estimate - value).abs() / se
    if bool(z.isnan().any()) or not bool((z > n_se).any()):
        raise AssertionError(
            f"{what}: expected more than {n_se} SE from {_listed(value)}: estimate "
            f"{_listed(estimate)}, SE {_listed(se)}, |error| / SE {_listed(z)}"
        )


def replicate_se(samples: Any, dim: int = 0) -> torch.Tensor:
    """Standard error of the mean of independent replicates along ``dim``: ``std / sqrt(R)``.

    Replicates are independent runs, chains or repeated estimates: their spread is an honest SE
    whatever the correlation inside one run. With R >= 16 replicates the estimated SE is within
    a factor ~1.5 of the true one, which the 4.5-5 SE tolerances absorb.
    """
    samples = _f64(samples)
    return samples.std(dim) / math.sqrt(samples.shape[dim])


def assert_unbiased(
    samples: Any,
    truth: Any,
    *,
    dim: int = 0,
    n_se: float = 5.0,
    bias: float = 0.0,
    max_se: float | None = None,
    what: str = "mean",
) -> None:
    """The mean of independent replicates along ``dim`` equals ``truth`` within ``n_se`` SE
    (:func:`replicate_se`) + ``bias``: a z-test for an unbiased (or known-bias) estimator.

    ``samples`` ``(..., R, ...)`` with the replicates on ``dim``; ``truth`` broadcasts against the
    mean. ``max_se``: first assert every SE is below it, so that a noisy run cannot pass a test
    that would have failed with enough samples.
    """
    samples = _f64(samples)
    se = replicate_se(samples, dim)
    if max_se is not None and not float(se.max()) < max_se:
        raise AssertionError(f"{what}: SE {float(se.max()):.3g} too large to test (>= {max_se})")
    assert_within(samples.mean(dim), truth, se, n_se=n_se, bias=bias, what=what)


def assert_z_unbiased(
    log_z: Any,
    log_z_true: float,
    *,
    n_se: float = 4.5,
    bias: float = 0.0,
    max_se: float | None = None,
    what: str = "Z_hat / Z",
) -> None:
    r"""Evidence estimates over independent runs ``log_z`` ``(R,)``: :math:`\hat Z / Z` averages
    to 1 (SMC's :math:`\hat Z` is unbiased for :math:`Z`; :math:`\log \hat Z` is not).

    ``bias`` is on the ratio scale: a known log-Z bias ``b`` is ``bias=math.expm1(b)``.
    """
    log_z = _f64(log_z).reshape(-1)
    ratio = torch.exp(log_z - log_z_true)
    assert_unbiased(ratio, 1.0, n_se=n_se, bias=bias, max_se=max_se, what=what)


# ------------------------------------------------------------------------ iid samples, exact SE
def assert_iid_mean(x: Any, mean: Any, var: Any, *, n_se: float = 5.0, what: str = "mean") -> None:
    """Mean over rows of ``n`` iid draws ``x`` ``(n, ...)`` against the exact ``mean``, with the
    exact SE ``sqrt(var / n)`` (``var``: the law's variance, per column or one number).
    Pool columns of one law with ``x.reshape(-1)``."""
    x = _f64(x)
    se = (_f64(var, x) / x.shape[0]).sqrt()
    assert_within(x.mean(0), mean, se, n_se=n_se, what=what)


def assert_gaussian_variance(
    x: Any, var: float, *, n_se: float = 5.0, what: str = "variance"
) -> None:
    """Unbiased sample variance of ``n`` iid Gaussian draws ``x`` ``(n, ...)`` (per column)
    against ``var``; its exact SE is ``var * sqrt(2 / (n - 1))``. Pool with ``x.reshape(-1)``."""
    x = _f64(x)
    n = x.shape[0]
    assert_within(x.var(0), var, var * math.sqrt(2 / (n - 1)), n_se=n_se, what=what)


def binomial_se(p: Any, n: int) -> torch.Tensor:
    """Standard error ``sqrt(p (1 - p) / n)`` of the fraction of ``n`` iid draws in a set of
    probability ``p``."""
    p = _f64(p)
    return (p * (1 - p) / n).sqrt()


def assert_proportions(
    frac: Any, p: Any, n: int, *, n_se: float = 5.0, what: str = "proportions"
) -> None:
    """Fractions ``frac`` of ``n`` iid draws (mode occupancies, signs, component labels) against
    their probabilities ``p``, with the exact binomial SE (:func:`binomial_se`). For counts, pass
    ``counts / n``."""
    frac = _f64(frac)
    assert_within(frac, p, binomial_se(_f64(p, frac), n), n_se=n_se, what=what)


def assert_gaussian_moments(
    x: Any, mean: torch.Tensor, cov: torch.Tensor, *, n_se: float = 5.0
) -> None:
    """Mean and covariance of ``n`` iid rows ``x`` ``(n, d)`` of ``N(mean, cov)``, with the exact
    Gaussian SEs: ``SE(mean_i) = sqrt(S_ii / n)``, ``SE(cov_ij) = sqrt((S_ii S_jj + S_ij^2) / n)``."""
    x = _f64(x)
    mean, cov = _f64(mean, x), _f64(cov, x)
    n, var = x.shape[0], cov.diagonal()
    assert_within(x.mean(0), mean, (var / n).sqrt(), n_se=n_se, what="mean")
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    assert_within(torch.cov(x.T).reshape(cov.shape), cov, se_cov, n_se=n_se, what="covariance")


def assert_sample_moments(
    x: Any, mean: torch.Tensor, cov: torch.Tensor, *, n_se: float = 5.0
) -> None:
    """Mean and covariance of ``n`` iid rows ``x`` ``(n, d)`` of any law with finite fourth
    moments (a mixture, say), with SEs estimated from the sample: the spread of ``x_i`` for the
    mean and of the centred products ``(x_i - m)(x_j - m)`` for the covariance."""
    x = _f64(x)
    n = x.shape[0]
    xc = x - x.mean(0)
    prod = xc.unsqueeze(-1) * xc.unsqueeze(-2)
    assert_within(x.mean(0), mean, x.std(0) / math.sqrt(n), n_se=n_se, what="mean")
    se_cov = prod.std(0) / math.sqrt(n)
    assert_within(prod.mean(0), cov, se_cov, n_se=n_se, bias=1e-12, what="covariance")


# ------------------------------------------------------------------------ modes and quadrature
def mode_mass(labels: torch.Tensor, weights: torch.Tensor, n_modes: int) -> torch.Tensor:
    """Weighted mass of each mode: ``labels`` ``(..., N)`` integer mode indices, ``weights``
    ``(..., N)`` normalised weights -> ``(..., n_modes)`` float64 (sums to 1 over modes)."""
    out = torch.zeros(*labels.shape[:-1], n_modes, dtype=F64, device=labels.device)
    return out.scatter_add_(-1, labels, weights.to(F64))


def total_variation(p: torch.Tensor, q: Any) -> torch.Tensor:
    """Total-variation distance ``0.5 * sum |p - q|`` over the last dim (``(...,)`` float64)."""
    p = _f64(p)
    return 0.5 * (p - _f64(q, p)).abs().sum(-1)


def grid_log_integral(log_f: torch.Tensor, h: float, ndim: int) -> float:
    """log of the Riemann sum of ``exp(log_f)`` on a regular grid of step ``h`` in ``ndim``
    dimensions: ``logsumexp(log_f) + ndim log h``. Equal to the trapezoid rule when the grid's
    edges carry negligible mass, and exponentially accurate in ``1 / h`` for analytic integrands,
    so a test can ask for 1e-8: a deterministic check, no randomness."""
    return float(torch.logsumexp(log_f.double().reshape(-1), 0)) + ndim * math.log(h)
