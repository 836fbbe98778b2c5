r"""A residual MLP with a time embedding, for vectors and small particle systems.

``net(x, t)`` with ``x`` ``(N, *event_shape)`` (flattened inside) and ``t`` ``(N,)``: the time goes
through a :class:`~smcdiff.nets.embedding.TimeEmbedding` and a two-layer MLP, and is added inside
every residual block :math:`h \leftarrow h + W_2\,\mathrm{SiLU}(W_1\,\mathrm{SiLU}(\mathrm{LN}(h)) +
e(t))`. Rows never interact (layer norm is per row), so per-row gradients of a sum are the rows'
gradients (what :class:`~smcdiff.scores.energy_network.EnergyNetwork` relies on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from smcdiff.checks import check_choice, check_int
from smcdiff.errors import SMCDiffError
from smcdiff.nets.embedding import TimeEmbedding, row_time

__all__ = ["ACTIVATIONS", "MLP", "OUTPUTS", "add_label", "label_embedding", "time_mlp"]

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
OUTPUTS = ("same", "scalar")


def time_mlp(width: int, kind: str, scale: float | None) -> nn.Sequential:
    """Embedding of the time: a :class:`TimeEmbedding` and a 2-layer MLP to ``width`` features."""
    features = 2 * max(1, width // 2)
    return nn.Sequential(
        TimeEmbedding(features, kind, scale),
        nn.Linear(features, width),
        nn.SiLU(),
        nn.Linear(width, width),
    )


def label_embedding(n_classes: int | None, width: int, where: str) -> nn.Embedding | None:
    """A class embedding with ``n_classes + 1`` rows (the last one is "no label", for
    classifier-free guidance), or ``None`` for an unconditional net."""
    if n_classes is None:
        return None
    return nn.Embedding(check_int("n_classes", n_classes, 1, where=where) + 1, width)


def add_label(
    emb: torch.Tensor, table: nn.Embedding | None, y: torch.Tensor | None
) -> torch.Tensor:
    """``emb`` ``(N, width)`` plus the embedding of labels ``y`` ``(N,)`` (``None``: the "no
    label" row); an unconditional net (``table=None``) refuses labels."""
    if table is None:
        if y is not None:
            raise SMCDiffError("this network was built without n_classes; it takes no labels y")
        return emb
    if y is None:
        y = torch.full((emb.shape[0],), table.num_embeddings - 1, device=emb.device)
    return emb + table(torch.as_tensor(y, device=emb.device).long().reshape(-1))


class _Block(nn.Module):
    def __init__(self, width: int, act: type[nn.Module]):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1, self.lin2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.act = act()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.lin1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.lin2(self.act(z))


class MLP(nn.Module):
    """Residual MLP ``net(x, t, y=None)`` (module docstring).

    Args:
        dim: the event size, or the event shape (e.g. ``(n_atoms, 3)``); inputs are
            ``(N, *event_shape)``.
        hidden: width of the residual stream and of the time embedding.
        depth: number of residual blocks.
        time_embedding: ``"fourier"`` or ``"sinusoidal"``; ``time_scale`` its frequency scale.
        activation: ``"silu"``, ``"gelu"``, ``"relu"`` or ``"tanh"``.
        output: ``"same"`` (an ``(N, *event_shape)`` output: eps, x0, v, score, velocity) or
            ``"scalar"`` (``(N,)``: an energy, for :class:`~smcdiff.EnergyNetwork`; use a smooth
            ``activation`` then, since its score is a gradient).
        n_classes: build a class-conditional net, called with labels ``y`` ``(N,)`` in
            ``[0, n_classes)`` (``y=None``: unconditional, the extra "no label" row).

    ``config`` holds the constructor arguments (what :func:`smcdiff.save_score` stores).
    """

    def __init__(
        self,
        dim: int | Sequence[int],
        hidden: int = 128,
        depth: int = 3,
        time_embedding: str = "fourier",
        *,
        time_scale: float | None = None,
        activation: str = "silu",
        output: str = "same",
        n_classes: int | None = None,
    ):
        super().__init__()
        where = "MLP"
        shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.event_shape = tuple(check_int("dim", d, 1, where=where) for d in shape)
        size = math.prod(self.event_shape)
        hidden = check_int("hidden", hidden, 2, where=where)
        depth = check_int("depth", depth, 0, where=where)
        act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS, where=where)]
        self.output = check_choice("output", output, OUTPUTS, where=where)
        self.config = {
            "dim": dim if isinstance(dim, int) else list(self.event_shape),
            "hidden": hidden, "depth": depth, "time_embedding": time_embedding,
            "time_scale": time_scale, "activation": activation, "output": output,
            "n_classes": n_classes,
        }  # fmt: skip
        self.time = time_mlp(hidden, time_embedding, time_scale)
        self.labels = label_embedding(n_classes, hidden, where)
        self.inp = nn.Linear(size, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, act) for _ in range(depth))
        width_out = 1 if output == "scalar" else size
        self.out = nn.Sequential(nn.LayerNorm(hidden), act(), nn.Linear(hidden, width_out))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``(N, *event_shape)``, ``t`` ``(N,)`` (or a number) -> ``(N, *event_shape)``
        (``output="same"``) or ``(N,)`` (``output="scalar"``)."""
        n = x.shape[0]
        emb = add_label(self.time(row_time(t, x)), self.labels, y)
        h = self.inp(x.reshape(n, -1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        return out.reshape(n) if self.output == "scalar" else out.reshape(x.shape)
