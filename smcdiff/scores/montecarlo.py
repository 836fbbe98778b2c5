r"""Monte Carlo scores of a Gaussian-smoothed unnormalised density, and the shared machinery of
every training-free estimator in :mod:`smcdiff.scores` (rdMC, Föllmer drift).

**Gaussian smoothing.** For a positive function :math:`g` on :math:`\mathbb R^d`, a centre
:math:`m` and a scale :math:`c > 0`, let
:math:`G(m) = \log\mathbb E_\xi[g(m + c\xi)]`, :math:`\xi \sim \mathcal N(0, I)`. Two identities
give its gradient:

* Stein (gradient-free): :math:`\mathbb E[\xi\,h(\xi)] = \mathbb E[\nabla_\xi h(\xi)]` with
  :math:`h(\xi) = g(m + c\xi)`, :math:`\nabla_\xi h = c\,\nabla g`, so
  :math:`\nabla_m G = \mathbb E[g(m + c\xi)\,\xi] \,/\, (c\,\mathbb E[g(m + c\xi)])`;
* gradient (differentiate under the integral):
  :math:`\nabla_m G = \mathbb E[g\,\nabla\log g(m + c\xi)] \,/\, \mathbb E[g(m + c\xi)]`.

With :math:`M` draws :math:`\xi_j`, :math:`y_j = m + c\xi_j`, self-normalised weights
:math:`w_j = g(y_j) / \sum_i g(y_i)`:

.. math::
    \hat G = \log\tfrac1M\textstyle\sum_j g(y_j), \qquad
    \widehat{\nabla G}_{\rm stein} = \tfrac1c\sum_j w_j\xi_j, \qquad
    \widehat{\nabla G}_{\rm grad} = \sum_j w_j\nabla\log g(y_j).

:math:`e^{\hat G}` and :math:`\frac1M\sum_j g(y_j)\,y_j` are unbiased; :math:`\hat G` is biased low
by Jensen and both gradients (ratios) carry an :math:`O(1/M)` bias, against a standard error of
:math:`O(1/\sqrt{M_{\rm eff}})`. :math:`\sum_j w_j y_j` estimates the mean of
:math:`q(y) \propto g(y)\,\mathcal N(y; m, c^2 I)`, whose gradient identity is
:math:`\nabla G = (\mathbb E_q[y] - m)/c^2`: the Stein estimator *is* this posterior-mean (Tweedie)
form, :math:`(\sum_j w_j y_j - m)/c^2 = \frac1c\sum_j w_j\xi_j`, computed without the cancellation.

Variance: as :math:`c \to 0`, :math:`w_j \approx \frac1M(1 + c\,\xi_j\cdot\nabla\log g(m))`, so the
Stein estimator is :math:`\frac1c\bar\xi + \nabla\log g(m) + \dots` with a standard error
:math:`\approx 1/(c\sqrt M)` that blows up at low noise, while the gradient estimator's stays
:math:`O(\sqrt{\operatorname{Var}\nabla\log g / M})`. Antithetic pairs
:math:`(\xi, -\xi)` make :math:`\bar\xi = 0` exactly and remove that leading term. At large
:math:`c` both degrade as the proposal :math:`\mathcal N(m, c^2 I)` spreads far beyond where
:math:`g` lives (effective sample size falls exponentially in d): use rdMC's inner MALA
(:mod:`smcdiff.scores.rdmc`) or a moment fit (:mod:`smcdiff.scores.moment_fit`) there.

**Noised marginal of an unnormalised target.** For :math:`\tilde\pi = Z\pi`,
:math:`x_t = a x_0 + s\varepsilon` (:math:`a = \alpha_t`, :math:`s = \sigma_t`),
:math:`p_t(x) = \int\pi(x_0)\,\mathcal N(x; a x_0, s^2 I)\,dx_0`. Since
:math:`\|x - a x_0\|^2/s^2 = \|x_0 - x/a\|^2/(s/a)^2` and
:math:`(2\pi s^2)^{-d/2} = a^{-d}(2\pi(s/a)^2)^{-d/2}`,

.. math::
    \mathcal N(x; a x_0, s^2 I) = a^{-d}\,\mathcal N(x_0; x/a, (s/a)^2 I), \qquad
    Z\,p_t(x) = a^{-d}\,\mathbb E_\xi\big[\tilde\pi(x/a + (s/a)\xi)\big],

i.e. :math:`\log p_t(x) + \log Z = G(x/a) - d\log a` with :math:`g = \tilde\pi`, :math:`m = x/a`,
:math:`c = s/a`, and by the chain rule :math:`\nabla_x\log p_t(x) = \frac1a\nabla_m G`:

.. math::
    \nabla\log p_t(x) \approx \frac1s\sum_j w_j\xi_j
    = \frac{a\sum_j w_j x_0^j - x}{s^2} \ \text{(Tweedie)}, \qquad
    \nabla\log p_t(x) \approx \frac1a\sum_j w_j\nabla\log\tilde\pi(x_0^j)\ \text{(gradient)},

:math:`x_0^j = x/a + (s/a)\xi_j` drawn from the Gaussian factor of the posterior
:math:`p(x_0\mid x_t = x) \propto \tilde\pi(x_0)\,\mathcal N(x_0; x/a, (s/a)^2 I)` and weighted by
:math:`\tilde\pi`. This is the importance-sampling rdMC estimator
(:class:`smcdiff.scores.rdmc.RDMCImportanceScore`); for VE (:math:`a = 1`) it is
exactly the classical Monte Carlo score :math:`\nabla\log\mathbb E_\varepsilon[e^{-U(x + \sigma
\varepsilon)}]` with its two estimators :math:`\mathbb E[\varepsilon w]/\sigma` and
:math:`\mathbb E[w\nabla\log\pi(x + \sigma\varepsilon)]`. It is implemented once, here
(:class:`MonteCarloScore`), and :class:`~smcdiff.scores.rdmc.RDMCImportanceScore` is that class
under its rdMC name.

Log densities are float64 estimates of :math:`\log p_t + \log Z`; pass ``log_z`` to subtract a
known :math:`\log Z`. The estimators are not differentiable in ``x`` (outputs are detached).

Score-model contract: every estimator here declares ``scalar_time = True`` (one common time per
call, a float: :func:`smcdiff.scores.base.model_time` hands it over) and
``event_shape = (dim,)``: the target's ``log_prob`` takes flat points ``(K, d)``, so ``x`` is
``(N, d)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from smcdiff.checks import (
    check_choice,
    check_int,
    check_number,
    check_shape,
    check_time,
    nan_or_posinf,
)
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import value_and_grad
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.seeding import seeded_generator
from smcdiff.target import Target

__all__ = [
    "Draws",
    "EstimatorBase",
    "GeneratorSource",
    "MonteCarloScore",
    "NoisedTargetScore",
    "SmoothingEstimate",
    "draw_chunk",
    "monte_carlo_score",
    "smoothed_log_expectation",
]

_F64 = torch.float64
_ELEMENT_BUDGET = 1 << 22  # rows * n_samples * d per chunk when chunk_size is None
ESTIMATORS = ("tweedie", "stein", "grad")
"""``"tweedie"`` and ``"stein"`` name the same gradient-free estimator; ``"grad"`` the gradient one."""


class SmoothingEstimate(NamedTuple):
    r"""Monte Carlo estimate of :math:`G(m) = \log\mathbb E_\xi[g(m + c\xi)]` per row.

    ``log_mean`` ``(N,)`` float64: :math:`\hat G`; ``grad`` ``(N, d)``: :math:`\widehat{\nabla_m G}`
    (Stein or gradient form); ``mean`` ``(N, d)``: :math:`\sum_j w_j y_j`, the self-normalised
    mean of :math:`q \propto g\,\mathcal N(m, c^2 I)`; ``ess`` ``(N,)`` float64:
    :math:`1/\sum_j w_j^2`.
    """

    log_mean: torch.Tensor
    grad: torch.Tensor
    mean: torch.Tensor
    ess: torch.Tensor


class Draws(NamedTuple):
    """One chunk's draws (:func:`draw_chunk`): the estimate plus the points ``y`` ``(n, M, d)``,
    their log-weights ``log_g`` ``(n, M)`` float64 and the device counts of bad values (for the
    finite checks, :func:`raise_if_bad`)."""

    est: SmoothingEstimate
    y: torch.Tensor
    log_g: torch.Tensor
    bad: dict[str, torch.Tensor]


# ---------------------------------------------------------------- shared helpers


def check_estimator(estimator: str, where: str) -> bool:
    """Validate ``estimator`` (one of :data:`ESTIMATORS`); ``True`` for the gradient form."""
    return check_choice("estimator", estimator, ESTIMATORS, where=where) == "grad"


def check_points(
    x: torch.Tensor, event_shape: int | tuple[int, ...], where: str, name: str = "x"
) -> None:
    """``x`` must be a floating ``(N, *event_shape)`` tensor (an int ``d``: ``(N, d)``)."""
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    check_shape(name, x, (None, *shape), where=where)
    if not x.is_floating_point():
        raise SMCDiffError(f"{where}: {name} must be floating point, got {x.dtype}")


def noise_coefficients(
    process: NoiseProcess, t: float | torch.Tensor, where: str
) -> tuple[float, float]:
    r"""``(alpha_t, sigma_t)`` as host floats; requires :math:`t\in[0,1]` (checked by
    :func:`~smcdiff.checks.check_time`), :math:`\alpha_t,\sigma_t > 0`."""
    t = check_time("t", t, where=where)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    if not (math.isfinite(a) and a > 0.0):
        raise SMCDiffError(
            f"{where}: alpha_t = {a} at t={t}; the posterior p(x0 | x_t) needs alpha_t > 0 "
            f"(at alpha_t = 0 the marginal is N(0, sigma_t^2 I) and its score is -x / sigma_t^2)"
        )
    if not (math.isfinite(s) and s > 0.0):
        raise SMCDiffError(
            f"{where}: sigma_t = {s} at t={t}; a smoothed score needs sigma_t > 0 "
            f"(at sigma_t = 0 use the target's own grad_log_prob)"
        )
    return a, s


def default_rows(chunk_size: int | None, n_samples: int, dim: int) -> int:
    """Rows per chunk: ``chunk_size``, or enough to keep ``rows * n_samples * dim`` near 4M (the
    memory of one pass: ``n_samples`` inner draws of size ``dim`` per row)."""
    if chunk_size is not None:
        return chunk_size
    return max(1, _ELEMENT_BUDGET // max(1, n_samples * dim))


class GeneratorSource:
    """The random stream of an estimator: a user ``generator`` (its device must match the data),
    or one generator per device made by :func:`smcdiff.seeding.seeded_generator` from ``seed``
    (a random seed when ``seed`` is ``None``)."""

    def __init__(self, generator: torch.Generator | None, seed: int | None, where: str):
        if generator is not None and seed is not None:
            raise SMCDiffError(f"{where}: pass generator or seed, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise SMCDiffError(
                f"{where}: generator must be a torch.Generator, got {type(generator).__name__}"
            )
        self.seed = check_int("seed", seed, 0, where=where, allow_none=True)
        self.generator, self.where = generator, where
        self._per_device: dict[torch.device, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator:
        """The generator for data on ``device`` (made on first use for a seeded source)."""
        if self.generator is not None:
            if self.generator.device.type != device.type:
                raise SMCDiffError(
                    f"{self.where}: the generator is on {self.generator.device} but x is on "
                    f"{device}; pass a generator created on the data's device"
                )
            return self.generator
        gen = self._per_device.get(device)
        if gen is None:
            gen = seeded_generator(self.seed, device)
            self._per_device[device] = gen
        return gen

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generators' states by device (for checkpoints)."""
        gens = {self.generator.device: self.generator} if self.generator is not None else {}
        return {str(d): g.get_state() for d, g in (gens or self._per_device).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for device, gen_state in state.items():
            self.get(torch.device(device)).set_state(gen_state.cpu())


def raise_if_bad(bad: dict[str, torch.Tensor], total: int, where: str) -> None:
    """One host sync: raise :class:`SMCDiffError` for the first non-zero count in ``bad``."""
    if not bad:
        return
    counts = torch.stack([v.reshape(()).to(torch.long) for v in bad.values()]).cpu()
    for (name, _), n in zip(bad.items(), counts.tolist(), strict=True):
        if n:
            raise SMCDiffError(f"{where}: {name} for {n} of {total}")


def merge_bad(acc: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> None:
    """Add the counts of ``new`` into ``acc`` (in place)."""
    for k, v in new.items():
        acc[k] = acc[k] + v if k in acc else v


def should_check(check_finite: bool | None, x: torch.Tensor) -> bool:
    """Whether to run the finite checks: ``check_finite``, or (``None``) only on CPU."""
    return x.device.type == "cpu" if check_finite is None else bool(check_finite)


# ---------------------------------------------------------------- the core estimator


def draw_chunk(
    log_g: Callable[[torch.Tensor], torch.Tensor],
    m: torch.Tensor,
    c: float,
    n_samples: int,
    generator: torch.Generator,
    use_grad: bool,
    antithetic: bool,
    where: str,
    common: torch.Tensor | None = None,
) -> Draws:
    """Smoothing estimate for one chunk of centres ``m`` ``(n, d)``, with its draws; ``common``
    ``(1, M', d)``: the same standard normal draws for every row. No argument checks (callers:
    :func:`smoothed_log_expectation`, and rdMC's MALA initialisation)."""
    n, d = m.shape
    shape = (n, n_samples // 2 if antithetic else n_samples, d)
    if common is None:
        xi = torch.randn(shape, generator=generator, dtype=m.dtype, device=m.device)
    else:
        xi = common.expand(n, -1, -1)
    if antithetic:
        xi = torch.cat([xi, -xi], dim=1)
    y = m.unsqueeze(1) + c * xi  # (n, M, d)
    flat = y.reshape(n * n_samples, d)
    if use_grad:
        lg, g = value_and_grad(log_g, flat)
    else:
        with torch.no_grad():
            lg = log_g(flat)
    check_shape("target log_prob output", lg, (n * n_samples,), where=where)
    lg = lg.detach().to(_F64).reshape(n, n_samples)
    lse = torch.logsumexp(lg, dim=1)
    w = torch.exp(lg - lse.unsqueeze(1))  # (n, M) float64
    wxi = torch.einsum("nm,nmd->nd", w, xi.to(_F64))
    bad = {
        "target log_prob is NaN or +inf at inner samples": nan_or_posinf(lg).sum(),
        "every inner sample has zero target density (log_prob = -inf), so the estimate is "
        "undefined: raise n_samples or check the target's support; rows": (lse == -math.inf).sum(),
    }
    if use_grad:
        g = g.to(_F64).reshape(n, n_samples, d)
        grad = torch.einsum("nm,nmd->nd", w, g)
        bad["target gradient is NaN or inf at inner samples"] = (~torch.isfinite(g)).any(-1).sum()
    else:
        grad = wxi / c
    est = SmoothingEstimate(
        log_mean=lse - math.log(n_samples),
        grad=grad.to(m.dtype),
        mean=(m.to(_F64) + c * wxi).to(m.dtype),
        ess=1.0 / w.square().sum(1),
    )
    return Draws(est, y, lg, bad)


def _concat(parts: list[SmoothingEstimate]) -> SmoothingEstimate:
    if len(parts) == 1:
        return parts[0]
    return SmoothingEstimate(*(torch.cat(f, dim=0) for f in zip(*parts, strict=True)))


def _check_smoothing_args(
    mean: torch.Tensor,
    scale: float,
    n_samples: int,
    antithetic: bool,
    chunk_size: int | None,
    where: str,
) -> None:
    check_shape("mean", mean, (None, None), where=where)
    if not mean.is_floating_point():
        raise SMCDiffError(f"{where}: mean must be floating point, got {mean.dtype}")
    check_int("n_samples", n_samples, 2 if antithetic else 1, where=where)
    if antithetic and n_samples % 2:
        raise SMCDiffError(f"{where}: antithetic draws need an even n_samples, got {n_samples}")
    check_number("scale", scale, minimum=0.0, strict_min=True, where=where)
    check_int("chunk_size", chunk_size, 1, where=where, allow_none=True)


def smoothed_log_expectation(
    log_g: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    scale: float,
    n_samples: int,
    *,
    generator: torch.Generator,
    estimator: str = "tweedie",
    antithetic: bool = False,
    chunk_size: int | None = None,
    check_finite: bool | None = None,
    where: str = "smoothed_log_expectation",
    common_noise: bool = False,
    common_draws: torch.Tensor | None = None,
) -> SmoothingEstimate:
    r"""Monte Carlo :math:`G(m) = \log\mathbb E_\xi[g(m + c\xi)]` and :math:`\nabla_m G` per row.

    Args:
        log_g: :math:`\log g`, ``(K, d) -> (K,)`` (differentiable for ``estimator="grad"``).
        mean: centres :math:`m`, ``(N, d)``. scale: :math:`c > 0`, a host float.
        n_samples: :math:`M` draws per row (even when ``antithetic``).
        generator: on ``mean``'s device.
        estimator: ``"tweedie"`` / ``"stein"`` (:math:`\frac1c\sum_j w_j\xi_j`) or ``"grad"``
            (:math:`\sum_j w_j\nabla\log g(y_j)`).
        antithetic: draw :math:`M/2` pairs :math:`(\xi, -\xi)`.
        chunk_size: rows of ``mean`` per pass (memory ``chunk_size * M * d``); default keeps
            that product near :math:`2^{22}`.
        check_finite: raise :class:`SMCDiffError` on NaN / +inf values of :math:`\log g` or its
            gradient, or rows where every draw has :math:`g = 0` (one host sync per call);
            ``None``: only on CPU, where the sync is free (on CUDA the NaN propagates to the
            output, where the SMC engine's guard names it).
        common_noise: use the same :math:`\xi_1..\xi_M` for every row (common random numbers):
            each row's estimate keeps its law, but the errors of nearby rows move together, so
            ratios between rows are far less noisy. Within one call :math:`\hat G` is then a
            fixed smooth function of :math:`m`.
        common_draws: ``(1, M', d)`` standard normal draws to use as the common ones
            (:math:`M' = M/2` when ``antithetic``), e.g. kept fixed over many calls.

    Returns:
        :class:`SmoothingEstimate`. Consumes :math:`N M` evaluations of ``log_g`` (and as many
        gradients with ``"grad"``).
    """
    use_grad = check_estimator(estimator, where)
    _check_smoothing_args(mean, scale, n_samples, antithetic, chunk_size, where)
    rows = default_rows(chunk_size, n_samples, mean.shape[1])
    parts, bad = [], {}
    common = common_draws
    if common is None and common_noise:
        m_draw = n_samples // 2 if antithetic else n_samples
        common = torch.randn(
            (1, m_draw, mean.shape[1]), generator=generator, dtype=mean.dtype, device=mean.device
        )
    for start in range(0, mean.shape[0], rows):
        out = draw_chunk(
            log_g, mean[start : start + rows].detach(), scale, n_samples, generator,
            use_grad, antithetic, where, common,
        )  # fmt: skip
        parts.append(out.est)
        merge_bad(bad, out.bad)
    if should_check(check_finite, mean):
        raise_if_bad(bad, mean.shape[0] * n_samples, where)
    if not parts:
        empty = mean.new_zeros(0)
        return SmoothingEstimate(empty.to(_F64), mean, mean, empty.to(_F64))
    return _concat(parts)


def monte_carlo_score(
    target: Target,
    x: torch.Tensor,
    sigma: float,
    n_samples: int,
    *,
    generator: torch.Generator,
    estimator: str = "stein",
    antithetic: bool = False,
    chunk_size: int | None = None,
    check_finite: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The Monte Carlo score :math:`\nabla_x\log\mathbb E_\varepsilon[\tilde\pi(x + \sigma\varepsilon)]`
    of the target smoothed at level ``sigma`` (VE, :math:`\alpha = 1`), and the log smoothed
    density :math:`\log\mathbb E_\varepsilon[\tilde\pi(x + \sigma\varepsilon)] = \log p_\sigma(x) + \log Z`.

    ``estimator="stein"``: :math:`\mathbb E[\varepsilon w]/\sigma`; ``"grad"``:
    :math:`\mathbb E[w\nabla\log\tilde\pi(x + \sigma\varepsilon)]`. ``x`` ``(N, d)``; returns
    ``((N, d), (N,) float64)``. One call of :func:`smoothed_log_expectation`.
    """
    est = smoothed_log_expectation(
        target.log_prob, x, float(sigma), n_samples, generator=generator, estimator=estimator,
        antithetic=antithetic, chunk_size=chunk_size, check_finite=check_finite,
        where="monte_carlo_score",
    )  # fmt: skip
    return est.grad, est.log_mean


# ---------------------------------------------------------------- the score models


class EstimatorBase:
    """Plumbing shared by the Monte Carlo score models: target, sample size, random stream,
    evaluation counters, ``log_z``, chunking and finiteness checks, and the score-model contract
    (``scalar_time = True``; ``event_shape = (dim,)``, the target's flat points)."""

    scalar_time = True

    def __init__(
        self,
        target: Target,
        n_samples: int,
        *,
        estimator: str,
        antithetic: bool,
        log_z: float,
        generator: torch.Generator | None,
        seed: int | None,
        chunk_size: int | None,
        check_finite: bool | None,
        where: str,
        common_noise: bool | str = False,
    ):
        if not callable(getattr(target, "log_prob", None)):
            raise SMCDiffError(f"{where}: target must have an int dim and a log_prob method")
        dim = check_int("target.dim", getattr(target, "dim", None), 1, where=where)
        self.target = target
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.n_samples = check_int("n_samples", n_samples, 1, where=where)
        self.use_grad = check_estimator(estimator, where)
        self.estimator = estimator
        if antithetic and n_samples % 2:
            raise SMCDiffError(f"{where}: antithetic draws need an even n_samples, got {n_samples}")
        self.antithetic = bool(antithetic)
        self.log_z = check_number("log_z", log_z, where=where)
        self.random = GeneratorSource(generator, seed, where)
        self.chunk_size = check_int("chunk_size", chunk_size, 1, where=where, allow_none=True)
        self.check_finite = check_finite
        if common_noise not in (False, True, "call", "fixed"):
            raise SMCDiffError(f"{where}: common_noise must be False, 'call' or 'fixed'")
        self.common_noise = {True: "call"}.get(common_noise, common_noise)
        self._fixed_draws: torch.Tensor | None = None
        self.n_target_evals = 0
        self.n_grad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints (:mod:`smcdiff.engine.checkpoint`): the random stream, the fixed
        common draws and the counters."""
        return {
            "random": self.random.state_dict(),
            "fixed_draws": self._fixed_draws,
            "counts": (self.n_target_evals, self.n_grad_evals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.random.load_state_dict(state["random"])
        self._fixed_draws = state["fixed_draws"]
        self.n_target_evals, self.n_grad_evals = state["counts"]

    def _draws(self, m: torch.Tensor) -> torch.Tensor | None:
        """The inner draws kept for the estimator's lifetime (``common_noise="fixed"``)."""
        if self.common_noise != "fixed":
            return None
        if self._fixed_draws is None or self._fixed_draws.device != m.device:
            k = self.n_samples // 2 if self.antithetic else self.n_samples
            gen = self.random.get(m.device)
            self._fixed_draws = torch.randn(
                (1, k, self.dim), generator=gen, dtype=m.dtype, device=m.device
            )
        return self._fixed_draws.to(m.dtype)

    def _count(self, n_rows: int, n_samples: int, with_grad: bool) -> None:
        self.n_target_evals += n_rows * n_samples
        if with_grad:
            self.n_grad_evals += n_rows * n_samples

    def _check(
        self, bad: dict[str, torch.Tensor], x: torch.Tensor, per_row: int, where: str
    ) -> None:
        """The finite checks of ``bad`` counts over ``x.shape[0] * per_row`` draws, if enabled."""
        if should_check(self.check_finite, x):
            raise_if_bad(bad, x.shape[0] * per_row, where)

    def _smooth(
        self, log_g: Callable[[torch.Tensor], torch.Tensor], m: torch.Tensor, c: float, where: str
    ) -> SmoothingEstimate:
        est = smoothed_log_expectation(
            log_g, m, c, self.n_samples, generator=self.random.get(m.device),
            estimator=self.estimator, antithetic=self.antithetic, chunk_size=self.chunk_size,
            check_finite=self.check_finite, where=where,
            common_noise=self.common_noise == "call", common_draws=self._draws(m),
        )  # fmt: skip
        self._count(m.shape[0], self.n_samples, self.use_grad)
        return est


class NoisedTargetScore(EstimatorBase):
    r"""Base of the estimators of the noised target :math:`p_t` of ``process`` from the posterior
    :math:`p(x_0\mid x_t)` (:class:`MonteCarloScore`, the rdMC classes of
    :mod:`smcdiff.scores.rdmc`): the process, the time check and coefficients, and the log
    density :math:`\log p_t + \log Z - \text{log\_z} = \hat G - d\log a - \text{log\_z}`."""

    def __init__(self, target: Target, process: NoiseProcess, n_samples: int, **kwargs):
        where = kwargs["where"]
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(f"{where}: process must be a NoiseProcess, got {type(process)}")
        super().__init__(target, n_samples, **kwargs)
        self.process = process

    def _coefficients(
        self, x: torch.Tensor, t: float | torch.Tensor, where: str
    ) -> tuple[float, float]:
        """Check ``x`` ``(N, d)`` and ``t``; ``(alpha_t, sigma_t)``."""
        check_points(x, self.event_shape, where)
        return noise_coefficients(self.process, t, where)

    def _log_p(self, log_mean: torch.Tensor, a: float) -> torch.Tensor:
        r""":math:`\log p_t + \log Z - \text{log\_z}` from :math:`\hat G` (``log_mean``)."""
        return log_mean - self.dim * math.log(a) - self.log_z

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target!r}, process={self.process!r}, "
            f"n_samples={self.n_samples}, estimator={self.estimator!r})"
        )


class MonteCarloScore(NoisedTargetScore):
    r"""Importance-sampling score of the noised target :math:`p_t = \pi * \mathcal N(0, \sigma_t^2)`
    after scaling by :math:`\alpha_t` (see the module docstring):
    :math:`x_0^j = x/a + (s/a)\xi_j`, weights :math:`\propto\tilde\pi(x_0^j)`.

    For ``VE`` this is the classical Monte Carlo score; for any process it is rdMC's
    importance-sampling estimator (:class:`~smcdiff.scores.rdmc.RDMCImportanceScore` is this
    class).

    Args:
        target: a :class:`~smcdiff.target.Target` (``dim``, ``log_prob``), unnormalised.
        process: the :class:`NoiseProcess`.
        n_samples: inner samples :math:`M` per point.
        estimator: ``"tweedie"`` (alias ``"stein"``): :math:`\frac1s\sum_j w_j\xi_j`, gradient
            free; ``"grad"``: :math:`\frac1a\sum_j w_j\nabla\log\tilde\pi(x_0^j)`, lower variance at
            low noise.
        antithetic: pairs :math:`(\xi, -\xi)` (see the module docstring).
        log_z: subtracted from every log density (default 0: the estimate is
            :math:`\log p_t + \log Z`).
        generator / seed: the random stream (a user generator must be on the data's device).
        chunk_size: rows of ``x`` per pass (memory ``chunk_size * M * d``).
        check_finite: see :func:`smoothed_log_expectation`.
        reference_std: ``r``: draw :math:`x_0^j` from the Gaussian posterior of a reference
            :math:`\mathcal N(0, r^2 I)` given :math:`x_t` instead of :math:`\mathcal N(x/a, c^2)`,
            and weight by :math:`\tilde\pi/\mathcal N(0, r^2 I)` (unbiased for the same
            :math:`Z p_t`; see ``_score_and_log_density``); at high noise the draws then stay where
            a target of scale ``r`` lives instead of spreading over :math:`c = s/a \gg r`.
        common_noise: ``"call"`` (or True): the same inner draws for every point of a call
            (see :func:`smoothed_log_expectation`), so :math:`\hat p_t` is one smooth random
            function per call; ``"fixed"``: the same draws for every call, so
            :math:`(x, t) \mapsto \hat p_t(x)` is one smooth random function for the estimator's
            lifetime — what a diffusion-path SMC sampler wants (its weights compare
            :math:`\hat p` across steps).

    ``x`` is ``(N, d)`` and ``t`` one float for all rows (``scalar_time``). Counters:
    ``n_target_evals`` (+ N M per call), ``n_grad_evals`` (+ N M with ``"grad"``).
    """

    def __init__(
        self,
        target: Target,
        process: NoiseProcess,
        n_samples: int = 256,
        *,
        estimator: str = "tweedie",
        antithetic: bool = False,
        log_z: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        chunk_size: int | None = None,
        check_finite: bool | None = None,
        reference_std: float | None = None,
        common_noise: bool | str = False,
    ):
        where = type(self).__name__
        self.reference_std = check_number(
            "reference_std", reference_std, minimum=0.0, strict_min=True, where=where,
            allow_none=True,
        )  # fmt: skip
        super().__init__(
            target, process, n_samples, estimator=estimator, antithetic=antithetic, log_z=log_z,
            generator=generator, seed=seed, chunk_size=chunk_size, check_finite=check_finite,
            where=where, common_noise=common_noise,
        )  # fmt: skip

    def _posterior_is(self, x: torch.Tensor, t: float | torch.Tensor, where: str):
        a, s = self._coefficients(x, t, where)
        if self.reference_std is None:
            est = self._smooth(self.target.log_prob, x.detach() / a, s / a, where)
            return est, a, s
        r2 = self.reference_std**2
        v = 1.0 / (a * a / (s * s) + 1.0 / r2)  # the posterior of N(0, r^2 I) given x_t = x

        log_norm = 0.5 * self.dim * math.log(2 * math.pi * r2)

        def log_g(y: torch.Tensor) -> torch.Tensor:  # log pi~ - log N(y; 0, r^2 I)
            return self.target.log_prob(y) + 0.5 * (y * y).sum(-1) / r2 + log_norm

        est = self._smooth(log_g, x.detach() * (v * a / (s * s)), math.sqrt(v), where)
        return est, a, s

    def _score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor, where: str
    ) -> tuple[SmoothingEstimate, torch.Tensor, torch.Tensor]:
        r"""``(estimate, score, log density)``. With a reference :math:`\mathcal N(0, r^2 I)` the
        proposal is :math:`q = \mathcal N(m, vI) \propto \mathcal N(x_0; x/a, c^2 I)\,\mathcal
        N(x_0; 0, r^2 I)` (:math:`c = s/a`, :math:`1/v = 1/c^2 + 1/r^2`, :math:`m = v a x / s^2`),
        :math:`g = \tilde\pi / \mathcal N(0, r^2 I)` and
        :math:`Z p_t(x) = a^{-d}\,\mathcal N(x/a; 0, (r^2 + c^2) I)\, \mathbb E_q[g]`, so
        :math:`\nabla\log p_t = \frac{va}{s^2}\nabla_m G - \frac{x}{a^2 r^2 + s^2}`."""
        est, a, s = self._posterior_is(x, t, where)
        d = self.dim
        if self.reference_std is None:
            return est, est.grad / a, self._log_p(est.log_mean, a)
        r2 = self.reference_std**2
        v = 1.0 / (a * a / (s * s) + 1.0 / r2)
        var = r2 + s * s / (a * a)
        xd = x.detach()
        log_n = -0.5 * ((xd / a) ** 2).sum(-1).double() / var - 0.5 * d * math.log(
            2 * math.pi * var
        )
        score = est.grad * (v * a / (s * s)) - xd / (a * a * r2 + s * s)
        return est, score, self._log_p(est.log_mean + log_n, a)

    def estimate(self, x: torch.Tensor, t: float | torch.Tensor) -> SmoothingEstimate:
        r"""The raw estimate at :math:`m = x/a`, :math:`c = s/a`: ``log_mean`` is
        :math:`\log\frac1M\sum_j\tilde\pi(x_0^j)` (so :math:`\log p_t + \log Z` is
        ``log_mean - d log a``), ``grad`` :math:`= a\,\nabla\log p_t`, ``mean`` the posterior
        mean :math:`\hat{\mathbb E}[x_0\mid x_t = x]`, ``ess``."""
        return self._posterior_is(x, t, f"{type(self).__name__}.estimate")[0]

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\nabla\log p_t}(x)`: ``(N, d) -> (N, d)``."""
        return self._score_and_log_density(x, t, f"{type(self).__name__}.score")[1]

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\log p_t}(x) + \log Z - \text{log\_z}`: ``(N, d) -> (N,)`` float64."""
        return self.score_and_log_density(x, t)[1]

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from the same inner samples: ``(N, d)``, ``(N,)`` float64."""
        _, score, logp = self._score_and_log_density(
            x, t, f"{type(self).__name__}.score_and_log_density"
        )
        return score, logp

    def posterior_mean(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\hat{\mathbb E}[x_0\mid x_t = x] = \sum_j w_j x_0^j`, ``(N, d)``."""
        return self._posterior_is(x, t, f"{type(self).__name__}.posterior_mean")[0].mean
