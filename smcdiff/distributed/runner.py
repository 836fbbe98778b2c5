r"""One SMC run over the ranks of a ``torch.distributed`` process group.

Every rank runs the engine's own step (:class:`smcdiff.engine.smc.SMC`: the model's move and
potential, the corrector) on its :math:`n = N/R` particles; :class:`DistributedSMC` wraps that
step so that normalisation, the resampling decision and resampling are global:

* the state's log-weights are this rank's slice of the *globally* normalised weights, so the
  engine's local increment :math:`s_r = \log\sum_{i\in r} W_{k-1}^i G_k^i` is this rank's share
  of the global one; one all-gather per step (:func:`~smcdiff.distributed.weights.global_weights`)
  gives the global increment, ESS and normalisation, and the invalid-particle counts, so every
  rank's finiteness guard raises at the same step;
* the resampling decision is the policy's, on the global ESS (:class:`GlobalPolicy`);
* resampling is distributed systematic resampling with a balanced redistribution
  (:class:`~smcdiff.distributed.resample.DistributedSystematic`), or, with ``islands=True``,
  resampling within each rank and of whole islands
  (:class:`~smcdiff.distributed.islands.IslandResampler`).

:func:`run_smc_distributed` is :func:`smcdiff.run_smc` for such a run (the same loop,
:class:`~smcdiff.engine.smc.RunLoop`, with its checks, checkpoints and partial results).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from smcdiff.checks import check_int, check_n_particles, check_number
from smcdiff.distributed.comm import Comm
from smcdiff.distributed.islands import IslandResampler
from smcdiff.distributed.resample import DistributedSystematic
from smcdiff.distributed.weights import global_weights
from smcdiff.engine.checkpoint import Checkpoint, Checkpointer, as_checkpointer
from smcdiff.engine.collectors import Collector, Genealogy
from smcdiff.engine.guard import WEIGHTS_DEGENERATE
from smcdiff.engine.model import FeynmanKacModel
from smcdiff.engine.result import SMCRun
from smcdiff.engine.smc import SMC, Corrector, RunLoop
from smcdiff.engine.state import SMCState, StepInfo
from smcdiff.errors import SMCDiffError
from smcdiff.resampling import systematic
from smcdiff.resampling.policies import (
    ActiveWindow,
    Always,
    ESSBelow,
    EveryK,
    Never,
    ResamplingPolicy,
)
from smcdiff.seeding import child_generator

__all__ = ["DistributedSMC", "GlobalPolicy", "rank_path", "run_smc_distributed"]

WHERE = "run_smc_distributed"
_WEIGHT_FREE = (Always, Never, EveryK)


class GlobalPolicy:
    """A resampling policy decided on the global ESS: ``ESSBelow(f)`` resamples when the ESS
    of all N particles is below ``f N``; ``Always``, ``Never``, ``EveryK`` and ``ActiveWindow``
    read no weights and decide alike on every rank. Other policies cannot be made global from
    the ESS and are refused. ``ess`` ``(G,)`` is set after every step by :class:`DistributedSMC`."""

    def __init__(self, policy: ResamplingPolicy, n_total: int):
        _check_policy(policy)
        self.policy, self.n_total = policy, n_total
        self.ess: torch.Tensor | None = None

    def __call__(self, log_w: torch.Tensor, step: int, t: float | None) -> torch.Tensor:
        return _decide(self.policy, self.ess, self.n_total, log_w, step, t)

    def __repr__(self) -> str:
        return f"GlobalPolicy({self.policy!r})"


def _check_policy(policy: ResamplingPolicy) -> None:
    if isinstance(policy, ActiveWindow):
        return _check_policy(policy.inner)
    if not isinstance(policy, (*_WEIGHT_FREE, ESSBelow)):
        raise SMCDiffError(
            f"{WHERE}: the policy {policy!r} cannot be decided globally; distributed runs take "
            "Always, Never, EveryK, ESSBelow and ActiveWindow of these (or islands=True, "
            "where any policy decides within each island)"
        )


def _decide(policy, ess, n_total, log_w, step, t) -> torch.Tensor:
    if isinstance(policy, ESSBelow):
        return ess < policy.fraction * n_total
    if isinstance(policy, ActiveWindow):
        if t is not None and policy.t_lo <= t <= policy.t_hi:
            return _decide(policy.inner, ess, n_total, log_w, step, t)
    return policy(log_w, step, t)  # weight-free, or ActiveWindow outside its window


class DistributedSMC:
    """The engine's :class:`~smcdiff.engine.smc.SMC` step on this rank, normalised, decided and
    resampled globally (see the module docstring); the same ``init`` / ``step`` interface, so
    :class:`~smcdiff.engine.smc.RunLoop` runs it. States carry the globally normalised
    log-weights of this rank's particles and the global :math:`\\log\\hat Z`; infos the global
    ESS and increment, ancestors as global indices (rank ``r``'s particle ``i`` is ``rn + i``)
    and ``comm_bytes``, the bytes this rank sent during the step."""

    def __init__(
        self,
        model: FeynmanKacModel,
        comm: Comm,
        n_total: int,
        shared: torch.Generator,
        *,
        resampling: str | Callable = "systematic",
        policy: ResamplingPolicy | None = None,
        corrector: Corrector | None = None,
        init_corrector: Corrector | None = None,
        islands: bool = False,
        island_threshold: float = 0.5,
    ):
        policy = policy if policy is not None else Always()
        if islands:
            self.resampler = IslandResampler(comm, shared, resampling, island_threshold)
            self.policy = policy
        else:
            if resampling not in ("systematic", systematic):
                raise SMCDiffError(
                    f"{WHERE}: global resampling is distributed systematic resampling; got "
                    f"resampling={resampling!r} (islands=True takes any scheme within islands)"
                )
            self.resampler = DistributedSystematic(comm, shared, n_total)
            self.policy = GlobalPolicy(policy, n_total)
        self.inner = SMC(model, resampling=self.resampler, policy=self.policy,
                         corrector=corrector)  # fmt: skip
        self.model, self.comm, self.n_total = model, comm, n_total
        self.corrector, self.init_corrector = corrector, init_corrector

    def init(
        self, n_particles: int, generator: torch.Generator, n_groups: int = 1
    ) -> tuple[SMCState, StepInfo]:
        """Step 0 on ``n_particles`` local particles, normalised globally; then the resampling
        decision, resampling and ``init_corrector`` if there is one."""
        state, info = self.inner.init(n_particles, generator, n_groups)
        own = info.ancestors + self.comm.rank * n_particles
        share = info.log_z_increment - math.log(self.comm.world_size)
        state, info = self._globalise(state, info._replace(ancestors=own), share,
                                      torch.zeros_like(state.log_z))  # fmt: skip
        if self.init_corrector is not None:
            state, info = self._init_moves(state, info, generator)
        return state, info

    def step(self, state: SMCState, generator: torch.Generator) -> tuple[SMCState, StepInfo]:
        """The engine's step (its resampler hands the model weights normalised on this rank and
        keeps the rank's log-mass), then global normalisation."""
        new, info = self.inner.step(state, generator)  # the model sees rank-normalised weights
        share = info.log_z_increment + self.resampler.log_mass
        return self._globalise(new, info, share, state.log_z)

    def _globalise(
        self, state: SMCState, info: StepInfo, share: torch.Tensor, log_z: torch.Tensor
    ) -> tuple[SMCState, StepInfo]:
        names = sorted(info.invalid)
        counts = torch.stack([info.invalid[k].double() for k in names]).to(share.device)
        g = global_weights(self.comm, state.log_weights, share, counts)
        invalid = {k: g.extra[:, j].sum().long() for j, k in enumerate(names)}
        invalid[WEIGHTS_DEGENERATE] = (g.log_increment == -math.inf).sum()
        if isinstance(self.policy, GlobalPolicy):
            self.policy.ess = g.ess
        sent = torch.tensor(float(self.comm.reset_bytes()), dtype=torch.float64)
        info = info._replace(ess=g.ess, log_z_increment=g.log_increment, invalid=invalid,
                             extra={**info.extra, "comm_bytes": sent})  # fmt: skip
        state = state._replace(log_weights=g.log_weights, log_z=log_z + g.log_increment)
        return state, info

    def _init_moves(
        self, state: SMCState, info: StepInfo, generator: torch.Generator
    ) -> tuple[SMCState, StepInfo]:
        """As :meth:`SMC.init` with ``init_corrector``: decide, resample, move, refresh."""
        mask = self.policy(state.log_weights, 0, self.inner.time(0))
        particles, log_w, ancestors = self.resampler(
            state.particles, state.log_weights, mask, generator
        )
        log_w = log_w + self.resampler.log_mass.unsqueeze(-1)  # globally normalised again
        particles, more = self.init_corrector(0, particles, generator)
        particles, nfe = self.model.refresh(0, particles)
        extra = {**more, **info.extra}
        extra["comm_bytes"] = extra["comm_bytes"] + self.comm.reset_bytes()
        info = info._replace(resampled=mask, ancestors=ancestors, nfe=info.nfe + nfe,
                             extra=extra)  # fmt: skip
        return state._replace(particles=particles, log_weights=log_w), info

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the resampler's shared generator and counts, the cached ESS."""
        ess = self.policy.ess if isinstance(self.policy, GlobalPolicy) else None
        return {"resampler": self.resampler.state_dict(), "ess": ess}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resampler.load_state_dict(state["resampler"])
        if isinstance(self.policy, GlobalPolicy):
            self.policy.ess = state["ess"]


def rank_path(path: str | os.PathLike, rank: int, world_size: int) -> str:
    """``run.pt`` -> ``run.rank0of4.pt``: each rank's checkpoint file (kept if it already has
    this rank's suffix, as when :func:`smcdiff.resume` is given one rank's file)."""
    tag = f".rank{rank}of{world_size}"
    path = os.fspath(path)
    if tag in os.path.basename(path):
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}{tag}{ext}"


def rank_generators(
    comm: Comm, generator: torch.Generator | None
) -> tuple[torch.Generator, torch.Generator]:
    """``(shared, own)``: child generators of ``generator`` (which must be seeded alike on every
    rank): the first is shared by all ranks, then one per rank, rank ``r`` keeping the
    ``r``-th. ``None``: rank 0 draws a seed and every rank gets it (one all-gather)."""
    if generator is None:
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        generator = torch.Generator()
        generator.manual_seed(int(comm.all_gather(seed)[0, 0]))
    shared = child_generator(generator)
    own = [child_generator(generator) for _ in range(comm.world_size)][comm.rank]
    return shared, own


def run_smc_distributed(
    model: FeynmanKacModel,
    n_particles: int,
    *,
    n_groups: int = 1,
    resampling: str | Callable = "systematic",
    policy: ResamplingPolicy | None = None,
    corrector: Corrector | None = None,
    init_corrector: Corrector | None = None,
    generator: torch.Generator | None = None,
    check_every: int | None = None,
    progress: bool | Callable[[int, StepInfo], None] | None = None,
    collectors: Sequence[Collector] = (),
    checkpoint: str | os.PathLike | Checkpointer | None = None,
    checkpoint_every: int | None = None,
    start: Checkpoint | None = None,
    stateful: Mapping[str, Any] | None = None,
    islands: bool = False,
    island_threshold: float = 0.5,
    group: Any = None,
) -> SMCRun:
    r""":func:`smcdiff.run_smc` over the ranks of ``group`` (default: the initialised world).

    ``n_particles`` is the global N; each of the R ranks holds ``N // R`` (R must divide N).
    ``generator`` must be seeded alike on every rank (the front doors seed it from ``seed``):
    the ranks' generators are its children (:func:`rank_generators`). The result on each rank
    is an :class:`~smcdiff.engine.result.SMCRun` of its own particles with their globally
    normalised log-weights, the global ``log_z`` and a trace of global ESS and log-Z
    increments, plus ``comm_bytes`` per step; ``collected["distributed"]`` says how the run was
    split. ``islands``: island resampling (any ``resampling`` scheme within a rank, islands
    resampled when their ESS falls below ``island_threshold * R``); otherwise ``resampling``
    must be ``"systematic"`` and ``policy`` one that :class:`GlobalPolicy` takes. Only one
    group (``n_groups=1``). The distinct-ancestor count of :class:`Genealogy` is not tracked
    across ranks (such collectors are dropped). ``checkpoint``: each rank writes
    :func:`rank_path` of it (``start``: that rank's own checkpoint); ``checkpoint_every`` but
    not a wall-clock cadence, so that all ranks checkpoint the same steps. Models see weights
    normalised on their rank (the engine's contract); a model whose move needs global
    population statistics defines ``bind_distributed(run)`` and reads the rank's log-mass from
    ``run.resampler.log_mass`` (see :class:`~smcdiff.distributed.tempered.GlobalTemperedSMC`).
    """
    comm = Comm(group)
    R = comm.world_size
    n_total = check_n_particles(n_particles)
    if n_total % R:
        raise SMCDiffError(f"{WHERE}: n_particles={n_total} is not a multiple of the world "
                           f"size {R}; each rank needs the same number of particles")  # fmt: skip
    check_int("n_groups", n_groups, 1, maximum=1, where=WHERE)
    island_threshold = check_number("island_threshold", island_threshold, minimum=0.0,
                                    maximum=1.0, where=WHERE)  # fmt: skip
    shared, own = rank_generators(comm, generator)
    smc = DistributedSMC(model, comm, n_total, shared, resampling=resampling, policy=policy,
                         corrector=corrector, init_corrector=init_corrector, islands=islands,
                         island_threshold=island_threshold)  # fmt: skip
    bind = getattr(model, "bind_distributed", None)
    if callable(bind):  # a model with global population statistics (GlobalTemperedSMC)
        bind(smc)
    saver = _rank_saver(as_checkpointer(checkpoint, checkpoint_every, WHERE), comm)
    kept = [c for c in collectors if not isinstance(c, Genealogy)]
    show = progress if comm.rank == 0 or callable(progress) else False  # one bar, every hook
    stateful = {**(stateful or {}), "distributed": smc}
    loop = RunLoop(smc, own, kept, saver, check_every, show, stateful)
    n_local = n_total // R
    state = loop.begin(n_local, 1) if start is None else loop.restore(start, n_local, 1)
    run = loop.run(state, finished=start is not None and start.finished)
    run.collected["distributed"] = _summary(comm, smc, run, islands)
    return run


def _rank_saver(saver: Checkpointer | None, comm: Comm) -> Checkpointer | None:
    if saver is None:
        return None
    if saver.every_seconds is not None:
        raise SMCDiffError(f"{WHERE}: a wall-clock checkpoint cadence (every_seconds) would "
                           "checkpoint the ranks at different steps; use checkpoint_every")  # fmt: skip
    saver.path = type(saver.path)(rank_path(saver.path, comm.rank, comm.world_size))
    return saver


def _summary(comm: Comm, smc: DistributedSMC, run: SMCRun, islands: bool) -> dict[str, Any]:
    sent = run.trace.get("comm_bytes")
    info = {
        "rank": comm.rank,
        "world_size": comm.world_size,
        "backend": comm.backend,
        "n_particles_total": smc.n_total,
        "n_particles_local": run.n_particles,
        "mode": "islands" if islands else "global",
        "comm_bytes_total": float(sent.nansum()) if sent is not None else 0.0,
        "comm_bytes_per_step": float(sent.nanmean()) if sent is not None else 0.0,
    }
    if islands:
        info["n_island_resampled"] = smc.resampler.n_island_resampled
    return info
