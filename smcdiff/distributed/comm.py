r"""The collectives a distributed SMC run uses, over an initialised ``torch.distributed`` group.

:class:`Comm` wraps the process group (gloo on CPU, NCCL on GPU) and counts the bytes this rank
sends, so runs and benchmarks can report communication per step. The counts are *logical*
payload bytes, independent of the collective's algorithm: an all-gather of ``b`` bytes counts
``b (R - 1)`` (each of the other ``R - 1`` ranks must receive them; a ring all-gather sends
exactly that), an all-to-all counts the rows sent to other ranks (rows a rank keeps cost
nothing). Particle rows travel as bytes (:func:`pack_rows` / :func:`unpack_rows`), so one
all-to-all moves every entry of a :data:`~smcdiff.engine.model.ParticleState` whatever its dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from smcdiff.engine.model import ParticleState
from smcdiff.errors import SMCDiffError

__all__ = ["Comm", "RowLayout", "pack_rows", "unpack_rows"]


class Comm:
    """This rank's view of the process group ``group`` (default: the world).

    ``rank``, ``world_size``; ``device``: where collective buffers live (the current CUDA
    device for NCCL, the CPU otherwise); ``bytes_sent``: logical bytes this rank has sent since
    :meth:`reset_bytes`. Every method is a collective: all ranks must call it in the same order.
    """

    def __init__(self, group: dist.ProcessGroup | None = None):
        if not (dist.is_available() and dist.is_initialized()):
            raise SMCDiffError(
                "distributed=True needs an initialised torch.distributed process group: launch "
                "with torchrun and call torch.distributed.init_process_group(backend) first "
                "(docs/distributed.md)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        cuda = self.backend == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else None
        self.bytes_sent = 0

    def reset_bytes(self) -> int:
        """The bytes sent since the last reset; starts a new count."""
        sent, self.bytes_sent = self.bytes_sent, 0
        return sent

    def buffer(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device the backend communicates from (NCCL: CUDA; gloo: as it is)."""
        return x if self.device is None else x.to(self.device)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, *x.shape)``: row ``r`` is rank ``r``'s ``x`` (same shape and dtype on every
        rank); on ``x``'s device. One collective of ``x.nbytes (R - 1)`` bytes."""
        src = self.buffer(x.contiguous())
        out = [torch.empty_like(src) for _ in range(self.world_size)]
        dist.all_gather(out, src, group=self.group)
        self.bytes_sent += x.numel() * x.element_size() * (self.world_size - 1)
        return torch.stack(out).to(x.device)

    def all_to_all_rows(
        self, rows: torch.Tensor, send: Sequence[int], recv: Sequence[int]
    ) -> torch.Tensor:
        """Send ``rows[off_q : off_q + send[q]]`` to rank ``q`` (``rows`` ``(sum(send), B)``,
        in destination order); returns ``(sum(recv), B)``, the rows from rank 0 first. Counts the
        rows sent to other ranks."""
        src = self.buffer(rows.contiguous())
        out = torch.empty((sum(recv), *rows.shape[1:]), dtype=rows.dtype, device=src.device)
        dist.all_to_all_single(out, src, list(recv), list(send), group=self.group)
        row_bytes = rows[0].numel() * rows.element_size() if rows.shape[0] else 0
        self.bytes_sent += row_bytes * (sum(send) - send[self.rank])
        return out.to(rows.device)

    def all_to_all_counts(self, send: torch.Tensor) -> torch.Tensor:
        """Exchange one int64 per rank pair: ``send`` ``(R,)`` -> ``(R,)``, entry ``p`` is what
        rank ``p`` sent to this rank."""
        src = self.buffer(send.to(torch.int64).contiguous())
        out = torch.empty_like(src)
        dist.all_to_all_single(out, src, group=self.group)
        self.bytes_sent += 8 * (self.world_size - 1)
        return out.to(send.device)

    def gather_rows(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        """``(R * n, ...)`` on rank ``dst`` (the ranks' ``x`` ``(n, ...)`` in rank order, equal
        shapes), ``None`` elsewhere."""
        src = self.buffer(x.contiguous())
        out = [torch.empty_like(src) for _ in range(self.world_size)] if self.rank == dst else None
        dist.gather(src, out, dst=dst, group=self.group)
        if self.rank != dst:
            self.bytes_sent += x.numel() * x.element_size()
            return None
        return torch.cat(out).to(x.device)


class RowLayout:
    """How the entries of a :data:`ParticleState` sit side by side in one byte row: per entry its
    name, dtype, per-row shape and byte columns ``[start, stop)``."""

    def __init__(self, particles: ParticleState):
        self.entries: list[tuple[str, torch.dtype, tuple[int, ...], int, int]] = []
        start = 0
        for name, v in particles.items():
            width = math.prod(v.shape[1:]) * v.element_size()
            self.entries.append((name, v.dtype, tuple(v.shape[1:]), start, start + width))
            start += width
        self.width = start


def pack_rows(particles: ParticleState, layout: RowLayout) -> torch.Tensor:
    """The particles as one ``(n, layout.width)`` uint8 tensor (a byte view of each entry)."""
    cols = [particles[name].contiguous().reshape(particles[name].shape[0], -1)
            for name, *_ in layout.entries]  # fmt: skip
    return torch.cat([c.view(torch.uint8) for c in cols], dim=1)


def unpack_rows(rows: torch.Tensor, layout: RowLayout) -> ParticleState:
    """Inverse of :func:`pack_rows`: ``(n, width)`` uint8 -> named tensors ``(n, *shape)``."""
    n = rows.shape[0]
    return {
        name: rows[:, a:b]
        .clone(memory_format=torch.contiguous_format)
        .view(dtype)
        .reshape(n, *shape)
        for name, dtype, shape, a, b in layout.entries
    }
