"""Collect a distributed run's particles on one rank (what :meth:`smcdiff.SMCResult.gather`
calls)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from smcdiff.distributed.comm import Comm

if TYPE_CHECKING:
    from smcdiff.result import SMCResult

__all__ = ["gather_result"]


def gather_result(result: SMCResult, dst: int = 0, group: Any = None) -> SMCResult | None:
    r"""All N particles and their (globally normalised) log-weights on rank ``dst``, in rank
    order (rank ``r``'s particles are rows ``[rn, (r+1)n)``), with the run's ``log_z`` and
    trace; ``None`` on the other ranks. A collective: every rank calls it. A result that is not
    from a distributed run is returned as it is."""
    split = result.collected.get("distributed")
    if split is None:
        return result
    comm = Comm(group)
    x = comm.gather_rows(result.particles, dst)
    lw = comm.gather_rows(result.log_weights, dst)
    if comm.rank != dst:
        return None
    collected = {**result.collected, "distributed": {**split, "gathered_on": dst}}
    info = {**result.info, "n_particles": split["n_particles_total"]}
    return dataclasses.replace(result, particles=x, log_weights=lw, info=info,
                               collected=collected)  # fmt: skip
