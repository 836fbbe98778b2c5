r"""Divergences :math:`\nabla\cdot y(x)` of fields built row by row from particles, by autograd.

Particles ``x`` have shape ``(N, *event_shape)``; a field ``y`` has the same shape and row ``n``
depends on ``x[n]`` only, so :math:`\nabla\cdot y` is the trace of each row's Jacobian over the
flattened event dimensions (``D`` = their product). Two estimators, chosen once per model:

* :class:`ExactDivergence`: :math:`\sum_j \partial y_j/\partial x_j`, ``D`` backward passes;
* :class:`HutchinsonDivergence`: :math:`\frac1P\sum_p \varepsilon_p^\top(\partial y/\partial x)
  \varepsilon_p` with ``P`` Rademacher probes, ``P`` passes, unbiased.

An estimator draws its probes once per evaluation point (:meth:`probes`) so that every field at
that point shares them, and says how many backward passes one divergence costs (:meth:`passes`).
"""

from __future__ import annotations

import torch

from smcdiff.checks import check_choice, check_int

__all__ = [
    "AUTO_EXACT_MAX_DIM",
    "DIVERGENCES",
    "DivergenceEstimator",
    "ExactDivergence",
    "HutchinsonDivergence",
    "divergence",
    "make_divergence",
]

AUTO_EXACT_MAX_DIM = 16
"""``divergence="auto"`` is exact up to this event size ``D`` and Hutchinson above it."""


def divergence(
    y: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None = None
) -> torch.Tensor:
    r""":math:`\nabla\cdot y(x)` per row, float64 ``(N,)``, for ``y`` ``(N, *event_shape)`` built
    from ``x`` (same shape) row by row (row n depends on ``x[n]`` only) with a graph.

    ``probes=None``: exact, :math:`\sum_j \partial y_j/\partial x_j` over the ``D`` flattened event
    coordinates, ``D`` backward passes; ``probes`` ``(P, N, *event_shape)`` (Rademacher):
    Hutchinson, :math:`\frac1P\sum_p \varepsilon_p^\top (\partial y/\partial x)\,\varepsilon_p`,
    ``P`` passes, unbiased.
    """
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if not y.requires_grad:  # y does not depend on x (e.g. the gradient of a linear reward)
        return out
    if probes is None:
        flat = y.flatten(1)
        for j in range(flat.shape[1]):
            (v,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True, allow_unused=True)
            if v is not None:
                out = out + v.flatten(1)[:, j].double()
        return out
    for e in probes:
        (v,) = torch.autograd.grad((y * e).sum(), x, retain_graph=True, allow_unused=True)
        if v is not None:
            out = out + (v * e).flatten(1).sum(-1).double()
    return out / probes.shape[0]


class DivergenceEstimator:
    """How divergences are computed at one evaluation point: ``probes(x, generator)`` (drawn once
    per point, ``None`` when not random), ``passes(size)`` (backward passes per divergence for an
    event of ``size`` coordinates) and ``__call__(y, x, probes)`` (:func:`divergence`)."""

    name = "divergence"

    def probes(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        return None

    def passes(self, size: int) -> int:
        raise NotImplementedError

    def __call__(
        self, y: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None
    ) -> torch.Tensor:
        return divergence(y, x, probes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExactDivergence(DivergenceEstimator):
    """The exact trace of the Jacobian: one backward pass per event coordinate."""

    name = "exact"

    def passes(self, size: int) -> int:
        return size


class HutchinsonDivergence(DivergenceEstimator):
    """Hutchinson's unbiased trace estimate with ``n_probes`` Rademacher probes per point."""

    name = "hutchinson"

    def __init__(self, n_probes: int = 1):
        self.n_probes = check_int("n_probes", n_probes, 1, where="HutchinsonDivergence")

    def probes(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(n_probes, *x.shape)`` entries ±1 in the dtype of ``x``."""
        shape = (self.n_probes, *x.shape)
        e = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return e.to(x.dtype).mul_(2).sub_(1)

    def passes(self, size: int) -> int:
        return self.n_probes

    def __repr__(self) -> str:
        return f"HutchinsonDivergence(n_probes={self.n_probes})"


DIVERGENCES = ("auto", "exact", "hutchinson")


def make_divergence(
    spec: str | DivergenceEstimator, n_probes: int, size: int, *, where: str
) -> DivergenceEstimator:
    """The estimator named by ``spec`` (``"auto"``: exact for ``size <= 16``, else Hutchinson
    with ``n_probes``), or ``spec`` itself when it is an estimator object."""
    n_probes = check_int("n_probes", n_probes, 1, where=where)
    if isinstance(spec, DivergenceEstimator):
        return spec
    spec = check_choice("divergence", spec, DIVERGENCES, where=where)
    if spec == "auto":
        spec = "exact" if size <= AUTO_EXACT_MAX_DIM else "hutchinson"
    return ExactDivergence() if spec == "exact" else HutchinsonDivergence(n_probes)
