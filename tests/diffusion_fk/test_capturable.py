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
from collections.abc import Iterator

import pytest
import torch
from smcdiff_experiments.bench_fk_step import make_problem

from smcdiff.diffusion_fk import TiltTerm, build_diffusion_fk
from smcdiff.engine import SMC
from smcdiff.processes.grids import time_grid
from smcdiff.resampling import policy_from_threshold


class HostSyncError(RuntimeError):
    """A call inside :func:`host_sync_detector` that a CUDA graph cannot capture."""


_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero")
_SHAPES = ("nonzero", "masked_select", "unique", "unique_consecutive", "argwhere")
_SYNCING = ("cholesky", "inv", "solve", "eigh")  # torch.linalg ops that check info on the host


def _raiser(name: str):
    def fail(*args, **kwargs):
        raise HostSyncError(f"{name} inside a capturable step")

    return fail


def _no_host_data(name: str, fn):
    def guarded(data, *args, **kwargs):
        if not isinstance(data, torch.Tensor):
            raise HostSyncError(f"{name}(<{type(data).__name__}>): host data copied to the device")
        return fn(data, *args, **kwargs)

    return guarded


def _no_bool_index(getitem):
    def guarded(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
            raise HostSyncError("boolean-mask indexing (a data-dependent shape)")
        return getitem(self, key)

    return guarded


@contextlib.contextmanager
def host_sync_detector() -> Iterator[None]:
    """Inside the block, raise :class:`HostSyncError` on host reads of tensors, host-to-device
    copies of Python data, data-dependent shapes and the host-checked ``torch.linalg`` solvers
    (``linalg.cholesky_ex`` / ``solve_triangular`` are allowed: they report on the device)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _READS:
            mp.setattr(torch.Tensor, name, _raiser(f"Tensor.{name}"))
        for name in _SHAPES:
            mp.setattr(torch, name, _raiser(f"torch.{name}"))
        for name in _SYNCING:
            mp.setattr(torch.linalg, name, _raiser(f"torch.linalg.{name}"))
        for name in ("tensor", "as_tensor"):
            mp.setattr(torch, name, _no_host_data(f"torch.{name}", getattr(torch, name)))
        mp.setattr(torch.Tensor, "__getitem__", _no_bool_index(torch.Tensor.__getitem__))
        yield


def test_the_detector_catches_each_kind_of_host_sync():
    x = torch.ones(3)
    bad = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: float(x.sum()),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: torch.as_tensor(0.5, device=x.device),
        lambda: torch.tensor([1.0, 2.0]),
        lambda: x[x > 0],
        lambda: torch.nonzero(x),
        lambda: torch.linalg.cholesky(torch.eye(2)),
    ]
    with host_sync_detector():
        for fn in bad:
            with pytest.raises(HostSyncError):
                fn()
        # device-side equivalents pass
        torch.where(x > 0, x, 0.0).sum()
        torch.as_tensor(x, dtype=torch.float64)
        torch.linalg.cholesky_ex(torch.eye(2))
        x[1] + x[torch.arange(2)].sum()
    assert x.sum().item() == 3.0  # restored on exit


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
