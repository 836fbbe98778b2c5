r"""Optimal-transport and marginal distances for benchmark tables (BENCHMARKS.md, "Metrics").

Same input convention as :mod:`smcdiff.diagnostics.metrics`: a particle set ``x`` ``(N, d)`` with
optional weights ``weights_x`` ``(N,)`` against equally weighted reference samples ``y``
``(M, d)``. Transport problems are solved by POT (``pip install pot``) on the CPU in float64;
``max_points`` subsamples each side (weighted particles by systematic resampling) so that the
``N x M`` cost matrix stays small.

* :func:`wasserstein2`: exact :math:`W_2 = (\min_\gamma \sum \gamma_{ij}\|x_i - y_j\|^2)^{1/2}`
  (network simplex, ``ot.emd2``);
* :func:`entropic_wasserstein2`: :math:`(\min_\gamma \langle\gamma, C\rangle - \varepsilon
  H(\gamma))^{1/2}`, log-domain Sinkhorn (on ``x``'s device, at most ``n_iter`` sweeps) with :math:`\varepsilon` = ``reg`` in the units of the
  squared distance (0.05 in the anchors' tables), unnormalised cost;
* :func:`sliced_ks`: the mean over random unit directions of the Kolmogorov–Smirnov distance
  between the projected (weighted) empirical CDFs.
"""

from __future__ import annotations

import torch

from smcdiff.diagnostics.metrics import prepare_samples
from smcdiff.errors import SMCDiffError

__all__ = ["entropic_wasserstein2", "sliced_ks", "wasserstein2"]


def _ot():
    try:
        import ot
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SMCDiffError(
            "optimal-transport metrics need POT: pip install pot (or smcdiff[bench])"
        ) from err
    return ot


def _subsample(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, max_points: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, w, y = x.cpu(), w.cpu(), y.cpu()
    if x.shape[0] > max_points:
        from smcdiff.resampling import systematic

        idx = systematic(w.log(), max_points, generator=gen)
        x, w = x[idx], torch.full((max_points,), 1.0 / max_points, dtype=torch.float64)
    if y.shape[0] > max_points:
        y = y[torch.randperm(y.shape[0], generator=gen)[:max_points]]
    return x, w, y


def _costs(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor):
    cost = torch.cdist(x, y).pow(2).numpy()
    a = (w / w.sum()).numpy()
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64).numpy()
    return a, b, cost


def wasserstein2(
    x: torch.Tensor,
    y: torch.Tensor,
    weights_x: torch.Tensor | None = None,
    *,
    max_points: int = 4000,
    seed: int = 0,
) -> float:
    """Exact :math:`W_2` between the two empirical measures (module docstring)."""
    x, y, w = prepare_samples(x, y, weights_x, "wasserstein2")
    a, b, cost = _costs(*_subsample(x, w, y, max_points, seed))
    return float(_ot().emd2(a, b, cost, numItermax=10_000_000)) ** 0.5


def entropic_wasserstein2(
    x: torch.Tensor,
    y: torch.Tensor,
    weights_x: torch.Tensor | None = None,
    *,
    reg: float = 0.05,
    max_points: int = 2000,
    seed: int = 0,
    n_iter: int = 2000,
) -> float:
    r"""Entropy-regularised :math:`W_2` (module docstring), log-domain Sinkhorn."""
    if not reg > 0:
        raise SMCDiffError(f"entropic_wasserstein2: reg must be > 0, got {reg}")
    x, y, w = prepare_samples(x, y, weights_x, "entropic_wasserstein2")
    dev = x.device
    xs, ws, ys = _subsample(x, w, y, max_points, seed)
    xs, ws, ys = xs.to(dev), ws.to(dev), ys.to(dev)  # POT's torch backend: runs on x's device
    cost = torch.cdist(xs, ys).pow(2)
    a = ws / ws.sum()
    b = torch.full((ys.shape[0],), 1.0 / ys.shape[0], dtype=torch.float64, device=dev)
    val = _ot().sinkhorn2(a, b, cost, reg, method="sinkhorn_log", numItermax=n_iter, stopThr=1e-7)
    return float(val) ** 0.5


def sliced_ks(
    x: torch.Tensor,
    y: torch.Tensor,
    weights_x: torch.Tensor | None = None,
    *,
    n_directions: int = 128,
    seed: int = 0,
) -> float:
    r"""Mean over ``n_directions`` random unit vectors :math:`u` of
    :math:`\sup_s |F_x(u^\top\cdot \le s) - F_y(u^\top\cdot \le s)|` (weighted CDF for ``x``)."""
    x, y, w = prepare_samples(x, y, weights_x, "sliced_ks")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape[1], n_directions, generator=gen, dtype=torch.float64).to(x.device)
    u = u / u.norm(dim=0, keepdim=True)
    px, py = x @ u, y @ u  # (N, D), (M, D)
    vals = torch.cat([px, py], 0)  # evaluate both CDFs at every sample point
    order = vals.argsort(0)
    mass = torch.cat([w.unsqueeze(1).expand_as(px), -torch.full_like(py, 1.0 / y.shape[0])], 0)
    diff = torch.gather(mass, 0, order).cumsum(0)
    sorted_vals = torch.gather(vals, 0, order)
    last_of_ties = torch.ones_like(diff, dtype=torch.bool)  # CDFs are compared after ties
    last_of_ties[:-1] = sorted_vals[1:] != sorted_vals[:-1]
    return float((diff.abs() * last_of_ties).max(0).values.mean())
