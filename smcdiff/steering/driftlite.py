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
depend on a common scale of the features — but it is set by the largest: features of very
different scales make :math:`A` ill-conditioned (DW-4 reward tilt at t = 1: score feature variance
0.02, reward feature 2.5e7, condition number 2e9, correlation 0.67) and the ridge then shrinks the
small feature's coefficient hard (there :math:`\lambda` = 555 times its variance:
:math:`\theta_{score}` 164 instead of the unregularised 1.7e5, a linear drift that would collapse
the cloud in one step). The solve itself stays finite (float64 Cholesky). Shapes: ``G`` groups, ``N`` particles, ``J`` basis functions,
``E`` the event shape of one particle (fields are compared over its flattened dims).

The solvers as objects (:class:`VCG`, :class:`ECG`, by name in :data:`CONTROLS`) read what they
need from a particle state (``psi``; ``phi`` and ``pot``) and give :math:`\theta` per group.
"""

from __future__ import annotations

import torch

from smcdiff.checks import check_number
from smcdiff.errors import SMCDiffError

__all__ = [
    "CONTROLS",
    "ECG",
    "VCG",
    "Control",
    "ecg_coefficients",
    "make_control",
    "vcg_coefficients",
    "weighted_variance",
]

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
        fields: :math:`\phi_j(x_n)` ``(G, N, J, *E)``; potentials: :math:`a_j(x_n)` with
            :math:`\phi_j = \nabla a_j`, ``(G, N, J)``; rate: :math:`G` ``(G, N)``; weights:
            normalised ``(G, N)``; ridge: relative Tikhonov term.

    Returns:
        ``(G, J)`` float64: :math:`(M + \lambda I)^{-1}\operatorname{Cov}_W(a, G)`,
        :math:`M_{ij} = \mathbb E_W[\phi_i\cdot\phi_j]`.
    """
    phi, a, g, w = fields.double().flatten(3), potentials.double(), rate.double(), weights.double()
    gram = torch.einsum("gn,gnid,gnjd->gij", w, phi, phi)
    ac = a - _wmean(a, w).unsqueeze(1)
    gc = g - _wmean(g, w).unsqueeze(1)
    cross = (w.unsqueeze(-1) * ac * gc.unsqueeze(-1)).sum(1)
    return _ridge_solve(gram, cross, ridge)


class Control:
    r"""A DriftLite solver: ``coefficients(state, rate, weights)`` gives :math:`\theta` ``(G, J)``
    float64 from the particle ``state`` (entries ``(G*N, ...)``: ``psi`` ``(G*N, J)``, ``phi``
    ``(G*N, J, *E)``, ``pot`` ``(G*N, J)``), the rate :math:`G` ``(G*N,)`` and the normalised
    weights ``(G, N)``. ``needs_potentials``: whether the state must hold ``pot``."""

    name = "control"
    needs_potentials = False

    def __init__(self, ridge: float = 1e-6):
        self.ridge = check_number("ridge", ridge, minimum=0.0, where=type(self).__name__)

    def coefficients(
        self, state: dict[str, torch.Tensor], rate: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ridge={self.ridge:g})"


class VCG(Control):
    """Variance-controlling: :func:`vcg_coefficients` on the features ``psi``."""

    name = "vcg"

    def coefficients(
        self, state: dict[str, torch.Tensor], rate: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        g, n = weights.shape
        psi = state["psi"]
        return vcg_coefficients(psi.reshape(g, n, psi.shape[1]), rate.reshape(g, n), weights,
                                self.ridge)  # fmt: skip


class ECG(Control):
    """Energy-controlling: :func:`ecg_coefficients` on the fields ``phi`` and potentials ``pot``."""

    name = "ecg"
    needs_potentials = True

    def coefficients(
        self, state: dict[str, torch.Tensor], rate: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        g, n = weights.shape
        phi, pot = state["phi"], state["pot"]
        return ecg_coefficients(
            phi.reshape(g, n, *phi.shape[1:]), pot.reshape(g, n, pot.shape[1]),
            rate.reshape(g, n), weights, self.ridge,
        )  # fmt: skip


CONTROLS: dict[str, type[Control]] = {"vcg": VCG, "ecg": ECG}


def make_control(spec: str | Control | None, ridge: float, *, where: str) -> Control | None:
    """``None``, the solver named by ``spec`` (from :data:`CONTROLS`, with ``ridge``) or ``spec``
    itself when it is a :class:`Control` (which carries its own ridge)."""
    ridge = check_number("ridge", ridge, minimum=0.0, where=where)
    if spec is None or isinstance(spec, Control):
        return spec
    if not isinstance(spec, str) or spec not in CONTROLS:
        raise SMCDiffError(
            f"{where}: control must be None, a Control or one of {tuple(CONTROLS)}, got {spec!r}"
        )
    return CONTROLS[spec](ridge)
