r"""The energy-defined target protocol: an unnormalised log density on :math:`\mathbb R^d`.

A :class:`Target` is any object with ``dim`` and a batched, differentiable
``log_prob(x)``: ``(N, *event_shape) -> (N,)``, :math:`\log\tilde\pi(x) = -U(x)` up to an
additive constant. ``event_shape`` (optional, default ``(dim,)``) is the shape of one particle:
``(d,)`` for vectors, ``(n_atoms, spatial_dim)`` for a particle system; ``dim`` is its product.
Classes satisfy the protocol structurally (no inheritance); :func:`as_target` wraps a plain
callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from smcdiff.checks import check_device, check_int, check_shape
from smcdiff.errors import SMCDiffError

__all__ = ["CountingTarget", "Target", "as_target", "grad_log_prob", "target_event_shape"]


@runtime_checkable
class Target(Protocol):
    """An unnormalised density: ``dim`` and ``log_prob(x)`` ``(N, *event_shape) -> (N,)``,
    differentiable. ``event_shape`` is optional (read it with :func:`target_event_shape`); when
    declared, ``dim`` must be its product."""

    dim: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


def target_event_shape(target: object) -> tuple[int, ...]:
    """The shape of one particle of ``target``: ``target.event_shape`` if declared, else
    ``(target.dim,)`` (the rule of :func:`smcdiff.scores.base.event_shape_of`, used here).
    Raises if a declared ``event_shape`` does not multiply to ``dim``."""
    from smcdiff.scores.base import event_shape_of  # here: smcdiff.scores imports this module

    return event_shape_of(target)


class _CallableTarget:
    """A plain callable ``fn(x) -> (N,)`` seen as a :class:`Target`; checks shapes on each call."""

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], event_shape: tuple[int, ...], name: str
    ):
        self.fn, self.event_shape, self.name = fn, event_shape, name
        self.dim = math.prod(event_shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, *event_shape) -> (N,)``; raises :class:`SMCDiffError` on a wrong input or output
        shape, or an output on another device than ``x``."""
        where = f"target {self.name!r}.log_prob"
        check_shape("x", x, (None, *self.event_shape), where=where)
        out = self.fn(x)
        check_shape("log_prob output", out, (x.shape[0],), where=where)
        check_device("log_prob output", out, x.device, where=where)
        return out

    def __repr__(self) -> str:
        if len(self.event_shape) == 1:
            return f"as_target({self.name!r}, dim={self.dim})"
        return f"as_target({self.name!r}, dim={self.event_shape})"


def as_target(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dim: int | Sequence[int],
    name: str | None = None,
) -> Target:
    """Wrap ``fn``: ``(N, *event_shape) -> (N,)`` unnormalised log density as a :class:`Target`.

    ``dim``: the event size ``d`` (particles ``(N, d)``) or the event shape, e.g. ``(4, 3)`` for
    four atoms in 3-D (particles ``(N, 4, 3)``; the target's ``dim`` is then 12). Nothing is
    evaluated here; every ``log_prob`` call checks the input and output shapes (shape metadata
    only: no host-device sync).
    """
    if not callable(fn):
        raise SMCDiffError(f"as_target: fn must be callable, got {type(fn).__name__}")
    shape = tuple(dim) if isinstance(dim, Sequence) and not isinstance(dim, str) else (dim,)
    if not shape:
        raise SMCDiffError("as_target: dim must be a positive int or a non-empty shape, got ()")
    shape = tuple(check_int("dim", s, 1, where="as_target") for s in shape)
    return _CallableTarget(fn, shape, name or getattr(fn, "__name__", "target"))


def grad_log_prob(target: Target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log_prob (N,), grad)``: :math:`\log\tilde\pi(x)` and its gradient in ``x``
    (``x`` and ``grad`` of shape ``(N, *event_shape)``).

    By autograd on a detached copy of ``x`` (the result carries no graph); works under
    ``torch.no_grad()``.
    """
    where = "grad_log_prob"
    check_shape("x", x, (None, *target_event_shape(target)), where=where)
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
    """``target`` with evaluation counters: ``n_evals`` (particles evaluated: ``x.numel() // dim``,
    so any leading batch shape counts) and ``n_grads`` (those evaluated with ``x.requires_grad``,
    i.e. for a gradient). Python ints from shapes: no host-device sync. Keeps the target's
    ``dim`` and ``event_shape``, and checks that ``log_prob`` returns one real value per
    particle (shape metadata only), before any caller's arithmetic can broadcast a wrong shape."""

    def __init__(self, target: Target):
        self.target, self.dim = target, int(target.dim)
        self.event_shape = target_event_shape(target)
        self.n_evals = self.n_grads = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // self.dim
        self.n_evals += n
        if x.requires_grad:
            self.n_grads += n
        out = self.target.log_prob(x)
        batch = tuple(x.shape[: x.dim() - len(self.event_shape)])
        check_shape("log_prob output", out, batch, where="target")
        return out

    def state_dict(self) -> dict[str, int]:
        """The counters, for checkpoints."""
        return {"n_evals": self.n_evals, "n_grads": self.n_grads}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n_evals, self.n_grads = state["n_evals"], state["n_grads"]
