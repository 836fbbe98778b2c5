"""molecules experiment: dw4 at temperature T is e^{-U/T}, the weighted W1 is exact, and a tiny
end-to-end run writes every method's metrics."""

import json

import pytest
import torch
from smcdiff_experiments import molecules as mol
from smcdiff_targets import dw4

F64 = torch.float64


def test_dw4_at_temperature_divides_the_energy():
    x = 2.0 * torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    base, hot = dw4(), mol.dw4_at(2.0)
    torch.testing.assert_close(hot.energy(x), 0.5 * base.energy(x), rtol=1e-12, atol=1e-12)
    assert mol.dw4_at(1.0).name == "dw4"


def test_weighted_w1_matches_scipy():
    import scipy.stats as scipy_stats  # a core dependency

    gen = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(300, generator=gen, dtype=F64),
        1.3 + torch.randn(200, generator=gen, dtype=F64),
    )
    w = torch.rand(300, generator=gen, dtype=F64)
    exact = scipy_stats.wasserstein_distance(x.numpy(), y.numpy(), u_weights=w.numpy())
    assert abs(mol.w1_1d(x, y, w) - exact) < 1e-12
    assert abs(mol.w1_1d(x, y) - scipy_stats.wasserstein_distance(x.numpy(), y.numpy())) < 1e-12


@pytest.mark.slow
def test_tiny_run_writes_every_method(tmp_path, monkeypatch):
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path / "cache"))
    tiny = dict(n_ref=64, n_particles=32, n_iters=4, batch_size=16, hidden=8, seeds=[0],
                n_steps=3, n_moves=2, methods=["none", "fkc", "fk-energy"],
                ref={"n_chains": 16, "n_warmup": 10, "thin": 2})  # fmt: skip
    summary = mol.run(tmp_path, quick=True, progress=False, **tiny)
    names = {r["method"] for r in summary}
    assert names == {"none", "fkc", "fk-energy", "fkc+mala", "fk-energy+mala"}
    for r in summary:
        assert all(torch.isfinite(torch.tensor(r[k][0])) for k in ("w1_energy", "w1_dist"))
    blob = json.loads((tmp_path / "molecules.json").read_text())
    assert {"training", "references", "floor_T1", "paper", "rows"} <= blob.keys()
    assert "w1_energy_T2" in next(r for r in blob["rows"] if r["method"] == "none")
    assert "| fkc+mala |" in (tmp_path / "molecules.md").read_text()
