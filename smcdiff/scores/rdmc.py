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

Two ways to take the posterior expectations, one class each (``RDMCScore(..., method=...)``
builds either):

* :class:`RDMCImportanceScore` (``method="is"``): importance sampling with the Gaussian factor as
  proposal, :math:`x_0^j \sim \mathcal N(x/a, (s/a)^2 I)`, :math:`w_j \propto \tilde\pi(x_0^j)`:
  :math:`\hat{\mathbb E}[x_0\mid x] = \sum_j w_j x_0^j` and
  :math:`\log p_t(x) + \log Z \approx \log\frac1M\sum_j\tilde\pi(x_0^j) - d\log a`. This is
  :class:`~smcdiff.scores.montecarlo.MonteCarloScore` (the derivation, both estimators and their
  variance are in :mod:`smcdiff.scores.montecarlo`) under its rdMC name. Good at low and medium
  noise; at high noise the proposal is far wider than :math:`\pi` and the effective sample size
  collapses exponentially in d.
* :class:`RDMCMalaScore` (``method="mala"``): :math:`M` MALA chains per point on
  :math:`\log\tilde\pi(x_0) - \|x - a x_0\|^2/(2s^2)` (gradient
  :math:`\nabla\log\tilde\pi(x_0) + \frac as^2(x - a x_0)`), started from the IS particles
  resampled by their weights (``init="is"``) or at :math:`x/a` (``init="mean"``); step size per
  point adapted toward acceptance 0.574 (Robbins–Monro on the chains' mean acceptance) during
  ``n_burnin`` steps, then frozen; the ``n_steps`` later states of every chain are averaged:

  .. math::
      \hat{\mathbb E}[x_0\mid x] = \overline{x_0}, \qquad
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
  Its log density comes from importance sampling (with ``init="is"``,
  :meth:`RDMCMalaScore.score_and_log_density` reuses the initialisation's draws).

Both share :class:`~smcdiff.scores.montecarlo.NoisedTargetScore` (target, process, random stream,
counters, checks, the log-density correction), declare ``scalar_time = True`` and take flat
points ``x`` ``(N, d)`` (``event_shape = (d,)``, the target's).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from smcdiff.checks import check_choice, check_int, check_number, check_options
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.langevin import MALA
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.montecarlo import (
    Draws,
    MonteCarloScore,
    NoisedTargetScore,
    default_rows,
    draw_chunk,
    smoothed_log_expectation,
)
from smcdiff.target import Target

__all__ = ["RDMCImportanceScore", "RDMCMalaScore", "RDMCScore"]

_F64 = torch.float64
_INITS = ("is", "mean")


class RDMCImportanceScore(MonteCarloScore):
    r"""rdMC by importance sampling (see the module docstring): :class:`MonteCarloScore` under
    its rdMC name, with the same arguments (``reference_std``, ``common_noise``, ...), log
    densities (:meth:`log_density`, :meth:`score_and_log_density`), raw :meth:`estimate` and
    :meth:`posterior_mean`."""


class RDMCMalaScore(NoisedTargetScore):
    r"""rdMC with inner MALA chains on the posterior :math:`p(x_0\mid x_t)` (module docstring).

    Args:
        target: :class:`~smcdiff.target.Target` (``dim``, differentiable ``log_prob``).
        process: the :class:`NoiseProcess`.
        n_samples: MALA chains per point.
        estimator: ``"tweedie"`` (alias ``"stein"``) or ``"grad"`` (see the module docstring).
        antithetic: antithetic IS draws of the initialisation and of the log density.
        n_steps: kept MALA steps per chain, averaged. n_burnin: adaptation steps before them
            (default ``n_steps``).
        step_size: initial MALA step :math:`h` (proposal :math:`x + h\nabla + \sqrt{2h}z`);
            default :math:`\tfrac12(s/a)^2 d^{-1/3}`, then adapted per point.
        target_accept: acceptance rate the burn-in adapts toward.
        init: ``"is"`` (resample ``n_init_samples`` IS draws by weight) or ``"mean"`` (:math:`x/a`).
        n_init_samples: IS draws of the initialisation and of the log density (default
            ``n_samples``).
        log_z, generator, seed, chunk_size, check_finite: as :class:`MonteCarloScore`.

    ``x`` is ``(N, d)`` and ``t`` one float for all rows (``scalar_time``). Counters: per point,
    ``n_init_samples`` target evaluations for the IS initialisation (if ``init="is"``), then
    ``n_samples * (1 + n_burnin + n_steps)`` target and gradient evaluations for the chains.
    """

    def __init__(
        self,
        target: Target,
        process: NoiseProcess,
        n_samples: int = 256,
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
    ):
        where = type(self).__name__
        super().__init__(
            target, process, n_samples, estimator=estimator, antithetic=antithetic, log_z=log_z,
            generator=generator, seed=seed, chunk_size=chunk_size, check_finite=check_finite,
            where=where,
        )  # fmt: skip
        self.init = check_choice("init", init, _INITS, where=where)
        self.n_steps = check_int("n_steps", n_steps, 1, where=where)
        self.n_burnin = check_int(
            "n_burnin", n_steps if n_burnin is None else n_burnin, 0, where=where
        )
        self.step_size = check_number(
            "step_size", step_size, minimum=0.0, strict_min=True, where=where, allow_none=True
        )
        self.target_accept = check_number(
            "target_accept", target_accept, minimum=0.0, maximum=1.0, strict_min=True,
            strict_max=True, where=where,
        )  # fmt: skip
        self.n_init_samples = check_int(
            "n_init_samples", n_samples if n_init_samples is None else n_init_samples, 1,
            where=where,
        )  # fmt: skip
        if antithetic and self.n_init_samples % 2:
            raise SMCDiffError(f"{where}: antithetic draws need an even n_init_samples")

    # ---------------------------------------------------------------- public
    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\nabla\log p_t}(x)` from the chains: ``(N, d) -> (N, d)``."""
        return self._run(x, t, f"{type(self).__name__}.score", "score", False)[0]

    def posterior_mean(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\hat{\mathbb E}[x_0\mid x_t = x]`: the average of the chains' kept states,
        ``(N, d)`` (whatever the ``estimator``)."""
        return self._run(x, t, f"{type(self).__name__}.posterior_mean", "mean", False)[0]

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, d)`` from the chains, ``(N,)`` float64 by importance sampling (``init="is"``:
        the initialisation's draws)."""
        where = f"{type(self).__name__}.score_and_log_density"
        return self._run(x, t, where, "score", True)  # type: ignore[return-value]

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\log p_t}(x) + \log Z - \text{log\_z}` by importance sampling with
        ``n_init_samples`` draws (no chains), ``(N,)`` float64."""
        where = f"{type(self).__name__}.log_density"
        a, s = self._coefficients(x, t, where)
        return self._log_p(self._is_log_mean(x.detach(), a, s, where), a)

    # ---------------------------------------------------------------- importance sampling
    def _init_draws(self, m: torch.Tensor, c: float, where: str) -> Draws:
        draws = draw_chunk(
            self.target.log_prob, m, c, self.n_init_samples, self.random.get(m.device),
            False, self.antithetic, where,
        )  # fmt: skip
        self._count(m.shape[0], self.n_init_samples, False)
        return draws

    def _is_log_mean(self, x: torch.Tensor, a: float, s: float, where: str) -> torch.Tensor:
        r"""IS :math:`\log\frac1M\sum_j\tilde\pi(x_0^j)` with ``n_init_samples`` draws, ``(N,)``."""
        est = smoothed_log_expectation(
            self.target.log_prob, x / a, s / a, self.n_init_samples,
            generator=self.random.get(x.device), antithetic=self.antithetic,
            chunk_size=self.chunk_size, check_finite=self.check_finite, where=where,
        )  # fmt: skip
        self._count(x.shape[0], self.n_init_samples, False)
        return est.log_mean

    # ---------------------------------------------------------------- MALA
    def _run(
        self, x: torch.Tensor, t: float | torch.Tensor, where: str, output: str, log_density: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chains over chunks of ``x``: (``output`` = ``"score"`` or ``"mean"``, ``(N, d)``;
        the log density ``(N,)`` float64 if ``log_density`` else ``None``)."""
        a, s = self._coefficients(x, t, where)
        rows = default_rows(self.chunk_size, max(self.n_samples, self.n_init_samples), self.dim)
        outs, log_means = [], []
        for start in range(0, x.shape[0], rows):
            xc = x[start : start + rows].detach()
            out, log_mean = self._chunk(xc, a, s, where, output)
            outs.append(out)
            if log_density:  # init="mean" has no IS draws: draw them now
                log_means.append(
                    self._is_log_mean(xc, a, s, where) if log_mean is None else log_mean
                )
        if not outs:
            return x.new_zeros(0, self.dim), x.new_zeros(0, dtype=_F64)
        if not log_density:
            return torch.cat(outs), None
        return torch.cat(outs), self._log_p(torch.cat(log_means), a)

    def _chunk(
        self, x: torch.Tensor, a: float, s: float, where: str, output: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk ``x`` ``(n, d)``: the ``output`` ``(n, d)`` (NaN on rows whose start was not
        finite) and the IS log mean of the initialisation (``None`` with ``init="mean"``)."""
        z0, row_bad, log_mean = self._chain_start(x, a, s, where)
        grad_sum = output == "score" and self.use_grad
        total, start_bad = self._chain_sum(x, z0, a, s, where, grad_sum)
        n_avg = self.n_samples * self.n_steps
        if output == "mean":
            out = total / n_avg
        elif grad_sum:
            out = total / (n_avg * a)
        else:
            out = (a * total / n_avg - x.to(_F64)) / (s * s)
        bad = (row_bad | start_bad).unsqueeze(1)
        return torch.where(bad, torch.full_like(out, math.nan), out).to(x.dtype), log_mean

    def _chain_start(
        self, x: torch.Tensor, a: float, s: float, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Chain starts ``(n * M, d)``, rows with no usable start ``(n,)`` bool, and the IS log
        mean ``(n,)`` of the initialisation (``None`` with ``init="mean"``)."""
        n, d = x.shape
        m_chains = self.n_samples
        if self.init == "mean":
            start = (x / a).unsqueeze(1).expand(n, m_chains, d)
            row_bad = torch.zeros(n, dtype=torch.bool, device=x.device)
            return start.reshape(n * m_chains, d), row_bad, None
        gen = self.random.get(x.device)
        draws = self._init_draws(x / a, s / a, where)
        self._check(draws.bad, x, self.n_init_samples, where)
        log_mean = draws.est.log_mean
        w = torch.exp(draws.log_g - log_mean.unsqueeze(1))  # (n, M0)
        row_bad = ~torch.isfinite(w).all(1) | ~torch.isfinite(log_mean)
        # unchecked bad rows (NaN / all-zero weights): resample uniformly, then output NaN
        w = torch.where(row_bad.unsqueeze(1), torch.ones_like(w), w)
        idx = torch.multinomial(w, m_chains, replacement=True, generator=gen)
        start = torch.gather(draws.y, 1, idx.unsqueeze(-1).expand(n, m_chains, d))
        return start.reshape(n * m_chains, d), row_bad, log_mean

    def _chain_sum(
        self, x: torch.Tensor, z0: torch.Tensor, a: float, s: float, where: str, grad_sum: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Run the chains from ``z0``: the sum over chains and kept steps ``(n, d)`` float64 of
        :math:`\nabla\log\tilde\pi(x_0)` (``grad_sum``) or of :math:`x_0`, and the rows with a
        chain whose start has a non-finite log density or gradient ``(n,)``."""
        n, d = x.shape
        m_chains = self.n_samples
        gen = self.random.get(x.device)
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
        c = s / a
        h0 = self.step_size if self.step_size is not None else 0.5 * c * c * d ** (-1.0 / 3.0)
        log_h = torch.full((n,), math.log(h0), dtype=x.dtype, device=x.device)
        total = torch.zeros(n, d, dtype=_F64, device=x.device)
        for k in range(self.n_burnin + self.n_steps):
            h = log_h.exp().repeat_interleave(m_chains)
            state, info = kernel.step(state, h, gen)
            if k < self.n_burnin:
                acc = info.accept_prob.view(n, m_chains).mean(1)
                log_h = robbins_monro(log_h, acc, self.target_accept, rm_gain(k + 1))
            elif grad_sum:  # ∇log π̃(z) = ∇log post(z) - (a/s²)(x - a z)
                g = state.grad.to(_F64) - prec * (x_rep - a * state.x).to(_F64)
                total += g.view(n, m_chains, d).sum(1)
            else:
                total += state.x.to(_F64).view(n, m_chains, d).sum(1)
        self._count(n, m_chains * (self.n_burnin + self.n_steps), True)
        return total, start_bad.view(n, m_chains).any(1)


RDMC_METHODS: dict[str, type[NoisedTargetScore]] = {
    "is": RDMCImportanceScore,
    "mala": RDMCMalaScore,
}
"""rdMC's posterior samplers by name: the ``method`` of :func:`RDMCScore`."""


def RDMCScore(
    target: Target,
    process: NoiseProcess,
    n_samples: int = 256,
    method: str = "is",
    **options: Any,
) -> RDMCImportanceScore | RDMCMalaScore:
    """``RDMC_METHODS[method](target, process, n_samples, **options)``: :class:`RDMCImportanceScore`
    (``"is"``) or :class:`RDMCMalaScore` (``"mala"``); an option the chosen class does not take
    is an error."""
    cls = RDMC_METHODS[check_choice("method", method, RDMC_METHODS, where="RDMCScore")]
    valid = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    check_options(options, valid, where=f"RDMCScore(method={method!r})")
    return cls(target, process, n_samples, **options)  # type: ignore[return-value]
