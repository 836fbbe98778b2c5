r"""Gradient-free drifts from ensembles and Gaussian smoothing: the Föllmer drift of the
Schrödinger–Föllmer process, and the ensemble score.

**Schrödinger–Föllmer.** In its own time :math:`u \in [0, 1]` (:math:`u = 0` start, :math:`u = 1`
target) the process :math:`dX_u = b(X_u, u)\,du + dW_u`, :math:`X_0 = 0`, has :math:`X_1 \sim \pi`
for the drift

.. math::
    b(x, u) = \nabla_x\log\mathbb E_{z\sim\mathcal N(0, I)}\big[f(x + \sqrt{1-u}\,z)\big], \qquad
    f = \tilde\pi / \mathcal N(0, I).

It is the Gaussian smoothing of :mod:`smcdiff.scores.montecarlo` with :math:`\log g = \log f`,
:math:`m = x`, :math:`c = \sqrt{1-u}`, so the two estimators are (with :math:`y_j = x + c z_j`,
:math:`w_j \propto f(y_j)`)

.. math::
    \hat b_{\rm stein} = \frac1c\sum_j w_j z_j, \qquad
    \hat b_{\rm grad} = \sum_j w_j\big(\nabla\log\tilde\pi(y_j) + y_j\big),

using :math:`\nabla\log f(y) = \nabla\log\tilde\pi(y) + y`. The weights
:math:`f = \tilde\pi\,e^{\|y\|^2/2}` are heavy-tailed when :math:`\pi` is wider than
:math:`\mathcal N(0, I)` in some direction: the error then approaches its
:math:`1/\sqrt M` rate only for large M, worst at small u (rescale the target to unit scale first).

Closed form, for checks and to see it as a score: :math:`X_u` given :math:`X_1 = y` is a Brownian
bridge, :math:`X_u = u\,y + \sqrt{u(1-u)}\,\xi`, so the law of :math:`X_u` is the noised marginal
:math:`p^{\rm SF}_u` of the process with :math:`\alpha = u`, :math:`\sigma = \sqrt{u(1-u)}`.
Completing the square in :math:`y`,
:math:`\mathcal N(y; x, c^2 I)/\mathcal N(y; 0, I) = (2\pi/u)^{d/2}e^{\|x\|^2/(2u)}\,
\mathcal N(y; x/u, \tfrac{1-u}u I)` and :math:`\mathcal N(y; x/u, \tfrac{1-u}u I) = u^d\,
\mathcal N(x; u y, u(1-u) I)`, hence

.. math::
    \log\mathbb E_z[f(x + cz)] = \log Z + \tfrac d2\log(2\pi u) + \frac{\|x\|^2}{2u}
    + \log p^{\rm SF}_u(x), \qquad b(x, u) = \frac xu + \nabla\log p^{\rm SF}_u(x).

:class:`SchrodingerFollmer` is that noise process in this toolkit's convention
(:math:`t = 1 - u`: :math:`\alpha_t = 1 - t`, :math:`\sigma_t = \sqrt{t(1-t)}`), and
:class:`FollmerDrift` is a score model for it: ``score(x, t) = b(x, 1-t) - x/(1-t)``. Both
:class:`FollmerDrift` and :class:`~smcdiff.scores.rdmc.RDMCImportanceScore` on
:class:`SchrodingerFollmer` estimate the
same :math:`\nabla\log p^{\rm SF}`, by importance sampling the same posterior from different
proposals (:math:`\mathcal N(x, (1-u)I)` weighted by :math:`\tilde\pi/\mathcal N(0, I)` here,
:math:`\mathcal N(x/u, \tfrac{1-u}u I)` weighted by :math:`\tilde\pi` there).

**Ensemble score.** Given particles :math:`\{y_j, w_j\}` approximating :math:`\pi` (e.g. the
current SMC particles) as the proposal for :math:`p(x_0\mid x_t)`,

.. math::
    s(x) = \frac{a\sum_j w_j\mathcal N(x; a y_j, s^2 I)\,y_j / \sum_j w_j\mathcal N(x; a y_j, s^2 I)
    - x}{s^2},

which is exactly the score of :math:`\sum_j w_j\mathcal N(x; a y_j, s^2 I)`: the empirical score
of :mod:`smcdiff.scores.empirical`, implemented once there. ``EnsembleScore`` is that class
(``EnsembleScore(particles, process, log_weights=...)``, ``.update(particles, log_weights)``).
"""

from __future__ import annotations

import math

import torch

from smcdiff.checks import check_number, check_time
from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.empirical import EmpiricalScore
from smcdiff.scores.montecarlo import EstimatorBase, SmoothingEstimate, check_points
from smcdiff.target import Target

__all__ = ["EnsembleScore", "FollmerDrift", "SchrodingerFollmer"]

EnsembleScore = EmpiricalScore
"""The ensemble score is the empirical score of the weighted particles (see the module docstring)."""

_LOG_2PI = math.log(2.0 * math.pi)
Time = float | torch.Tensor


def _t(t: Time) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class SchrodingerFollmer(NoiseProcess):
    r"""The Schrödinger–Föllmer bridge as a noise process: :math:`\alpha_t = 1 - t`,
    :math:`\sigma_t = \sqrt{t(1-t)}` (:math:`t = 1 - u`, u the Föllmer time). At :math:`t = 1` the
    law is the point mass at 0 (the Föllmer start), so the default grid stops at ``1 - 1e-3``."""

    t_max = 1.0 - 1e-3

    def alpha(self, t: Time) -> torch.Tensor:
        return 1.0 - _t(t)

    def sigma(self, t: Time) -> torch.Tensor:
        t = _t(t)
        return torch.sqrt((t * (1.0 - t)).clamp_min(0.0))

    def d_alpha(self, t: Time) -> torch.Tensor:
        return -torch.ones_like(_t(t))

    def d_sigma(self, t: Time) -> torch.Tensor:
        t = _t(t)
        return (0.5 - t) / self.sigma(t)


class FollmerDrift(EstimatorBase):
    r"""Monte Carlo Föllmer drift :math:`b(x, u)` (Föllmer time u, see the module docstring), and
    the score model of the Schrödinger–Föllmer marginals built on it.

    Args:
        target: :class:`~smcdiff.target.Target`, unnormalised.
        n_samples: inner samples :math:`M` per point.
        estimator: ``"stein"`` (alias ``"tweedie"``, gradient-free) or ``"grad"``.
        antithetic, log_z, generator, seed, chunk_size, check_finite: as
            :class:`~smcdiff.scores.montecarlo.MonteCarloScore`.

    ``process`` is :class:`SchrodingerFollmer`; ``score`` / ``log_density`` take its time
    :math:`t = 1 - u`, one float for all rows (``scalar_time``), and ``x`` ``(N, d)``
    (``event_shape = (d,)``, the target's). Counters: ``n_target_evals`` (+ N M per call), ``n_grad_evals`` (+ N M
    with ``"grad"``).
    """

    def __init__(
        self,
        target: Target,
        n_samples: int = 256,
        *,
        estimator: str = "stein",
        antithetic: bool = False,
        log_z: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        chunk_size: int | None = None,
        check_finite: bool | None = None,
    ):
        super().__init__(
            target, n_samples, estimator=estimator, antithetic=antithetic, log_z=log_z,
            generator=generator, seed=seed, chunk_size=chunk_size, check_finite=check_finite,
            where="FollmerDrift",
        )  # fmt: skip
        self.process = SchrodingerFollmer()

    def _log_f(self, y: torch.Tensor) -> torch.Tensor:
        r""":math:`\log f(y) = \log\tilde\pi(y) - \log\mathcal N(y; 0, I)`."""
        lp = self.target.log_prob(y)
        return lp + (0.5 * y.square().sum(-1) + 0.5 * self.dim * _LOG_2PI).to(lp.dtype)

    @staticmethod
    def _time(u: float | torch.Tensor, where: str) -> float:
        """The Föllmer time as a float in ``[0, 1)`` (not a diffusion time: u = 1 is the target)."""
        u = check_number("u", u, where=where)
        if not 0.0 <= u < 1.0:
            raise SMCDiffError(
                f"{where}: the Föllmer time u must lie in [0, 1) (at u = 1 the drift is "
                f"grad log f itself, no smoothing), got {u}"
            )
        return u

    def estimate(self, x: torch.Tensor, u: float | torch.Tensor) -> SmoothingEstimate:
        r"""Raw smoothing estimate at :math:`m = x`, :math:`c = \sqrt{1-u}`: ``log_mean`` is
        :math:`\log\frac1M\sum_j f(y_j)`, ``grad`` the drift."""
        where = "FollmerDrift.estimate"
        check_points(x, self.event_shape, where)
        u = self._time(u, where)
        return self._smooth(self._log_f, x.detach(), math.sqrt(1.0 - u), where)

    def drift(self, x: torch.Tensor, u: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\hat b(x, u)`, ``(N, d) -> (N, d)``."""
        return self.estimate(x, u).grad

    def log_potential(self, x: torch.Tensor, u: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log\widehat{\mathbb E}_z[f(x + \sqrt{1-u}z)] - \text{log\_z}`, ``(N,)``
        float64 (with ``log_z = 0`` this includes the target's :math:`\log Z`)."""
        return self.estimate(x, u).log_mean - self.log_z

    # ---------------------------------------------------------------- score model view
    def _sf(self, x: torch.Tensor, t: float | torch.Tensor, where: str):
        t = check_time("t", t, where=where)
        if not 0.0 < t < 1.0:
            raise SMCDiffError(
                f"{where}: t must lie in (0, 1) for the Schrödinger–Föllmer marginal (t = 0 is "
                f"the target itself, t = 1 the point mass at 0), got {t}"
            )
        return self.estimate(x, 1.0 - t), 1.0 - t

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla\log p^{\rm SF}_t(x) = b(x, 1-t) - x/(1-t)`, ``(N, d)``."""
        est, u = self._sf(x, t, "FollmerDrift.score")
        return est.grad - x.detach() / u

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(score, log p^SF_t + log Z - log_z)`` from one set of draws, ``(N, d)``, ``(N,)``."""
        est, u = self._sf(x, t, "FollmerDrift.score_and_log_density")
        sq = x.detach().to(torch.float64).square().sum(-1)
        log_p = est.log_mean - 0.5 * self.dim * math.log(2.0 * math.pi * u) - sq / (2.0 * u)
        return est.grad - x.detach() / u, log_p - self.log_z

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return self.score_and_log_density(x, t)[1]

    def __repr__(self) -> str:
        return (
            f"FollmerDrift(target={self.target!r}, n_samples={self.n_samples}, "
            f"estimator={self.estimator!r})"
        )
