r"""An E(n)-equivariant graph network (EGNN) for particle systems, mean-free output.

Satorras, Hoogeboom & Welling (2021), as EDM's and DEM's ``EGNN_dynamics`` use it for DW-4 and
LJ-13 (DEM: 3 layers x 128 for DW-4, 5 x 128 for LJ-13). ``net(x, t)`` with ``x`` ``(N, n, s)``
(or flat ``(N, n s)``) and ``t`` ``(N,)``. Node features start from the time embedding
(particles are identical, so nothing else tells them apart); every layer, over all ordered pairs
``i != j`` with :math:`d_{ij}^2 = \lVert x_i - x_j\rVert^2` and the input's :math:`a_{ij} =
\lVert x^0_i - x^0_j\rVert^2`:

.. math::
    m_{ij} = \phi_e(h_i, h_j, d_{ij}^2, a_{ij}),\qquad
    h_i \leftarrow h_i + \phi_h\Big(h_i, \frac{1}{n-1}\sum_{j\ne i} m_{ij}\Big),

.. math::
    x_i \leftarrow x_i + \frac{1}{n-1}\sum_{j\ne i}\frac{x_i - x_j}{d_{ij} + 1}\,
        r\tanh\phi_x(m_{ij})

(``coords_range`` :math:`r`; the normalised difference and the tanh keep updates bounded, as in
EDM). The output is :math:`P(x^L - x^0)`, :math:`P` removing the centre of mass. Exactly, to
float rounding: rotations and reflections :math:`x \mapsto xR^\top` map the output to
:math:`oR^\top`, translations leave it unchanged, permuting particles permutes it; it is
mean-free. So it is a score / eps / velocity network on the mean-free subspace
(:class:`~smcdiff.processes.MeanFree`). Rows never interact.
"""

from __future__ import annotations

import torch
from torch import nn

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.errors import SMCDiffError
from smcdiff.nets.embedding import row_time
from smcdiff.nets.mlp import ACTIVATIONS, time_mlp

__all__ = ["EGNN"]


class _Layer(nn.Module):
    """One E(n)-equivariant layer (module docstring)."""

    def __init__(self, hidden: int, act: type[nn.Module], coords_range: float, last: bool):
        super().__init__()
        self.edge = nn.Sequential(
            nn.Linear(2 * hidden + 2, hidden), act(), nn.Linear(hidden, hidden), act()
        )
        # the last layer's node features would feed nothing: it has no node update
        self.node = (
            None
            if last
            else nn.Sequential(nn.Linear(2 * hidden, hidden), act(), nn.Linear(hidden, hidden))
        )
        head = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(head.weight, gain=0.001)  # start near the identity map (EDM)
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), act(), head)
        self.coords_range = coords_range

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, a: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``(N, n, H)``, ``x`` ``(N, n, s)``, ``a`` ``(N, n, n, 1)`` input squared
        distances, ``mask`` ``(n, n, 1)`` (0 on the diagonal) -> new ``(h, x)``."""
        n = x.shape[1]
        diff = x[:, :, None, :] - x[:, None, :, :]  # (N, n, n, s): x_i - x_j
        d2 = diff.square().sum(-1, keepdim=True)
        hi = h[:, :, None, :].expand(-1, -1, n, -1)
        hj = h[:, None, :, :].expand(-1, n, -1, -1)
        m = self.edge(torch.cat([hi, hj, d2, a], -1)) * mask  # (N, n, n, H)
        if self.node is not None:
            h = h + self.node(torch.cat([h, m.sum(2) / (n - 1)], -1))
        # d_ij + 1 with d_ij = sqrt(d2 + 1e-30): differentiable at coincident particles
        unit = diff / (torch.sqrt(d2 + 1e-30) + 1.0)
        w = self.coords_range * torch.tanh(self.coord(m)) * mask
        return h, x + (unit * w).sum(2) / (n - 1)


class EGNN(nn.Module):
    """E(n)- and permutation-equivariant, mean-free particle network ``net(x, t)`` (module
    docstring).

    Args:
        n_particles, spatial_dim: the event shape ``(n, s)``; inputs ``(N, n, s)`` or
            ``(N, n s)`` (the output has the input's shape).
        hidden: node and message width.
        depth: number of equivariant layers.
        time_embedding, time_scale: the time features (as :class:`~smcdiff.nets.MLP`'s).
        activation: ``"silu"`` (default), ``"gelu"``, ``"relu"`` or ``"tanh"``.
        coords_range: :math:`r`, the bound on each pair's coordinate update.

    ``config`` holds the constructor arguments (what :func:`smcdiff.save_score` stores).
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_embedding: str = "fourier",
        *,
        time_scale: float | None = None,
        activation: str = "silu",
        coords_range: float = 15.0,
    ):
        super().__init__()
        where = "EGNN"
        n = check_int("n_particles", n_particles, 2, where=where)
        s = check_int("spatial_dim", spatial_dim, 1, where=where)
        hidden = check_int("hidden", hidden, 2, where=where)
        depth = check_int("depth", depth, 1, where=where)
        act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS, where=where)]
        check_number("coords_range", coords_range, minimum=0.0, strict_min=True, where=where)
        self.event_shape = (n, s)
        self.config = {
            "n_particles": n, "spatial_dim": s, "hidden": hidden, "depth": depth,
            "time_embedding": time_embedding, "time_scale": time_scale,
            "activation": activation, "coords_range": float(coords_range),
        }  # fmt: skip
        self.time = time_mlp(hidden, time_embedding, time_scale)
        self.layers = nn.ModuleList(
            _Layer(hidden, act, float(coords_range), k == depth - 1) for k in range(depth)
        )
        self.register_buffer("mask", (1.0 - torch.eye(n)).unsqueeze(-1), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(N, n, s)`` or ``(N, n s)``, ``t`` ``(N,)`` or a number -> the input's shape,
        mean-free over the particle axis."""
        n, s = self.event_shape
        if tuple(x.shape[1:]) not in ((n, s), (n * s,)):
            raise SMCDiffError(
                f"EGNN: x must be (N, {n}, {s}) or (N, {n * s}), got {tuple(x.shape)}"
            )
        x0 = x.reshape(x.shape[0], n, s)
        x0 = x0 - x0.mean(1, keepdim=True)  # translation invariance (exact, not learned)
        h = self.time(row_time(t, x)).unsqueeze(1).expand(-1, n, -1)
        a = (x0[:, :, None, :] - x0[:, None, :, :]).square().sum(-1, keepdim=True)
        mask = self.mask.to(x.dtype)
        pos = x0
        for layer in self.layers:
            h, pos = layer(h, pos, a, mask)
        out = pos - x0
        return (out - out.mean(1, keepdim=True)).reshape(x.shape)
