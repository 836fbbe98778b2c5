"""Smoke run of the steering benchmark: outputs exist, the table has its columns, truths are sane."""

import json
import math

import pytest
import torch
from smcdiff_experiments import steering_benchmarks as sb

import smcdiff
from tests.stats import grid_log_integral


@pytest.mark.slow
def test_quick_run_writes_table_json_and_figures(tmp_path):
    rows = sb.run(tmp_path, quick=True, progress=False)
    for name in ("steering.json", "steering.md", "convergence.json", "truth.json", "traces.json"):
        assert (tmp_path / name).is_file(), name
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "convergence.png" in figures
    assert "anneal30d-g2_ess_weight_var.png" in figures

    header = (tmp_path / "steering.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == list(sb.COLUMNS)
    assert json.loads((tmp_path / "steering.json").read_text()) == json.loads(json.dumps(rows))
    tasks = {r["task"] for r in rows}
    assert tasks == {"anneal30d-g2", "gmm_inverse-d8", "poe2d"}
    for r in rows:  # every row either has its metrics or says why not
        assert "error" in r or all(
            k in r for k in ("energy_dist", "delta_nll", "mode_tv", "wall_s")
        )
    ok = [r for r in rows if "error" not in r and r["method"] in sb.WEIGHTED]
    assert ok and all(math.isfinite(r["ess_frac"][0]) for r in ok)
    conv = json.loads((tmp_path / "convergence.json").read_text())
    assert {r["method"] for r in conv} == set(sb.WEIGHTED)


@pytest.mark.slow
def test_ground_truths_are_exact():
    proc = smcdiff.VP()
    # product of two mixtures: log Z against quadrature on a grid
    task = sb.make_task("poe2d", proc, proc.t_min, "cpu")
    g = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    q1 = sb._fourmode2d("cpu").noised(proc, proc.t_min).to(dtype=torch.float64)
    log_p = q1.log_prob(xy) + task.fk_kwargs["reward"](xy.float()).double()
    h = float(g[1] - g[0])
    quad = grid_log_integral(log_p, h, 2)
    assert abs(quad - task.log_z) < 1e-3, (quad, task.log_z)
    # separated-mode annealing: the mixture is the normalised q^gamma (IS relative ESS ~ 1)
    task = sb.make_task("fourmode2d-anneal", proc, proc.t_min, "cpu", n_is=20_000)
    log_pg = task.log_pi(xy)
    quad = grid_log_integral(log_pg, h, 2)
    assert abs(quad - task.log_z) < 5e-3, (quad, task.log_z)
    assert task.truth["is_rel_ess"] > 0.99
    assert abs(task.truth["log_z_mixture"] - task.log_z) < 5e-3
