"""Default experiment: steer a 2-D Gaussian-mixture prior by a reward and by a likelihood.

Compares the untilted sampler, DPS-style guidance and FK steering (base and guided proposals,
with and without path correction) against exact samples of the tilted targets, over several
independent runs batched on one device. Writes a table, figures and ArviZ data to ``out_dir``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from smcdiff_experiments.progress import run_bar
from smcdiff_targets import gmm2d_likelihood_problem, gmm2d_reward_problem

import smcdiff
from smcdiff.diagnostics import energy_distance, plot_ess, plot_particles, sliced_wasserstein

DESCRIPTION = "2-D GMM prior steered by a reward and by a likelihood: none / guidance / FK vs exact"

METHODS = {
    "none": {"method": "none"},
    "guidance": {"method": "guidance"},
    "fk": {"method": "fk"},
    "fk-guided": {"method": "fk", "proposal": "guided"},
    "fk-no-path-corr": {"method": "fk", "path_correction": False},
}


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    n_particles: int = 4000,
    n_steps: int = 100,
    n_runs: int = 10,
    convergence_ns: tuple[int, ...] = (250, 1000, 4000, 16000),
    progress: bool = True,
) -> list[dict]:
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "arviz").mkdir(parents=True, exist_ok=True)
    if quick:
        n_particles, n_steps, n_runs, convergence_ns = 500, 40, 2, (250, 1000)
    problems = [gmm2d_reward_problem(device=device), gmm2d_likelihood_problem(device=device)]
    jobs = [(p, m) for p in problems for m in METHODS] + [
        (p, n) for p in problems for n in convergence_ns
    ]
    rows: list[dict] = []
    bar = run_bar(len(jobs), progress, "gmm2d")
    for problem in problems:
        model = smcdiff.exact_score(problem.prior, problem.process)
        gen = torch.Generator(device=device).manual_seed(1234)
        exact = problem.exact.sample(n_particles, generator=gen)
        floor = float(energy_distance(problem.exact.sample(n_particles, generator=gen), exact))
        results = {}

        go = partial(
            smcdiff.steer,
            model,
            **problem.steer_kwargs(),
            n_steps=n_steps,
            n_runs=n_runs,
            device=device,
        )
        for name, kw in METHODS.items():
            res = go(n_particles=n_particles, seed=0, **kw)
            results[name] = res
            rows.append(_row(problem, name, res, exact, floor, res.info["wall_time_s"] / n_runs))
            bar(f"{problem.name} {name}")
        for n in convergence_ns:  # FK is exact as N grows: errors shrink like 1/sqrt(N)
            res = go(n_particles=n, seed=1)
            row = _row(problem, f"fk N={n}", res, None, floor, res.info["wall_time_s"] / n_runs)
            row["n_particles"] = n
            rows.append(row)
            bar(f"{problem.name} fk N={n}")
        _figures(problem, results, exact, out)
        for name in ("fk", "fk-guided"):
            idata = results[name].to_arviz()
            idata.to_netcdf(str(out / "arviz" / f"{problem.name}_{name}.nc"))
    _convergence_figure([r for r in rows if "n_particles" in r], out)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _row(problem, name, res, exact, floor, wall) -> dict:
    """Metrics of one method over its runs; ``exact=None`` skips the O(N^2) sample distances."""
    weighted = res.info["method"] == "fk"
    ws = res.weights if weighted else [None] * len(res.particles)
    row = {"problem": problem.name, "method": name, "energy_dist_floor": floor}
    if exact is not None:
        row["energy_dist"] = _ms(
            [
                float(energy_distance(x, exact, weights_x=w))
                for x, w in zip(res.particles, ws, strict=False)
            ]
        )
        row["sliced_w2"] = _ms(
            [
                float(sliced_wasserstein(x, exact, weights_x=w))
                for x, w in zip(res.particles, ws, strict=False)
            ]
        )
    row["mode_tv"] = _ms(_mode_tv(problem.exact, res, weighted).tolist())
    lz_err = res.log_z - problem.log_z
    row["log_z_err"] = _ms(lz_err.tolist()) if weighted else None
    row["abs_log_z_err"] = _ms(lz_err.abs().tolist()) if weighted else None
    row["final_ess_frac"] = _ms((res.final_ess / res.n_particles).tolist()) if weighted else None
    row.update(nfe=res.info["nfe"], n_grad=res.info["n_grad"], wall_s_per_run=wall)
    return row


def _mode_tv(exact, res, weighted: bool) -> torch.Tensor:
    """Total variation between the exact component weights of the tilted mixture and the
    particles' weighted mass per component (particles assigned to their most likely one)."""
    comp = exact.component_log_prob(res.particles.to(exact.dtype)).argmax(-1)  # (R, N)
    w = (
        res.weights
        if weighted
        else torch.full(comp.shape, 1.0 / comp.shape[1]).double().to(comp.device)
    )
    mass = torch.zeros(comp.shape[0], exact.n_components, dtype=torch.float64, device=w.device)
    mass.scatter_add_(1, comp, w)
    return 0.5 * (mass - exact.weights.double().to(w.device)).abs().sum(1).cpu()


def _ms(vals) -> tuple[float, float]:
    t = torch.tensor(vals, dtype=torch.float64)
    return (float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0)


def _figures(problem, results, exact, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_ess([(n, r) for n, r in results.items() if r.info["method"] == "fk"])
    fig.savefig(out / "figures" / f"{problem.name}_ess.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(
        1, len(results), figsize=(3.2 * len(results), 3.2), sharex=True, sharey=True
    )
    for ax, (name, res) in zip(axes, results.items(), strict=False):
        plot_particles(res, reference=exact, ax=ax)
        ax.set_title(name)
    fig.suptitle(f"{problem.name}: particles (resampled) vs exact samples")
    fig.tight_layout()
    fig.savefig(out / "figures" / f"{problem.name}_particles.png", dpi=120)
    plt.close(fig)


def _convergence_figure(rows: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for problem in sorted({r["problem"] for r in rows}):
        rs = [r for r in rows if r["problem"] == problem]
        ns = [r["n_particles"] for r in rs]
        for ax, key in zip(axes, ("mode_tv", "abs_log_z_err"), strict=False):
            ax.errorbar(
                ns,
                [r[key][0] for r in rs],
                yerr=[r[key][1] for r in rs],
                marker="o",
                capsize=3,
                label=problem,
            )
    ref = [rows[0]["n_particles"], rows[-1]["n_particles"]]
    for ax, key, title in zip(
        axes, ("mode_tv", "abs_log_z_err"), ("mode-weight TV", "|log Z error|"), strict=False
    ):
        y0 = max(r[key][0] for r in rows if r["n_particles"] == ref[0])
        ax.plot(ref, [y0, y0 * (ref[0] / ref[1]) ** 0.5], "k--", lw=1, label="1/sqrt(N)")
        ax.set(xscale="log", yscale="log", xlabel="particles N", title=f"FK: {title}")
        ax.set_ylabel(f"{title} (mean ± std over runs)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "figures" / "fk_convergence.png", dpi=120)


def format_table(rows: list[dict]) -> str:
    def f(v, p=3):
        return "-" if v is None else f"{v[0]:.{p}f}±{v[1]:.{p}f}"

    head = (
        f"{'problem':<15}{'method':<17}{'energy dist':>17}{'sliced W2':>15}{'mode TV':>15}"
        f"{'log Z err':>16}{'ESS/N':>12}{'NFE':>5}{'s/run':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['problem']:<15}{r['method']:<17}{f(r.get('energy_dist'), 4):>17}"
            f"{f(r.get('sliced_w2')):>15}{f(r['mode_tv']):>15}{f(r['log_z_err']):>16}"
            f"{f(r['final_ess_frac'], 2):>12}{r['nfe']:>5}{r['wall_s_per_run']:>7.2f}"
        )
    floors = {r["problem"]: r["energy_dist_floor"] for r in rows}
    lines.append(
        "mean ± std over independent runs; energy-distance floor (two exact samples): "
        + ", ".join(f"{k} {v:.4f}" for k, v in floors.items())
    )
    return "\n".join(lines)
