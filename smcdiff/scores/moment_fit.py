r"""Gaussian and Gaussian-mixture moment fits of weighted samples, for scores at high noise, and a
blend that switches estimators at a noise level.

**Why a fit works at high noise.** For :math:`x_t = a x_0 + s\varepsilon` and any :math:`\pi`
with mean :math:`\mu` and covariance :math:`\Sigma`, the cumulants of :math:`p_t` are
:math:`a\mu`, :math:`a^2\Sigma + s^2 I` and :math:`a^k\kappa_k(\pi)` for :math:`k \ge 3`; in the
standardised variable :math:`x/s` the non-Gaussian part is :math:`O((a/s)^3)`. So
:math:`\mathcal N(a\mu, a^2\Sigma + s^2 I)`, the noised law of the moment-matched Gaussian, has a
score error that vanishes as the noise-to-signal ratio :math:`s/a` grows, exactly where the
Monte Carlo estimators degrade (:mod:`smcdiff.scores.montecarlo`). A K-component fit also keeps
the modes' masses and locations, which matter at medium noise.

**Weighted fits.** Samples :math:`y_j` with normalised weights :math:`w_j` (importance or SMC
weights):

* one component: :math:`\hat\mu = \sum_j w_j y_j`,
  :math:`\hat\Sigma = \sum_j w_j (y_j - \hat\mu)(y_j - \hat\mu)^\top + \epsilon I` (the weighted
  maximum-likelihood covariance, no Bessel correction; :math:`\epsilon` = ``reg``);
* K components: weighted k-means++ seeding (first centre :math:`\propto w_j`, each next one
  :math:`\propto w_j D_j^2`, :math:`D_j` the distance to the nearest centre chosen), an M-step from
  the hard assignment to the nearest centre, then ``n_iter`` weighted EM steps:
  :math:`r_{jk} \propto \pi_k\mathcal N(y_j; \mu_k, \Sigma_k)`, :math:`N_k = \sum_j w_j r_{jk}`,
  :math:`\pi_k = N_k`, :math:`\mu_k = \sum_j w_j r_{jk} y_j / N_k`,
  :math:`\Sigma_k = \sum_j w_j r_{jk}(y_j - \mu_k)(y_j - \mu_k)^\top / N_k + \epsilon I`
  (each step does not decrease the weighted log-likelihood
  :math:`\sum_j w_j\log\sum_k\pi_k\mathcal N(y_j; \mu_k, \Sigma_k)`). A component whose mass
  falls below :math:`10^{-12}` keeps its previous mean and covariance.

The fitted :class:`~smcdiff.distributions.GaussianMixture` goes through
:func:`smcdiff.scores.exact_score`, so its score and log density at every t are closed form.
Fitting is in float64 and syncs with the host (mixture validation): fit once per SMC step at most.
"""

from __future__ import annotations

import math

import torch

from smcdiff.checks import check_int, check_number, check_shape, check_time
from smcdiff.distributions.gaussian_mixture import GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time
from smcdiff.scores.exact import ExactScore, exact_score
from smcdiff.scores.montecarlo import GeneratorSource, check_points

__all__ = [
    "BlendedScore",
    "fit_gaussian",
    "fit_gaussian_mixture",
    "moment_fit_blend",
    "moment_fit_score",
]

_F64 = torch.float64
_MIN_MASS = 1e-12


def _weights(samples: torch.Tensor, log_weights: torch.Tensor | None, where: str) -> torch.Tensor:
    """Normalised float64 weights ``(J,)``; raises on NaN / +inf or all-zero weights."""
    check_shape("samples", samples, (None, None), where=where)
    check_points(samples, samples.shape[1], where, name="samples")
    n = samples.shape[0]
    if n < 1:
        raise SMCDiffError(f"{where}: samples is empty")
    if not bool(torch.isfinite(samples).all()):
        raise SMCDiffError(f"{where}: samples has non-finite entries")
    if log_weights is None:
        return torch.full((n,), 1.0 / n, dtype=_F64, device=samples.device)
    check_shape("log_weights", log_weights, (n,), where=where)
    lw = log_weights.detach().to(device=samples.device, dtype=_F64)
    if bool(torch.isnan(lw).any() | (lw == math.inf).any() | (lw == -math.inf).all()):
        raise SMCDiffError(
            f"{where}: log_weights must have no NaN or +inf and at least one finite entry"
        )
    return torch.exp(lw - torch.logsumexp(lw, 0))


def _weighted_moments(
    y: torch.Tensor, w: torch.Tensor, reg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean ``(d,)`` and ML covariance ``(d, d)`` (+ reg I); ``w`` sums to one."""
    mu = w @ y
    c = y - mu
    cov = (c * w.unsqueeze(-1)).T @ c
    cov = 0.5 * (cov + cov.T) + reg * torch.eye(y.shape[1], dtype=_F64, device=y.device)
    return mu, cov


def fit_gaussian(
    samples: torch.Tensor, log_weights: torch.Tensor | None = None, *, reg: float = 1e-6
) -> GaussianMixture:
    r"""The moment-matched Gaussian :math:`\mathcal N(\hat\mu, \hat\Sigma + \epsilon I)` of
    weighted samples ``(J, d)`` (``log_weights`` ``(J,)``, default uniform), as a one-component
    :class:`GaussianMixture` in the samples' dtype and device."""
    where = "fit_gaussian"
    w = _weights(samples, log_weights, where)
    reg = check_number("reg", reg, minimum=0.0, where=where)
    mu, cov = _weighted_moments(samples.detach().to(_F64), w, reg)
    return GaussianMixture(torch.ones(1, dtype=_F64), mu.unsqueeze(0).to(samples.dtype), cov[None])


def _kmeans_pp(y: torch.Tensor, w: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Weighted k-means++ centres ``(k, d)``."""
    first = torch.multinomial(w, 1, generator=gen)
    centres = [y[first[0]]]
    d2 = (y - centres[0]).square().sum(-1)
    for _ in range(1, k):
        p = w * d2
        # all mass on the chosen centres (fewer distinct points than k): fall back to w
        p = torch.where(p.sum() > 0, p, w)
        nxt = torch.multinomial(p, 1, generator=gen)
        centres.append(y[nxt[0]])
        d2 = torch.minimum(d2, (y - centres[-1]).square().sum(-1))
    return torch.stack(centres)


def _m_step(
    y: torch.Tensor,
    wr: torch.Tensor,
    reg: float,
    prev: tuple[torch.Tensor, torch.Tensor] | None,
    fallback_cov: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ``wr`` ``(J, K)`` = :math:`w_j r_{jk}`: mixture weights ``(K,)``, means, covariances."""
    mass = wr.sum(0)  # (K,)
    safe = mass.clamp_min(_MIN_MASS)
    means = (wr.T @ y) / safe.unsqueeze(-1)
    c = y.unsqueeze(1) - means  # (J, K, d)
    covs = torch.einsum("jk,jkd,jke->kde", wr, c, c) / safe[:, None, None]
    eye = torch.eye(y.shape[1], dtype=_F64, device=y.device)
    covs = 0.5 * (covs + covs.transpose(-1, -2)) + reg * eye
    dead = mass < _MIN_MASS
    old_m, old_c = prev if prev is not None else (means, fallback_cov.expand_as(covs))
    means = torch.where(dead.unsqueeze(-1), old_m, means)
    covs = torch.where(dead[:, None, None], old_c, covs)
    return mass / mass.sum(), means, covs


def fit_gaussian_mixture(
    samples: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    n_components: int = 1,
    *,
    n_iter: int = 20,
    reg: float = 1e-6,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> GaussianMixture:
    r"""A K-component :class:`GaussianMixture` fitted to weighted samples by weighted EM from a
    weighted k-means++ start (see the module docstring); ``n_components=1`` is
    :func:`fit_gaussian`.

    Args:
        samples: ``(J, d)``. log_weights: ``(J,)`` unnormalised (default uniform).
        n_components: K. n_iter: EM steps after the k-means++ / hard-assignment start.
        reg: :math:`\epsilon` added to every covariance's diagonal.
        generator / seed: the seeding's random stream (on the samples' device).

    Returns the mixture in the samples' dtype and device.
    """
    where = "fit_gaussian_mixture"
    n_components = check_int("n_components", n_components, 1, where=where)
    n_iter = check_int("n_iter", n_iter, 0, where=where)
    if n_components == 1:
        return fit_gaussian(samples, log_weights, reg=reg)
    w = _weights(samples, log_weights, where)
    reg = check_number("reg", reg, minimum=0.0, where=where)
    if samples.shape[0] < n_components:
        raise SMCDiffError(
            f"{where}: {samples.shape[0]} samples cannot seed {n_components} components"
        )
    gen = GeneratorSource(generator, seed, where).get(samples.device)
    y = samples.detach().to(_F64)
    _, global_cov = _weighted_moments(y, w, reg)
    centres = _kmeans_pp(y, w, n_components, gen)
    labels = torch.cdist(y, centres).argmin(-1)
    hard = torch.nn.functional.one_hot(labels, n_components).to(_F64)
    pis, means, covs = _m_step(y, w.unsqueeze(-1) * hard, reg, (centres, global_cov), global_cov)
    for _ in range(n_iter):
        gm = GaussianMixture(pis, means, covs)
        log_r = gm.component_log_prob(y)  # (J, K), includes log pi_k
        r = torch.softmax(log_r, -1)
        pis, means, covs = _m_step(y, w.unsqueeze(-1) * r, reg, (means, covs), global_cov)
    return GaussianMixture(pis, means.to(samples.dtype), covs)


def moment_fit_score(
    samples: torch.Tensor,
    process: NoiseProcess,
    log_weights: torch.Tensor | None = None,
    n_components: int = 1,
    **fit_kwargs: object,
) -> ExactScore:
    r"""``exact_score(fit_gaussian_mixture(samples, log_weights, n_components, ...), process)``:
    the closed-form score and log density of the fitted mixture noised by ``process``."""
    return exact_score(
        fit_gaussian_mixture(samples, log_weights, n_components, **fit_kwargs),  # type: ignore[arg-type]
        process,
    )


class BlendedScore:
    r"""``low_noise`` below a noise level, ``high_noise`` from it on: at time t the model used is
    ``high_noise`` if :math:`\sigma_t/\alpha_t \ge` ``noise_threshold`` (or :math:`\alpha_t = 0`),
    else ``low_noise``. Both must share the process (the same object, or equal ``repr``) and the
    event shape.

    The choice needs one time for all rows: ``scalar_time = True`` (a float ``t``); each model
    gets it in its own form (:func:`~smcdiff.scores.base.model_time`). ``x`` is
    ``(N, *event_shape)``. Has ``log_density`` / ``score_and_log_density`` only in effect when
    both models do (calling them otherwise raises). ``n_target_evals`` / ``n_grad_evals`` sum the
    two models' counters.
    """

    scalar_time = True

    def __init__(self, low_noise: ScoreModel, high_noise: ScoreModel, noise_threshold: float):
        where = "BlendedScore"
        for name, m in (("low_noise", low_noise), ("high_noise", high_noise)):
            if not (callable(getattr(m, "score", None)) and hasattr(m, "process")):
                raise SMCDiffError(f"{where}: {name} must be a ScoreModel (process, dim, score)")
        shape, high_shape = event_shape_of(low_noise), event_shape_of(high_noise)
        if shape != high_shape:
            raise SMCDiffError(
                f"{where}: low_noise has event shape {shape}, high_noise {high_shape}"
            )
        p, q = low_noise.process, high_noise.process
        if p is not q and repr(p) != repr(q):
            raise SMCDiffError(f"{where}: the models use different processes: {p!r} vs {q!r}")
        self.noise_threshold = check_number(
            "noise_threshold", noise_threshold, minimum=0.0, strict_min=True, where=where
        )
        self.low_noise, self.high_noise = low_noise, high_noise
        self.process, self.dim, self.event_shape = p, low_noise.dim, shape

    @property
    def n_target_evals(self) -> int:
        return sum(getattr(m, "n_target_evals", 0) for m in (self.low_noise, self.high_noise))

    @property
    def n_grad_evals(self) -> int:
        return sum(getattr(m, "n_grad_evals", 0) for m in (self.low_noise, self.high_noise))

    def model_at(self, t: float | torch.Tensor) -> ScoreModel:
        """The model used at time ``t``."""
        t = check_time("t", t, where="BlendedScore")
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        if a <= 0.0 or s >= self.noise_threshold * a:
            return self.high_noise
        return self.low_noise

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        m = self.model_at(t)
        return m.score(x, model_time(m, t, x))

    def _density_model(self, t: float | torch.Tensor):
        m = self.model_at(t)
        if not has_log_density(m):
            raise SMCDiffError(
                f"BlendedScore: the model used at t={float(t)} ({type(m).__name__}) has no "
                f"log density"
            )
        return m

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        m = self._density_model(t)
        return m.log_density(x, model_time(m, t, x))

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self._density_model(t)
        return m.score_and_log_density(x, model_time(m, t, x))

    def __repr__(self) -> str:
        return (
            f"BlendedScore(low_noise={self.low_noise!r}, high_noise={self.high_noise!r}, "
            f"noise_threshold={self.noise_threshold})"
        )


def moment_fit_blend(
    low_noise: ScoreModel,
    samples: torch.Tensor,
    noise_threshold: float,
    log_weights: torch.Tensor | None = None,
    n_components: int = 1,
    **fit_kwargs: object,
) -> BlendedScore:
    r"""``low_noise`` below ``noise_threshold`` (in :math:`\sigma_t/\alpha_t`), the moment fit of
    the weighted ``samples`` (:func:`moment_fit_score`, on ``low_noise.process``) above it."""
    fit = moment_fit_score(samples, low_noise.process, log_weights, n_components, **fit_kwargs)
    return BlendedScore(low_noise, fit, noise_threshold)
