r"""The energy-defined target protocol: an unnormalised log density on :math:`\mathbb R^d`.

A :class:`Target` is any object with ``dim`` and a batched, differentiable
``log_prob(x)``: ``(N, d) -> (N,)``, :math:`\log\tilde\pi(x) = -U(x)` up to an additive constant.
Classes satisfy it structurally (no inheritance); :func:`as_target` wraps a plain callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from smcdiff.checks import check_shape
from smcdiff.errors import SMCDiffError

__all__ = ["CountingTarget", "Target", "as_target", "grad_log_prob"]


@runtime_checkable
class Target(Protocol):
    """An unnormalised density: ``dim`` and ``log_prob(x)`` ``(N, dim) -> (N,)``, differentiable."""

    dim: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


class _CallableTarget:
    """A plain callable ``fn(x) -> (N,)`` seen as a :class:`Target`; checks shapes on each call."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], dim: int, name: str):
        self.fn, self.dim, self.name = fn, dim, name

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, dim) -> (N,)``; raises :class:`SMCDiffError` on a wrong input or output shape."""
        where = f"target {self.name!r}.log_prob"
        check_shape("x", x, (None, self.dim), where=where)
        out = self.fn(x)
        check_shape("log_prob output", out, (x.shape[0],), where=where)
        return out

    def __repr__(self) -> str:
        return f"as_target({self.name!r}, dim={self.dim})"


def as_target(
    fn: Callable[[torch.Tensor], torch.Tensor], dim: int, name: str | None = None
) -> Target:
    """Wrap ``fn``: ``(N, dim) -> (N,)`` unnormalised log density as a :class:`Target`.

    Nothing is evaluated here; every ``log_prob`` call checks the input and output shapes (shape
    metadata only: no host-device sync).
    """
    if not callable(fn):
        raise SMCDiffError(f"as_target: fn must be callable, got {type(fn).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise SMCDiffError(f"as_target: dim must be a positive int, got {dim!r}")
    return _CallableTarget(fn, dim, name or getattr(fn, "__name__", "target"))


def grad_log_prob(target: Target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log_prob (N,), grad (N, d))``: :math:`\log\tilde\pi(x)` and its gradient in ``x``.

    By autograd on a detached copy of ``x`` (the result carries no graph); works under
    ``torch.no_grad()``.
    """
    where = "grad_log_prob"
    check_shape("x", x, (None, target.dim), where=where)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lp = target.log_prob(xg)
        check_shape("log_prob output", lp, (x.shape[0],), where=where)
        if not lp.requires_grad:
            raise SMCDiffError(
                f"{where}: the target's log_prob output does not depend on x through autograd"
            )
        (grad,) = torch.autograd.grad(lp.sum(), xg)
    return lp.detach(), grad


class CountingTarget:
    """``target`` with evaluation counters: ``n_evals`` (rows of ``x`` evaluated) and ``n_grads``
    (rows evaluated with ``x.requires_grad``, i.e. for a gradient). Python ints from shapes: no
    host-device sync."""

    def __init__(self, target: Target):
        self.target, self.dim = target, int(target.dim)
        self.n_evals = self.n_grads = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // self.dim
        self.n_evals += n
        if x.requires_grad:
            self.n_grads += n
        return self.target.log_prob(x)
