r"""Feynman–Kac steering potentials (Singhal et al., 2025), in log space, as strategy objects.

With the intermediate log-tilt :math:`\phi_k = \lambda_k\phi(\hat x_0(x_k))` at steps k = 0 (noise)
.. K (data) and :math:`\phi_K = \phi(x_K)` at the last step:

* :class:`Difference`: :math:`\log G_k = \phi_k - \phi_{k-1}` (:math:`\phi_{-1} = 0`);
* :class:`Max`: :math:`\log G_k = \max_{j \le k} \phi_j`;
* :class:`Sum`: :math:`\log G_k = \sum_{j \le k} \phi_j`;
* :class:`Final`: :math:`\log G_k = 0` for k < K (plain importance sampling with resampling off).

At the last step every kind uses :math:`\log G_K = \phi_K - \sum_{k<K} \log G_k` (``acc``, carried
per particle through resampling), so :math:`\prod_k G_k = e^{\phi(x_K)}` on every path and the
weighted particles target :math:`p(x)\,e^{\phi(x)}` exactly in the many-particle limit; for
:class:`Difference` this is the telescoping sum itself.

Each potential offers ``initial(phi) -> (log_g, run)`` at step 0 and
``step(phi, prev_phi, run, acc, last) -> (log_g, run)``, where ``run`` is the running max / sum
carried with each particle; all tensors ``(N,)`` float64.
"""

from __future__ import annotations

import torch

__all__ = ["POTENTIALS", "Difference", "Final", "Max", "Potential", "Sum", "sub_keep_neg_inf"]


def sub_keep_neg_inf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b``, but ``-inf`` where ``b = -inf``: a path already at weight zero stays there
    (instead of ``-inf - (-inf) = NaN`` or ``x - (-inf) = +inf``)."""
    return torch.where(b == float("-inf"), b, a - b)


class Potential:
    """Base class: ``intermediate`` says whether the potential reads :math:`\\phi` before the last
    step; ``per_state`` whether it is a function of the current state only (then MCMC correctors
    may move the particles between steps); ``path_state`` whether :meth:`step` reads ``run`` and
    ``acc`` (else the model carries neither: two fewer ``(N,)`` columns to update and gather)."""

    name = "potential"
    intermediate = True
    per_state = True
    path_state = True

    def initial(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_g, run)`` at step 0."""
        return phi, phi

    def step(
        self,
        phi: torch.Tensor,
        prev_phi: torch.Tensor,
        run: torch.Tensor,
        acc: torch.Tensor,
        last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_g, run)`` at step k; ``acc`` is the sum of this path's earlier ``log_g``."""
        if last:
            return sub_keep_neg_inf(phi, acc), run
        return self.intermediate_step(phi, prev_phi, run)

    def intermediate_step(
        self, phi: torch.Tensor, prev_phi: torch.Tensor, run: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_g, run)`` at a step k < K."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Difference(Potential):
    r""":math:`\log G_k = \phi_k - \phi_{k-1}` (telescopes to :math:`\phi_K`)."""

    name = "difference"
    path_state = False  # reads phi and the previous phi only

    def step(
        self, phi: torch.Tensor, prev_phi: torch.Tensor, run: torch.Tensor, acc: torch.Tensor,
        last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return sub_keep_neg_inf(phi, prev_phi), run


class Max(Potential):
    r""":math:`\log G_k = \max_{j\le k}\phi_j` (a path functional)."""

    name = "max"
    per_state = False

    def intermediate_step(
        self, phi: torch.Tensor, prev_phi: torch.Tensor, run: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = torch.maximum(run, phi)
        return run, run


class Sum(Potential):
    r""":math:`\log G_k = \sum_{j\le k}\phi_j` (a path functional)."""

    name = "sum"
    per_state = False

    def intermediate_step(
        self, phi: torch.Tensor, prev_phi: torch.Tensor, run: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = run + phi
        return run, run


class Final(Potential):
    r""":math:`\log G_k = 0` before the last step, :math:`\phi(x_K)` at it."""

    name = "final"
    intermediate = False

    def initial(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(phi), phi

    def intermediate_step(
        self, phi: torch.Tensor, prev_phi: torch.Tensor, run: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(phi), run


POTENTIALS: dict[str, type[Potential]] = {
    "difference": Difference,
    "max": Max,
    "sum": Sum,
    "final": Final,
}
"""Potential classes by name (the front doors' ``potential=`` strings)."""
