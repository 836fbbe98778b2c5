r"""A linear-Gaussian observation :math:`y = A x + \sigma_y\varepsilon`, with its SVD cached.

:class:`LinearGaussianObservation` is both a log-likelihood callable (``steer(...,
log_likelihood=obs)`` for ``fk`` / ``tds`` / ``guidance``) and the observation the linear
inverse-problem methods need (``steer(..., method="mcgdiff" | "ddrm", observation=obs)``), which
work in the basis of the right singular vectors of :math:`A`.

With ``n_runs = R`` independent runs (``steer(n_runs=R)``), ``A`` is ``(R, d_y, d)``, ``y``
``(R, d_y)`` and ``sigma`` a float or ``(R,)``: rows ``r N .. (r + 1) N - 1`` of the particles are
run ``r``'s and are scored against problem ``r``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from smcdiff.checks import check_number
from smcdiff.errors import SMCDiffError

__all__ = ["LinearGaussianObservation"]

WHERE = "LinearGaussianObservation"
RANK_TOL = 1e-10


class LinearGaussianObservation:
    r""":math:`p(y\mid x) = \mathcal N(y; A x, \sigma_y^2 I)` on flattened particles.

    ``A``: ``(d_y, d)`` or, for ``R`` batched runs, ``(R, d_y, d)`` with ``d_y <= d`` and full
    row rank; ``y``: ``(d_y,)`` or ``(R, d_y)``; ``sigma``: :math:`\sigma_y > 0`, a float or
    ``(R,)``. Stored in float64. The SVD :math:`A = U\,\mathrm{diag}(s)\,V_{:d_y}^\top`
    (:math:`V` a full ``(d, d)`` orthogonal basis) is computed once: :attr:`V` ``(R, d, d)``,
    :attr:`singular_values` ``(R, d_y)``, and the observation in that basis,
    :math:`\bar y = \mathrm{diag}(s)^{-1} U^\top y` (:attr:`y_bar`) with per-coordinate noise
    :math:`r = \sigma_y / s` (:attr:`noise_std_bar`): :math:`\bar y_i = (V^\top x)_i + r_i
    \varepsilon_i`, and :math:`\log p(y\mid x) = \sum_i \log\mathcal N(\bar y_i; (V^\top x)_i,
    r_i^2) - \sum_i \log s_i`. (Unbatched inputs are stored with ``R = 1``.)
    """

    def __init__(self, A: Any, y: Any, sigma: Any):
        a = torch.as_tensor(A).to(torch.float64)
        yy = torch.as_tensor(y).to(device=a.device, dtype=torch.float64)
        self.batched = a.dim() == 3
        if a.dim() == 2:
            a, yy = a[None], yy[None]
        if a.dim() != 3 or yy.dim() != 2 or yy.shape != a.shape[:2]:
            raise SMCDiffError(
                f"{WHERE}: A must be (d_y, d) or (R, d_y, d) and y (d_y,) or (R, d_y) to match; "
                f"got A {tuple(torch.as_tensor(A).shape)}, y {tuple(torch.as_tensor(y).shape)}"
            )
        n_runs, d_y, d = a.shape
        if d_y > d or d_y < 1:
            raise SMCDiffError(f"{WHERE}: A has {d_y} rows and {d} columns; need 1 <= d_y <= d")
        self.A, self.y = a, yy
        self.sigma = _sigmas(sigma, n_runs, a.device)
        if not (torch.isfinite(a).all() and torch.isfinite(yy).all()):
            raise SMCDiffError(f"{WHERE}: A and y must be finite")
        u, s, vh = torch.linalg.svd(a, full_matrices=True)  # vh (R, d, d)
        if bool((s <= RANK_TOL * s[:, :1].clamp_min(1e-300)).any()) or bool((s == 0).any()):
            raise SMCDiffError(
                f"{WHERE}: A is rank-deficient (singular values {s.tolist()}); drop the "
                "redundant rows of A (and y) so that A has full row rank"
            )
        self.V = vh.transpose(-1, -2).contiguous()
        self.singular_values = s
        self.y_bar = torch.einsum("rkj,rk->rj", u, yy) / s
        self.noise_std_bar = self.sigma[:, None] / s

    @property
    def n_runs(self) -> int:
        return self.A.shape[0]

    @property
    def d_y(self) -> int:
        return self.A.shape[1]

    @property
    def dim(self) -> int:
        return self.A.shape[2]

    def __repr__(self) -> str:
        runs = f", n_runs={self.n_runs}" if self.batched else ""
        return f"LinearGaussianObservation(d_y={self.d_y}, d={self.dim}{runs})"

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\mathcal N(y_r; A_r x, \sigma_{y,r}^2 I)` per row: ``x`` ``(R N, *event)``
        with ``R N`` rows (run ``r``'s rows contiguous) -> ``(R N,)``, in ``x``'s dtype."""
        rows = x.shape[0]
        if rows % self.n_runs:
            raise SMCDiffError(
                f"{WHERE}.log_likelihood: got {rows} rows; with {self.n_runs} runs it needs a "
                f"multiple of {self.n_runs} (run r's particles in block r)"
            )
        flat = x.reshape(self.n_runs, rows // self.n_runs, -1)
        if flat.shape[-1] != self.dim:
            raise SMCDiffError(
                f"{WHERE}.log_likelihood: particles have {flat.shape[-1]} coordinates, A has "
                f"{self.dim} columns"
            )
        a, y, sig = (t.to(device=x.device, dtype=x.dtype) for t in (self.A, self.y, self.sigma))
        r = (torch.einsum("rnd,rkd->rnk", flat, a) - y[:, None]) / sig[:, None, None]
        const = -0.5 * self.d_y * torch.log(2 * math.pi * sig.square())
        return (const[:, None] - 0.5 * r.square().sum(-1)).reshape(rows)

    __call__ = log_likelihood

    def to(self, device: Any) -> LinearGaussianObservation:
        """The same observation on ``device`` (the SVD is moved, not recomputed)."""
        new = object.__new__(LinearGaussianObservation)
        new.__dict__.update({k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                             for k, v in self.__dict__.items()})  # fmt: skip
        return new


def _sigmas(sigma: Any, n_runs: int, device: Any) -> torch.Tensor:
    """``sigma`` (a number or ``(R,)``) as a float64 ``(R,)`` tensor of positive values."""
    if isinstance(sigma, (list, tuple)) or (hasattr(sigma, "ndim") and sigma.ndim > 0):
        sig = torch.as_tensor(sigma).to(device=device, dtype=torch.float64).reshape(-1)
        if sig.shape[0] != n_runs:
            raise SMCDiffError(f"{WHERE}: sigma has {sig.shape[0]} entries for {n_runs} runs")
        if not bool((torch.isfinite(sig) & (sig > 0)).all()):
            raise SMCDiffError(f"{WHERE}: sigma must be finite and > 0, got {sig.tolist()}")
        return sig
    value = check_number("sigma", sigma, minimum=0.0, strict_min=True, where=WHERE)
    return torch.full((n_runs,), value, dtype=torch.float64, device=device)
