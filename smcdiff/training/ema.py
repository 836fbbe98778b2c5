r"""Exponential moving average of a network's parameters (Polyak averaging).

After every optimiser step, :math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta`
(``decay`` :math:`\beta`), starting from :math:`\bar\theta_0 = \theta_0`; buffers (e.g. the
Fourier frequencies of a time embedding) are copied, not averaged. The averaged copy is what
:func:`smcdiff.train_score` returns: it is a smoother estimate than the last iterate.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from smcdiff.checks import check_number

__all__ = ["EMA"]


class EMA:
    """``EMA(net, decay)``: ``average`` is a frozen copy of ``net`` in eval mode;
    :meth:`update` folds in the current parameters of ``net``; ``n_updates`` counts them."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = check_number("ema_decay", decay, minimum=0.0, maximum=1.0, strict_max=True,
                                  where="EMA")  # fmt: skip
        self.average = copy.deepcopy(net).eval()
        self.average.requires_grad_(False)
        self.n_updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        r""":math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta` for every parameter;
        buffers copied."""
        avg = list(self.average.parameters())
        new = [p.detach() for p in net.parameters()]
        if len(avg) != len(new):
            raise ValueError("EMA.update: the net has another number of parameters")
        torch._foreach_lerp_(avg, new, 1.0 - self.decay)
        for avg, b in zip(self.average.buffers(), net.buffers(), strict=True):
            avg.copy_(b)
        self.n_updates += 1

    def state_dict(self) -> dict:
        return {"average": self.average.state_dict(), "decay": self.decay,
                "n_updates": self.n_updates}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state["average"])
        self.decay, self.n_updates = float(state["decay"]), int(state["n_updates"])
