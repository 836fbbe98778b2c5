r"""A small UNet for images ``(N, C, H, W)`` (DDPM's layout, Ho et al. 2020, without attention).

Levels ``mults`` (channels ``base * m``): at each level ``n_res`` residual blocks :math:`h
\leftarrow h + C(\mathrm{SiLU}(\mathrm{GN}(C(\mathrm{SiLU}(\mathrm{GN}(h))) + W e(t))))` (:math:`C`
a 3×3 convolution), then a stride-2 convolution down (not after the last level); a middle of two
blocks; the way up mirrors it with the skips concatenated and nearest-neighbour upsampling. ``H``
and ``W`` must be divisible by :math:`2^{\text{len(mults)} - 1}`. Group norm is per sample, so rows
never interact. The defaults (``base=32``, ``mults=(1, 2)``, 0.65 M parameters) suit 8×8 digits;
``base=16`` has 0.16 M.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from smcdiff.checks import check_int, check_number
from smcdiff.errors import SMCDiffError
from smcdiff.nets.embedding import row_time
from smcdiff.nets.mlp import add_label, label_embedding, time_mlp

__all__ = ["UNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = _norm(c_in, groups), _norm(c_out, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """``net(x, t, y=None)``: ``x`` ``(N, C, H, W)``, ``t`` ``(N,)`` -> ``(N, C, H, W)``.

    Args:
        channels: image channels ``C``.
        base: channels of the first level; ``mults``: per-level multipliers.
        n_res: residual blocks per level (the way up has ``n_res + 1``).
        time_embedding, time_scale: as in :class:`~smcdiff.nets.MLP` (default sinusoidal).
        groups: group-norm groups (reduced to a divisor of each width).
        dropout: dropout inside the blocks (0: none).
        n_classes: class-conditional net, called with labels ``y`` (as :class:`~smcdiff.nets.MLP`).

    ``config`` holds the constructor arguments (what :func:`smcdiff.save_score` stores).
    """

    def __init__(
        self,
        channels: int = 1,
        base: int = 32,
        mults: Sequence[int] = (1, 2),
        n_res: int = 1,
        time_embedding: str = "sinusoidal",
        *,
        time_scale: float | None = None,
        groups: int = 8,
        dropout: float = 0.0,
        n_classes: int | None = None,
    ):
        super().__init__()
        where = "UNet"
        channels = check_int("channels", channels, 1, where=where)
        base = check_int("base", base, 1, where=where)
        mults = [check_int("mults entry", m, 1, where=where) for m in mults]
        if not mults:
            raise SMCDiffError(f"{where}: mults needs at least one level")
        n_res = check_int("n_res", n_res, 1, where=where)
        groups = check_int("groups", groups, 1, where=where)
        dropout = check_number("dropout", dropout, minimum=0.0, maximum=1.0, strict_max=True,
                               where=where)  # fmt: skip
        self.config = {
            "channels": channels, "base": base, "mults": list(mults), "n_res": n_res,
            "time_embedding": time_embedding, "time_scale": time_scale, "groups": groups,
            "dropout": dropout, "n_classes": n_classes,
        }  # fmt: skip
        self.factor = 2 ** (len(mults) - 1)
        emb = 4 * base
        self.time = time_mlp(emb, time_embedding, time_scale)
        self.labels = label_embedding(n_classes, emb, where)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.down, self.up, widths = self._build(base, mults, n_res, emb, groups, dropout)
        mid = base * mults[-1]
        self.mid = nn.ModuleList([_ResBlock(mid, mid, emb, groups, dropout) for _ in range(2)])
        self.out = nn.Sequential(
            _norm(base, groups), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1)
        )
        self.n_skips = len(widths)

    @staticmethod
    def _build(
        base: int, mults: list[int], n_res: int, emb: int, groups: int, dropout: float
    ) -> tuple[nn.ModuleList, nn.ModuleList, list[int]]:
        """Down and up paths; an entry is a :class:`_ResBlock` or a resampling convolution."""
        down, up, widths, ch = nn.ModuleList(), nn.ModuleList(), [base], base
        for i, m in enumerate(mults):
            for _ in range(n_res):
                down.append(_ResBlock(ch, base * m, emb, groups, dropout))
                ch = base * m
                widths.append(ch)
            if i < len(mults) - 1:
                down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                widths.append(ch)
        skips = list(widths)
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(n_res + 1):
                up.append(_ResBlock(ch + skips.pop(), base * m, emb, groups, dropout))
                ch = base * m
            if i > 0:
                up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                        nn.Conv2d(ch, ch, 3, padding=1)))  # fmt: skip
        return down, up, widths

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``(N, C, H, W)``, ``t`` ``(N,)`` (or a number) -> ``(N, C, H, W)``."""
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise SMCDiffError(
                f"UNet: x has shape {tuple(x.shape)}; expected (N, C, H, W) with H and W "
                f"divisible by {self.factor} (2^(len(mults) - 1))"
            )
        emb = add_label(self.time(row_time(t, x)), self.labels, y)
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)
