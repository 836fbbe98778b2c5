r"""Distributed systematic resampling with a balanced redistribution (Varsi, Maskell & Spirakis
2021): every rank ends with its share :math:`n = N/R` of the :math:`N` offspring.

With global normalised weights :math:`W_i` spread over the ranks, rank :math:`r` holding
particles :math:`i \in [rn, (r+1)n)`, one all-gather of the rank sums :math:`S_r = \sum_{i\in r}
W_i` gives the offsets :math:`O_r = \sum_{q<r} S_q` and the total :math:`T = \sum_q S_q`; with
one shared uniform :math:`V` (every rank draws it from an identically seeded generator), the
cumulative offspring counts are those of single-process systematic resampling,

.. math::  C_i = \big\lceil N (O_r + \textstyle\sum_{j \le i,\, j\in r} W_j)/T - V\big\rceil,

so offspring slot :math:`s \in [C_{i-1}, C_i)` is a copy of particle :math:`i` and the
ancestors are, slot for slot, those of :func:`smcdiff.resampling.systematic` on all :math:`N`
weights with the same :math:`V` (exactly, whenever the two cumulative sums round alike). Slot
:math:`s` lives on rank :math:`\lfloor s/n\rfloor`: each rank sends every distinct particle
once per destination with its number of copies there (an all-to-all of the counts, then one
all-to-all of byte rows), and the receiver expands them in slot order. Communication: the
all-gather of R sums, R counts, and the rows that change rank — a particle with many copies
crosses each rank boundary once.
"""

from __future__ import annotations

import math

import torch

from smcdiff.distributed.comm import Comm, RowLayout, pack_rows, unpack_rows
from smcdiff.engine.model import ParticleState
from smcdiff.engine.resampler import Resampler
from smcdiff.errors import SMCDiffError
from smcdiff.resampling.gather import gather_rows

__all__ = ["DistributedSystematic", "rank_normalise", "redistribute", "systematic_slots"]


def rank_normalise(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(local, log_mass)``: globally normalised ``log_w`` ``(G, n)`` split into log-weights
    normalised on this rank and the rank's log-mass :math:`m_r` ``(G,)``. A rank without mass
    (:math:`m_r = -\infty`) gets uniform local weights (its particles keep global weight 0)."""
    mass = torch.logsumexp(log_w, dim=-1, keepdim=True)
    uniform = torch.full_like(log_w, -math.log(log_w.shape[-1]))
    return torch.where(mass == -math.inf, uniform, log_w - mass), mass[:, 0]


def systematic_slots(
    comm: Comm, log_w: torch.Tensor, u: torch.Tensor, n_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Offspring slots of this rank's particles: ``(first, end)``, each ``(n,)`` int64, particle
    ``i`` fills global slots ``[first_i, end_i)``.

    ``log_w`` ``(n,)``: this rank's globally normalised log-weights; ``u``: the shared uniform
    :math:`V` (0-d float64); ``n_total``: N. One all-gather of one float64. The rank's first
    and last slots come from the gathered offsets alone, so the ranks' ranges tile
    :math:`[0, N)` exactly whatever the rounding of the local sums."""
    w = torch.exp(log_w.double())
    cum = torch.cumsum(w, 0)
    sums = comm.all_gather(cum[-1:])[:, 0]  # (R,)
    ends = torch.cumsum(sums, 0)
    total = ends[-1].clamp_min(torch.finfo(torch.float64).tiny)
    starts = ends - sums
    r = comm.rank

    def bound(c: torch.Tensor) -> torch.Tensor:
        return torch.ceil(n_total * (c / total) - u).long().clamp_(0, n_total)

    lo, hi = bound(starts[r]), bound(ends[r])
    end = torch.minimum(torch.maximum(bound(starts[r] + cum), lo), hi)
    end[-1] = hi
    first = torch.cat([lo.reshape(1), end[:-1]])
    return first, end


def redistribute(
    comm: Comm, particles: ParticleState, first: torch.Tensor, end: torch.Tensor, n_local: int
) -> tuple[ParticleState, torch.Tensor]:
    r"""Move the copies to the ranks that own their slots (rank ``q`` owns ``[qn, (q+1)n)``).

    ``first`` / ``end`` ``(n,)``: the slots of each local particle (:func:`systematic_slots`).
    Returns this rank's ``n`` offspring in slot order and their ancestors' global indices
    ``(n,)`` (rank ``r``'s particle ``i`` is ``rn + i``). Copies that stay on this rank are one
    row gather (:func:`~smcdiff.resampling.gather.gather_rows`); the others cross in two
    collectives: the counts (one int64 per rank pair), then the rows, each distinct (particle,
    destination) once with its copy count and global index appended as bytes. Slot order is
    rows from ranks below ``r``, then this rank's, then those from ranks above (global particle
    order)."""
    R, n, r = comm.world_size, n_local, comm.rank
    q0 = torch.arange(R, device=first.device) * n
    copies = (torch.minimum(end[:, None], q0 + n) - torch.maximum(first[:, None], q0)).clamp_(min=0)
    own_ids = torch.arange(n, device=first.device).repeat_interleave(copies[:, r])
    own = {k: gather_rows(v, own_ids) for k, v in particles.items()}
    own_ids = own_ids + r * n
    if R == 1:
        return _check_count(comm, own, own_ids, n)
    copies[:, r] = 0  # the rest crosses ranks
    pairs = (copies.T > 0).nonzero()  # (P, 2): (destination, particle), by destination
    dest, src = pairs[:, 0], pairs[:, 1]
    send = torch.bincount(dest, minlength=R)
    recv = comm.all_to_all_counts(send)
    layout = RowLayout(particles)
    meta = torch.stack([copies[src, dest], src + r * n], dim=1)  # (P, 2) int64
    rows = torch.cat([pack_rows(particles, layout)[src], meta.view(torch.uint8)], dim=1)
    recv_list = recv.tolist()
    got = comm.all_to_all_rows(rows, send.tolist(), recv_list)
    meta = got[:, layout.width :].clone(memory_format=torch.contiguous_format).view(torch.int64)
    times = meta[:, 0]
    came = {k: v.repeat_interleave(times, dim=0) for k, v in unpack_rows(got, layout).items()}
    ids = meta[:, 1].repeat_interleave(times)
    below = int(times[: sum(recv_list[:r])].sum())  # offspring from ranks < r come first
    new = {k: torch.cat([v[:below], own[k], v[below:]]) for k, v in came.items()}
    return _check_count(comm, new, torch.cat([ids[:below], own_ids, ids[below:]]), n)


def _check_count(
    comm: Comm, new: ParticleState, ancestors: torch.Tensor, n: int
) -> tuple[ParticleState, torch.Tensor]:
    if ancestors.shape[0] != n:
        raise SMCDiffError(
            f"distributed resampling: rank {comm.rank} received {ancestors.shape[0]} offspring, "
            f"expected {n} (the ranks disagree on the weights or the uniform)"
        )
    return new, ancestors


class DistributedSystematic(Resampler):
    r"""The engine's :class:`~smcdiff.engine.resampler.Resampler` for a system spread over the
    ranks: systematic resampling of all N particles (:func:`systematic_slots`), then the
    balanced redistribution (:func:`redistribute`).

    ``log_w`` ``(1, n)`` come in globally normalised; what goes to the engine's step (and the
    model's move) is normalised *on this rank*, as every model expects, and ``log_mass``
    ``(1,)`` keeps this rank's share :math:`m_r` (``-log R`` after resampling), which
    :class:`~smcdiff.distributed.runner.DistributedSMC` adds back to the step's local
    increment. ``shared``: a generator seeded identically on every rank (it draws :math:`V`).
    The uniform is drawn at every step, resampling or not (as the engine's
    :class:`~smcdiff.engine.resampler.LocalResampler` does), so a one-process run whose scheme
    draws from a copy of ``shared`` resamples with the same uniforms. The mask (one group) is
    the same on every rank; reading it is one host-device sync per step, which the all-to-all's
    sizes need anyway. Without resampling the ancestors are the
    particles' own global indices. ``state_dict`` / ``load_state_dict`` keep the shared
    generator for checkpoints."""

    name = "systematic"

    def __init__(self, comm: Comm, shared: torch.Generator, n_total: int):
        self.comm, self.shared, self.n_total = comm, shared, n_total
        self.n_resampled = 0
        self.log_mass: torch.Tensor | None = None

    def __call__(
        self,
        particles: ParticleState,
        log_w: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        n = log_w.shape[1]
        own = torch.arange(n, device=log_w.device) + self.comm.rank * n
        u = torch.rand(
            (), dtype=torch.float64, generator=self.shared, device=self.shared.device
        ).to(log_w.device)  # every step, as the engine's
        if not bool(mask[0]):  # the same decision on every rank
            local, self.log_mass = rank_normalise(log_w)
            return particles, local, own.unsqueeze(0)
        first, end = systematic_slots(self.comm, log_w[0], u, self.n_total)
        new, ancestors = redistribute(self.comm, particles, first, end, n)
        self.n_resampled += 1
        self.log_mass = torch.full_like(log_w[:, 0], -math.log(self.comm.world_size))
        return new, torch.full_like(log_w, -math.log(n)), ancestors.unsqueeze(0)

    def state_dict(self) -> dict:
        return {"shared": self.shared.get_state(), "n_resampled": self.n_resampled}

    def load_state_dict(self, state: dict) -> None:
        self.shared.set_state(state["shared"].cpu())
        self.n_resampled = int(state["n_resampled"])

    def __repr__(self) -> str:
        return f"DistributedSystematic(world_size={self.comm.world_size})"
