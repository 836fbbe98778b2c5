"""A DiffusionFK step is capturable as a CUDA graph: proved on the CPU with a host-sync detector.

A CUDA graph records device work only: anything in a step that reads a device value on the host
(``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``, a Python ``if`` on a tensor), copies host
data to the device (``torch.tensor(list)``, ``torch.as_tensor(0.5, device=...)``) or makes a
shape depend on data (``nonzero``, boolean-mask indexing) either fails the capture or bakes one
run's values into every replay. :func:`host_sync_detector` turns every such call made from
Python into an error for the duration of a ``with`` block, so a CPU test can show that a step
makes none (the CUDA capture itself runs in experiments/bench_fk_step.py).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import pytest
import torch
from smcdiff_experiments.bench_fk_step import make_problem
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

import smcdiff
from smcdiff.diffusion_fk import TiltTerm, build_diffusion_fk
from smcdiff.engine import SMC
from smcdiff.processes.grids import time_grid
from smcdiff.resampling import policy_from_threshold


class HostSyncError(RuntimeError):
    """A call inside :func:`host_sync_detector` that a CUDA graph cannot capture."""


_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}
_SHAPES = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere"}
# torch.linalg solvers that check their result on the host (the *_ex forms report on the device)
_HOST_CHECKED = {"linalg_cholesky", "linalg_inv", "linalg_solve", "linalg_eigh", "cholesky"}
_FROM_DATA = {"tensor", "as_tensor", "asarray"}
_MOVES = {"to", "cuda"}


def _tensors(tree) -> list[torch.Tensor]:
    return [v for v in pytree.tree_leaves(tree) if isinstance(v, torch.Tensor)]


def _names_a_device(args, kwargs) -> bool:
    given = [*args, kwargs.get("device")]
    return any(isinstance(v, (torch.device, str)) for v in given)


class _Detector(TorchFunctionMode):
    """Tracks the *host* tensors: made from Python data without a device, or computed from host
    tensors only (e.g. a process's ``alpha(t)`` at a float ``t``, which on CUDA is a CPU
    tensor: reading it back costs no device sync). Everything else counts as device data."""

    def __init__(self):
        super().__init__()
        self.host: dict[int, weakref.ref] = {}  # id -> weak reference (ids get reused)

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self.host.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs = _tensors((args, kwargs))
        on_host = bool(inputs) and all(self.is_host(t) for t in inputs)
        if name in _READS and not on_host:
            raise HostSyncError(f"Tensor.{name} of device data (a host sync)")
        if name in _SHAPES and not on_host:
            raise HostSyncError(f"{name} of device data (a data-dependent shape)")
        if name == "__getitem__" and any(t.dtype == torch.bool for t in inputs[1:]) and not on_host:
            raise HostSyncError("boolean-mask indexing of device data (a data-dependent shape)")
        if name in _HOST_CHECKED:
            raise HostSyncError(f"{name} checks its result on the host (use the *_ex form)")
        to_device = _names_a_device(args[1:] if name in _MOVES else (), kwargs)
        if name in _FROM_DATA and (not inputs or on_host) and kwargs.get("device") is not None:
            raise HostSyncError(f"torch.{name}(<host data>, device=...): a host-to-device copy")
        if name in _MOVES and on_host and (to_device or name == "cuda"):
            raise HostSyncError(
                f"Tensor.{name} of a host tensor to a device: a host-to-device copy"
            )
        out = func(*args, **kwargs)
        if on_host or (name in _FROM_DATA and not inputs) or (not inputs and not to_device):
            for t in _tensors(out):
                self.host[id(t)] = weakref.ref(t)
        return out


@contextlib.contextmanager
def host_sync_detector() -> Iterator[None]:
    """Inside the block, raise :class:`HostSyncError` on a host read of device data
    (``.item()``, ``bool``, ``float``, ``.tolist()``, ``.cpu()``), a host-to-device copy of
    host data (``torch.tensor(x, device=...)``, ``host.to(device)``), a data-dependent shape
    (``nonzero``, boolean-mask indexing) or a ``torch.linalg`` solver that checks on the host.
    On the CPU every tensor lives on the host, so *device data* means: not made from Python
    data without a device, nor computed from such tensors alone (:class:`_Detector`)."""
    with _Detector():
        yield


def test_the_detector_catches_each_kind_of_host_sync():
    x = torch.ones(3) * 2.0  # device data (computed, not made from Python data)
    bad = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: float(x.sum()),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: torch.as_tensor(0.5, device=x.device),
        lambda: torch.tensor([1.0, 2.0], device=x.device),
        lambda: torch.as_tensor(0.5, dtype=torch.float64).to(x.device),
        lambda: x[x > 0],
        lambda: torch.nonzero(x),
        lambda: torch.linalg.cholesky(torch.eye(2)),
    ]
    with host_sync_detector():
        for fn in bad:
            with pytest.raises(HostSyncError):
                fn()
        # device-side equivalents, and host scalars read on the host, pass
        torch.where(x > 0, x, 0.0).sum() + x[1] + x[torch.arange(2, device=x.device)].sum()
        torch.linalg.cholesky_ex(torch.eye(2, device=x.device))
        t = torch.as_tensor(0.3, dtype=torch.float64)  # a host scalar (e.g. a process's time)
        assert float(torch.exp(-t) / 2.0) > 0 and (x * torch.exp(t)).shape == (3,)
    assert x.sum().item() == 6.0  # restored on exit


def _fk(n_steps=5, **kw):
    model, reward = make_problem(torch.device("cpu"), d=4, k=3)
    times = time_grid(model.process, n_steps, "log_snr").tolist()
    return build_diffusion_fk(model, times, tilt=(TiltTerm("reward", reward),), device="cpu",
                              **{"tilt_schedule": "snr", **kw})  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        {},  # the benchmark's settings (experiments/bench_fk_step.py)
        {"tilt_schedule": "constant"},  # steer()'s default schedule
        {"guided": True},
        {"potential": "max", "threshold": 1.0},  # resampling at every step
        {"path_correction": True, "sampler": "ancestral_upper"},  # the benchmark's other row
    ],
)
def test_a_diffusion_fk_step_makes_no_host_sync(options):
    """Every step k = 1..K (the last one included) of a fixed-schedule DiffusionFK, with the
    engine's adaptive resampling (ESS below a threshold), runs clean under the detector on its first call: the
    per-time constants (the exact prior's noised mixture factors) were built with the model."""
    options = dict(options)
    threshold = options.pop("threshold", 0.9)  # ESS < 0.9 N: some steps resample
    fk = _fk(**options)
    smc = SMC(fk, policy=policy_from_threshold(threshold))
    gen = torch.Generator().manual_seed(0)
    state, _ = smc.init(64, gen)
    resampled = []
    for _ in range(fk.n_steps):
        with host_sync_detector():
            state, info = smc.step(state, gen)
        resampled.append(info.resampled)
    assert info.step == fk.n_steps and bool(torch.isfinite(state.log_z).all())
    assert bool(torch.cat(resampled).any())  # the resampling branch ran, on the device


def test_steps_do_no_factorisation(monkeypatch):
    """The exact prior's noised mixtures at the grid times are built with the model: a step
    only looks them up (no Cholesky, no triangular solve per step)."""
    fk = _fk(n_steps=4, path_correction=True, sampler="ancestral_upper")
    smc = SMC(fk, policy=policy_from_threshold(0.5))
    gen = torch.Generator().manual_seed(0)
    state, _ = smc.init(32, gen)
    for name in ("cholesky_ex", "solve_triangular"):
        monkeypatch.setattr(torch.linalg, name, _refuse(name))
    for _ in range(fk.n_steps):
        state, _ = smc.step(state, gen)
    assert bool(torch.isfinite(state.log_z).all())


def _refuse(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"torch.linalg.{name} inside a step")

    return fail


@pytest.mark.slow  # the first steer() call imports the front door's diagnostics (~3 s)
@pytest.mark.parametrize("options", [{}, {"tilt_schedule": "constant", "path_correction": True}])
def test_steer_default_steps_make_no_host_sync(monkeypatch, options):
    """The steps of ``smcdiff.steer`` with its defaults (fixed tilt schedules) run clean under
    the detector (the front door's set-up and end-of-run diagnostics are outside the steps)."""
    step, detected = SMC.step, []

    def step_under_detector(self, state, generator):
        with host_sync_detector():
            out = step(self, state, generator)
        detected.append(out[1].step)
        return out

    monkeypatch.setattr(SMC, "step", step_under_detector)
    model, reward = make_problem(torch.device("cpu"), d=4, k=3)
    smcdiff.steer(model, reward=reward, n_particles=64, n_steps=4, seed=0, progress=False,
                  **options)  # fmt: skip
    assert detected == [1, 2, 3, 4]
