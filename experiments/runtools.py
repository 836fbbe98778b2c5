"""Helpers shared by the learned-model experiment scripts (gmm_inverse, digits): steering runs that
record weight degeneracy instead of printing it, a time budget, and device timings of a
network eager against ``torch.compile``."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch

import smcdiff
from smcdiff.errors import DegeneracyWarning

STEER_METHODS: dict[str, dict[str, str]] = {
    "none": {"method": "none"},
    "guidance": {"method": "guidance"},
    "fk": {"method": "fk", "tilt_schedule": "adaptive"},
    "fk-snr": {"method": "fk", "tilt_schedule": "snr"},
    "tds": {"method": "tds", "tilt_schedule": "adaptive"},
    "tds-snr": {"method": "tds", "tilt_schedule": "snr"},
}
"""The experiments' method rows: a row name -> ``steer`` keywords."""

LINEAR_METHODS: dict[str, dict[str, str]] = {
    "mcgdiff": {"method": "mcgdiff"},
    "ddrm": {"method": "ddrm"},
}
"""Rows of the linear inverse-problem methods: they take ``observation=`` (a
:class:`smcdiff.LinearGaussianObservation`) in place of ``log_likelihood``."""


def steer_recording(prior, **kw):
    """``smcdiff.steer(prior, **kw)`` and whether it warned that its weights degenerated (the
    warning is recorded in the results, not printed; other warnings pass through)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegeneracyWarning)
        res = smcdiff.steer(prior, **kw)
    degenerate = False
    for w in caught:
        if issubclass(w.category, DegeneracyWarning):
            degenerate = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return res, degenerate


class Budget:
    """Wall-clock budget of a run: :meth:`left` is ``False`` once ``seconds`` have passed since
    construction (``None``: no limit). Jobs not started in time are recorded as skipped."""

    def __init__(self, seconds: float | None):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.seconds is None or self.elapsed() < self.seconds


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA), so that wall times measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, repeats: int, device: Any) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn()`` (synchronised per call)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def net_timing(
    score: smcdiff.NetworkScore,
    n_rows: int,
    device: Any,
    compile: str | None = None,
    repeats: int = 20,
) -> dict[str, Any]:
    """Milliseconds per score call of ``score``'s net at ``n_rows`` rows, eager and (with
    ``compile``, a ``torch.compile`` mode) compiled: ``{"rows", "eager_ms", "compiled_ms",
    "speedup", "compile_s" (the first compiled call), "max_abs_diff", "compile_error"}``.
    Inputs: standard normal rows at t = 0.5 (the time does not change the cost)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n_rows, *score.event_shape, generator=gen, device=device)
    t = torch.full((n_rows,), 0.5, device=device)
    eager = smcdiff.NetworkScore(score.net, score.process, score.prediction,
                                 time_input=score.time_input, max_batch=score.max_batch,
                                 event_shape=score.event_shape)  # fmt: skip
    out = {"rows": n_rows, "eager_ms": None, "compiled_ms": None, "speedup": None,
           "compile_s": None, "max_abs_diff": None, "compile_error": None}  # fmt: skip
    for _ in range(3):  # warm-up (allocator, cuBLAS handles)
        ref = eager.score(x, t)
    out["eager_ms"] = time_calls(lambda: eager.score(x, t), repeats, device)
    if compile is None:
        return out
    comp = smcdiff.NetworkScore(eager.net, eager.process, eager.prediction,
                                time_input=eager.time_input, max_batch=eager.max_batch,
                                event_shape=eager.event_shape, compile=compile)  # fmt: skip
    sync(device)
    t0 = time.perf_counter()
    got = comp.score(x, t)
    sync(device)
    out["compile_s"] = time.perf_counter() - t0
    for _ in range(3):
        got = comp.score(x, t)
    out["compiled_ms"] = time_calls(lambda: comp.score(x, t), repeats, device)
    out["max_abs_diff"] = float((got - ref).abs().max())
    out["compile_error"] = comp.compile_info["error"]
    out["speedup"] = out["eager_ms"] / out["compiled_ms"]
    return out


def fmt(v: Any, p: int = 2) -> str:
    """A number for a markdown cell (``-`` for ``None`` / NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{p}f}" if isinstance(v, float) else str(v)


def timing_table(rows: list[dict]) -> str:
    """Markdown table of :func:`net_timing` results (one row per labelled entry)."""
    lines = [
        "| net | rows per call | eager ms/call | compiled ms/call | speed-up | first compiled "
        "call (s) | max abs diff | compile error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rows']} | {fmt(r['eager_ms'], 3)} | "
            f"{fmt(r['compiled_ms'], 3)} | {fmt(r['speedup'])} | {fmt(r['compile_s'], 1)} | "
            f"{fmt(r['max_abs_diff'], 6) if r['max_abs_diff'] is not None else '-'} | "
            f"{r['compile_error'] or '-'} |"
        )
    return "\n".join(lines)


def raise_recompile_limit(limit: int = 32) -> None:
    """Let Dynamo keep ``limit`` compiled graphs per code object (default 8): an experiment
    compiles several nets of one class (one per dimension), each with and without grad mode and
    at two or more batch sizes; past the limit Dynamo would silently run the net eagerly."""
    import torch._dynamo.config as config

    config.recompile_limit = max(config.recompile_limit, limit)
