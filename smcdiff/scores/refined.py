r"""rdMC with an MCMC-refined importance proposal: inner MALA chains on the posterior
:math:`p(x_0\mid x_t)` place a Gaussian mixture where the posterior lives, and importance
sampling from that mixture estimates :math:`Z\,p_t(x)`, its score and the posterior mean.

With :math:`\tilde\pi = Z\pi`, :math:`x_t = a x_0 + s\varepsilon`, :math:`c = s/a`, the
unnormalised posterior is

.. math::
    \gamma_x(z) = \tilde\pi(z)\,\mathcal N(z; x/a, c^2 I), \qquad
    \int\gamma_x = a^d\,Z\,p_t(x).

The plain importance sampler (:class:`~smcdiff.scores.rdmc.RDMCImportanceScore`) draws
:math:`z` from a fixed Gaussian :math:`q_0` (the Gaussian factor, or with ``reference_std = r``
the posterior of the reference :math:`\mathcal N(0, r^2 I)`: variance
:math:`v_0 = (1/c^2 + 1/r^2)^{-1}`, mean :math:`v_0 x/(a c^2)`). When the target's modes are
narrow relative to :math:`q_0` (the middle of a diffusion path on a multi-well target) one draw
in :math:`M` carries all the weight. Here, per point :math:`x`:

1. ``n_chains`` chains on :math:`\log\gamma_x` start from *independent* draws of :math:`q_0`
   (so they fall into the posterior's modes in proportion to their basins, not to one
   resampled draw) and climb ``n_ascent`` monotone gradient-ascent steps to the nearest mode
   (:func:`_ascend`: a stiff target's tails make a fixed-step MALA unstable there). The climb
   must converge in *every* coordinate: one step size per chain is limited by the stiffest
   coordinate, so ill-conditioned posteriors need more steps (dw50: 10 steps leave the spread of
   :math:`\log\hat p_t` at 2.5-3, 30 steps bring it to 0.35-0.4);
2. the proposal is the defensive mixture

   .. math::
       r_x(z) = \epsilon\,q_0(z) + (1-\epsilon)\Big[(1-\rho)\frac1K\sum_{k=1}^K
       \mathcal N(z; z_k, \operatorname{diag}(b_k^2))
       + \rho\prod_i\frac1K\sum_k\mathcal N(z_i; z_{k,i}, b_{k,i}^2)\Big],

   :math:`\epsilon` = ``defensive``, :math:`\rho` = ``product``. With ``n_chain_steps = 0``
   (the default) :math:`z_k` are the modes reached and :math:`b_k^2` 1.2 times their Laplace
   variances :math:`-1/\partial_i^2\log\gamma_x(z_k)` (diagonal curvature from one
   finite-difference probe per chain, :func:`_diag_curvature`; at most :math:`v_0`): a mixture
   of Laplace approximations at the modes found. With ``n_chain_steps > 0`` the chains then run
   that many MALA steps (step adapted per point toward ``target_accept``, warm-started across
   calls) and :math:`z_k` are their final states with one width per coordinate, the largest of
   twice the within-chain variance, 1.5 times the chain-averaged Laplace variance and
   :math:`h d^{1/3}` (:math:`h` the final step). Measured (32-D Gaussian posteriors, mw5 along
   the path) the Laplace mixture has 3-10x smaller spread of :math:`\log\hat p_t` at lower cost:
   centres already spread over the posterior plus a full-width kernel make the mixture too wide
   in every coordinate, which compounds over dimensions. The product part (each coordinate from
   its own chain) covers all :math:`\prod_i(\text{modes of } z_i)` combinations of a posterior
   that is (nearly) a product over coordinates — a many-well target has :math:`2^{16}` of them
   in 32 dimensions, far more than any number of chains;
3. with :math:`n` = ``n_samples`` fresh draws :math:`z^j \sim r_x` and
   :math:`w_j = \gamma_x(z^j)/r_x(z^j)`:

   .. math::
       \widehat{Z p_t}(x) = a^{-d}\,\tfrac1n\textstyle\sum_j w_j, \qquad
       \hat{\mathbb E}[x_0\mid x] = \sum_j \bar w_j z^j, \qquad
       \hat s = \frac{a\,\hat{\mathbb E}[x_0\mid x] - x}{s^2}\ \text{(Tweedie)}\ \text{or}\
       \frac1a\sum_j\bar w_j\nabla\log\tilde\pi(z^j)\ \text{(gradient)},

   :math:`\bar w` the self-normalised weights.

**Exactness.** Importance sampling is unbiased for *any* proposal chosen independently of the
draws it weights, so :math:`\widehat{Z p_t}(x)` is unbiased whatever the chains did (their
burn-in, their adaptation, modes they missed): the chains only change its variance. The
defensive component bounds the weights by :math:`\epsilon^{-1}\gamma_x/q_0`, i.e. never worse
than :math:`1/\epsilon` times the plain sampler's. Each call uses fresh randomness, so in a
diffusion-path SMC sampler (:mod:`smcdiff.energy.diffusion`) the estimate is a random weight
whose law depends on :math:`x` only: the sampler stays exact (a random-weight / pseudo-marginal
argument). The score and posterior mean are ratio estimates (bias :math:`O(1/n)`).

**What it assumes.** Every mode of the posterior that carries mass must either be reached by a
chain or be covered by :math:`q_0`; a mode missed by both makes the estimate biased low *in
probability* (unbiased but heavy-tailed), the failure mode of every importance sampler. The
widths are axis-aligned: strongly correlated posteriors are covered less tightly. The mixture
gives every chain's mode equal weight: when mode masses are unequal per coordinate (manywell's
asymmetric wells, 0.84 : 0.16) the mismatch compounds over coordinates, and in 32 dimensions
the spread of :math:`\log\hat p_t` stays at 2-3 (a population-Monte-Carlo refit of the weights
on pilot draws did not help at equal cost).

Cost per point: ``n_chains * (3 + n_ascent + n_chain_steps)`` target gradients for the chains
(ascent, start, MALA steps, curvature probe; one fewer without ascent) and
``n_samples`` target evaluations (gradients with ``estimator="grad"``); the mixture density
costs ``n_samples * n_chains * d`` flops. ``x`` is ``(N, d)``, ``t`` one float
(``scalar_time``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import value_and_grad
from smcdiff.mcmc.langevin import MALA
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.montecarlo import NoisedTargetScore, default_rows
from smcdiff.target import Target

__all__ = ["RDMCRefinedScore"]

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


def _coordinate_logpdf(
    z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float
) -> torch.Tensor:
    """Per-coordinate :math:`\\log\\mathcal N(z_i; m_i, v_i)` (float64, broadcast)."""
    z, mean = z.to(_F64), mean.to(_F64)
    var = var.to(_F64) if isinstance(var, torch.Tensor) else torch.tensor(var, dtype=_F64)
    return -0.5 * ((z - mean).square() / var + torch.log(2.0 * math.pi * var))


def _gauss_logpdf(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
    """:math:`\\log\\mathcal N(z; m, \\operatorname{diag}(v))` summed over the last axis (float64;
    ``var`` broadcasts: a float, or a tensor shaped like ``z``)."""
    return _coordinate_logpdf(z, mean, var).sum(-1)


def _ascend(
    log_post: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, h0: float, n_iter: int
) -> torch.Tensor:
    r"""``n_iter`` gradient-ascent steps :math:`z \leftarrow z + h\nabla\log\gamma(z)` per row
    of ``z`` ``(K, d)``, each kept only if it raises :math:`\log\gamma` (then :math:`h` grows
    1.5x, else shrinks 4x; from ``h0``): the chains start near the posterior's modes even where
    a stiff target (a quartic well) makes MALA's fixed step unstable far from them. Only the
    proposal depends on it, so the estimate stays unbiased."""
    if n_iter == 0:
        return z
    lp, g = value_and_grad(log_post, z)
    h = torch.full((z.shape[0], 1), h0, dtype=z.dtype, device=z.device)
    for _ in range(n_iter):
        z_new = z + h * g
        lp_new, g_new = value_and_grad(log_post, z_new)
        ok = (lp_new > lp) & torch.isfinite(g_new).all(-1)  # NaN compares False
        z = torch.where(ok.unsqueeze(-1), z_new, z)
        lp, g = torch.where(ok, lp_new, lp), torch.where(ok.unsqueeze(-1), g_new, g)
        h = torch.where(ok.unsqueeze(-1), 1.5 * h, 0.25 * h)
    return z.detach()


def _diag_curvature(
    log_post: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    grad: torch.Tensor,
    eps: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    r"""A one-probe estimate of the Hessian's diagonal of :math:`\log\gamma` at ``z`` ``(K, d)``:
    :math:`v \odot (\nabla\log\gamma(z + \epsilon v) - \nabla\log\gamma(z))/\epsilon`, Rademacher
    :math:`v`, per-row :math:`\epsilon` ``(K,)``; exact up to :math:`O(\epsilon)` when the
    Hessian is diagonal (a separable posterior), noisy otherwise. ``(K, d)`` float64."""
    v = torch.randint(0, 2, z.shape, generator=generator, device=z.device).to(z.dtype) * 2 - 1
    e = eps.to(z.dtype).unsqueeze(-1)
    _, g2 = value_and_grad(log_post, z + e * v)
    return (v * (g2.detach() - grad) / e).to(_F64)


class _Mixture:
    r"""The proposal :math:`r_x` of every point of a chunk (module docstring): :math:`q_0`
    (mean ``m0`` ``(n, d)``, variance ``v0``) with weight :math:`\epsilon`, and equal-weight
    joint and product mixtures of Gaussians at the chains' states ``centres`` ``(n, K, d)`` with
    per-component variances ``b2`` ``(n, K, d)`` (a population-Monte-Carlo refit of the
    component weights on pilot draws was tried and did not lower the estimate's variance at
    equal cost on mw5 / manywell32)."""

    def __init__(self, m0, v0, centres, b2, eps: float, rho: float):
        self.m0, self.v0, self.centres, self.b2, self.eps, self.rho = m0, v0, centres, b2, eps, rho

    def draw(self, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` draws per point ``(n, m, d)`` and their log density ``(n, m)`` float64."""
        n, k, d = self.centres.shape
        opts = {"generator": gen, "device": self.m0.device}
        u = torch.rand(n, m, 1, **opts)
        from_q0, product = u < self.eps, u >= 1.0 - (1.0 - self.eps) * self.rho
        j_joint = torch.randint(k, (n, m, 1), **opts).expand(n, m, d)
        j = torch.where(product, torch.randint(k, (n, m, d), **opts), j_joint)
        mu = torch.gather(self.centres, 1, j)  # coordinate i from chain j[..., i]
        mu = torch.where(from_q0, self.m0.unsqueeze(1).expand(n, m, d), mu)
        b = torch.gather(self.b2, 1, j).sqrt().to(self.m0.dtype)  # the chosen components' widths
        z = mu + torch.where(from_q0, math.sqrt(self.v0), b) * torch.randn(
            n, m, d, dtype=self.m0.dtype, **opts
        )
        return z, self.log_density(z)

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log r_x(z)` ``(n, m)`` float64 for ``z`` ``(n, m, d)``."""
        eps, rho, log_k = self.eps, self.rho, math.log(self.centres.shape[1])
        parts = [math.log(eps) + _gauss_logpdf(z, self.m0.unsqueeze(1), self.v0)]
        if eps < 1.0:
            comp = _coordinate_logpdf(z.unsqueeze(2), self.centres.unsqueeze(1),
                                      self.b2.unsqueeze(1))  # (n, m, K, d)  # fmt: skip
            if rho < 1.0:
                log_joint = torch.logsumexp(comp.sum(-1), dim=2) - log_k
                parts.append(math.log((1.0 - eps) * (1.0 - rho)) + log_joint)
            if rho > 0.0:
                log_prod = (torch.logsumexp(comp, dim=2) - log_k).sum(-1)
                parts.append(math.log((1.0 - eps) * rho) + log_prod)
        return torch.logsumexp(torch.stack(parts), dim=0)


class RDMCRefinedScore(NoisedTargetScore):
    r"""Importance sampling of :math:`Z p_t(x)` from a MALA-refined mixture (module docstring).

    Args:
        target: :class:`~smcdiff.target.Target` (``dim``, differentiable ``log_prob``).
        process: the :class:`NoiseProcess`.
        n_samples: importance draws per point.
        n_chains: MALA chains per point (the mixture's components).
        n_chain_steps: MALA steps per chain after the ascent (0: Laplace components at the
            modes reached, module docstring).
        n_ascent: gradient-ascent steps on :math:`\log\gamma_x` before them (:func:`_ascend`).
        step_size: initial MALA step :math:`h` (proposal :math:`z + h\nabla + \sqrt{2h}\xi`);
            default :math:`\tfrac12 v_0 d^{-1/3}`, adapted per point.
        target_accept: acceptance rate the step adapts toward; adapt_gain: the Robbins–Monro
            gain's scale.
        defensive: weight :math:`\epsilon \in (0, 1]` of :math:`q_0` in the mixture.
        product: the share :math:`\rho \in [0, 1]` of the chains' mass on the coordinate-wise
            (product) mixture; the rest is on the joint one.
        reference_std: ``r``: :math:`q_0` is the posterior of :math:`\mathcal N(0, r^2 I)`
            given :math:`x_t` (``None``: the Gaussian factor :math:`\mathcal N(x/a, c^2 I)`).
        warm_start: start the chains' step from the previous call's median adapted step (capped
            at the default): along a diffusion path consecutive calls see similar posteriors.
            The proposal then depends on earlier calls, never on this call's draws, so the
            estimate stays unbiased.
        estimator: ``"tweedie"`` (alias ``"stein"``) or ``"grad"`` for the score.
        log_z, generator, seed, chunk_size, check_finite: as
            :class:`~smcdiff.scores.montecarlo.MonteCarloScore`.
    """

    def __init__(
        self,
        target: Target,
        process: NoiseProcess,
        n_samples: int = 64,
        *,
        n_chains: int = 16,
        n_chain_steps: int = 0,
        n_ascent: int = 30,
        step_size: float | None = None,
        target_accept: float = 0.574,
        adapt_gain: float = 2.0,
        defensive: float = 0.1,
        product: float = 0.5,
        reference_std: float | None = None,
        warm_start: bool = True,
        estimator: str = "tweedie",
        log_z: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        chunk_size: int | None = None,
        check_finite: bool | None = None,
    ):
        where = type(self).__name__
        super().__init__(
            target, process, n_samples, estimator=estimator, antithetic=False, log_z=log_z,
            generator=generator, seed=seed, chunk_size=chunk_size, check_finite=check_finite,
            where=where,
        )  # fmt: skip
        self.n_chains = check_int("n_chains", n_chains, 1, where=where)
        self.n_chain_steps = check_int("n_chain_steps", n_chain_steps, 0, where=where)
        self.n_ascent = check_int("n_ascent", n_ascent, 0, where=where)
        positive = {"minimum": 0.0, "strict_min": True, "where": where}
        self.step_size = check_number("step_size", step_size, allow_none=True, **positive)
        self.target_accept = check_number(
            "target_accept", target_accept, maximum=1.0, strict_max=True, **positive
        )
        self.adapt_gain = check_number("adapt_gain", adapt_gain, minimum=0.0, where=where)
        self.defensive = check_number("defensive", defensive, maximum=1.0, **positive)
        self.product = check_number("product", product, minimum=0.0, maximum=1.0, where=where)
        self.reference_std = check_number("reference_std", reference_std, allow_none=True,
                                          **positive)  # fmt: skip
        if not isinstance(warm_start, bool):
            raise SMCDiffError(f"{where}: warm_start must be True or False")
        self.warm_start = warm_start
        self._log_h: torch.Tensor | None = None

    # ---------------------------------------------------------------- public
    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from the same draws: ``(N, d)``, ``(N,)`` float64
        (:math:`\\widehat{\\log p_t} + \\log Z - \\text{log\\_z}`)."""
        score, logp, _ = self._run(x, t, f"{type(self).__name__}.score_and_log_density")
        return score, logp

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\nabla\log p_t}(x)`: ``(N, d) -> (N, d)``."""
        return self._run(x, t, f"{type(self).__name__}.score")[0]

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\widehat{\log p_t}(x) + \log Z - \text{log\_z}`: ``(N, d) -> (N,)`` float64."""
        return self._run(x, t, f"{type(self).__name__}.log_density")[1]

    def posterior_mean(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\hat{\mathbb E}[x_0\mid x_t = x]`, ``(N, d)``."""
        return self._run(x, t, f"{type(self).__name__}.posterior_mean")[2]

    # ---------------------------------------------------------------- the estimate
    def _run(
        self, x: torch.Tensor, t: float | torch.Tensor, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score ``(N, d)``, log density ``(N,)`` float64 and posterior mean ``(N, d)``, chunked."""
        a, s = self._coefficients(x, t, where)
        per_row = max(self.n_samples * self.n_chains, self.n_chains * 4)
        rows = default_rows(self.chunk_size, per_row, self.dim)
        parts = [self._chunk(x[i : i + rows].detach(), a, s, where)
                 for i in range(0, x.shape[0], rows)]  # fmt: skip
        if not parts:
            empty = x.new_zeros(0, self.dim)
            return empty, x.new_zeros(0, dtype=_F64), empty
        score, log_mean, mean = (torch.cat(p) for p in zip(*parts, strict=True))
        return score, self._log_p(log_mean, a), mean

    def _base(self, x: torch.Tensor, a: float, s: float) -> tuple[torch.Tensor, float]:
        """:math:`q_0`: its mean ``(n, d)`` and variance :math:`v_0`."""
        c2 = (s / a) ** 2
        if self.reference_std is None:
            return x / a, c2
        v0 = 1.0 / (1.0 / c2 + 1.0 / self.reference_std**2)
        return x * (v0 / (a * c2)), v0

    def _chunk(
        self, x: torch.Tensor, a: float, s: float, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m0, v0 = self._base(x, a, s)
        mix = _Mixture(m0, v0, *self._chains(x, a, s, m0, v0, where), self.defensive,
                       self.product)  # fmt: skip
        gen = self.random.get(x.device)
        z, log_r = mix.draw(self.n_samples, gen)
        log_w, lse, g = self._weigh(x, a, s, z, log_r, where, self.use_grad)
        w = torch.exp(log_w - lse.unsqueeze(1))  # (n, m) self-normalised
        mean = torch.einsum("nm,nmd->nd", w, z.to(_F64))
        if self.use_grad:
            score = torch.einsum("nm,nmd->nd", w, g) / a
        else:
            score = (a * mean - x.to(_F64)) / (s * s)
        return score.to(x.dtype), lse - math.log(z.shape[1]), mean.to(x.dtype)

    def _weigh(
        self,
        x: torch.Tensor,
        a: float,
        s: float,
        z: torch.Tensor,
        log_r: torch.Tensor,
        where: str,
        with_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        r"""Log importance weights :math:`\log\gamma_x(z) - \log r_x(z)` ``(n, m)``, their
        logsumexp ``(n,)`` and (``with_grad``) the target's gradients ``(n, m, d)`` float64."""
        n, m, d = z.shape
        flat, g = z.reshape(n * m, d), None
        if with_grad:
            lp, g = value_and_grad(self.target.log_prob, flat)
            g = g.detach().to(_F64).reshape(n, m, d)
        else:
            with torch.no_grad():
                lp = self.target.log_prob(flat)
        self._count(n, m, with_grad)
        lp = lp.detach().to(_F64).reshape(n, m)
        log_w = lp + _gauss_logpdf(z, (x / a).unsqueeze(1), (s / a) ** 2) - log_r
        lse = torch.logsumexp(log_w, dim=1)
        self._check(self._bad(lp, lse), x, m, where)
        return log_w, lse, g

    @staticmethod
    def _bad(lp: torch.Tensor, lse: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "target log_prob is NaN or +inf at inner samples": (
                torch.isnan(lp) | (lp == math.inf)
            ).sum(),
            "every inner sample has zero target density (log_prob = -inf), so the estimate is "
            "undefined: raise n_samples or check the target's support; rows": (
                lse == -math.inf
            ).sum(),
        }

    # ---------------------------------------------------------------- the chains
    def _initial_log_step(self, v0: float, d: int) -> torch.Tensor | float:
        """The chains' first log step: ``step_size``, else the last call's median adapted step
        (``warm_start``; within a factor 4 of it), else :math:`\tfrac12 v_0 d^{-1/3}`."""
        if self.step_size is not None:
            return math.log(self.step_size)
        default = math.log(0.5 * v0 * d ** (-1.0 / 3.0))
        if self._log_h is None:
            return default
        return torch.minimum(self._log_h, torch.full_like(self._log_h, default))

    def _chains(
        self, x: torch.Tensor, a: float, s: float, m0: torch.Tensor, v0: float, where: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MALA chains from independent :math:`q_0` draws: final states ``(n, K, d)`` and the
        per-point, per-coordinate bandwidth :math:`b^2` ``(n, d)`` (module docstring)."""
        n, d = x.shape
        k = self.n_chains
        gen = self.random.get(x.device)
        z0 = m0.unsqueeze(1) + math.sqrt(v0) * torch.randn(
            n, k, d, generator=gen, dtype=x.dtype, device=x.device
        )
        xa = (x / a).repeat_interleave(k, dim=0)
        c2 = (s / a) ** 2

        def log_post(z: torch.Tensor) -> torch.Tensor:
            return self.target.log_prob(z) - (z - xa).square().sum(-1) / (2.0 * c2)

        kernel = MALA(log_post)
        z0 = _ascend(log_post, z0.reshape(n * k, d), v0, self.n_ascent)
        self._count(n, k * (self.n_ascent + 1 if self.n_ascent else 0), True)
        state = kernel.init(z0)
        bad = ~(torch.isfinite(state.log_prob) & torch.isfinite(state.grad).all(-1))
        self._check({"MALA start: target log_prob or its gradient is not finite at chains":
                     bad.sum()}, x, k, where)  # fmt: skip
        if self.n_chain_steps == 0:  # Laplace approximations at the modes the ascent found
            eps = torch.full((n * k,), 1e-3 * math.sqrt(v0), dtype=x.dtype, device=x.device)
            curv = _diag_curvature(log_post, state.x.detach(), state.grad.detach(), eps, gen)
            self._count(n, 2 * k, True)
            b2 = 1.2 / (-curv).clamp_min(1.0 / v0)
            return state.x.detach().view(n, k, d), b2.view(n, k, d)
        h0 = self._initial_log_step(v0, d)
        log_h = torch.zeros(n, dtype=x.dtype, device=x.device) + h0
        n_keep = max(1, self.n_chain_steps // 2)
        s1 = torch.zeros(n * k, d, dtype=_F64, device=x.device)
        s2 = torch.zeros_like(s1)
        for i in range(self.n_chain_steps):
            state, info = kernel.step(state, log_h.exp().repeat_interleave(k), gen)
            acc = info.accept_prob.view(n, k).mean(1)
            log_h = robbins_monro(log_h, acc, self.target_accept,
                                  rm_gain(i + 1, eta0=self.adapt_gain))  # fmt: skip
            if i >= self.n_chain_steps - n_keep:
                zf = state.x.detach().to(_F64)
                s1, s2 = s1 + zf, s2 + zf * zf
        self._count(n, k * (2 + self.n_chain_steps), True)
        if self.warm_start and n:  # the next call starts from this one's typical step
            self._log_h = log_h.median().reshape(1)  # kept on the device: no sync
        var = (s2 / n_keep - (s1 / n_keep).square()).clamp_min(0.0).view(n, k, d).mean(1)
        curv = _diag_curvature(log_post, state.x.detach(), state.grad.detach(),
                               (0.1 * log_h.exp().sqrt()).repeat_interleave(k), gen)  # fmt: skip
        laplace = 1.0 / (-curv.view(n, k, d).mean(1)).clamp_min(1.0 / v0)
        b2 = torch.maximum(2.0 * var, 1.5 * laplace)
        b2 = torch.maximum(b2, d ** (1.0 / 3.0) * log_h.exp().to(_F64).unsqueeze(1))
        return state.x.detach().view(n, k, d), b2.clamp_max(v0).unsqueeze(1).expand(n, k, d)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target!r}, process={self.process!r}, "
            f"n_samples={self.n_samples}, n_chains={self.n_chains}, "
            f"n_chain_steps={self.n_chain_steps}, defensive={self.defensive})"
        )
