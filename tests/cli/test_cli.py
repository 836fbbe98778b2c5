"""The main job end to end, at smoke-test size."""

import json

import pytest

from smcdiff.cli import main


def test_list_names_the_default_experiment(capsys):
    assert main(["list"]) == 0
    assert "gmm2d" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_run_writes_table_figures_and_arviz(tmp_path, capsys):
    assert main(["run", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gmm2d-reward" in out and "gmm2d-inverse" in out
    rows = json.loads((tmp_path / "results.json").read_text())
    methods = {r["method"] for r in rows}
    assert {"none", "guidance", "fk", "fk-guided", "fk-no-path-corr"} <= methods
    fk = [r for r in rows if r["method"] == "fk"]
    assert all(abs(r["log_z_err"][0]) < 0.5 for r in fk)  # exact target, small N
    none = [r for r in rows if r["method"] == "none"]
    assert all(r["mode_tv"][0] > 0.3 for r in none)  # the untilted prior is far from the tilt
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"gmm2d-reward_ess.png", "gmm2d-inverse_particles.png", "fk_convergence.png"} <= figures
    assert len(list((tmp_path / "arviz").glob("*.nc"))) == 4
