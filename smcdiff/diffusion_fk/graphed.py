r"""FK-steering steps replayed from CUDA graphs: small N without the launch cost.

At N = 10⁴ one FK step (the score call, the proposal, the tilt on Tweedie's :math:`\hat x_0`,
the potentials and weights, the ESS and the resampling) is a few hundred kernels of a few
microseconds each, launched one by one from Python: the launches, not the arithmetic, set the
wall time. :class:`GraphedLoop` is the loop of :func:`smcdiff.run_smc` with each step
:math:`k \ge 1` (:meth:`SMC.step <smcdiff.engine.SMC.step>`) captured as a CUDA graph the first
time it runs and replayed from then on: one launch per step.

**One graph per step, cached across runs.** A :class:`~smcdiff.diffusion_fk.DiffusionFK` step
reads its time, its kernel's coefficients and its tilt strength as Python numbers of step k, so
step k's graph is step k's alone; the K graphs are kept (like a jit cache) under
``(graph_key, k)`` with the model that captured them, and replayed by every later run with the
same key. The key must identify the model and its settings (e.g. ``id(fk)`` of a model kept
alive by the caller): a replay runs the capturing model's kernels on the new run's particles.
A run's first use of a graph costs a warm-up and a capture (about three steps' work). The graphs
draw from one CUDA generator of their own, re-seeded before each replay of step k with
:math:`s + k`, :math:`s` drawn once per run from the run's generator: a graphed run is
reproducible by seed (the run that captures equals the later ones) but another draw than an
eager run.

**Memory.** The steps of one key read and write one set of state buffers (the graph copies its
new state into them), and every graph allocates from one shared memory pool: the K graphs hold
one step's temporaries and their small per-step records, not K copies of the state (N = 10⁷ in
d = 16 fits). Safe because a replay's outputs are copied out before the next replay.
:func:`release` frees a key's graphs; :func:`cached_steps` counts them.

**When it is used.** On CUDA with a ``graph_key``; steps that cannot be captured (a host sync in
the model: adaptive tilts, MALA moves that decide on the host) make the capture fail: the run
warns once (:class:`GraphCaptureWarning`) and continues eagerly. Without a key (e.g. on the CPU)
every step runs eagerly with the run's generator: the numbers of :func:`~smcdiff.run_smc` bit
for bit. A step is capture-safe when it passes tests/diffusion_fk/test_capturable.py's host-sync
detector.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_n_particles
from smcdiff.engine.model import FeynmanKacModel
from smcdiff.engine.progress import Progress
from smcdiff.engine.result import SMCRun
from smcdiff.engine.smc import SMC, RunLoop
from smcdiff.engine.state import SMCState, StepInfo
from smcdiff.seeding import child_generator

__all__ = [
    "GraphCaptureWarning",
    "GraphedLoop",
    "cached_steps",
    "release",
    "run_graphed",
    "step_in_place",
]

_CACHE: dict[tuple, dict[str, Any]] = {}
_CACHE_SIZE = 512  # step graphs (K per run setting)


class GraphCaptureWarning(UserWarning):
    """A step could not be captured as a CUDA graph: the run continues with eager steps."""


class GraphedLoop(RunLoop):
    """The loop of :func:`smcdiff.run_smc` (records, finiteness checks, progress, partial
    results) with step ``k >= 1`` replayed from its CUDA graph when ``graph_key`` is given
    (module docstring), else run eagerly with the run's generator. ``replayed`` counts the
    steps replayed from graphs; ``capture_error`` says why a capture failed (else ``None``)."""

    def __init__(
        self,
        smc: SMC,
        generator: torch.Generator,
        check_every: int | None,
        progress: bool | Callable[[int, StepInfo], None] | None,
        graph_key: tuple | None = None,
    ):
        super().__init__(smc, generator, (), None, check_every, progress)
        self.graph_key = graph_key
        self.seed: int | None = None
        self.replayed, self.capture_error = 0, None
        self.in_buffers = False  # whether the current state lives in the step graphs' buffers

    def _steps(self, state: SMCState, tick: Progress) -> SMCState:
        model, K = self.smc.model, self.smc.model.n_steps
        for k in range(state.step + 1, K + 1):
            state, info = self.one_step(state)
            self.record(state, info)
            stop = model.done(k, state.particles) if k < K else None
            finished = k == K or (stop is not None and bool(stop))
            if finished or k % self.check_every == 0:
                self.guard.raise_if_bad()
                if self.in_buffers:  # kept past the next replay: not the graphs' buffers
                    state, self.in_buffers = owned(state), False
                self.good = self.parts.snapshot(state, self.generator, finished)
            tick(k, info)
            if finished:
                break
        return state

    def one_step(self, state: SMCState) -> tuple[SMCState, StepInfo]:
        """:meth:`SMC.step` from ``state``: replayed from the step's graph (captured on first
        use) or, without a key or after a failed capture, eagerly."""
        self.in_buffers = False
        if self.graph_key is None:
            return self.smc.step(state, self.generator)
        key = (*self.graph_key, state.step + 1)
        entry = _CACHE.get(key)
        if entry is None:
            state = owned(state)  # the capture's warm-up writes the buffers it may live in
            try:
                entry = capture_step(self.smc, state, _shared_buffers(self.graph_key, state))
            except Exception as err:  # a step that cannot be captured: the rest run eagerly
                self.capture_error = f"step {state.step + 1}: {err!r}"
                warnings.warn(
                    f"FK steps: CUDA-graph capture of step {state.step + 1} failed ({err!r}); "
                    "running the steps eagerly",
                    GraphCaptureWarning,
                    stacklevel=4,
                )
                self.graph_key = None
                return self.smc.step(state, self.generator)
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = entry
        if self.seed is None:  # once per run, from the run's generator
            self.seed = child_generator(self.generator, state.log_z.device).initial_seed()
        entry["gen"].manual_seed((self.seed + state.step + 1) % 2**63)  # step k's own stream
        self.replayed, self.in_buffers = self.replayed + 1, True
        return replay(entry, state, own=False)  # the next step reads it in place; _steps copies


def _device_object(kind: str, device: torch.device, make: Callable[[], Any]) -> Any:
    """One object per device kept in the cache (the step graphs' generator, memory pool)."""
    key = (kind, str(device))
    if key not in _CACHE:
        _CACHE[key] = {"value": make()}
    return _CACHE[key]["value"]


def _generator(device: torch.device) -> torch.Generator:
    """The CUDA generator every step graph draws from (one per device)."""
    return _device_object("generator", device, lambda: torch.Generator(device=device))


def _layout(state: SMCState) -> tuple:
    parts = sorted((n, tuple(v.shape), v.dtype) for n, v in state.particles.items())
    return (tuple(parts), tuple(state.log_weights.shape), tuple(state.log_z.shape))


def _shared_buffers(graph_key: tuple, state: SMCState) -> dict[str, Any] | None:
    """The state buffers the steps of ``graph_key`` share (made from ``state`` on first use)
    with their ``mirror`` (name -> weak reference to the copy last made of that buffer, still
    equal to it: the next replay need not copy it back), or ``None`` if ``state`` has another
    layout (names, shapes, dtypes): then the step gets buffers of its own."""
    from smcdiff.energy.tempered_fused import static_copy  # here: no import cycle at load

    key = ("static", *graph_key)
    if key not in _CACHE:
        _CACHE[key] = {"static": static_copy(state), "layout": _layout(state), "mirror": {}}
    entry = _CACHE[key]
    return entry if entry["layout"] == _layout(state) else None


def step_in_place(smc: SMC, static: SMCState, gen: torch.Generator) -> tuple[list, dict, Any]:
    """The body of a step graph: :meth:`SMC.step` from ``static``, its new state copied into
    ``static``'s buffers (those of the same name, shape and dtype; the others are returned).
    Returns the new state's names, the entries kept apart, and the step's record."""
    new, info = smc.step(static, gen)
    ptrs = {v.data_ptr(): n for n, v in static.particles.items()}
    apart, copies = {}, []
    for name, v in new.particles.items():
        dst = static.particles.get(name)
        if dst is None or dst.shape != v.shape or dst.dtype != v.dtype:
            apart[name] = v
            continue
        alias = ptrs.get(v.data_ptr(), name) != name  # another input's buffer: copy it first
        copies.append((dst, v.clone() if alias else v))
    for dst, v in copies:
        if dst.data_ptr() != v.data_ptr():
            dst.copy_(v)
    static.log_weights.copy_(new.log_weights)
    static.log_z.copy_(new.log_z)
    return list(new.particles), apart, info


def capture_step(smc: SMC, state: SMCState, shared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Capture :meth:`SMC.step` writing its new state into the buffers of ``shared``
    (:func:`_shared_buffers`; default: copies of ``state`` of its own), warmed up once on a side
    stream (allocator, lazy initialisation), drawing from the device's step-graph generator and
    allocating from its shared pool."""
    from smcdiff.energy.tempered_fused import static_copy  # here: no import cycle at load

    device = state.log_z.device
    gen = _generator(device)
    pool = _device_object("pool", device, torch.cuda.graph_pool_handle)
    if shared is None:
        shared = {"static": static_copy(state), "mirror": {}}
    static, mirror = shared["static"]._replace(step=state.step), shared["mirror"]
    mirror.clear()  # the warm-up writes into the buffers
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        step_in_place(smc, static, gen)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph, pool=pool):
        names, apart, info = step_in_place(smc, static, gen)
    return {"graph": graph, "static": static, "names": names, "apart": apart, "info": info,
            "gen": gen, "model": smc.model, "mirror": mirror}  # fmt: skip


def owned(state: SMCState) -> SMCState:
    """``state`` with copies of its tensors (a state :func:`replay` returned with ``own=False``
    lives in the step graphs' buffers: the next replay overwrites it)."""
    particles = {n: v.clone() for n, v in state.particles.items()}
    return state._replace(particles=particles, log_weights=state.log_weights.clone(),
                          log_z=state.log_z.clone())  # fmt: skip


def replay(entry: dict[str, Any], state: SMCState, own: bool = True) -> tuple[SMCState, StepInfo]:
    """Copy ``state`` into the graph's buffers (what is not there already: the copies the
    previous replay returned, or the buffers themselves), replay it, return copies of its
    outputs or, ``own=False``, the buffers themselves (valid until the next replay of a graph
    sharing them: two ``(N, d)`` passes less per particle entry; :func:`owned` copies)."""
    from smcdiff.energy.tempered_fused import clone_info  # here: no import cycle at load

    static = entry["static"]
    if set(static.particles) != set(state.particles):
        raise RuntimeError(
            f"FK step graph: state keys {sorted(state.particles)} differ from the captured "
            f"{sorted(static.particles)} (another model under the same graph_key?)"
        )
    mirror = entry["mirror"]
    for name, v in state.particles.items():
        ref = mirror.get(name)
        if (ref is None or ref() is not v) and v.data_ptr() != static.particles[name].data_ptr():
            static.particles[name].copy_(v)
    static.log_weights.copy_(state.log_weights)
    static.log_z.copy_(state.log_z)
    entry["graph"].replay()
    apart = entry["apart"]
    mirror.clear()
    if not own:
        particles = {n: apart[n].clone() if n in apart else static.particles[n]
                     for n in entry["names"]}  # fmt: skip
        new = state._replace(particles=particles, log_weights=static.log_weights,
                             log_z=static.log_z, step=state.step + 1)  # fmt: skip
        return new, clone_info(entry["info"])
    particles = {n: (apart[n] if n in apart else static.particles[n]).clone()
                 for n in entry["names"]}  # fmt: skip
    mirror.update({n: weakref.ref(v) for n, v in particles.items() if n not in apart})
    new = state._replace(particles=particles, log_weights=static.log_weights.clone(),
                         log_z=static.log_z.clone(), step=state.step + 1)  # fmt: skip
    return new, clone_info(entry["info"])


def cached_steps(graph_key: tuple) -> int:
    """How many step graphs are cached under ``graph_key``."""
    n = len(graph_key)
    return sum(1 for k, e in _CACHE.items() if k[:n] == graph_key and "graph" in e)


def release(graph_key: tuple) -> None:
    """Drop the step graphs and state buffers of ``graph_key`` (their memory returns to the
    shared pool; ``torch.cuda.empty_cache()`` gives it back to the device)."""
    n = len(graph_key)
    steps = [k for k in _CACHE if len(k) == n + 1 and k[:n] == graph_key]
    for key in [*steps, ("static", *graph_key)]:
        _CACHE.pop(key, None)


def run_graphed(
    model: FeynmanKacModel,
    n_particles: int,
    *,
    n_groups: int = 1,
    resampling: Any = "systematic",
    policy: Any = None,
    generator: torch.Generator | None = None,
    check_every: int | None = None,
    progress: bool | Callable[[int, StepInfo], None] | None = None,
    graph_key: tuple | None = None,
) -> SMCRun:
    """:func:`smcdiff.run_smc` (no correctors, collectors or checkpoints) with its steps
    replayed from CUDA graphs cached under ``graph_key`` (module docstring; ``None``, or a
    device other than CUDA: eager steps, the numbers of ``run_smc`` bit for bit)."""
    check_n_particles(n_particles)
    smc = SMC(model, resampling=resampling, policy=policy, where="run_graphed")
    gen = generator
    if gen is None:
        gen = torch.Generator()
        gen.seed()
    on_cuda = torch.device(getattr(model, "device", "cpu")).type == "cuda"
    key = graph_key if on_cuda else None
    loop = GraphedLoop(smc, gen, check_every, progress, key)
    return loop.run(loop.begin(n_particles, n_groups))
