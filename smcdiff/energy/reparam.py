r"""Non-centred reparameterisation of hierarchical targets (Neal's funnel and its relatives).

A hierarchical target whose "local" coordinates have a scale set by "global" ones,
:math:`x_L \mid x_G \sim` (location :math:`\mu(x_G)`, scale :math:`e^{\ell(x_G)}`), has a funnel:
where :math:`\ell(x_G)` is small the local coordinates are squeezed into a neck no fixed-step
sampler or Gaussian reference reaches. The non-centred parameterisation samples
:math:`z = (z_G, z_L)` with

.. math::
    x = T(z):\quad x_G = z_G,\qquad x_L = \mu(z_G) + e^{\ell(z_G)} \odot z_L,

whose Jacobian is triangular with diagonal :math:`(1, \dots, 1, e^{\ell(z_G)})`, so

.. math::
    \log\tilde\pi_z(z) = \log\tilde\pi(T(z)) + \sum_{i\in L}\ell_i(z_G)

has the *same* normaliser :math:`Z` (a change of variables). Sample :math:`\tilde\pi_z` with any
method (:func:`smcdiff.sample`), then map the particles back with :meth:`NonCentred.to_x`;
weights and :math:`\log\hat Z` carry over unchanged.

**What it assumes.** You know the hierarchical structure: which coordinates are global, and the
conditional location and log-scale of the local ones as functions of the global ones
(``loc``, ``log_scale``; differentiable torch functions). The transform is exact whatever they
are (any smooth :math:`\mu`, :math:`\ell` gives a valid change of variables); it *helps* only
when :math:`x_L \mid x_G` is close to location-scale with those parameters, which for the
funnel holds exactly: :math:`\tilde\pi_z` is then the product
:math:`\mathcal N(z_0; 0, 3^2)\prod_i\mathcal N(z_i; 0, 1)` (:func:`funnel_noncentred`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_int
from smcdiff.errors import SMCDiffError
from smcdiff.target import Target

__all__ = ["NonCentred", "funnel_noncentred"]

Fn = Callable[[torch.Tensor], torch.Tensor]


class NonCentred:
    r"""The target :math:`\tilde\pi_z(z) = \tilde\pi(T(z))\,|\det J_T(z)|` (module docstring).

    Args:
        target: a :class:`~smcdiff.target.Target` on flat points ``(N, d)``.
        global_idx: indices :math:`G` of the global coordinates (the rest are local, :math:`L`).
        log_scale: :math:`\ell`: ``(N, |G|) -> (N, |L|)`` (or ``(N, 1)``, broadcast), the log of
            the conditional scale of :math:`x_L` given :math:`x_G`.
        loc: :math:`\mu`: ``(N, |G|) -> (N, |L|)``; default 0.

    ``dim`` is the target's, ``log_prob(z)`` ``(N, d) -> (N,)``, ``to_x(z)`` / ``to_z(x)`` map
    between the parameterisations (``(N, d) -> (N, d)``).
    """

    def __init__(
        self, target: Target, global_idx: Sequence[int], log_scale: Fn, loc: Fn | None = None
    ):
        where = "NonCentred"
        self.target = target
        self.dim = check_int("target.dim", getattr(target, "dim", None), 2, where=where)
        g = sorted({check_int("global_idx", i, 0, maximum=self.dim - 1, where=where)
                    for i in global_idx})  # fmt: skip
        if not g or len(g) == self.dim:
            raise SMCDiffError(f"{where}: global_idx must name 1 to dim-1 coordinates, got {g}")
        self.global_idx = torch.tensor(g)
        self.local_idx = torch.tensor([i for i in range(self.dim) if i not in g])
        self.log_scale, self.loc = log_scale, loc
        self.name = f"noncentred({getattr(target, 'name', type(target).__name__)})"

    def _parts(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(v_G, mu(v_G), ell(v_G))`` broadcast to ``(N, |L|)``."""
        vg = v[:, self.global_idx.to(v.device)]
        ell = self.log_scale(vg).expand(v.shape[0], len(self.local_idx))
        mu = torch.zeros_like(ell) if self.loc is None else self.loc(vg).expand_as(ell)
        return vg, mu, ell

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`x = T(z)`, ``(N, d) -> (N, d)``."""
        _, mu, ell = self._parts(z)
        x = z.clone()
        x[:, self.local_idx.to(z.device)] = mu + torch.exp(ell) * z[:, self.local_idx.to(z.device)]
        return x

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`z = T^{-1}(x)`, ``(N, d) -> (N, d)``."""
        _, mu, ell = self._parts(x)  # x_G = z_G
        z = x.clone()
        z[:, self.local_idx.to(x.device)] = (x[:, self.local_idx.to(x.device)] - mu) * torch.exp(
            -ell
        )
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\tilde\pi(T(z)) + \sum_{i\in L}\ell_i(z_G)`, ``(N, d) -> (N,)``."""
        _, mu, ell = self._parts(z)
        loc_idx = self.local_idx.to(z.device)
        x = z.index_copy(1, loc_idx, mu + torch.exp(ell) * z[:, loc_idx])
        return self.target.log_prob(x) + ell.sum(-1)

    def __repr__(self) -> str:
        return f"NonCentred({self.target!r}, global_idx={self.global_idx.tolist()})"


def funnel_noncentred(target: Target, scale_index: int = 0) -> NonCentred:
    r"""Neal's funnel non-centred: global coordinate ``scale_index`` (:math:`x_0`), local ones
    :math:`x_i = e^{x_0/2} z_i` (variance :math:`e^{x_0}`: ``smcdiff_targets.Funnel``'s
    convention). On that funnel :math:`\tilde\pi_z` is exactly
    :math:`\mathcal N(z_0; 0, 3^2)\prod_{i\ge1}\mathcal N(z_i; 0, 1)`."""
    return NonCentred(target, [scale_index], lambda xg: 0.5 * xg)
