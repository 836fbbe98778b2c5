r"""Island resampling (the double bootstrap of Del Moral, Moulines, Olsson & Vergé 2017): each
rank is an island that resamples its own particles with no communication; the islands carry
weights :math:`e^{m_r}` (their share of the global mass) and are themselves resampled —
whole islands copied — when the ESS of the island weights,
:math:`1/\sum_r e^{2m_r}`, falls below ``threshold * R``.

Within-island resampling draws :math:`n` offspring of island :math:`r` from its normalised
weights :math:`W_i/e^{m_r}`, so the particles' global weights become :math:`e^{m_r}/n` (the island
keeps its mass); island resampling draws the islands' ancestors :math:`a_r` by systematic
resampling of :math:`(e^{m_r})_r` with a uniform shared by every rank, copies island
:math:`a_r` onto rank :math:`r` (one all-to-all of whole islands) and resets the island
weights to :math:`1/R`. Both levels keep the weighted system unbiased, so the global
:math:`\hat Z` and the weighted particles target what the single-system run targets; the
variance is larger than with global resampling (the price of communicating only when the
islands' weights degenerate).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from smcdiff.distributed.comm import Comm, RowLayout, pack_rows, unpack_rows
from smcdiff.distributed.resample import rank_normalise
from smcdiff.distributed.weights import island_ess
from smcdiff.engine.model import ParticleState
from smcdiff.engine.resampler import Resampler
from smcdiff.resampling import get_scheme, systematic

__all__ = ["IslandResampler", "copy_islands"]


def copy_islands(
    comm: Comm, particles: ParticleState, extra: torch.Tensor, islands: list[int]
) -> tuple[ParticleState, torch.Tensor]:
    """Rank ``r`` receives island ``islands[r]``'s particles and its ``extra`` float64 columns
    ``(n, m)`` (one all-to-all; a rank that keeps its own island sends nothing over the wire)."""
    n, R, me = extra.shape[0], comm.world_size, comm.rank
    send = [n if islands[q] == me else 0 for q in range(R)]
    recv = [n if p == islands[me] else 0 for p in range(R)]
    layout = RowLayout(particles)
    rows = torch.cat([pack_rows(particles, layout), extra.double().view(torch.uint8)], 1)
    rows = rows.repeat(sum(1 for q in range(R) if islands[q] == me), 1)
    got = comm.all_to_all_rows(rows, send, recv)
    return unpack_rows(got, layout), got[:, layout.width :].clone(
        memory_format=torch.contiguous_format
    ).view(torch.float64)


class IslandResampler(Resampler):
    r"""Within-island resampling with ``scheme`` where the (per-rank) policy's mask is set, then
    island resampling when the islands' ESS is below ``threshold * R``.

    ``log_w`` ``(1, n)`` are globally normalised; the island's log-mass is their logsumexp.
    ``shared``: a generator seeded identically on every rank (island ancestors). Costs one
    all-gather of one float64 per step (the island masses) and a host sync to read the
    island decision; ``n_island_resampled`` counts the island resamplings."""

    def __init__(
        self, comm: Comm, shared: torch.Generator, scheme: str | Callable, threshold: float
    ):
        self.comm, self.shared, self.threshold = comm, shared, threshold
        self.scheme = get_scheme(scheme)
        self.name = scheme if isinstance(scheme, str) else getattr(scheme, "__name__", "custom")
        self.n_island_resampled = 0
        self.log_mass: torch.Tensor | None = None

    def __call__(
        self,
        particles: ParticleState,
        log_w: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        """``log_w`` ``(1, n)`` globally normalised in; out: weights normalised on the island,
        with the island's log-mass in ``log_mass`` ``(1,)`` (as
        :class:`~smcdiff.distributed.resample.DistributedSystematic`)."""
        G, n = log_w.shape
        local, mass = rank_normalise(log_w)
        anc = torch.where(mask.unsqueeze(1), self.scheme(local, generator=generator),
                          torch.arange(n, device=log_w.device).expand(G, n))  # fmt: skip
        particles = {k: v.index_select(0, anc[0]) for k, v in particles.items()}
        local = torch.where(mask.unsqueeze(1), -math.log(n), local)
        log_mass = self.comm.all_gather(mass)  # (R, 1)
        ids = anc[0] + self.comm.rank * n
        self.log_mass = mass
        if bool(island_ess(log_mass)[0] >= self.threshold * self.comm.world_size):
            return particles, local, ids.unsqueeze(0)
        islands = systematic(log_mass.T.to(self.shared.device), generator=self.shared)[0].tolist()
        particles, cols = copy_islands(
            self.comm, particles, torch.stack([ids.double(), local[0]], 1), islands
        )
        self.log_mass = torch.full_like(mass, -math.log(self.comm.world_size))
        self.n_island_resampled += 1
        return particles, cols[:, 1].unsqueeze(0), cols[:, 0].long().unsqueeze(0)

    def state_dict(self) -> dict:
        return {"shared": self.shared.get_state(), "n_island_resampled": self.n_island_resampled}

    def load_state_dict(self, state: dict) -> None:
        self.shared.set_state(state["shared"].cpu())
        self.n_island_resampled = int(state["n_island_resampled"])

    def __repr__(self) -> str:
        return f"IslandResampler({self.name!r}, threshold={self.threshold})"
