r"""Adaptive tempered SMC with each whole step replayed as one CUDA graph.

The engine's loop (:func:`smcdiff.run_smc`) launches every kernel of a step from Python: the
resampling decision and the resampling, the MCMC moves, the target evaluation, the temperature
search (:func:`~smcdiff.energy.tempered.next_temperature`) and the reweighting; at small N those
launches, not the arithmetic, set the wall time. Every step :math:`k \ge 2` of an adaptive run
computes the same function of the same tensors (no Python branch on values, no host sync), so
:class:`FusedLoop` captures :meth:`SMC.step <smcdiff.engine.SMC.step>` once and replays it.

**The end without a sync per step.** Each replay also computes, on the device, the engine's
stopping rule (:meth:`TemperedSMC.done <smcdiff.energy.tempered.TemperedSMC.done>`: every
group's moves ran at :math:`\lambda = 1`) before and after the step. ``chunk`` steps are queued
between host checks (each step's outputs copied out of the graph); the host reads the
``chunk`` flag pairs in one transfer, keeps the steps up to the last one and drops those after
it (their outputs are discarded; the state returned is the last step's). The estimator, the
trace and the stopping step are the engine's: on the CPU (no graph, the run's generator) the
numbers are the engine's bit for bit; on CUDA the graph draws from its own generator (seeded
once per run from the run's generator), so a fused run is another draw of the same estimator.

Steps 0 and 1 run eagerly (at step 1 the particles are exact draws of the reference and no
moves run); a run whose capture fails runs its steps eagerly (one warning line); fixed
schedules (the step index selects the temperature) and checkpoints stay on the engine's loop
(:func:`smcdiff.run_smc`).
Graphs are cached across runs like a jit cache, keyed by the target, the options, the shapes and
the resampling settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.engine.progress import Progress
from smcdiff.engine.smc import SMC, RunLoop
from smcdiff.engine.state import SMCState, StepInfo
from smcdiff.seeding import child_generator

__all__ = ["FusedLoop", "clone_info", "flagged_step", "run_fused", "static_copy"]

_CACHE: dict[tuple, dict[str, Any]] = {}
_CACHE_SIZE = 8


def flagged_step(
    smc: SMC, state: SMCState, generator: torch.Generator
) -> tuple[SMCState, StepInfo, torch.Tensor]:
    """:meth:`SMC.step` and its end flags: ``(state', info, flags)`` with ``flags`` a ``(2,)``
    device bool, ``model.done`` of the incoming ``state`` (the run had ended: the step is to be
    dropped) and of ``state'`` (this step was the last one)."""
    stop = smc.model.done(state.step, state.particles)
    new, info = smc.step(state, generator)
    return new, info, torch.stack([stop, smc.model.done(state.step + 1, new.particles)])


def clone_info(info: StepInfo) -> StepInfo:
    """A copy of a replayed step's record (the graph overwrites its outputs)."""
    return info._replace(
        ess=info.ess.clone(),
        log_z_increment=info.log_z_increment.clone(),
        resampled=info.resampled.clone(),
        ancestors=info.ancestors.clone(),
        extra={n: v.clone() for n, v in info.extra.items()},
        invalid={n: v.clone() for n, v in info.invalid.items()},
    )


class FusedLoop(RunLoop):
    """The loop of :func:`smcdiff.run_smc` with steps ``k >= 2`` run ``chunk`` at a time by
    :func:`flagged_step` (replayed CUDA graphs when ``graph_key`` is given, else eagerly with
    the run's generator). Records, finiteness checks, progress and partial results as in
    :class:`~smcdiff.engine.smc.RunLoop`."""

    def __init__(
        self,
        smc: SMC,
        generator: torch.Generator,
        check_every: int | None,
        progress: bool | Callable[[int, StepInfo], None] | None,
        chunk: int = 1,
        graph_key: tuple | None = None,
    ):
        super().__init__(smc, generator, (), None, check_every, progress)
        self.chunk, self.graph_key = chunk, graph_key
        self.replay: Callable[[SMCState], tuple] | None = None

    def _steps(self, state: SMCState, tick: Progress) -> SMCState:
        K = self.smc.model.n_steps
        finished = False
        while not finished and state.step < K:
            if state.step == 0:  # no moves at step 1: the engine's step, eagerly
                state, info = self.smc.step(state, self.generator)
                runs = [(state, info)]
                stop = self.smc.model.done(1, state.particles)
                finished = state.step == K or bool(stop)
            else:
                runs, finished = self._chunk(state, min(self.chunk, K - state.step))
                state = runs[-1][0]
                finished = finished or state.step == K
            before = runs[0][0].step - 1 if runs else state.step
            for st, info in runs:
                self.record(st, info)
                tick(st.step, info)
            if finished or state.step // self.check_every > before // self.check_every:
                self.guard.raise_if_bad()
                self.good = self.parts.snapshot(state, self.generator, finished)
        return state

    def _chunk(self, state: SMCState, n: int) -> tuple[list[tuple[SMCState, StepInfo]], bool]:
        """``n`` steps from ``state`` (not final); the real ones ``[(state, info)]`` (at
        least one) and whether the run ended. One host read of the ``n`` steps' flags."""
        outs, stops = [], []
        for _ in range(n):
            k = state.step + 1
            new, info, stop = self._one(state)
            new = new._replace(step=k)
            outs.append((new, info._replace(step=k)))
            stops.append(stop)
            state = new
        flags = torch.stack(stops).cpu().tolist()  # the chunk's one sync: [[stop, end], ...]
        real = sum(1 for stop, _ in flags if not stop)  # no-op steps come last
        return outs[:real], real < n or bool(flags[real - 1][1])

    def _one(self, state: SMCState) -> tuple[SMCState, StepInfo, torch.Tensor]:
        if self.graph_key is not None and self.replay is None:
            self.replay = _graphed(self.smc, state, self.generator, self.graph_key)
            self.graph_key = None if self.replay is None else self.graph_key
        if self.replay is not None:
            return self.replay(state)
        return flagged_step(self.smc, state, self.generator)


def _graphed(
    smc: SMC, state: SMCState, generator: torch.Generator, key: tuple
) -> Callable[[SMCState], tuple[SMCState, StepInfo, torch.Tensor]] | None:
    """A replay function of :func:`flagged_step` captured as a CUDA graph (cached under ``key``)
    whose generator is seeded from one draw of ``generator``; ``None`` (with a warning) if the
    capture fails."""
    entry = _CACHE.get(key)
    if entry is None:
        try:
            entry = _capture(smc, state)
        except Exception as err:  # a target that cannot be captured: the caller runs eagerly
            warnings.warn(
                f"tempered SMC: CUDA-graph capture of the whole step failed ({err!r}); "
                "running the steps eagerly (fused=False skips the attempt)",
                stacklevel=5,
            )
            return None
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = entry
    entry["gen"].manual_seed(child_generator(generator, state.log_z.device).initial_seed())
    static, graph = entry["static"], entry["graph"]

    def replay(st: SMCState) -> tuple[SMCState, StepInfo, torch.Tensor]:
        for name, v in st.particles.items():
            static.particles[name].copy_(v)
        static.log_weights.copy_(st.log_weights)
        static.log_z.copy_(st.log_z)
        graph.replay()
        new, info, stop = entry["out"]
        new = new._replace(
            particles={n: v.clone() for n, v in new.particles.items()},
            log_weights=new.log_weights.clone(),
            log_z=new.log_z.clone(),
        )
        return new, clone_info(info), stop.clone()

    return replay


def _capture(smc: SMC, state: SMCState) -> dict[str, Any]:
    """Capture :func:`flagged_step` on static copies of ``state`` with a generator of its own
    (warmed up once on a side stream: allocator, autograd, lazy initialisation)."""
    device = state.log_z.device
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    static = static_copy(state)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        flagged_step(smc, static, gen)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        out = flagged_step(smc, static, gen)
    return {"graph": graph, "static": static, "out": out, "gen": gen, "smc": smc}


def static_copy(state: SMCState) -> SMCState:
    """``state`` with its tensors cloned: the static buffers a captured graph reads and writes."""
    return state._replace(
        particles={n: v.clone() for n, v in state.particles.items()},
        log_weights=state.log_weights.clone(),
        log_z=state.log_z.clone(),
    )


def run_fused(
    smc: SMC,
    n_particles: int,
    n_groups: int,
    generator: torch.Generator,
    *,
    check_every: int | None = None,
    progress: bool | Callable[[int, StepInfo], None] | None = None,
    chunk: int = 1,
    graph_key: tuple | None = None,
) -> Any:
    """Run ``smc`` (a tempered model) with :class:`FusedLoop`: returns the engine's
    :class:`~smcdiff.engine.result.SMCRun`. ``graph_key``: the cache key of the step's CUDA
    graph (``None``: eager steps, e.g. on the CPU)."""
    loop = FusedLoop(smc, generator, check_every, progress, chunk, graph_key)
    return loop.run(loop.begin(n_particles, n_groups))
