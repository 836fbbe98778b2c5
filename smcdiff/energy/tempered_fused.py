r"""Adaptive tempered SMC with whole steps replayed as CUDA graphs, the host one step behind.

The engine's loop (:func:`smcdiff.run_smc`) launches every kernel of a step from Python: the
resampling decision and the resampling, the MCMC moves, the target evaluation, the temperature
search (:func:`~smcdiff.energy.tempered.next_temperature`) and the reweighting; at small N those
launches, not the arithmetic, set the wall time. :class:`FusedLoop` captures two CUDA graphs
and replays them: the **first** (:meth:`SMC.init <smcdiff.engine.SMC.init>` and step 1, which
has no moves: the particles are exact draws of the reference), and the **step** graph
(:meth:`SMC.step <smcdiff.engine.SMC.step>` for any :math:`k \ge 2`: every such step computes
the same function of the same tensors, with no Python branch on values and no host sync).

**The end without waiting for the host.** Each step also computes, on the device, two flags
(:func:`flagged_step`): the engine's stopping rule (:meth:`TemperedSMC.done
<smcdiff.energy.tempered.TemperedSMC.done>`: this step's moves ran at :math:`\lambda = 1` in
every group) and whether the *next* step will be the last (every group reached
:math:`\lambda = 1`: :meth:`~smcdiff.energy.tempered.TemperedSMC.next_is_last`). The flags go
to pinned host memory by a non-blocking copy; the host reads those of step k only after it has
queued step :math:`k + c` (``chunk`` :math:`= c`, default 1), so the GPU never waits for the
host while it reads. Because step k's second flag says whether step k+1 ends the run, with
``chunk = 1`` no step after the end is ever queued; with a larger ``chunk`` up to ``chunk - 1``
steps after the end are computed and dropped. A run's host work is then: one replay per step
(a few copies in and out of the graph's buffers), one event wait per step that overlaps the
next step, and the result.

The estimator, the trace and the stopping step are the engine's: on the CPU (no graph, the
run's generator) the numbers are the engine's bit for bit; on CUDA the graphs draw from their
own generators (seeded once per run from the run's generator), so a fused run is another draw
of the same estimator. A run whose capture fails runs its steps eagerly (one warning line);
fixed schedules (the step index selects the temperature) and checkpoints stay on the engine's
loop (:func:`smcdiff.run_smc`). Graphs are cached across runs like a jit cache, keyed by the
target, the options, the shapes and the resampling settings; the capturing model's
``compile_status`` (whether its moves ran compiled) is reported to the models that replay them.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.engine.progress import Progress
from smcdiff.engine.smc import SMC, RunLoop
from smcdiff.engine.state import SMCState, StepInfo

__all__ = ["FusedLoop", "clone_info", "flagged_step", "run_fused", "static_copy"]

_CACHE: dict[tuple, dict[str, Any]] = {}
_CACHE_SIZE = 8

Flagged = tuple[SMCState, StepInfo, torch.Tensor]


def flagged_step(smc: SMC, state: SMCState, generator: torch.Generator) -> Flagged:
    """:meth:`SMC.step` and its end flags: ``(state', info, flags)`` with ``flags`` a ``(2,)``
    device bool: ``model.done`` of ``state'`` (this step was the last one) and
    ``model.next_is_last(state')`` (the next step will be the last; ``False`` for a model
    without that method)."""
    new, info = smc.step(state, generator)
    end = smc.model.done(state.step + 1, new.particles)
    ahead = getattr(smc.model, "next_is_last", None)
    nxt = torch.zeros_like(end) if ahead is None else ahead(new.particles)
    return new, info, torch.stack([end, nxt])


def first_steps(
    smc: SMC, n_particles: int, n_groups: int, generator: torch.Generator
) -> tuple[SMCState, StepInfo, SMCState, StepInfo, torch.Tensor]:
    """Step 0 (:meth:`SMC.init`) and step 1 (:func:`flagged_step`) in one call:
    ``(state0, info0, state1, info1, flags1)``."""
    s0, i0 = smc.init(n_particles, generator, n_groups)
    return (s0, i0, *flagged_step(smc, s0, generator))


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


class HostFlags:
    """A step's ``(2,)`` device flags on their way to the host: a non-blocking copy to pinned
    memory and a CUDA event (on the CPU: the tensor itself). :meth:`read` waits for that
    event only, not for the steps queued after it."""

    def __init__(self, flags: torch.Tensor):
        self.event = None
        self.host = flags
        if flags.is_cuda:
            self.host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            self.host.copy_(flags, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def read(self) -> tuple[bool, bool]:
        if self.event is not None:
            self.event.synchronize()
        end, nxt = self.host.tolist()
        return bool(end), bool(nxt)


class FusedLoop(RunLoop):
    """The loop of :func:`smcdiff.run_smc` with steps run by :func:`first_steps` and
    :func:`flagged_step` (replayed CUDA graphs when ``graph_key`` is given, else eagerly with
    the run's generator), ``chunk`` steps queued ahead of the host's read of a step's flags.
    Records, finiteness checks, progress and partial results as in
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
        self.replay: Callable[[SMCState], Flagged] | None = None
        self.pending: deque[tuple[SMCState, StepInfo, HostFlags]] = deque()
        self.queued: SMCState | None = None  # the state of the last step queued
        self.last = smc.model.n_steps  # the last step to run (known early: next_is_last)
        self.seeds: list[int] = []  # the graphs' generator seeds of this run

    def begin(self, n_particles: int, n_groups: int) -> SMCState:
        """Steps 0 and 1 (one graph replay when graphed), step 0 recorded, step 1 queued (and
        step 2, so the step-0 check overlaps it)."""
        first = None
        if self.graph_key is not None:  # both graphs' seeds: one host read, before any launch
            gen = self.generator
            self.seeds = torch.randint(0, 2**62, (2,), generator=gen, device=gen.device).tolist()
            first = _graphed(self, ("first", n_particles, n_groups), None)
        if first is None:
            s0, i0, *one = first_steps(self.smc, n_particles, n_groups, self.generator)
        else:
            s0, i0, *one = first()
        self._setup(s0)
        self.record(s0, i0)
        if self.last >= 1:
            self._push(*one)
            self._fill()
        return s0

    def _push(self, state: SMCState, info: StepInfo, flags: torch.Tensor) -> None:
        self.pending.append((state, info, HostFlags(flags)))
        self.queued = state

    def _fill(self) -> None:
        """Queue steps until ``chunk`` are ahead of the oldest unread one (none past the last)."""
        while len(self.pending) <= self.chunk and self.queued.step < self.last:
            self._push(*self._one(self.queued))

    def _steps(self, state: SMCState, tick: Progress) -> SMCState:
        while self.pending:
            st, info, flags = self.pending.popleft()
            end, nxt = flags.read()  # waits for this step only: the next ones are queued
            if nxt:
                self.last = min(self.last, st.step + 1)
            finished = end or st.step >= self.last
            if finished:
                self.pending.clear()  # steps after the end (chunk > 1): dropped
            else:
                self._fill()
            state = st
            self.record(st, info)
            if finished or st.step % self.check_every == 0:
                self.guard.raise_if_bad()
                self.good = self.parts.snapshot(st, self.generator, finished)
            tick(st.step, info)
        return state

    def _one(self, state: SMCState) -> Flagged:
        if self.graph_key is not None and self.replay is None:
            self.replay = _graphed(self, ("step",), state)
        if self.replay is None:
            return flagged_step(self.smc, state, self.generator)
        new, info, flags = self.replay(state)  # the graph's step index is the captured one
        k = state.step + 1
        return new._replace(step=k), info._replace(step=k), flags


def _graphed(loop: FusedLoop, part: tuple, state: SMCState | None) -> Callable | None:
    """A replay function of :func:`first_steps` (``state`` ``None``; ``part`` names the sizes)
    or :func:`flagged_step` (from static copies of ``state``), captured as a CUDA graph cached
    under ``loop.graph_key + part``, whose generator is seeded by the next of ``loop.seeds``
    (drawn from the run's generator). ``None`` (with a warning, and ``loop.graph_key``
    cleared) if the capture fails."""
    smc, key = loop.smc, (*loop.graph_key, *part)
    entry = _CACHE.get(key)
    if entry is None:
        try:
            entry = _capture(smc, state, part)
        except Exception as err:  # a target that cannot be captured: the caller runs eagerly
            warnings.warn(
                f"tempered SMC: CUDA-graph capture of the whole step failed ({err!r}); "
                "running the steps eagerly (fused=False skips the attempt)",
                stacklevel=6,
            )
            loop.graph_key = None
            return None
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = entry
    entry["gen"].manual_seed(loop.seeds.pop(0))
    status = getattr(entry["smc"].model, "compile_status", None)
    if status is not None:  # the replayed kernels are the capturing model's moves
        smc.model.compile_status = status
    return partial_replay(entry)


def partial_replay(entry: dict[str, Any]) -> Callable:
    """The replay function of a cache entry: copy the inputs into the graph's static state
    (if it has one), replay, return copies of the outputs (the next replay overwrites them).
    Copies in and out are grouped: one multi-tensor launch per dtype (:func:`copy_many`)."""
    static, graph, out = entry["static"], entry["graph"], entry["out"]
    names = None if static is None else list(static.particles)

    def replay(*st: SMCState) -> Any:
        if static is not None:
            copy_many(_state_tensors(static, names), _state_tensors(st[0], names))
        graph.replay()
        flat: list[torch.Tensor] = []
        _flatten(out, flat)
        dense = [t.is_contiguous() for t in flat]
        copies = [torch.empty_like(t) if d else t.clone() for t, d in zip(flat, dense, strict=True)]
        pairs = [(c, t) for c, t, d in zip(copies, flat, dense, strict=True) if d]
        copy_many([c for c, _ in pairs], [t for _, t in pairs])
        return _unflatten(out, iter(copies))

    return replay


def copy_many(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``d.copy_(s)`` for every pair, as one ``torch._foreach_copy_`` per (dtype, device)
    group: a few launches instead of one per tensor."""
    groups: dict[tuple, tuple[list, list]] = {}
    for d, s in zip(dst, src, strict=True):
        ds, ss = groups.setdefault((d.dtype, s.dtype, d.device, s.device), ([], []))
        ds.append(d)
        ss.append(s)
    for ds, ss in groups.values():
        torch._foreach_copy_(ds, ss)


def _state_tensors(state: SMCState, names: list[str]) -> list[torch.Tensor]:
    return [*(state.particles[n] for n in names), state.log_weights, state.log_z]


def _flatten(v: Any, out: list[torch.Tensor]) -> None:
    """The tensors of ``v`` (tensors, dicts and (named) tuples of them) in a fixed order."""
    if isinstance(v, torch.Tensor):
        out.append(v)
    elif isinstance(v, dict):
        for x in v.values():
            _flatten(x, out)
    elif isinstance(v, tuple):
        for x in v:
            _flatten(x, out)


def _unflatten(v: Any, it: Any) -> Any:
    """``v`` with its tensors replaced, in :func:`_flatten`'s order, by those of ``it``."""
    if isinstance(v, torch.Tensor):
        return next(it)
    if isinstance(v, dict):
        return {k: _unflatten(x, it) for k, x in v.items()}
    if isinstance(v, tuple):
        items = [_unflatten(x, it) for x in v]
        return type(v)(*items) if hasattr(v, "_fields") else tuple(items)
    return v


def _device(smc: SMC, state: SMCState | None) -> torch.device:
    """The device of the graph: the state's, or (first steps) the model's."""
    return state.log_z.device if state is not None else torch.device(smc.model.device)


def captured_call(fn: Callable[[torch.Generator], Any], gen: torch.Generator) -> Any:
    """``fn(gen)``: the call a graph captures (a seam: the CPU tests replay it)."""
    return fn(gen)


def _capture(smc: SMC, state: SMCState | None, part: tuple) -> dict[str, Any]:
    """Capture :func:`first_steps` (``state`` ``None``, sizes in ``part``) or
    :func:`flagged_step` on static copies of ``state``, with a generator of its own (warmed
    up once on a side stream: allocator, autograd, compilation, lazy initialisation)."""
    device = _device(smc, state)
    if state is None:
        _, n, g = part
        static = None

        def fn(gen: torch.Generator) -> Any:
            return first_steps(smc, n, g, gen)
    else:
        static = static_copy(state)

        def fn(gen: torch.Generator) -> Any:
            return flagged_step(smc, static, gen)

    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn(gen)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        out = captured_call(fn, gen)
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
    :class:`~smcdiff.engine.result.SMCRun`. ``graph_key``: the cache key of the CUDA graphs
    (``None``: eager steps, e.g. on the CPU); ``chunk``: steps queued ahead of the host's read
    of a step's end flags."""
    loop = FusedLoop(smc, generator, check_every, progress, chunk, graph_key)
    return loop.run(loop.begin(n_particles, n_groups))
