"""Diagnostic plots of an :class:`~smcdiff.result.SMCResult` (matplotlib, no pyplot).

Figures are built with :class:`matplotlib.figure.Figure` directly, so they work under any backend
(Agg included), never open a window and are not kept alive by pyplot's figure registry; Jupyter
displays a returned figure. Each function draws into ``ax`` when one is given (and returns its
figure), else into a new figure. A grouped result (``R`` independent runs) is drawn for run 0 and
the title says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from smcdiff.errors import SMCDiffError
from smcdiff.weights import ess as ess_fn

if TYPE_CHECKING:
    from smcdiff.result import SMCResult

__all__ = ["plot_ancestors", "plot_ess", "plot_log_weights", "plot_particles"]

_RUN0 = " (run 0 of {} runs)"


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _n_runs(result: SMCResult) -> int | None:
    """``R`` for a grouped result, ``None`` for a single run."""
    return result.log_weights.shape[0] if result.log_weights.dim() == 2 else None


def _run0(value: torch.Tensor, n_runs: int | None) -> np.ndarray:
    """Run 0 of a trace entry ``(K+1,)`` or ``(K+1, R)`` as a numpy array ``(K+1,)``."""
    a = value.detach().cpu()
    if n_runs is not None and a.dim() == 2:
        a = a[:, 0]
    return a.double().numpy()


def plot_ess(
    results: SMCResult | Sequence[tuple[str, SMCResult]], ax: Axes | None = None
) -> Figure:
    """Normalised ESS / N after each reweighting, against ``t`` from 1 (noise) to 0 (data), or
    against the step for models without times (tempering).

    ``results``: one result, or ``(label, result)`` pairs drawn on the same axes. Steps after
    which the particles were resampled are marked (``x``) at the ESS that triggered them:
    ``trace["resampled"][k]`` is the decision taken at the start of step ``k`` from the weights
    of step ``k - 1``.
    """
    pairs = [("", results)] if not isinstance(results, Sequence) else list(results)
    if not pairs:
        raise SMCDiffError("plot_ess: no results to plot")
    fig, ax = _axes(ax)
    t_lo, t_hi, grouped, marked = math.inf, -math.inf, False, False
    timed = all("t" in res.trace for _, res in pairs)  # else: against the step (e.g. tempering)
    for label, res in pairs:
        n_runs = _n_runs(res)
        grouped |= n_runs is not None
        ess = _run0(res.trace["ess"], n_runs) / res.n_particles
        t = _run0(res.trace["t"], None) if timed else np.arange(ess.shape[0], dtype=np.float64)
        name = label + (" (run 0)" if n_runs is not None and label else "")
        (line,) = ax.plot(t, ess, label=name or None)
        resampled = _run0(res.trace["resampled"], n_runs).astype(bool)
        trigger = np.flatnonzero(resampled[1:])  # steps k - 1 whose weights made step k resample
        if trigger.size:
            label_marks = None if marked else "resampled"
            ax.plot(t[trigger], ess[trigger], "x", color=line.get_color(), label=label_marks)
            marked = True
        t_lo, t_hi = min(t_lo, float(t.min())), max(t_hi, float(t.max()))
    ax.set_xlim(*((t_hi, t_lo) if timed else (t_lo, t_hi)))
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("t  (1 = noise → 0 = data)" if timed else "step")
    ax.set_ylabel("ESS / N")
    ax.set_title("Effective sample size" + (" (grouped runs: run 0)" if grouped else ""))
    if any(label for label, _ in pairs) or marked:
        ax.legend(loc="best")
    return fig


def plot_ancestors(
    results: SMCResult | Sequence[tuple[str, SMCResult]], ax: Axes | None = None
) -> Figure:
    """Distinct step-0 ancestors of the particles after each step, as a fraction of N (log
    scale), against ``t`` (or the step): path degeneracy at a glance. A curve that drops to
    ``1/N`` means every particle descends from one initial particle; the dashed line marks the
    threshold of :mod:`smcdiff.diagnostics.degeneracy`. Needs the ``genealogy`` record that
    ``steer()`` and ``sample(method="diffusion")`` collect (or a
    :class:`~smcdiff.engine.collectors.Genealogy` passed to ``run_smc``).
    """
    from smcdiff.diagnostics.degeneracy import MIN_DISTINCT_FLOOR, MIN_DISTINCT_FRACTION

    pairs = [("", results)] if not isinstance(results, Sequence) else list(results)
    if not pairs or any("genealogy" not in res.collected for _, res in pairs):
        raise SMCDiffError(
            "plot_ancestors: every result needs collected['genealogy'] (run with a Genealogy "
            "collector; steer() attaches one)"
        )
    fig, ax = _axes(ax)
    timed = all("t" in res.trace for _, res in pairs)
    grouped, n_min = False, math.inf
    for label, res in pairs:
        n_runs = _n_runs(res)
        grouped |= n_runs is not None
        frac = _run0(res.collected["genealogy"]["distinct"], n_runs) / res.n_particles
        t = _run0(res.trace["t"], None)[: frac.shape[0]] if timed else np.arange(frac.shape[0])
        ax.plot(t, frac, label=(label + (" (run 0)" if n_runs is not None else "")) or None)
        n_min = min(n_min, res.n_particles)
    floor = max(MIN_DISTINCT_FLOOR, MIN_DISTINCT_FRACTION * n_min) / n_min
    ax.axhline(floor, linestyle="--", color="grey", label="warning threshold")
    ax.set_yscale("log")
    ax.set_ylim(0.5 / n_min, 1.5)
    if timed:
        ax.invert_xaxis()
    ax.set_xlabel("t  (1 = noise → 0 = data)" if timed else "step")
    ax.set_ylabel("distinct ancestors / N")
    ax.set_title("Distinct initial ancestors" + (" (grouped runs: run 0)" if grouped else ""))
    ax.legend(loc="best")
    return fig


def plot_log_weights(result: SMCResult, bins: int = 50, ax: Axes | None = None) -> Figure:
    """Histogram of the final normalised log-weights, with ``-log N`` (uniform) marked.

    ``-inf`` log-weights (weight zero) cannot be binned; they are left out and counted in the
    title, with the final ESS.
    """
    fig, ax = _axes(ax)
    n_runs = _n_runs(result)
    lw = result.log_weights.detach().cpu().double()
    lw = lw[0] if n_runs is not None else lw
    n = lw.shape[-1]
    finite = lw[torch.isfinite(lw)].numpy()
    n_zero = n - finite.size
    ax.hist(finite, bins=bins, color="C0", alpha=0.8)
    ax.axvline(-math.log(n), color="k", ls="--", lw=1, label="uniform (-log N)")
    ax.set_xlabel("log W (normalised)")
    ax.set_ylabel("particles")
    title = f"Final log-weights, ESS = {float(ess_fn(lw)):.1f} of N = {n}"
    if n_runs is not None:
        title += _RUN0.format(n_runs)
    title += f"\n{n_zero} of {n} are -inf (not shown)" if n_zero else ""
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


def plot_particles(
    result: SMCResult,
    reference: torch.Tensor | None = None,
    dims: tuple[int, int] = (0, 1),
    n: int = 2000,
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Scatter of ``n`` equal-weight particles (systematic resample, ``seed``) over ``reference``.

    ``reference``: samples ``(M, d)`` of the target, drawn first in grey (at most ``n`` of them,
    a seeded random subset). Coordinates ``dims`` of the event are plotted; for ``d = 1`` the two
    sets are drawn as density histograms instead.
    """
    fig, ax = _axes(ax, figsize=(5.0, 5.0))
    n_runs = _n_runs(result)
    x = result.resample(n, seed=seed)
    x = (x[0] if n_runs is not None else x).detach().cpu().double().reshape(n, -1).numpy()
    ref = None
    if reference is not None:
        ref = reference.detach().cpu().double().reshape(reference.shape[0], -1)
        if ref.shape[0] > n:
            gen = torch.Generator().manual_seed(seed)
            ref = ref[torch.randperm(ref.shape[0], generator=gen)[:n]]
        ref = ref.numpy()
        if ref.shape[1] != x.shape[1]:
            raise SMCDiffError(
                f"plot_particles: reference has dimension {ref.shape[1]}, particles {x.shape[1]}"
            )
    title = f"Particles (equal-weight resample, n = {n})"
    if n_runs is not None:
        title += _RUN0.format(n_runs)
    if x.shape[1] == 1:
        if ref is not None:
            ax.hist(ref[:, 0], bins=60, density=True, color="0.6", alpha=0.6, label="reference")
        ax.hist(x[:, 0], bins=60, density=True, color="C0", alpha=0.6, label="particles")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        i, j = dims
        if ref is not None:
            ax.scatter(ref[:, i], ref[:, j], s=4, color="0.6", alpha=0.5, label="reference")
        ax.scatter(x[:, i], x[:, j], s=4, color="C0", alpha=0.5, label="particles")
        ax.set_xlabel(f"x[{i}]")
        ax.set_ylabel(f"x[{j}]")
    ax.set_title(title)
    ax.legend(loc="best", markerscale=3)
    return fig
