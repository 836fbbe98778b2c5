"""Default experiment: steer a 2-D Gaussian-mixture prior by a reward and by a likelihood.

Compares the untilted sampler, DPS-style guidance and FK steering (base and guided proposals,
with and without path correction) against exact samples of the tilted targets, over several
independent runs batched on one device. Writes a table, figures and ArviZ data to ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import smcdiff
from smcdiff.diagnostics import energy_distance, plot_ess, plot_particles, sliced_wasserstein
from smcdiff_targets import gmm2d_likelihood_problem, gmm2d_reward_problem

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
    n_particles: int = 2000,
    n_steps: int = 100,
    n_runs: int = 5,
    progress: bool = True,
) -> list[dict]:
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "arviz").mkdir(parents=True, exist_ok=True)
    if quick:
        n_particles, n_steps, n_runs = 500, 40, 2
    problems = [gmm2d_reward_problem(device=device), gmm2d_likelihood_problem(device=device)]
    jobs = [(p, m) for p in problems for m in METHODS]
    rows: list[dict] = []
    bar = _bar(len(jobs), progress)
    for problem in problems:
        model = smcdiff.exact_score(problem.prior, problem.process)
        gen = torch.Generator(device=device).manual_seed(1234)
        exact = problem.exact.sample(n_particles, generator=gen)
        floor = float(energy_distance(problem.exact.sample(n_particles, generator=gen), exact))
        results = {}
        for name, kw in METHODS.items():
            t0 = time.perf_counter()
            res = smcdiff.steer(
                model, **problem.steer_kwargs(), **kw, n_particles=n_particles,
                n_steps=n_steps, n_runs=n_runs, seed=0, device=device,
            )
            wall = (time.perf_counter() - t0) / n_runs
            results[name] = res
            rows.append(_row(problem, name, res, exact, floor, wall))
            bar(f"{problem.name} {name}")
        _figures(problem, results, exact, out)
        for name in ("fk", "fk-guided"):
            idata = results[name].to_arviz()
            idata.to_netcdf(str(out / "arviz" / f"{problem.name}_{name}.nc"))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _row(problem, name, res, exact, floor, wall) -> dict:
    weighted = res.info["method"] == "fk"
    ed = [
        float(energy_distance(x, exact, weights_x=w if weighted else None))
        for x, w in zip(res.particles, res.weights)
    ]
    sw = [
        float(sliced_wasserstein(x, exact, weights_x=w if weighted else None))
        for x, w in zip(res.particles, res.weights)
    ]
    lz_err = (res.log_z - problem.log_z) if weighted else None
    ess = res.final_ess / res.n_particles
    return {
        "problem": problem.name,
        "method": name,
        "energy_dist": _ms(ed),
        "energy_dist_floor": floor,
        "sliced_w2": _ms(sw),
        "log_z_err": None if lz_err is None else _ms(lz_err.tolist()),
        "final_ess_frac": _ms(ess.tolist()) if weighted else None,
        "nfe": res.info["nfe"],
        "n_grad": res.info["n_grad"],
        "wall_s_per_run": wall,
    }


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
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharex=True, sharey=True)
    for ax, (name, res) in zip(axes, results.items()):
        plot_particles(res, reference=exact, ax=ax)
        ax.set_title(name)
    fig.suptitle(f"{problem.name}: particles (resampled) vs exact samples")
    fig.tight_layout()
    fig.savefig(out / "figures" / f"{problem.name}_particles.png", dpi=120)
    plt.close(fig)


def _bar(total: int, enabled: bool):
    if not enabled:
        return lambda desc: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="run", desc="gmm2d")

    def tick(desc: str) -> None:
        bar.set_postfix_str(desc)
        bar.update(1)
        if bar.n == total:
            bar.close()

    return tick


def format_table(rows: list[dict]) -> str:
    head = f"{'problem':<15}{'method':<17}{'energy dist':>18}{'sliced W2':>18}{'log Z err':>18}{'ESS/N':>14}{'NFE':>6}{'wall s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(v, p=3):
            return "-" if v is None else f"{v[0]:.{p}f}±{v[1]:.{p}f}"
        lines.append(
            f"{r['problem']:<15}{r['method']:<17}{f(r['energy_dist'], 4):>18}{f(r['sliced_w2']):>18}"
            f"{f(r['log_z_err']):>18}{f(r['final_ess_frac'], 2):>14}{r['nfe']:>6}{r['wall_s_per_run']:>8.2f}"
        )
    floors = {r["problem"]: r["energy_dist_floor"] for r in rows}
    lines.append("energy-distance floor (two exact samples of the same size): " + ", ".join(f"{k} {v:.4f}" for k, v in floors.items()))
    return "\n".join(lines)
