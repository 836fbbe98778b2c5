r"""Sample-based distances between a (weighted) particle set and reference samples.

Every function takes the particle set ``x`` ``(N, d)`` with optional non-negative weights
``weights_x`` ``(N,)`` (normalised inside; integer counts are fine, so a weighted set and the
same set with each point repeated ``weights_x[i]`` times give the same value), and reference
samples ``y`` ``(M, d)``, equally weighted. 1-D inputs ``(N,)`` are read as ``d = 1``. The work
runs on ``x``'s device in float64 (``y`` and the weights are moved there); pairwise sums are
exact, computed over row blocks of at most ``_BLOCK_BYTES`` per distance matrix, so memory stays
linear in ``N + M`` beyond one block (N = M = 5000: a 64 MB block).

Every value is the plug-in one for the two empirical measures (energy and MMD are V-statistics,
diagonal included): exactly zero for identical sets, and slightly positive for two samples of one
distribution (energy, MMD: of order :math:`1/N + 1/M`; sliced Wasserstein: larger, roughly
:math:`\sqrt{\log n / n}`), so compare against such a same-distribution baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.errors import SMCDiffError

__all__ = [
    "energy_distance",
    "gaussian_mmd",
    "prepare_samples",
    "sliced_wasserstein",
    "weighted_moments",
]

_BLOCK_BYTES = 64 * 2**20
_BANDWIDTH_SUBSAMPLE = 1000


def prepare_samples(
    x: torch.Tensor, y: torch.Tensor, weights_x: torch.Tensor | None, fn: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x (N, d), y (M, d), w (N,))`` in float64 on ``x``'s device, ``w`` normalised; particles
    of any shape ``(N, *event_shape)`` are flattened to ``d = prod(event_shape)`` (1-D: ``d = 1``)."""
    x = x.detach().to(torch.float64)
    y = y.detach().to(device=x.device, dtype=torch.float64)
    x = x.unsqueeze(-1) if x.dim() == 1 else x.flatten(1)
    y = y.unsqueeze(-1) if y.dim() == 1 else y.flatten(1)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise SMCDiffError(
            f"{fn}: x and y must be (N, d) and (M, d) with the same d, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise SMCDiffError(f"{fn}: x and y need at least one sample each")
    if weights_x is None:
        w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
        return x, y, w
    w = weights_x.detach().to(device=x.device, dtype=torch.float64)
    if w.shape != (x.shape[0],):
        raise SMCDiffError(f"{fn}: weights_x must be ({x.shape[0]},), got {tuple(w.shape)}")
    total = w.sum()
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(total > 0):
        raise SMCDiffError(f"{fn}: weights_x must be finite, non-negative and not all zero")
    return x, y, w / total


def _pair_sum(
    a: torch.Tensor,
    wa: torch.Tensor,
    b: torch.Tensor,
    wb: torch.Tensor,
    kernel: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    r""":math:`\sum_{i,j} a^w_i\, b^w_j\, \kappa(\lVert a_i - b_j\rVert)` over row blocks of ``a``.

    Distances are computed directly (not through the Gram-matrix shortcut, which loses the exact
    zero of :math:`\lVert a_i - a_i\rVert`); ``kernel`` owns each block and may work in place.
    """
    rows = max(1, _BLOCK_BYTES // (8 * b.shape[0]))
    total = a.new_zeros(())
    for s in range(0, a.shape[0], rows):
        dist = torch.cdist(a[s : s + rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        total = total + wa[s : s + rows] @ kernel(dist) @ wb
    return total


def energy_distance(
    x: torch.Tensor, y: torch.Tensor, weights_x: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Squared energy distance :math:`D^2 = 2\,E\lVert X-Y\rVert - E\lVert X-X'\rVert -
    E\lVert Y-Y'\rVert \ge 0`, with :math:`X \sim \sum_i w_i \delta_{x_i}`, :math:`Y \sim
    \frac1M \sum_j \delta_{y_j}`; a float64 scalar. Zero iff the two empirical measures agree.

    In 1-D, :math:`D^2 = 2 \int (F - G)^2`, and ``scipy.stats.energy_distance(x, y, w)`` returns
    :math:`\sqrt{D^2}`.
    """
    x, y, w = prepare_samples(x, y, weights_x, "energy_distance")
    v = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64, device=x.device)
    ident = torch.nn.Identity()
    return (
        2 * _pair_sum(x, w, y, v, ident)
        - _pair_sum(x, w, x, w, ident)
        - _pair_sum(y, v, y, v, ident)
    )


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    weights_x: torch.Tensor | None = None,
    n_projections: int = 256,
    p: float = 2,
    seed: int = 0,
) -> torch.Tensor:
    r"""Sliced Wasserstein distance :math:`\big(\frac1L \sum_{l=1}^{L} W_p^p(\theta_l^\top X,
    \theta_l^\top Y)\big)^{1/p}`, a float64 scalar.

    The directions :math:`\theta_l` are uniform on the sphere, drawn on the CPU from ``seed`` (so
    the same on every device). Each 1-D distance is exact for the weighted empirical measures:
    :math:`W_p^p = \int_0^1 \lvert F^{-1}(u) - G^{-1}(u)\rvert^p\,du`, a finite sum over the
    merged breakpoints of the two cumulative weight sequences (:math:`O((N+M)\log(N+M))` each).
    With ``d = 1`` every direction is :math:`\pm 1`: one projection gives the exact :math:`W_p`.
    """
    x, y, w = prepare_samples(x, y, weights_x, "sliced_wasserstein")
    if n_projections < 1 or p < 1:
        raise SMCDiffError(
            f"sliced_wasserstein: need n_projections >= 1 and p >= 1, got {n_projections}, {p}"
        )
    if x.shape[1] == 1:  # every direction is +-1, and W_p is symmetric: one projection is exact
        theta = torch.ones(1, 1, dtype=torch.float64, device=x.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(n_projections, x.shape[1], generator=gen, dtype=torch.float64)
        theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    n_projections = theta.shape[0]
    n, m = x.shape[0], y.shape[0]
    sx, order = (theta @ x.T).sort(dim=-1)  # (L, N) projections, sorted
    sy = (theta @ y.T).sort(dim=-1).values  # (L, M)
    cum_x = w[order].cumsum(dim=-1)  # (L, N) cumulative weights
    cum_y = torch.full((m,), 1.0 / m, dtype=torch.float64, device=x.device).cumsum(0)  # (M,)
    # Merged breakpoints: on each (u_{k-1}, u_k] both quantile functions are constant, equal to
    # F^{-1}(u_k) = the first sorted value whose cumulative weight reaches u_k.
    u = torch.cat([cum_x, cum_y.expand(n_projections, m)], dim=-1).sort(dim=-1).values
    u = u.clamp_(max=1.0)
    du = torch.diff(u, dim=-1, prepend=torch.zeros_like(u[:, :1]))
    qx = sx.gather(-1, torch.searchsorted(cum_x, u).clamp_(max=n - 1))
    qy = sy.gather(-1, torch.searchsorted(cum_y, u).clamp_(max=m - 1))
    wpp = ((qx - qy).abs() ** p * du).sum(dim=-1)  # (L,) values of W_p^p
    return wpp.mean() ** (1.0 / p)


def _median_distance(y: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance within ``y`` (a fixed-seed subsample of at most 1000 points)."""
    if y.shape[0] > _BANDWIDTH_SUBSAMPLE:
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(y.shape[0], generator=gen)[:_BANDWIDTH_SUBSAMPLE].to(y.device)
        y = y[idx]
    dist = torch.pdist(y)
    return dist.median() if dist.numel() else y.new_ones(())


def gaussian_mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    weights_x: torch.Tensor | None = None,
    bandwidth: float | None = None,
) -> torch.Tensor:
    r"""Squared MMD with the Gaussian kernel :math:`k(a, b) = \exp(-\lVert a-b\rVert^2 / 2h^2)`:
    :math:`w^\top K_{xx} w - 2\, w^\top K_{xy} v + v^\top K_{yy} v` with :math:`v = 1/M`; a
    float64 scalar.

    ``bandwidth`` :math:`h` defaults to the median heuristic on the **reference** ``y`` (median
    pairwise distance, on a fixed subsample of at most 1000 points), so every particle set
    compared with one reference is scored with the same kernel. A zero median (constant ``y``)
    falls back to :math:`h = 1`.
    """
    x, y, w = prepare_samples(x, y, weights_x, "gaussian_mmd")
    if bandwidth is None:
        h = _median_distance(y)
        h = torch.where(h > 0, h, torch.ones_like(h))
    else:
        if not bandwidth > 0:
            raise SMCDiffError(f"gaussian_mmd: bandwidth must be > 0, got {bandwidth}")
        h = torch.tensor(float(bandwidth), dtype=torch.float64, device=x.device)
    v = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64, device=x.device)

    def kernel(dist: torch.Tensor) -> torch.Tensor:
        return dist.div_(h).square_().mul_(-0.5).exp_()

    return (
        _pair_sum(x, w, x, w, kernel)
        - 2 * _pair_sum(x, w, y, v, kernel)
        + _pair_sum(y, v, y, v, kernel)
    )


def weighted_moments(
    x: torch.Tensor, log_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Self-normalised weighted mean and covariance, in float64.

    ``x`` ``(..., N, d)``, ``log_weights`` ``(..., N)`` (any shift; ``-inf`` is weight zero).
    With :math:`W = \mathrm{softmax}(\log w)`: mean :math:`\mu = \sum_i W_i x_i` ``(..., d)``;
    covariance :math:`\Sigma = \sum_i W_i (x_i - \mu)(x_i - \mu)^\top` ``(..., d, d)`` (the plug-in
    estimate, no small-sample correction).
    """
    if x.dim() < 2 or log_weights.shape != x.shape[:-1]:
        raise SMCDiffError(
            "weighted_moments: x must be (..., N, d) and log_weights (..., N), "
            f"got {tuple(x.shape)} and {tuple(log_weights.shape)}"
        )
    x = x.detach().to(torch.float64)
    W = torch.softmax(log_weights.detach().to(device=x.device, dtype=torch.float64), dim=-1)
    mean = torch.einsum("...n,...nd->...d", W, x)
    xc = x - mean.unsqueeze(-2)
    cov = torch.einsum("...n,...nd,...ne->...de", W, xc, xc)
    return mean, cov
