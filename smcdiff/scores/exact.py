r"""Closed-form scores of a noised Gaussian mixture: the exact prior for tests and benchmarks.

For :math:`p_0 = \sum_k w_k\mathcal N(m_k, \Sigma_k)` and
:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`,
:math:`p_t = \sum_k w_k\mathcal N(\alpha_t m_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)`, so
:math:`s_t(x) = \nabla\log p_t(x)` and :math:`\log p_t(x)` are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smcdiff.checks import check_choice, check_shape
from smcdiff.distributions.gaussian_mixture import GaussianMixture
from smcdiff.distributions.gaussian_mixture_fused import fused_applies, fused_score_and_log_prob
from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = ["ExactScore", "exact_score"]


class ExactScore:
    """A :class:`~smcdiff.scores.base.DensityScoreModel` from a :class:`GaussianMixture` ``dist``
    (the law at t = 0) noised by ``process``.

    ``x`` is ``(N, d)`` on the device and in the dtype of ``dist``; ``t`` a float or 0-d tensor
    in [0, 1] (``scalar_time``: the closed form is for one common time; callers get the float from
    :func:`~smcdiff.scores.base.model_time`). Outputs are differentiable in ``x``.

    ``fused``: ``"auto"`` (default) evaluates CUDA float32 inputs with no gradient wanted in one
    Triton kernel that never forms the ``(N, K, d)`` residuals
    (:mod:`~smcdiff.distributions.gaussian_mixture_fused`; the same numbers to float32
    rounding, one warning and the eager path if it fails); ``"off"``: always the mixture's
    eager path, in row chunks (:func:`in_row_chunks`).
    """

    scalar_time = True

    def __init__(self, dist: GaussianMixture, process: NoiseProcess, *, fused: str = "auto"):
        if not isinstance(dist, GaussianMixture):
            raise SMCDiffError(f"exact_score: dist must be a GaussianMixture, got {type(dist)}")
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(f"exact_score: process must be a NoiseProcess, got {type(process)}")
        self.dist = dist
        self.process = process
        self.dim = dist.dim
        self.event_shape: tuple[int, ...] = (int(dist.dim),)
        self._fixed: dict[float, GaussianMixture] = {}  # precompute()'s marginals by time
        self.fused = check_choice("fused", fused, ("auto", "off"), where="exact_score")

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dist.dtype

    def marginal(self, t: float | torch.Tensor) -> GaussianMixture:
        """:math:`p_t` as a :class:`GaussianMixture`: a lookup at a time given to
        :meth:`precompute`, else built (and cached by the mixture for repeated ``t``)."""
        if isinstance(t, float) and t in self._fixed:
            return self._fixed[t]
        return self.dist.noised(self.process, t)

    def precompute(self, times: Sequence[float]) -> list[GaussianMixture]:
        """Build :math:`p_t` at each of ``times`` (a fixed time grid) now and keep them, so that
        :meth:`score` at those times does no factorisation (Cholesky, triangular solve) and no
        host work: a step stays capturable as a CUDA graph. Returns them in order; a caller that
        replays captured kernels reading their tensors holds the list (this cache keeps at most
        :data:`FIXED_BYTES` of them, dropping the oldest)."""
        out = []
        k, d = self.dist.n_components, self.dist.dim
        limit = max(64, FIXED_BYTES // (32 * k * d * (d + 2)))  # ~ bytes of one p_t's tensors
        for t in (float(t) for t in times):
            if t not in self._fixed:
                while len(self._fixed) >= limit:
                    del self._fixed[next(iter(self._fixed))]
                self._fixed[t] = self.dist.noised(self.process, t)
            out.append(self._fixed[t])
        return out

    def _check(self, x: torch.Tensor, where: str) -> None:
        check_shape("x", x, (None, self.dim), where=where)
        if x.device != self.dist.device:
            raise SMCDiffError(
                f"{where}: x is on {x.device} but the distribution is on {self.dist.device}; "
                f"move one with .to(...)"
            )
        if x.dtype != self.dist.dtype:
            raise SMCDiffError(
                f"{where}: x has dtype {x.dtype} but the distribution has {self.dist.dtype}"
            )

    def _fused(self, p: GaussianMixture, x: torch.Tensor, want_score: bool):
        """The fused kernel's ``(score, log_p)`` where it applies and is switched on, else
        ``None`` (the eager path)."""
        if self.fused == "off" or not fused_applies(x, self.dim):
            return None
        return fused_score_and_log_prob(p, x, want_score)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x\log p_t(x)`: ``(N, d)`` -> ``(N, d)``."""
        self._check(x, "ExactScore.score")
        p = self.marginal(t)
        out = self._fused(p, x, True)
        return out[0] if out is not None else in_row_chunks(p.score, x, self.dist.n_components)

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_t(x)` (normalised): ``(N, d)`` -> ``(N,)``."""
        self._check(x, "ExactScore.log_density")
        p = self.marginal(t)
        out = self._fused(p, x, False)
        return out[1] if out is not None else in_row_chunks(p.log_prob, x, self.dist.n_components)

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(score(x, t), log_density(x, t))`` from one pass: ``(N, d)``, ``(N,)``."""
        self._check(x, "ExactScore.score_and_log_density")
        p = self.marginal(t)
        out = self._fused(p, x, True)
        return out if out is not None else in_row_chunks(p.score_and_log_prob, x, p.n_components)

    def sample_marginal(
        self, n: int, t: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` exact samples of :math:`p_t`, ``(n, d)``."""
        return self.marginal(t).sample(n, generator)

    def __repr__(self) -> str:
        return f"ExactScore(dist={self.dist!r}, process={self.process!r})"


FIXED_BYTES = 2**30
"""The most device memory :meth:`ExactScore.precompute` keeps in noised mixtures (at least 64)."""

CHUNK_ELEMENTS = 2**28
"""Rows per chunk of the mixture's per-component temporaries: ``rows * K * d`` at most this
(1 GiB of float32), so N = 1e8 particles fit on one GPU (docs/speed.md)."""


def in_row_chunks(fn, x: torch.Tensor, n_components: int):
    """``fn(x)`` (a tensor or a tuple of tensors with leading dimension N) evaluated on row
    chunks of ``x`` ``(N, d)`` small enough that ``(rows, K, d)`` temporaries stay under
    :data:`CHUNK_ELEMENTS`, concatenated; one call when N is small (every usual case)."""
    rows = max(1, CHUNK_ELEMENTS // (n_components * x.shape[-1]))
    if x.shape[0] <= rows:
        return fn(x)
    parts = [fn(chunk) for chunk in x.split(rows)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    return torch.cat(parts)


def exact_score(dist: GaussianMixture, process: NoiseProcess, *, fused: str = "auto") -> ExactScore:
    """The exact noised score model of ``dist`` under ``process`` (``fused``: see
    :class:`ExactScore`)."""
    return ExactScore(dist, process, fused=fused)
