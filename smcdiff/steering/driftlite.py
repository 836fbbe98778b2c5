r"""DriftLite drift control (Ren, Gao, Ying, Rotskoff & Han, 2025, arXiv:2509.21655): pure solves.

A weighted particle system whose measure obeys (run time :math:`\tau`, potential :math:`G`)

.. math::
    \partial_\tau\mu = -\nabla\cdot(v\mu) + \tfrac{h^2}{2}\Delta\mu + G\mu

keeps *the same* measure when a drift :math:`u` is added to :math:`v` and the potential becomes

.. math::
    G_u = G + \frac{\nabla\cdot(\mu u)}{\mu} = G + \nabla\cdot u + u\cdot\nabla\log\mu ,

because :math:`-\nabla\cdot(u\mu) + \mu\,\nabla\cdot(\mu u)/\mu = 0`. The added term has zero mean
under :math:`\mu` (it is a divergence), so it only redistributes weight. With
:math:`u = \sum_j\theta_j\phi_j` over a small basis, :math:`G_u = G + \theta^\top\psi` with features
:math:`\psi_j = \nabla\cdot\phi_j + \phi_j\cdot S`, :math:`S = \nabla\log\mu`. The zero-variance
control :math:`u^\star` solves the weighted Poisson equation
:math:`\nabla\cdot(\mu u^\star) = -\mu\,(G - \mathbb E_\mu G)`; its minimum-energy solution is a
gradient. Two ways to pick :math:`\theta` from the current weighted particles (weights :math:`W`):

* **VCG** (variance-controlling): minimise the weighted variance of the new potential,
  :math:`\min_\theta \operatorname{Var}_W(G + \theta^\top\psi)`, i.e. weighted least squares on the
  centred features: :math:`(C + \lambda I)\theta = -c` with :math:`C = \operatorname{Cov}_W(\psi)`,
  :math:`c = \operatorname{Cov}_W(\psi, G)`.
* **ECG** (energy-controlling): the Ritz–Galerkin (energy-norm) projection of :math:`u^\star` onto
  the span, :math:`\min_\theta \mathbb E_W|u_\theta - u^\star|^2`, for gradient basis fields
  :math:`\phi_j = \nabla a_j`. Integrating by parts,
  :math:`\mathbb E_\mu[\phi_i\cdot u^\star] = \operatorname{Cov}_\mu(a_i, G)`, so
  :math:`(M + \lambda I)\theta = \operatorname{Cov}_W(a, G)` with
  :math:`M_{ij} = \mathbb E_W[\phi_i\cdot\phi_j]` — it needs the potentials :math:`a_j` of the basis
  but no second derivatives in the solve (the weights still need :math:`\nabla\cdot u`).

Both are solved per group, batched, in float64, without a host sync; the ridge is relative,
:math:`\lambda = \text{ridge}\cdot\operatorname{tr}(A)/J` (plus a tiny floor), so it does not
depend on the scale of the features. Shapes: ``G`` groups, ``N`` particles, ``J`` basis functions.
"""

from __future__ import annotations

import torch

__all__ = ["CONTROLS", "ecg_coefficients", "vcg_coefficients", "weighted_variance"]

CONTROLS = ("vcg", "ecg")
_FLOOR = 1e-100


def _wmean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the particle axis: values ``(G, N, ...)``, weights ``(G, N)``."""
    w = weights.reshape(*weights.shape, *([1] * (values.dim() - 2)))
    return (w * values).sum(1)


def weighted_variance(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_n W_n (v_n - \bar v)^2` per group: values ``(G, N)``, normalised weights
    ``(G, N)`` -> ``(G,)`` float64."""
    v, w = values.double(), weights.double()
    c = v - _wmean(v, w).unsqueeze(1)
    return (w * c * c).sum(1)


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """Solve ``(a + lam I) theta = b`` per group by Cholesky (no sync), ``a`` PSD ``(G, J, J)``."""
    j = a.shape[-1]
    lam = ridge * a.diagonal(dim1=-2, dim2=-1).sum(-1) / j + _FLOOR
    eye = torch.eye(j, dtype=a.dtype, device=a.device)
    chol, _ = torch.linalg.cholesky_ex(a + lam[:, None, None] * eye)
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)


def vcg_coefficients(
    features: torch.Tensor, rate: torch.Tensor, weights: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    r"""VCG: :math:`\theta = \arg\min_\theta \operatorname{Var}_W(G + \theta^\top\psi)`.

    Args:
        features: :math:`\psi` ``(G, N, J)``; rate: :math:`G` ``(G, N)``; weights: normalised
            ``(G, N)``; ridge: relative Tikhonov term.

    Returns:
        ``(G, J)`` float64: :math:`-(C + \lambda I)^{-1}\operatorname{Cov}_W(\psi, G)`.
    """
    psi, g, w = features.double(), rate.double(), weights.double()
    pc = psi - _wmean(psi, w).unsqueeze(1)
    gc = g - _wmean(g, w).unsqueeze(1)
    wp = w.unsqueeze(-1) * pc
    cov = wp.transpose(1, 2) @ pc  # (G, J, J)
    cross = (wp * gc.unsqueeze(-1)).sum(1)  # (G, J)
    return -_ridge_solve(cov, cross, ridge)


def ecg_coefficients(
    fields: torch.Tensor,
    potentials: torch.Tensor,
    rate: torch.Tensor,
    weights: torch.Tensor,
    ridge: float = 1e-6,
) -> torch.Tensor:
    r"""ECG: :math:`\theta = \arg\min_\theta \mathbb E_W|\sum_j\theta_j\phi_j - u^\star|^2`.

    Args:
        fields: :math:`\phi_j(x_n)` ``(G, N, J, d)``; potentials: :math:`a_j(x_n)` with
            :math:`\phi_j = \nabla a_j`, ``(G, N, J)``; rate: :math:`G` ``(G, N)``; weights:
            normalised ``(G, N)``; ridge: relative Tikhonov term.

    Returns:
        ``(G, J)`` float64: :math:`(M + \lambda I)^{-1}\operatorname{Cov}_W(a, G)`,
        :math:`M_{ij} = \mathbb E_W[\phi_i\cdot\phi_j]`.
    """
    phi, a, g, w = fields.double(), potentials.double(), rate.double(), weights.double()
    gram = torch.einsum("gn,gnid,gnjd->gij", w, phi, phi)
    ac = a - _wmean(a, w).unsqueeze(1)
    gc = g - _wmean(g, w).unsqueeze(1)
    cross = (w.unsqueeze(-1) * ac * gc.unsqueeze(-1)).sum(1)
    return _ridge_solve(gram, cross, ridge)
