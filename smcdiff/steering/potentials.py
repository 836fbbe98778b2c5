r"""Feynman–Kac steering potentials (Singhal et al., 2025), in log space.

With the intermediate log-tilt :math:`\phi_k = \phi(\hat x_0(x_k))` at steps k = 0 (noise) .. K (data)
and :math:`\phi_K = \phi(x_K)` at the last step:

* ``"difference"``: :math:`\log G_k = \phi_k - \phi_{k-1}` (:math:`\phi_{-1} = 0`);
* ``"max"``: :math:`\log G_k = \max_{j \le k} \phi_j`;
* ``"sum"``: :math:`\log G_k = \sum_{j \le k} \phi_j`;
* ``"final"``: :math:`\log G_k = 0` for k < K (plain importance sampling with resampling off).

At the last step every kind uses :math:`\log G_K = \phi_K - \sum_{k<K} \log G_k` (carried per
particle through resampling), so :math:`\prod_k G_k = e^{\phi(x_K)}` on every path and the weighted
particles target :math:`p(x)\,e^{\phi(x)}` exactly in the many-particle limit; for ``"difference"``
this is the telescoping sum itself.
"""

from __future__ import annotations

import torch

__all__ = ["POTENTIALS", "initial_potential", "step_potential"]

POTENTIALS = ("difference", "max", "sum", "final")


def initial_potential(kind: str, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_g, run)`` at step 0; ``run`` is the running max / sum carried with each particle."""
    if kind == "final":
        return torch.zeros_like(phi), phi
    return phi, phi


def _sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b``, but ``-inf`` where ``b = -inf``: a path already at weight zero stays there
    (instead of ``-inf - (-inf) = NaN`` or ``x - (-inf) = +inf``)."""
    return torch.where(b == float("-inf"), b, a - b)


def step_potential(
    kind: str,
    phi: torch.Tensor,
    prev_phi: torch.Tensor,
    run: torch.Tensor,
    acc: torch.Tensor,
    last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_g, run)`` at step k; ``acc`` is the sum of this path's earlier ``log_g``."""
    if last:
        return (_sub(phi, prev_phi) if kind == "difference" else _sub(phi, acc)), run
    if kind == "difference":
        return _sub(phi, prev_phi), run
    if kind == "max":
        run = torch.maximum(run, phi)
        return run, run
    if kind == "sum":
        run = run + phi
        return run, run
    return torch.zeros_like(phi), run
