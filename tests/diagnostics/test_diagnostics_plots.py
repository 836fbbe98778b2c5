"""Plots return Figures with the expected artists."""

import math

import matplotlib
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from smcdiff.diagnostics import plot_ess, plot_log_weights, plot_particles
from smcdiff.errors import SMCDiffError

matplotlib.use("Agg")  # the plots never touch pyplot; this guards against any window anyway


def test_plot_ess_single(make_result):
    res = make_result()
    fig = plot_ess(res)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    curve, marks = ax.lines  # the ESS curve and the resampling markers
    assert len(curve.get_xdata()) == len(res.trace["t"])
    steps = res.trace["resampled"].nonzero().flatten().tolist()  # steps k that resampled
    assert steps and list(marks.get_xdata()) == [res.trace["t"][k - 1].item() for k in steps]
    assert curve.get_ydata().max() <= 1.0 + 1e-12
    left, right = ax.get_xlim()
    assert left > right  # t runs from 1 (noise) to 0 (data)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["resampled"]


def test_plot_ess_several_and_grouped(make_result):
    pairs = [("fk", make_result()), ("twisted", make_result(runs=3, seed=1))]
    fig = plot_ess(pairs)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # two curves, two marker sets
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["fk", "resampled", "twisted (run 0)"]
    assert "run 0" in ax.get_title()


def test_plot_into_given_axes(make_result):
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    res = make_result()
    assert plot_ess(res, ax=ax1) is fig
    assert plot_log_weights(res, ax=ax2) is fig
    assert len(fig.axes) == 2 and ax1.lines and ax2.patches


def test_plot_log_weights_counts_zero_weights(make_result):
    res = make_result(n=400)
    lw = res.log_weights.clone()
    lw[:3] = -math.inf
    res.log_weights = lw - torch.logsumexp(lw, 0)
    fig = plot_log_weights(res, bins=30)
    ax = fig.axes[0]
    assert len(ax.patches) == 30 and len(ax.lines) == 1  # bins and the -log N marker
    assert sum(p.get_height() for p in ax.patches) == 397
    assert "3 of 400 are -inf" in ax.get_title()
    grouped = plot_log_weights(make_result(runs=2)).axes[0]
    assert "run 0 of 2 runs" in grouped.get_title()
    assert "-inf" not in grouped.get_title()


def test_plot_particles_with_reference(make_result):
    res = make_result(n=500, d=3)
    reference = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0))
    ax = plot_particles(res, reference, dims=(0, 2), n=800).axes[0]
    ref_pts, particles = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(ref_pts.get_offsets()) == 800 and len(particles.get_offsets()) == 800
    assert ax.get_xlabel() == "x[0]" and ax.get_ylabel() == "x[2]"
    grouped = plot_particles(make_result(runs=2), n=100).axes[0]
    assert len(grouped.collections) == 1 and "run 0 of 2 runs" in grouped.get_title()
    with pytest.raises(SMCDiffError, match="dimension"):
        plot_particles(res, torch.zeros(10, 2))


def test_plot_particles_1d_is_a_histogram(make_result):
    res = make_result(n=300, d=1)
    ax = plot_particles(res, reference=torch.randn(400), n=300).axes[0]
    assert len(ax.patches) == 120  # 60 bins each for reference and particles
    assert ax.get_ylabel() == "density"
