r"""Per-step collectors (as in ``particles``): record what you need without touching the engine.

A collector sees the state and the :class:`~smcdiff.engine.state.StepInfo` after every step
(``k = 0..K``) and returns its record from ``result()``; ``run_smc(..., collectors=[...])`` puts
each record in ``SMCRun.collected[collector.name]``. Collectors keep device tensors and copy to the
host once, in ``result()``, so they add no host-device sync inside a step.

Built in: :class:`Trace` (the engine's own per-step trace), :class:`Genealogy` (distinct
ancestors, optionally the whole ancestry), :class:`WeightedMoments` (weighted means of a
function of the particles) and :class:`WeightTails` (the largest log-weights of every step, all
that a per-step PSIS Pareto-:math:`\hat k` needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.engine.state import SMCState, StepInfo

__all__ = [
    "Collector",
    "Genealogy",
    "Trace",
    "WeightTails",
    "WeightedMoments",
    "degeneracy_collectors",
    "psis_tail_size",
]


class Collector:
    """Base class: ``name`` (the key in ``SMCRun.collected``), ``collect(state, info)``,
    ``result()``, and ``state_dict()`` / ``load_state_dict(state)`` for checkpoints and for
    rolling back to the last good step of a failed run.

    The default ``state_dict()`` is the collector's attributes with lists and dicts copied one
    level deep (tensors are shared, not copied: the engine takes one at every finiteness check,
    so it must not copy to the host). Override both when an attribute does not pickle (a
    lambda) or when ``collect`` changes a tensor in place.
    """

    name: str = "collector"

    def collect(self, state: SMCState, info: StepInfo) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {k: _shallow(v) for k, v in vars(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, _shallow(v))


def _shallow(value: Any) -> Any:
    """A list or dict copied one level deep (so later appends do not reach a snapshot)."""
    if isinstance(value, list):
        return list(value)
    return dict(value) if isinstance(value, dict) else value


class Trace(Collector):
    """The engine's per-step trace: ``t`` (if the model has times), ``ess``, ``log_z_increment``,
    ``resampled`` ``(K+1, G)``, ``nfe``, ``n_grad`` ``(K+1,)`` and every name in ``info.extra``
    (NaN at steps without it), as CPU tensors with a leading step dimension. Its rows keep
    neither the ancestors nor the invalid counts (:class:`Genealogy` keeps ancestors)."""

    name = "trace"

    def __init__(self) -> None:
        self.rows: list[StepInfo] = []

    def collect(self, state: SMCState, info: StepInfo) -> None:
        self.rows.append(info._replace(ancestors=None, invalid={}))

    def result(self, last: int | None = None) -> dict[str, torch.Tensor]:
        """The trace up to step ``last`` (default: every step collected)."""
        rows = self.rows if last is None else self.rows[: last + 1]
        trace: dict[str, torch.Tensor] = {}
        if rows and rows[0].t is not None:
            trace["t"] = torch.tensor([r.t for r in rows], dtype=torch.float64)
        for name in ("ess", "log_z_increment", "resampled"):
            trace[name] = torch.stack([getattr(r, name) for r in rows]).cpu()
        trace["nfe"] = torch.tensor([r.nfe for r in rows], dtype=torch.long)
        trace["n_grad"] = torch.tensor([r.n_grad for r in rows], dtype=torch.long)
        for name in dict.fromkeys(n for r in rows for n in r.extra):
            trace[name] = _column(rows, name)
        return trace


def _column(rows: list[StepInfo], name: str) -> torch.Tensor:
    """One ``extra`` entry over steps, NaN where a step did not report it; scalars broadcast."""
    vals = {j: torch.as_tensor(r.extra[name]) for j, r in enumerate(rows) if name in r.extra}
    shape = max((v.shape for v in vals.values()), key=lambda s: math.prod(s))
    col = torch.full((len(rows), *shape), float("nan"), dtype=torch.float64)
    by_device: dict[torch.device, list[int]] = {}
    for j, v in vals.items():
        by_device.setdefault(v.device, []).append(j)
    for device, js in by_device.items():  # one device-to-host copy per device, not per step
        block = torch.stack([vals[j].double().expand(shape) for j in js])
        col[js] = block if device.type == "cpu" else block.cpu()
    return col


class Genealogy(Collector):
    r"""Ancestry of the particles: after each step k, the number of distinct step-0 ancestors of
    the current particles per group, ``(K+1, G)`` — the classic picture of path degeneracy (it
    falls to 1 when every particle descends from one initial particle).

    ``keep_ancestors=True`` also keeps the ancestor indices of every step, ``(K+1, G, N)``
    (memory ``K G N`` longs), from which whole paths can be traced back.
    Result: ``{"distinct": (K+1, G), "ancestors": (K+1, G, N) or None, "eve": (G, N)}``; ``eve``
    (on the particles' device) holds each final particle's step-0 ancestor, what the
    genealogy-based standard errors of :mod:`smcdiff.diagnostics.genealogy` read.
    """

    name = "genealogy"

    def __init__(self, keep_ancestors: bool = False):
        self.keep = keep_ancestors
        self.origin: torch.Tensor | None = None
        self.distinct: list[torch.Tensor] = []
        self.ancestors: list[torch.Tensor] = []

    def collect(self, state: SMCState, info: StepInfo) -> None:
        anc = info.ancestors
        self.origin = anc.clone() if self.origin is None else self.origin.gather(1, anc)
        seen = torch.zeros(anc.shape, dtype=torch.bool, device=anc.device)
        seen.scatter_(1, self.origin, True)
        self.distinct.append(seen.sum(1))
        if self.keep:
            self.ancestors.append(anc)

    def result(self) -> dict[str, torch.Tensor | None]:
        anc = torch.stack(self.ancestors).cpu() if self.keep else None
        return {"distinct": torch.stack(self.distinct).cpu(), "ancestors": anc, "eve": self.origin}


class WeightedMoments(Collector):
    r"""Weighted means :math:`\sum_i W_k^i f(x_k^i)` per group after every step.

    ``fn`` maps the particles ``x`` ``(G*N, *event_shape)`` to ``(G*N,)`` or ``(G*N, m)``
    (default: the particles themselves, flattened); result ``(K+1, G, m)`` float64 on the CPU.
    ``name`` is the key in ``SMCRun.collected``.
    """

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str = "moments"
    ):
        self.fn = fn if fn is not None else (lambda x: x.flatten(1))
        self.name = name
        self.values: list[torch.Tensor] = []

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}  # not ``fn``: a lambda does not pickle

    def collect(self, state: SMCState, info: StepInfo) -> None:
        G, N = state.log_weights.shape
        f = self.fn(state.particles["x"]).double().reshape(G, N, -1)
        w = state.log_weights.exp().unsqueeze(-1)
        self.values.append((w * f).sum(1))

    def result(self) -> torch.Tensor:
        return torch.stack(self.values).cpu()


def psis_tail_size(n: int) -> int:
    r"""The number of largest weights PSIS fits for ``n`` draws:
    :math:`\lceil\min(n/5, 3\sqrt n)\rceil` (ArviZ 0.x; 1.x takes the floor, never more)."""
    return math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))


class WeightTails(Collector):
    r"""The ``m`` largest normalised log-weights of every group after every step, ``(K+1, G, m)``.

    The weights after step k are :math:`W_{k-1}^i G_k^i` normalised, the importance weights of
    step k's log-Z increment; PSIS fits a generalised Pareto tail to the largest
    :func:`psis_tail_size` of them and compares with the next one, so ``m`` = that size + 1
    (default) is all a per-step Pareto-:math:`\hat k` needs, whatever N: memory ``(K+1) G m``
    floats with :math:`m \le 3\sqrt N + 2`, one ``topk`` per step on the device, no sync.
    Result: ``{"top": (K+1, G, m) float64 (descending), "n_particles": N}``.
    """

    name = "weight_tails"

    def __init__(self, size: int | None = None):
        self.size = size
        self.top: list[torch.Tensor] = []
        self.n_particles = 0

    def collect(self, state: SMCState, info: StepInfo) -> None:
        N = state.log_weights.shape[-1]
        self.n_particles = N
        m = min(N, self.size if self.size is not None else psis_tail_size(N) + 1)
        self.top.append(torch.topk(state.log_weights, m, dim=-1).values)

    def result(self) -> dict[str, Any]:
        return {"top": torch.stack(self.top).cpu().double(), "n_particles": self.n_particles}


def degeneracy_collectors() -> list[Collector]:
    r"""The collectors every front door attaches: :class:`Genealogy` (distinct ancestors, one
    scatter per step) and :class:`WeightTails` (per-step Pareto-:math:`\hat k`); what
    :meth:`smcdiff.SMCResult.diagnose` reads."""
    return [Genealogy(), WeightTails()]
