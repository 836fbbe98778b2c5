r"""Reverse-diffusion Monte Carlo (rdMC): the score of the noised target from samples of the
posterior :math:`p(x_0\mid x_t)`.

With :math:`\tilde\pi = Z\pi` unnormalised, :math:`x_t = a x_0 + s\varepsilon`
(:math:`a = \alpha_t`, :math:`s = \sigma_t`):

.. math::
    p(x_0\mid x_t = x) \propto \tilde\pi(x_0)\,\mathcal N(x; a x_0, s^2 I)
    = \tilde\pi(x_0)\,a^{-d}\,\mathcal N(x_0; x/a, (s/a)^2 I),

and differentiating :math:`p_t(x) = \int\pi(x_0)\mathcal N(x; a x_0, s^2 I)\,dx_0` under the
integral, :math:`\nabla_x\mathcal N(x; a x_0, s^2 I) = \mathcal N\cdot(a x_0 - x)/s^2`, gives
Tweedie's formula

.. math:: \nabla\log p_t(x) = \frac{a\,\mathbb E[x_0\mid x_t = x] - x}{s^2}.

Integrating by parts in :math:`x_0` instead
(:math:`\nabla_x\mathcal N(x; a x_0, s^2) = -\frac1a\nabla_{x_0}\mathcal N(x; a x_0, s^2)`) gives
the gradient identity

.. math:: \nabla\log p_t(x) = \frac1a\,\mathbb E[\nabla\log\tilde\pi(x_0)\mid x_t = x].

Two ways to take the posterior expectations:

* ``method="is"``: importance sampling with the Gaussian factor as proposal,
  :math:`x_0^j \sim \mathcal N(x/a, (s/a)^2 I)`, :math:`w_j \propto \tilde\pi(x_0^j)`:
  :math:`\hat{\mathbb E}[x_0\mid x] = \sum_j w_j x_0^j` and
  :math:`\log p_t(x) + \log Z \approx \log\frac1M\sum_j\tilde\pi(x_0^j) - d\log a`. This is
  :class:`~smcdiff.scores.montecarlo.MonteCarloScore` (the derivation, both estimators and their
  variance are in :mod:`smcdiff.scores.montecarlo`); ``RDMCScore(method="is")`` is that class.
  Good at low and medium noise; at high noise the proposal is far wider than :math:`\pi` and the
  effective sample size collapses exponentially in d.
* ``method="mala"``: :math:`M` MALA chains per point on
  :math:`\log\tilde\pi(x_0) - \|x - a x_0\|^2/(2s^2)` (gradient
  :math:`\nabla\log\tilde\pi(x_0) + \frac as^2(x - a x_0)`), started from the IS particles
  resampled by their weights (``init="is"``) or at :math:`x/a` (``init="mean"``); step size per
  point adapted toward acceptance 0.574 (Robbins–Monro on the chains' mean acceptance) during
  ``n_burnin`` steps, then frozen; the ``n_steps`` later states of every chain are averaged:

  .. math::
      \hat s_{\rm tweedie} = \frac{a\,\overline{x_0} - x}{s^2}, \qquad
      \hat s_{\rm grad} = \frac1a\,\overline{\nabla\log\tilde\pi(x_0)}.

  The chain average carries the MCMC burn-in bias; it shrinks geometrically in ``n_burnin``.
  Local chains do not move mass between well-separated posterior modes: the mode masses are
  those of the resampled IS start, so with a multimodal posterior (a mixture target at high
  noise in high dimension) the error shrinks with ``n_init_samples`` (the IS effective sample
  size), not with the number of chains, and IS itself may fail there: use a moment fit or an
  ensemble (:mod:`smcdiff.scores.moment_fit`, :mod:`smcdiff.scores.ensemble`) at high noise.
  The posterior is log-concave whenever :math:`a^2/s^2` exceeds the largest curvature of
  :math:`-\log\tilde\pi`, which holds at low noise and for log-concave targets at every noise.

The log density always comes from importance sampling (with ``method="mala"`` and ``init="is"``
:meth:`RDMCScore.score_and_log_density` reuses the initialisation's draws).
"""

from __future__ import annotations

import math

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.langevin import MALA
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.montecarlo import (
    MonteCarloScore,
    _draw_chunk,
    check_count,
    check_points,
    default_rows,
    merge_bad,
    noise_coefficients,
    raise_if_bad,
    should_check,
)
from smcdiff.target import Target

__all__ = ["RDMCScore"]

_F64 = torch.float64
_METHODS = ("is", "mala")
_INITS = ("is", "mean")


class RDMCScore(MonteCarloScore):
    r"""Reverse-diffusion Monte Carlo score of an unnormalised target (see the module docstring).

    Args:
        target: :class:`~smcdiff.target.Target` (``dim``, differentiable ``log_prob``).
        process: the :class:`NoiseProcess`.
        n_samples: IS proposals per point (``"is"``), or MALA chains per point (``"mala"``).
        method: ``"is"`` or ``"mala"``.
        estimator: ``"tweedie"`` (alias ``"stein"``) or ``"grad"`` (see the module docstring).
        antithetic: antithetic IS draws (``"is"``, and the IS initialisation of ``"mala"``).
        n_steps: kept MALA steps per chain, averaged. n_burnin: adaptation steps before them
            (default ``n_steps``).
        step_size: initial MALA step :math:`h` (proposal :math:`x + h\nabla + \sqrt{2h}z`);
            default :math:`\tfrac12(s/a)^2 d^{-1/3}`, then adapted per point.
        target_accept: acceptance rate the burn-in adapts toward.
        init: ``"is"`` (resample ``n_init_samples`` IS draws by weight) or ``"mean"`` (:math:`x/a`).
        n_init_samples: IS draws of the initialisation and of ``log_density`` with ``"mala"``
            (default ``n_samples``).
        log_z, generator, seed, chunk_size, check_finite, reference_std: as
            :class:`MonteCarloScore` (``reference_std`` with ``"is"`` only).

    Counters with ``"mala"``: per point, ``n_init_samples`` target evaluations for the IS
    initialisation (if ``init="is"``), then ``n_samples * (1 + n_burnin + n_steps)`` target and
    gradient evaluations for the chains.
    """

    def __init__(
        self,
        target: Target,
        process: NoiseProcess,
        n_samples: int = 256,
        method: str = "is",
        *,
        estimator: str = "tweedie",
        antithetic: bool = False,
        n_steps: int = 20,
        n_burnin: int | None = None,
        step_size: float | None = None,
        target_accept: float = 0.574,
        init: str = "is",
        n_init_samples: int | None = None,
        log_z: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        chunk_size: int | None = None,
        check_finite: bool | None = None,
        reference_std: float | None = None,
        common_noise: bool | str = False,
    ):
        where = "RDMCScore"
        super().__init__(
            target, process, n_samples, estimator=estimator, antithetic=antithetic, log_z=log_z,
            generator=generator, seed=seed, chunk_size=chunk_size, check_finite=check_finite,
            reference_std=reference_std, common_noise=common_noise,
        )  # fmt: skip
        if reference_std is not None and method == "mala":
            raise SMCDiffError(f"{where}: reference_std is an importance-sampling option ('is')")
        if method not in _METHODS:
            raise SMCDiffError(f"{where}: method must be 'is' or 'mala', got {method!r}")
        if init not in _INITS:
            raise SMCDiffError(f"{where}: init must be 'is' or 'mean', got {init!r}")
        self.method, self.init = method, init
        self.n_steps = check_count("n_steps", n_steps, where)
        self.n_burnin = check_count(
            "n_burnin", n_steps if n_burnin is None else n_burnin, where, minimum=0
        )
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise SMCDiffError(f"{where}: step_size must be a finite float > 0, got {step_size}")
        self.step_size = step_size
        if not 0.0 < target_accept < 1.0:
            raise SMCDiffError(f"{where}: target_accept must be in (0, 1), got {target_accept}")
        self.target_accept = float(target_accept)
        self.n_init_samples = check_count(
            "n_init_samples", n_samples if n_init_samples is None else n_init_samples, where
        )
        if antithetic and self.n_init_samples % 2:
            raise SMCDiffError(f"{where}: antithetic draws need an even n_init_samples")

    # ---------------------------------------------------------------- public
    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\nabla\log p_t}(x)`: ``(N, d) -> (N, d)``."""
        if self.method == "is":
            return super().score(x, t)
        return self._mala(x, t, "RDMCScore.score", want_log_density=False)[0]

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, d)``, ``(N,)`` float64; the log density by importance sampling."""
        if self.method == "is":
            return super().score_and_log_density(x, t)
        where = "RDMCScore.score_and_log_density"
        score, log_p = self._mala(x, t, where, want_log_density=True)
        return score, log_p

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\log p_t}(x) + \log Z - \text{log\_z}` by importance sampling with
        ``n_init_samples`` draws (``n_samples`` for ``"is"``), ``(N,)`` float64."""
        if self.method == "is":
            return super().log_density(x, t)
        where = "RDMCScore.log_density"
        check_points(x, self.dim, where)
        a, s = noise_coefficients(self.process, t, where)
        return self._is_log_mean(x.detach(), a, s, where) - self.dim * math.log(a) - self.log_z

    # ---------------------------------------------------------------- MALA
    def _init_draws(self, m: torch.Tensor, c: float, where: str):
        draws = _draw_chunk(
            self.target.log_prob, m, c, self.n_init_samples, self.random.get(m.device),
            False, self.antithetic, where,
        )  # fmt: skip
        self._count(m.shape[0], self.n_init_samples, False)
        return draws

    def _is_log_mean(self, x: torch.Tensor, a: float, s: float, where: str) -> torch.Tensor:
        r"""IS :math:`\log\frac1M\sum_j\tilde\pi(x_0^j)` with ``n_init_samples`` draws, ``(N,)``."""
        out, bad = [], {}
        rows = default_rows(self.chunk_size, self.n_init_samples, self.dim)
        for start in range(0, x.shape[0], rows):
            draws = self._init_draws(x[start : start + rows] / a, s / a, where)
            out.append(draws.est.log_mean)
            merge_bad(bad, draws.bad)
        self._check(bad, x, self.n_init_samples, where)
        return torch.cat(out) if out else x.new_zeros(0, dtype=_F64)

    def _check(self, bad: dict, x: torch.Tensor, per_row: int, where: str) -> None:
        if should_check(self.check_finite, x):
            raise_if_bad(bad, x.shape[0] * per_row, where)

    def _mala(
        self, x: torch.Tensor, t: float | torch.Tensor, where: str, want_log_density: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_points(x, self.dim, where)
        a, s = noise_coefficients(self.process, t, where)
        m_chains = self.n_samples
        rows = default_rows(self.chunk_size, max(m_chains, self.n_init_samples), self.dim)
        scores, log_means = [], []
        for start in range(0, x.shape[0], rows):
            xc = x[start : start + rows].detach()
            score, log_mean = self._mala_chunk(xc, a, s, where)
            scores.append(score)
            if want_log_density:  # init="mean" has no IS draws: draw them now
                log_means.append(
                    self._is_log_mean(xc, a, s, where) if log_mean is None else log_mean
                )
        if not scores:
            return x.new_zeros(0, self.dim), x.new_zeros(0, dtype=_F64)
        if not want_log_density:
            return torch.cat(scores), None
        return torch.cat(scores), torch.cat(log_means) - self.dim * math.log(a) - self.log_z

    def _mala_chunk(
        self, x: torch.Tensor, a: float, s: float, where: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, d = x.shape
        m_chains = self.n_samples
        gen = self.random.get(x.device)
        c = s / a
        log_mean = None
        if self.init == "is":
            draws = self._init_draws(x / a, c, where)
            self._check(draws.bad, x, self.n_init_samples, where)
            log_mean = draws.est.log_mean
            w = torch.exp(draws.log_g - log_mean.unsqueeze(1))  # (n, M0)
            row_bad = ~torch.isfinite(w).all(1) | ~torch.isfinite(log_mean)
            # unchecked bad rows (NaN / all-zero weights): resample uniformly, then output NaN
            w = torch.where(row_bad.unsqueeze(1), torch.ones_like(w), w)
            idx = torch.multinomial(w, m_chains, replacement=True, generator=gen)
            start = torch.gather(draws.y, 1, idx.unsqueeze(-1).expand(n, m_chains, d))
        else:
            start = (x / a).unsqueeze(1).expand(n, m_chains, d)
            row_bad = torch.zeros(n, dtype=torch.bool, device=x.device)
        z0 = start.reshape(n * m_chains, d)
        x_rep = x.repeat_interleave(m_chains, dim=0)
        prec = a / (s * s)  # gradient of the Gaussian factor: prec * (x - a z)

        def log_post(z: torch.Tensor) -> torch.Tensor:
            return self.target.log_prob(z) - (x_rep - a * z).square().sum(-1) / (2.0 * s * s)

        kernel = MALA(log_post)
        state = kernel.init(z0)
        self._count(n, m_chains, True)
        start_bad = ~(torch.isfinite(state.log_prob) & torch.isfinite(state.grad).all(-1))
        bad = {
            "MALA start: target log_prob or its gradient is not finite at chains": start_bad.sum()
        }
        self._check(bad, x, m_chains, where)
        row_bad = row_bad | start_bad.view(n, m_chains).any(1)

        h0 = self.step_size if self.step_size is not None else 0.5 * c * c * d ** (-1.0 / 3.0)
        log_h = torch.full((n,), math.log(h0), dtype=x.dtype, device=x.device)
        sum_z = torch.zeros(n, d, dtype=_F64, device=x.device)
        sum_g = torch.zeros(n, d, dtype=_F64, device=x.device)
        for k in range(self.n_burnin + self.n_steps):
            h = log_h.exp().repeat_interleave(m_chains)
            state, info = kernel.step(state, h, gen)
            if k < self.n_burnin:
                acc = info.accept_prob.view(n, m_chains).mean(1)
                log_h = robbins_monro(log_h, acc, self.target_accept, rm_gain(k + 1))
            elif self.use_grad:  # ∇log π̃(z) = ∇log post(z) - (a/s²)(x - a z)
                g = state.grad.to(_F64) - prec * (x_rep - a * state.x).to(_F64)
                sum_g += g.view(n, m_chains, d).sum(1)
            else:
                sum_z += state.x.to(_F64).view(n, m_chains, d).sum(1)
        self._count(n, m_chains * (self.n_burnin + self.n_steps), True)
        n_avg = m_chains * self.n_steps
        if self.use_grad:
            score = sum_g / (n_avg * a)
        else:
            score = (a * sum_z / n_avg - x.to(_F64)) / (s * s)
        score = torch.where(row_bad.unsqueeze(1), torch.full_like(score, math.nan), score)
        return score.to(x.dtype), log_mean

    def __repr__(self) -> str:
        return (
            f"RDMCScore(target={self.target!r}, process={self.process!r}, "
            f"n_samples={self.n_samples}, method={self.method!r}, estimator={self.estimator!r})"
        )
