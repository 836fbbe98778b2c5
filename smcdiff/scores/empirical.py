r"""Closed-form score of a weighted sample set: the empirical (ensemble) score, and its smoothed and
nearest-neighbour variants.

For samples :math:`y_j` with normalised weights :math:`w_j` (:math:`j = 1..J`), the empirical law
:math:`\hat p_0 = \sum_j w_j\delta_{y_j}` noised by :math:`x_t = a x_0 + s\varepsilon` is the
mixture :math:`\hat p_t(x) = \sum_j w_j\,\mathcal N(x; a y_j, s^2 I)`. With the bandwidth
:math:`h \ge 0` of a Gaussian kernel, :math:`\hat p_0^h = \sum_j w_j\mathcal N(y_j, h^2 I)` and

.. math::
    \hat p_t^h(x) = \sum_j w_j\,\mathcal N(x; a y_j, v I), \quad v = s^2 + a^2h^2, \qquad
    \log\hat p_t^h(x) = \operatorname{logsumexp}_j\ell_j(x) - \frac{\|x\|^2}{2v} - \frac d2\log(2\pi v),

.. math::
    \ell_j(x) = \log w_j + \frac{a\,x\cdot y_j - \tfrac12 a^2\|y_j\|^2}{v}, \qquad
    \nabla\log\hat p_t^h(x) = \frac{a\sum_j r_j(x)\,y_j - x}{v}, \quad
    r = \operatorname{softmax}_j\ell(x),

exactly (no Monte Carlo): the :math:`\ell_j` come from one GEMM per chunk of the data set, and
the logsumexp and :math:`\sum_j r_j y_j` are streamed over chunks (running maximum, rescaled running
sums in float64), so :math:`J = 10^5` points need only ``N * chunk`` memory.

**Ensemble score = empirical score.** If :math:`y_j \sim \pi` (weighted: :math:`\sum_j w_j
\delta_{y_j} \approx \pi`), self-normalised importance sampling of
:math:`p(x_0\mid x_t = x) \propto \pi(x_0)\mathcal N(x; a x_0, s^2 I)` with the ensemble as
proposal has weights :math:`\propto w_j\mathcal N(x; a y_j, s^2 I)`, and Tweedie's formula gives
:math:`(a\sum_j r_j y_j - x)/s^2`: the formula above with :math:`h = 0`. It is implemented once,
here; :mod:`smcdiff.scores.ensemble` exports this class as ``EnsembleScore`` (``update`` swaps in
the current SMC particles). Its error is that of self-normalised IS: :math:`O(1/\sqrt{J_{\rm eff}})`
at high noise, where the posterior is broad and many :math:`y_j` share the weight; at low noise
:math:`r` collapses onto the nearest sample.

**Memorisation.** :math:`\hat p_t` is the exact marginal of :math:`\hat p_0`, so a reverse
diffusion run with this score ends on the data points themselves: as :math:`t \to 0` the softmax
puts all weight on one :math:`y_j` and every sample is a copy of a training point (the score of
:math:`\hat p_t` is the optimum of denoising score matching on the finite set, which is why
over-fitted networks memorise). The kernel bandwidth :math:`h` replaces :math:`\hat p_0` by the
kernel density estimate :math:`\hat p_0^h`; the reverse diffusion then samples the KDE, new
points at distance :math:`\sim h` from the data, and at time t the score is that of the
empirical set at the inflated variance :math:`s^2 + a^2h^2`, so it stops sharpening once
:math:`s \lesssim a h`. The choice of :math:`h` is the usual KDE bias/variance trade-off
(Silverman's rule :math:`h \approx \hat\sigma(4/((d+2)J))^{1/(d+4)}` is a start).

**Nearest neighbours.** ``k`` keeps only the :math:`k` largest :math:`\ell_j` (the :math:`k`
nearest samples when the weights are equal) in the softmax: the exact score and log density of the
mixture restricted to those components (the log density is then a lower bound). It is a cost and
memory device (the tail of the softmax is negligible when :math:`v` is small); it does not by
itself cure memorisation (:math:`k = 1` is the nearest-sample score :math:`(a y_{nn} - x)/v`).

**Shapes.** The kernel is isotropic, so the maths is per coordinate: samples may be
``(J, *event_shape)`` (vectors, images, particle systems); they are flattened to
:math:`d = \prod` ``event_shape`` coordinates, and ``x`` ``(N, *event_shape)`` likewise, with
outputs in ``x``'s shape. The time is one float for all rows (``scalar_time = True``).

Precision: :math:`\ell_j` are computed in the data's dtype; in float64 the score matches the
closed-form mixture score to :math:`\sim 10^{-12}` relative. In float32 with very small :math:`v` the
cancellation in :math:`a x\cdot y_j/v` costs :math:`\sim 10^{-7}\,\|x\|\|y\|/v` in the logits.
"""

from __future__ import annotations

import math

import torch

from smcdiff.checks import check_int, check_number, check_shape, check_time
from smcdiff.distributions.gaussian_mixture import GaussianMixture
from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.montecarlo import check_points, default_rows

__all__ = ["EmpiricalScore"]

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


class EmpiricalScore:
    r"""Exact score and log density of :math:`\sum_j w_j\mathcal N(x; a y_j, (s^2 + a^2h^2) I)`
    (see the module docstring). A :class:`~smcdiff.scores.base.DensityScoreModel`.

    Args:
        samples: :math:`y` ``(J, *event_shape)`` (``(J, d)`` for vectors); fixes the event
            shape, dtype and device.
        process: the :class:`NoiseProcess`.
        log_weights: ``(J,)`` unnormalised log-weights (``-inf`` allowed: weight zero), default
            uniform; normalised in float64.
        bandwidth: kernel bandwidth :math:`h \ge 0` (0: the plain empirical score).
        k: keep only the ``k`` largest responsibilities per point (``None``: all).
        chunk_size: data points per pass (memory ``N * chunk_size``); default keeps
            :math:`N\cdot` chunk near :math:`2^{22}`.

    ``x`` is ``(N, *event_shape)`` and ``t`` one float for all rows (``scalar_time``). Outputs are
    differentiable in ``x``. ``n_target_evals`` / ``n_grad_evals`` stay 0.
    """

    scalar_time = True

    def __init__(
        self,
        samples: torch.Tensor,
        process: NoiseProcess,
        *,
        log_weights: torch.Tensor | None = None,
        bandwidth: float = 0.0,
        k: int | None = None,
        chunk_size: int | None = None,
    ):
        where = type(self).__name__
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(f"{where}: process must be a NoiseProcess, got {type(process)}")
        self.bandwidth = check_number("bandwidth", bandwidth, minimum=0.0, where=where)
        self.k = check_int("k", k, 1, where=where, allow_none=True)
        self.chunk_size = check_int("chunk_size", chunk_size, 1, where=where, allow_none=True)
        self.process = process
        self.n_target_evals = 0
        self.n_grad_evals = 0
        if not isinstance(samples, torch.Tensor) or samples.dim() < 2:
            check_shape("samples", samples, (None, None), where=where)  # raises
        self.event_shape: tuple[int, ...] = tuple(samples.shape[1:])
        self.dim = math.prod(self.event_shape)
        self.update(samples, log_weights)

    def update(
        self, samples: torch.Tensor, log_weights: torch.Tensor | None = None, *, check: bool = True
    ) -> None:
        """Replace the sample set ``(J, *event_shape)`` (e.g. by the current SMC particles and
        their log-weights ``(J,)``).

        ``check`` validates finiteness (one host sync); pass ``False`` inside a GPU step.
        """
        where = f"{type(self).__name__}.update"
        check_points(samples, self.event_shape, where, name="samples")
        n = samples.shape[0]
        if n < 1:
            raise SMCDiffError(f"{where}: samples is empty")
        if log_weights is None:
            lw = torch.full((n,), -math.log(n), dtype=_F64, device=samples.device)
        else:
            check_shape("log_weights", log_weights, (n,), where=where)
            if log_weights.device != samples.device:
                raise SMCDiffError(
                    f"{where}: log_weights is on {log_weights.device}, samples on {samples.device}"
                )
            lw = log_weights.detach().to(_F64)
            lw = lw - torch.logsumexp(lw, 0)
        if check:
            ok = torch.isfinite(samples).all() & ~torch.isnan(lw).any() & (lw < math.inf).all()
            if not bool(ok):
                raise SMCDiffError(
                    f"{where}: samples must be finite and log_weights not NaN / +inf, with at "
                    f"least one finite log-weight"
                )
        self.samples = samples.detach().reshape(n, self.dim)  # flat (J, d)
        self.log_weights = lw  # normalised, float64
        self._log_w = lw.to(samples.dtype)
        self._sq_norm = self.samples.square().sum(-1)  # (J,)

    @property
    def n_data(self) -> int:
        return self.samples.shape[0]

    def variance(self, t: float | torch.Tensor) -> tuple[float, float]:
        r"""``(a, v)``: :math:`\alpha_t` and the component variance :math:`v = s^2 + a^2h^2`."""
        where = f"{type(self).__name__}"
        t = check_time("t", t, where=where)
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        v = s * s + a * a * self.bandwidth**2
        if not v > 0.0:
            raise SMCDiffError(
                f"{where}: the component variance sigma_t^2 + alpha_t^2 h^2 is 0 at t={t}: the "
                f"empirical law has no density there; use t > 0 or a bandwidth h > 0"
            )
        return a, v

    def as_mixture(self, t: float | torch.Tensor) -> GaussianMixture:
        r""":math:`\hat p_t^h` as a :class:`GaussianMixture` (diagonal; for checks and small J), on
        the flattened coordinates ``(d,)``."""
        a, v = self.variance(t)
        w = self.log_weights.exp()
        covs = torch.full((self.n_data, self.dim), v, dtype=_F64, device=self.samples.device)
        return GaussianMixture(w, a * self.samples, covs)

    # ---------------------------------------------------------------- core
    def _stats(self, x: torch.Tensor, t: float | torch.Tensor, where: str):
        r"""``(lse (N,) float64, ybar (N, d), a, v)``: :math:`\operatorname{logsumexp}_j\ell_j` and
        :math:`\sum_j r_j y_j`, for ``x`` flattened to ``(N, d)`` by the caller after this check
        of ``x`` ``(N, *event_shape)``."""
        check_points(x, self.event_shape, where)
        if x.device != self.samples.device:
            raise SMCDiffError(
                f"{where}: x is on {x.device} but the samples are on {self.samples.device}"
            )
        if x.dtype != self.samples.dtype:
            raise SMCDiffError(
                f"{where}: x has dtype {x.dtype} but the samples have {self.samples.dtype}"
            )
        a, v = self.variance(t)
        flat = self._flat(x)
        if self.k is not None:
            return (*self._stats_topk(flat, a, v), a, v)
        return (*self._stats_full(flat, a, v), a, v)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.dim)

    def _chunk(self, n: int) -> int:
        """Data points per pass: ``chunk_size``, or about :math:`2^{22}/N` (``N`` rows of x)."""
        return default_rows(self.chunk_size, n, 1)

    def _logits(self, x: torch.Tensor, a: float, v: float, sl: slice) -> torch.Tensor:
        y = self.samples[sl]
        return self._log_w[sl] + ((a / v) * (x @ y.T) - (0.5 * a * a / v) * self._sq_norm[sl])

    def _stats_full(self, x: torch.Tensor, a: float, v: float):
        n, d = x.shape
        run_max = torch.full((n,), -math.inf, dtype=_F64, device=x.device)
        run_sum = torch.zeros(n, dtype=_F64, device=x.device)
        run_y = torch.zeros(n, d, dtype=_F64, device=x.device)
        step = self._chunk(n)
        for start in range(0, self.n_data, step):
            sl = slice(start, start + step)
            logits = self._logits(x, a, v, sl)
            new_max = torch.maximum(run_max, logits.detach().amax(-1).to(_F64))
            safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            scale = torch.exp(run_max - safe)
            p = torch.exp(logits - safe.to(logits.dtype).unsqueeze(-1))  # (n, chunk)
            run_sum = run_sum * scale + p.sum(-1).to(_F64)
            run_y = run_y * scale.unsqueeze(-1) + (p @ self.samples[sl]).to(_F64)
            run_max = new_max
        lse = run_max + run_sum.log()
        return lse, (run_y / run_sum.unsqueeze(-1)).to(x.dtype)

    def _stats_topk(self, x: torch.Tensor, a: float, v: float):
        n = x.shape[0]
        k = min(self.k, self.n_data)
        top_l = torch.full((n, 0), -math.inf, dtype=x.dtype, device=x.device)
        top_i = torch.zeros((n, 0), dtype=torch.long, device=x.device)
        step = self._chunk(n)
        for start in range(0, self.n_data, step):
            sl = slice(start, start + step)
            logits = self._logits(x, a, v, sl)
            idx = torch.arange(start, start + logits.shape[1], device=x.device).expand(n, -1)
            cand_l, cand_i = torch.cat([top_l, logits], 1), torch.cat([top_i, idx], 1)
            top_l, pos = torch.topk(cand_l, min(k, cand_l.shape[1]), dim=1)
            top_i = torch.gather(cand_i, 1, pos)
        lse = torch.logsumexp(top_l.to(_F64), -1)
        r = torch.softmax(top_l, -1)
        ybar = torch.einsum("nk,nkd->nd", r, self.samples[top_i])
        return lse, ybar

    # ---------------------------------------------------------------- public
    def posterior_mean(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E[x_0\mid x_t = x]` under :math:`\hat p_0^h`, ``x``'s shape:
        :math:`\bar y + \frac{a h^2}{v}(x - a\bar y)` with :math:`\bar y = \sum_j r_j(x) y_j`
        (for :math:`h = 0`, :math:`\bar y`: the ensemble estimate of the posterior mean); equal to
        Tweedie's :math:`(x + s^2\nabla\log\hat p_t^h)/a`."""
        _, ybar, a, v = self._stats(x, t, f"{type(self).__name__}.posterior_mean")
        if self.bandwidth == 0.0:
            return ybar.reshape(x.shape)
        return (ybar + (a * self.bandwidth**2 / v) * (self._flat(x) - a * ybar)).reshape(x.shape)

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(score, log density (N,) float64)`` from one pass over the data; the score has
        ``x``'s shape."""
        lse, ybar, a, v = self._stats(x, t, f"{type(self).__name__}.score_and_log_density")
        return self._score(x, ybar, a, v), self._log_density(x, lse, v)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`(a\sum_j r_j y_j - x)/v`: ``(N, *event_shape)`` to the same shape."""
        _, ybar, a, v = self._stats(x, t, f"{type(self).__name__}.score")
        return self._score(x, ybar, a, v)

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log\hat p_t^h(x)` (normalised), ``(N,)`` float64."""
        lse, _, _, v = self._stats(x, t, f"{type(self).__name__}.log_density")
        return self._log_density(x, lse, v)

    def _score(self, x: torch.Tensor, ybar: torch.Tensor, a: float, v: float) -> torch.Tensor:
        return ((a * ybar - self._flat(x)) / v).reshape(x.shape)

    def _log_density(self, x: torch.Tensor, lse: torch.Tensor, v: float) -> torch.Tensor:
        sq = self._flat(x).to(_F64).square().sum(-1)
        return lse - sq / (2.0 * v) - 0.5 * self.dim * (_LOG_2PI + math.log(v))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_data={self.n_data}, event_shape={self.event_shape}, "
            f"process={self.process!r}, bandwidth={self.bandwidth}, k={self.k})"
        )
