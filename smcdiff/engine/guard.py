"""Finiteness bookkeeping without host-device syncs inside a step.

Each step records, per named quantity, how many particles were invalid, as a device tensor.
:meth:`FiniteGuard.raise_if_bad` syncs once (between steps, every ``check_every`` steps and at the
end) and raises :class:`NonFiniteError` for the first step and quantity that went wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from smcdiff.checks import check_device, check_shape
from smcdiff.engine.model import StepOutput
from smcdiff.errors import DegenerateWeightsError, NonFiniteError, SMCDiffError

__all__ = [
    "LOG_POTENTIAL",
    "NO_MASS",
    "OUT_OF_RANGE",
    "WEIGHTS_DEGENERATE",
    "FiniteGuard",
    "check_step_output",
    "step_where",
]

WEIGHTS_DEGENERATE = "weights"
LOG_POTENTIAL = "log-potential (incremental log-weight)"
NO_MASS = "is -inf for every particle"
"""The end of a quantity name (``"reward is -inf for every particle"``) whose mask flags the
particles of a model without weights (guidance) when its tilt is ``-inf`` for all of them: the
target has no mass where they are. Raised as a :class:`DegenerateWeightsError`."""
OUT_OF_RANGE = "(the run diverged)"
"""The end of a quantity name whose mask flags finite values far outside any plausible range
(e.g. guided particles that ran away); raised as a :class:`NonFiniteError` whose message is the
name itself, not "not finite"."""


class FiniteGuard:
    """Invalid-particle counts per step and quantity, kept on the device; :meth:`raise_if_bad`
    reads the rows recorded since the last check in one transfer and raises for the first bad
    one. ``n_total``: particles in all groups (for the message); ``n_steps``: the model's K;
    ``label(k)``: how messages name step k (default ``"step k/K"``)."""

    def __init__(self, n_total: int, n_steps: int, label: Callable[[int], str] | None = None):
        self.n_total = n_total
        self.n_steps = n_steps
        self.label = label if label is not None else (lambda k: f"step {k}/{n_steps}")
        self._names: list[str] = []  # order of first appearance = order of causality in a step
        self._rows: list[tuple[int, dict[str, torch.Tensor], float | None]] = []
        self._checked = 0

    def record(self, step: int, counts: dict[str, torch.Tensor], t: float | None = None) -> None:
        """``counts``: quantity name -> number of invalid particles (0-d device tensors)."""
        for name in counts:
            if name not in self._names:
                self._names.append(name)
        self._rows.append((step, counts, t))

    def raise_if_bad(self, partial: Callable[[], object] | None = None) -> None:
        rows = self._rows[self._checked :]
        if not rows:
            return
        table = torch.stack(
            [torch.stack([c.get(n, _zero(c)) for n in self._names]) for _, c, _ in rows]
        )
        bad = table.cpu()  # the one sync
        self._checked = len(self._rows)
        if not bool(bad.any()):
            return
        i, q = (int(v) for v in bad.nonzero()[0])
        (step, _, t), name, count = rows[i], self._names[q], int(bad[i, q])
        where = step_where(self.label, step, t)
        res = partial() if partial is not None else None
        if name.endswith(NO_MASS):
            raise DegenerateWeightsError(
                f"{name} at {where}: the tilted target has no mass where the particles are, and "
                "the method has no weights to say so (a weighted method, e.g. 'fk', would "
                "raise here too)",
                quantity=name,
                step=step,
                partial=res,
            )
        if name == WEIGHTS_DEGENERATE:
            raise DegenerateWeightsError(
                f"all weights are zero (every log-weight is -inf) in {count} group(s) at {where}: "
                "the reward / likelihood / potential is -inf for every particle",
                quantity=name,
                step=step,
                partial=res,
            )
        what = "" if name.endswith(OUT_OF_RANGE) else " is not finite (NaN or inf)"
        raise NonFiniteError(
            f"{name}{what} for {count} of {self.n_total} particles at {where}",
            quantity=name,
            step=step,
            partial=res,
        )


def _zero(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.zeros((), dtype=torch.long, device=next(iter(counts.values())).device)


def step_where(label: Callable[[int], str], step: int, t: float | None = None) -> str:
    """How messages name step ``step``: ``label(step)``, then the model's time if it has one."""
    return label(step) + (f" (t={t:.4g})" if t is not None else "")


def check_step_output(out: Any, n: int, method: str, where: str) -> None:
    """Raise an :class:`~smcdiff.errors.SMCDiffError` naming the step (``where``) unless
    ``out``, what ``model.<method>`` returned for ``n = G*N`` particles, is a ``StepOutput``
    whose ``state`` is a mapping with the particles ``"x"`` ``(n, ...)`` and whose
    ``log_potential`` is a real ``(n,)`` tensor on the particles' device. Types, shapes and
    devices only: no host-device sync (the values are the guard's)."""
    if not isinstance(out, StepOutput):
        raise SMCDiffError(
            f"{where}: model.{method} must return a StepOutput(state, log_potential), got "
            f"{type(out).__name__}"
        )
    state = out.state
    if not isinstance(state, Mapping) or "x" not in state:
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise SMCDiffError(f"{where}: model.{method}'s state has no 'x' (the particles); got {got}")
    x = state["x"]
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise SMCDiffError(f"{where}: state['x'] has shape {shape}, expected ({n}, ...)")
    check_shape("log_potential", out.log_potential, (n,), where=where)
    check_device("log_potential", out.log_potential, x.device, where=where)
