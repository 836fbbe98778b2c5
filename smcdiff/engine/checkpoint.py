r"""Checkpoint and resume: the whole state of a run at a step boundary, written atomically.

A checkpoint holds everything the rest of a run depends on: the particle system
(:class:`~smcdiff.engine.state.SMCState`: particles, log-weights, :math:`\log\hat Z`, step),
the random generator's state, the state of every collector (the trace included), the mutable
state of the model, the correctors and any other registered object (their ``state_dict()``
hooks) and, for a run started by a front door (:func:`smcdiff.steer`, :func:`smcdiff.sample`),
the call that rebuilds the rest. Resuming restores all of it and runs the remaining steps,
drawing the same random numbers in the same order, so on the same device type (and the same
smcdiff and torch versions) the result is **bitwise** equal to the uninterrupted run's.

**Atomic.** A checkpoint is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the previous one (``os.replace``): a writer killed at any moment
leaves the previous checkpoint or the new one, never a torn file.

**When.** At step 0 (after the start's reweighting), every ``every`` steps and/or
``every_seconds`` seconds, at the end of the run, and when the run stops on an exception or a
``KeyboardInterrupt`` (then the last step whose finiteness was checked). Every write first checks
the steps since the last check for NaN / inf, so a checkpoint never holds a state that a
finiteness check would have refused.

**Trust.** Checkpoints are pickles (``torch.save``); load only files you trust, as with
``torch.load(weights_only=False)``.

Engine level: ``run_smc(..., checkpoint=path, checkpoint_every=k)`` writes,
``run_smc(..., start=load_checkpoint(path))`` continues (with the same model, options and
collectors, rebuilt by the caller). Front doors: ``steer(..., checkpoint=path,
checkpoint_every=k)`` also stores the call, and :func:`resume` rebuilds and continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import io
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.engine.state import SMCState
from smcdiff.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "Checkpointer",
    "RunCall",
    "RunParts",
    "Snapshot",
    "as_checkpointer",
    "atomic_save",
    "check_stateful",
    "describe",
    "describe_setting",
    "load_checkpoint",
    "register_call",
    "register_front_door",
    "resume",
    "resume_checkpointer",
    "same_value",
    "to_device",
]

FORMAT = "smcdiff-checkpoint"
FORMAT_VERSION = 1
"""The version of the checkpoint layout this smcdiff writes and reads."""

MAX_ARGUMENT_BYTES = 16 * 2**20
"""Front-door arguments that pickle to more than this (e.g. a large network) are not stored in
the checkpoint; :func:`resume` asks for them by name."""


# ------------------------------------------------------------------------------ files
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same directory,
    flushed and fsynced, then ``os.replace`` d over ``path`` (and the directory fsynced). A
    writer that dies at any point leaves the old file or the new one, never a torn file; a
    failed write removes its temporary file and raises."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (POSIX; not on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _temp_file(path: Path) -> tuple[int, str]:
    """A fresh temporary file ``.<name>.<random>.tmp`` next to ``path`` (mode 0o644)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o644)
    return fd, tmp


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of writers that were killed mid-write (never the checkpoint itself)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


# ------------------------------------------------------------------------------ snapshots
class Snapshot(NamedTuple):
    """A run at a step boundary: the particle system, the generator's state (a CPU byte
    tensor), one state per collector (the trace first), the model's, the correctors' and the
    registered objects' states (by name), and whether the run had finished. Taking one copies
    nothing to the host (``state_dict()`` hooks return references)."""

    state: SMCState
    generator: torch.Tensor
    collectors: list[Any]
    model: dict[str, Any]
    correctors: dict[str, Any]
    extra: dict[str, Any]
    finished: bool = False


def to_device(tree: Any, device: torch.device | str) -> Any:
    """``tree`` (dicts, lists, tuples, named tuples, tensors, anything else kept) with every
    tensor detached and moved to ``device`` (a tensor already there is kept, not copied)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_device(v, device) for v in tree]
    if isinstance(tree, tuple):
        items = [to_device(v, device) for v in tree]
        return type(tree)._make(items) if hasattr(tree, "_fields") else tuple(items)
    return tree


def _hook_state(obj: Any) -> Any:
    """``obj.state_dict()`` if ``obj`` has one (a corrector closure may), else ``{}``."""
    hook = getattr(obj, "state_dict", None)
    return hook() if callable(hook) else {}


def _load_hook(obj: Any, state: Any, what: str) -> None:
    hook = getattr(obj, "load_state_dict", None)
    if callable(hook):
        hook(state)
    elif state:
        raise CheckpointError(
            f"the checkpoint holds a state for the {what}, which has no load_state_dict()"
        )


def describe(value: Any) -> str:
    """A short description of ``value`` that a rebuilt equivalent shares: ``module.qualname``
    for functions and classes, ``partial(...)`` for partials, ``a module.Type`` for other
    objects, ``repr`` for plain values (numbers, strings, dtypes, ...)."""
    if isinstance(value, functools.partial):
        return f"partial({describe(value.func)})"
    if inspect.ismethod(value):
        return f"{describe(value.__self__)}.{value.__name__}"
    if inspect.isfunction(value) or inspect.isbuiltin(value) or isinstance(value, type):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    if _plain(value):
        return repr(value)
    t = type(value)
    return f"a {t.__module__}.{t.__qualname__}"


def describe_setting(value: Any) -> str:
    """:func:`describe`, or the ``repr`` of an object that defines a stable one (a policy's
    ``ESSBelow(fraction=0.5)``, a resampler's scheme), to check a resumed run's settings."""
    text = repr(value)
    custom = type(value).__repr__ is not object.__repr__
    return text if custom and " at 0x" not in text and len(text) <= 500 else describe(value)


def _plain(value: Any) -> bool:
    """Numbers, strings, dtypes, devices, enums, ``None`` and containers of them."""
    if value is None or isinstance(
        value, numbers.Number | str | bytes | torch.dtype | torch.device | enum.Enum
    ):
        return True
    if isinstance(value, list | tuple | frozenset | set):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def same_value(a: Any, b: Any) -> bool:
    """Whether ``b`` can stand for ``a`` in a resumed call: equal plain values, equal tensors
    (shape, dtype, values), dataclasses of the same type with equal fields; other objects
    (callables, models) by :func:`describe` (their code cannot be compared)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype
            and torch.equal(a.detach().cpu(), b.detach().cpu())
        )  # fmt: skip
    if _plain(a) and _plain(b):
        return bool(a == b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same_value(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return describe(a) == describe(b)


@dataclass
class RunParts:
    """The stateful parts of one engine run: the ``model``, the ``collectors`` (the trace
    first), the ``correctors`` and other ``extra`` objects by name, and ``settings``
    (descriptions of the resampler and the policy, checked on resume)."""

    model: Any
    collectors: list[Any]
    correctors: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def snapshot(
        self, state: SMCState, generator: torch.Generator, finished: bool = False
    ) -> Snapshot:
        """The run now (references, no host copies; the generator state is a small copy)."""
        return Snapshot(
            state, generator.get_state(), [c.state_dict() for c in self.collectors],
            self.model.state_dict(), {n: _hook_state(c) for n, c in self.correctors.items()},
            {n: o.state_dict() for n, o in self.extra.items()}, finished,
        )  # fmt: skip

    def load_collectors(self, snap: Snapshot) -> None:
        """Roll the collectors back to ``snap`` (for a partial result)."""
        for c, s in zip(self.collectors, snap.collectors, strict=True):
            c.load_state_dict(s)

    def meta(self, state: SMCState, generator: torch.Generator) -> dict[str, Any]:
        """What a resumed run must share with this one (checked by :meth:`restore`)."""
        import smcdiff

        return {
            "model": describe(type(self.model)),
            "n_steps": int(self.model.n_steps),
            "n_groups": state.n_groups,
            "n_particles": state.n_particles,
            "device": str(state.log_weights.device),
            "generator_device": str(generator.device),
            "collectors": [[c.name, describe(type(c))] for c in self.collectors],
            "correctors": sorted(self.correctors),
            "extra": sorted(self.extra),
            "settings": dict(self.settings),
            "smcdiff": smcdiff.__version__,
            "torch": torch.__version__,
        }

    def restore(
        self, ck: Checkpoint, generator: torch.Generator, n_particles: int, n_groups: int
    ) -> SMCState:
        """Check that ``ck`` belongs to a run like this one, load every part's state and the
        generator's, and return the particle system on the generator's device."""
        self.check(ck, generator, n_particles, n_groups)
        device = generator.device
        snap = ck.snapshot
        generator.set_state(snap.generator)
        self.model.load_state_dict(to_device(snap.model, device))
        for name, c in self.correctors.items():
            _load_hook(c, to_device(snap.correctors.get(name, {}), device), name)
        for name, o in self.extra.items():
            o.load_state_dict(to_device(snap.extra[name], device))
        for c, s in zip(self.collectors, snap.collectors, strict=True):
            c.load_state_dict(to_device(s, device))
        return to_device(snap.state, device)

    def check(
        self, ck: Checkpoint, generator: torch.Generator, n_particles: int, n_groups: int
    ) -> None:
        """Raise a :class:`CheckpointError` listing every difference between the checkpointed
        run and this one; warn if the smcdiff or torch version differs."""
        old = ck.meta
        new = self.meta(ck.snapshot.state, generator)
        new.update(n_groups=n_groups, n_particles=n_particles)
        keys = ("model", "n_steps", "n_groups", "n_particles", "collectors", "correctors",
                "extra", "settings")  # fmt: skip
        diffs = [
            f"{k}: {old.get(k)!r} in the checkpoint, {new[k]!r} here"
            for k in keys
            if old.get(k) != new[k]
        ]
        was = torch.device(old["generator_device"]).type
        if was != generator.device.type:
            diffs.insert(0, f"device: written on {old['generator_device']}, resumed on "
                            f"{generator.device} (another device type draws other numbers)")  # fmt: skip
        if diffs:
            raise CheckpointError(
                f"checkpoint {ck.path} is of another run; differences: " + "; ".join(diffs)
            )
        for k in ("smcdiff", "torch"):
            if old.get(k) != new[k]:
                warnings.warn(
                    f"checkpoint {ck.path} was written by {k} {old.get(k)}, this is {new[k]}: "
                    "the resumed run need not equal the uninterrupted one bitwise",
                    stacklevel=4,
                )


# ------------------------------------------------------------------------------ the call
@dataclass
class RunCall:
    """A front door's call (``front_door``: ``"steer"`` or ``"sample"``), as far as it pickles.

    ``stored``: argument name -> ``torch.save`` bytes; ``missing``: name -> why it was not
    stored (does not pickle, e.g. a lambda or a closure; too large); ``described``: name ->
    :func:`describe` of every argument, to check what a resume passes again."""

    front_door: str
    stored: dict[str, bytes]
    missing: dict[str, str]
    described: dict[str, str]

    @classmethod
    def capture(
        cls, front_door: str, arguments: Mapping[str, Any], max_bytes: int = MAX_ARGUMENT_BYTES
    ) -> RunCall:
        stored, missing = {}, {}
        for name, value in arguments.items():
            buf = io.BytesIO()
            try:
                torch.save(value, buf)
            except Exception as err:  # lambdas, closures, open handles, ...
                missing[name] = f"does not pickle ({type(err).__name__}: {err})"
                continue
            if buf.tell() > max_bytes:
                missing[name] = f"pickles to {buf.tell() / 2**20:.1f} MiB (> {max_bytes} bytes)"
            else:
                stored[name] = buf.getvalue()
        return cls(front_door, stored, missing, {n: describe(v) for n, v in arguments.items()})

    def arguments(
        self, overrides: Mapping[str, Any], where: str = "resume", free: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The call's arguments: the stored ones, replaced by ``overrides`` where given.

        An override must stand for the stored value (:func:`same_value`; for an argument that
        was not stored, the same :func:`describe`): a resumed run continues the same run. The
        ``free`` arguments may differ (e.g. ``device``: the engine itself refuses another device
        type and accepts another index).
        Raises a :class:`CheckpointError` naming every argument that must be passed again
        (not stored, or not loadable here) and every override that changes the run."""
        values, missing = {}, dict(self.missing)
        for name, data in self.stored.items():
            try:
                values[name] = torch.load(io.BytesIO(data), weights_only=False)
            except Exception as err:  # e.g. its module was renamed, or no CUDA here
                missing[name] = f"was stored but does not load here ({type(err).__name__}: {err})"
        unknown = sorted(set(overrides) - set(self.described))
        if unknown:
            raise CheckpointError(
                f"{where}: {', '.join(unknown)} not arguments of the checkpointed "
                f"{self.front_door}() call (it took {', '.join(sorted(self.described))}; "
                "and progress, check_every, checkpoint, checkpoint_every)"
            )
        changed = [
            f"{n} was {self.described[n]} in the checkpointed run, got {describe(v)}"
            for n, v in overrides.items()
            if n not in free
            and not (same_value(values[n], v) if n in values else describe(v) == self.described[n])
        ]
        needed = [f"{n} ({why})" for n, why in missing.items() if n not in overrides]
        if changed or needed:
            msg = f"{where}: cannot continue the checkpointed {self.front_door}() run"
            if needed:
                msg += "; pass again by name: " + "; ".join(needed)
            if changed:
                msg += "; a resumed run keeps its options: " + "; ".join(changed)
            raise CheckpointError(msg)
        return {**values, **overrides}


# ------------------------------------------------------------------------------ writer
class Checkpointer:
    r"""Where and when a run writes checkpoints.

    ``path``: the checkpoint file (its directory must exist); ``every``: write after every
    ``every``-th step; ``every_seconds``: write after the first step that ends at least that
    long after the last write (wall clock); either, both or neither (then a checkpoint is
    written at step 0, at the end and when the run stops on an exception).
    ``max_argument_bytes``: front door arguments that pickle to more are not stored
    (:data:`MAX_ARGUMENT_BYTES`).

    Set by the engine: ``call`` (the front door's :class:`RunCall`, set by the front door),
    ``n_written`` and ``last_step`` (the step of the last checkpoint written).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every: int | None = None,
        *,
        every_seconds: float | None = None,
        max_argument_bytes: int = MAX_ARGUMENT_BYTES,
    ):
        where = "Checkpointer"
        try:
            self.path = Path(os.fspath(path))
        except TypeError:
            raise CheckpointError(
                f"{where}: path must be a str or os.PathLike, got {path!r}"
            ) from None
        if not self.path.parent.is_dir():
            raise CheckpointError(f"{where}: the directory of {self.path} does not exist")
        if self.path.is_dir():
            raise CheckpointError(f"{where}: {self.path} is a directory, not a file")
        self.every = check_int("checkpoint_every", every, 1, where=where, allow_none=True)
        self.every_seconds = check_number(
            "every_seconds", every_seconds, minimum=0.0, strict_min=True, where=where,
            allow_none=True,
        )  # fmt: skip
        self.max_argument_bytes = check_int("max_argument_bytes", max_argument_bytes, 0)
        self.call: RunCall | None = None
        self.meta: dict[str, Any] | None = None
        self.n_written, self.last_step = 0, None
        self._last_write = time.monotonic()
        self._last_snapshot: Snapshot | None = None

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.path)!r}, every={self.every}, "
            f"every_seconds={self.every_seconds})"
        )

    def settings(self) -> dict[str, Any]:
        """What a resume continues with by default."""
        return {
            "every": self.every,
            "every_seconds": self.every_seconds,
            "max_argument_bytes": self.max_argument_bytes,
        }

    def bind(self, meta: dict[str, Any]) -> None:
        """At the start of a run: what the run must keep (:meth:`RunParts.meta`)."""
        self.meta = meta
        self._last_write = time.monotonic()
        _remove_stale_temps(self.path)

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step``."""
        if self.every is not None and step % self.every == 0:
            return True
        waited = time.monotonic() - self._last_write
        return self.every_seconds is not None and waited >= self.every_seconds

    def write(self, snap: Snapshot) -> None:
        """Write ``snap`` (skipped if it is the snapshot written last); raises a
        :class:`CheckpointError` naming the path if it cannot be written."""
        if snap is self._last_snapshot:
            return
        if self.meta is None:
            raise CheckpointError(f"checkpoint {self.path}: write() before bind()")
        payload = {
            "format": FORMAT, "version": FORMAT_VERSION, "written": time.time(),
            "step": snap.state.step, "finished": snap.finished, "meta": self.meta,
            "checkpointer": self.settings(),
            "call": None if self.call is None else dataclasses.asdict(self.call),
            "state": to_device(snap.state._asdict(), "cpu"), "generator": snap.generator,
            "collectors": to_device(snap.collectors, "cpu"), "model": to_device(snap.model, "cpu"),
            "correctors": to_device(snap.correctors, "cpu"), "extra": to_device(snap.extra, "cpu"),
        }  # fmt: skip
        try:
            atomic_save(payload, self.path)
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {self.path}: writing step {snap.state.step} failed "
                f"({type(err).__name__}: {err}); the previous checkpoint is intact"
            ) from err
        self._last_write, self._last_snapshot = time.monotonic(), snap
        self.n_written, self.last_step = self.n_written + 1, snap.state.step


def check_stateful(stateful: Mapping[str, Any] | None) -> dict[str, Any]:
    """``stateful`` as a dict, each object checked to have ``state_dict`` / ``load_state_dict``."""
    stateful = dict(stateful or {})
    for name, obj in stateful.items():
        hooks = (getattr(obj, h, None) for h in ("state_dict", "load_state_dict"))
        if not all(callable(h) for h in hooks):
            raise CheckpointError(
                f"run_smc: stateful[{name!r}] needs state_dict() and load_state_dict(state)"
            )
    return stateful


def as_checkpointer(
    checkpoint: str | os.PathLike | Checkpointer | None, every: int | None, where: str
) -> Checkpointer | None:
    """``checkpoint`` (a path, a :class:`Checkpointer` or ``None``) and ``checkpoint_every``
    as a :class:`Checkpointer` (or ``None``: no checkpoints)."""
    if checkpoint is None:
        if every is not None:
            raise CheckpointError(f"{where}: checkpoint_every needs checkpoint=PATH")
        return None
    if isinstance(checkpoint, Checkpointer):
        if every is not None:
            raise CheckpointError(
                f"{where}: give checkpoint_every to the Checkpointer, not both ({checkpoint!r})"
            )
        return checkpoint
    return Checkpointer(checkpoint, every)


# ------------------------------------------------------------------------------ reading
@dataclass
class Checkpoint:
    """A checkpoint read by :func:`load_checkpoint` (tensors on the CPU).

    ``step``: the last step it holds; ``finished``: the run had ended (resuming returns its
    result); ``snapshot``: the run's state (:class:`Snapshot`); ``meta``: what a resumed run
    must share (model type, sizes, device, collectors, settings, versions); ``call``: the front
    door's :class:`RunCall` (``None`` for a run started with :func:`~smcdiff.run_smc`);
    ``checkpointer``: the writer's settings; ``written``: Unix time of the write."""

    path: Path
    step: int
    finished: bool
    snapshot: Snapshot
    meta: dict[str, Any]
    call: RunCall | None
    checkpointer: dict[str, Any]
    written: float

    def __repr__(self) -> str:
        door = "run_smc" if self.call is None else f"{self.call.front_door}()"
        return (
            f"Checkpoint({str(self.path)!r}, step={self.step}/{self.meta['n_steps']}, "
            f"finished={self.finished}, from {door} on {self.meta['device']}, "
            f"written {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.written))})"
        )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :class:`Checkpointer` (to the CPU). Raises a
    :class:`CheckpointError` naming ``path`` if it is missing, unreadable (truncated, corrupt),
    not an smcdiff checkpoint or of another format version."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an smcdiff checkpoint")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('version')!r}; this smcdiff "
            f"reads version {FORMAT_VERSION}"
        )
    try:
        p = payload
        snap = Snapshot(
            SMCState(**p["state"]), p["generator"], p["collectors"], p["model"],
            p["correctors"], p["extra"], bool(p["finished"]),
        )  # fmt: skip
        call = None if p["call"] is None else RunCall(**p["call"])
        return Checkpoint(path, int(p["step"]), snap.finished, snap, p["meta"], call,
                          p["checkpointer"], float(p["written"]))  # fmt: skip
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete ({err!r})") from err


# ------------------------------------------------------------------------------ resume
_FRONT_DOORS: dict[str, Callable[[Checkpoint, dict[str, Any]], Any]] = {}


def register_front_door(name: str, resume_fn: Callable[[Checkpoint, dict[str, Any]], Any]) -> None:
    """``resume_fn(checkpoint, overrides)`` continues the runs the front door ``name`` wrote."""
    _FRONT_DOORS[name] = resume_fn


def register_call(name: str, call: Callable[..., Any]) -> None:
    """Register the front door ``name`` whose runs continue through
    ``call(arguments, control, saver, checkpoint)``: the stored arguments with ``overrides``
    applied, the run-control options (``check_every``, ``progress``), the resumed run's
    checkpoint writer and the checkpoint itself."""

    def resume_fn(ck: Checkpoint, overrides: dict[str, Any]) -> Any:
        control = {k: overrides.pop(k, None) for k in ("check_every", "progress")}
        saver = resume_checkpointer(ck, overrides)
        arguments = ck.call.arguments(overrides, f"resume({ck.path})", free=("device",))
        return call(arguments, control, saver, ck)

    register_front_door(name, resume_fn)


def resume(path: str | os.PathLike, **overrides: Any) -> Any:
    r"""Continue the run checkpointed at ``path`` by :func:`smcdiff.steer` or
    :func:`smcdiff.sample` and return its result, bitwise equal to the uninterrupted run's on
    the same device type (a finished run's checkpoint returns its result at once).

    The call is rebuilt from the arguments the checkpoint stored. Arguments that did not pickle
    (lambdas, closures, objects holding them) or were too large to store (a big network) must
    be passed again by name (``resume(path, reward=my_reward)``); an error names each one.
    Every argument passed must stand for the one of the checkpointed run (equal values; for
    callables and models the same function / type): a resume never changes a run. What may
    differ: ``progress``, ``check_every`` (neither changes the numbers), ``checkpoint``
    (default: keep writing to ``path``, the same cadence; another path; ``None``: stop
    writing) and ``checkpoint_every``. Another device type is refused.
    """
    ck = load_checkpoint(path)
    if ck.call is None:
        raise CheckpointError(
            f"checkpoint {ck.path} was written by run_smc, which stores no call: rebuild the "
            "model, options and collectors and pass start=load_checkpoint(path) to run_smc"
        )
    fn = _FRONT_DOORS.get(ck.call.front_door)
    if fn is None:
        raise CheckpointError(
            f"checkpoint {ck.path} was written by {ck.call.front_door}(), which this smcdiff "
            f"cannot resume (it resumes {', '.join(sorted(_FRONT_DOORS))})"
        )
    return fn(ck, dict(overrides))


_UNSET: Any = object()


def resume_checkpointer(ck: Checkpoint, overrides: dict[str, Any]) -> Checkpointer | None:
    """The writer of a resumed run: pops ``checkpoint`` / ``checkpoint_every`` from
    ``overrides``; by default the checkpoint's path and cadence; ``checkpoint=None``: none."""
    path = overrides.pop("checkpoint", _UNSET)
    every = overrides.pop("checkpoint_every", _UNSET)
    if path is _UNSET:
        path = ck.path
    if path is None or isinstance(path, Checkpointer):
        return as_checkpointer(path, None if every is _UNSET else every, "resume")
    kw = dict(ck.checkpointer)
    if every is not _UNSET:
        kw.update(every=every, every_seconds=None)
    return Checkpointer(path, kw.pop("every"), **kw)
