"""molecules experiment: a system at temperature T is e^{-U/T}, the metrics are exact (1-D
Wasserstein against scipy and against the Hungarian W2, MMD in closed form, invariant
features), and a tiny end-to-end run writes every method's rows incrementally."""

import json
import math

import pytest
import torch
from smcdiff_experiments import molecules as mol
from smcdiff_targets import dw4, lj13

from smcdiff.errors import NonFiniteError

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_at_temperature_divides_the_energy():
    for system, dim in ((dw4(), 8), (lj13(), 39)):
        x = 2.0 * torch.randn(50, dim, generator=_gen(0), dtype=F64)
        hot = system.at_temperature(2.5)
        torch.testing.assert_close(hot.energy(x), system.energy(x) / 2.5, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hot.com_log_prob(x), system.com_log_prob(x))
        assert system.at_temperature(1.0) is system and hot.name == f"{system.name}_T2.5"
    assert mol.dw4_at(2.0).name == "dw4_T2"


def test_wp_1d_is_exact():
    import scipy.stats as scipy_stats  # a core dependency

    g = _gen(1)
    x, y = torch.randn(30, generator=g, dtype=F64), 1.3 + torch.randn(20, generator=g, dtype=F64)
    exact = scipy_stats.wasserstein_distance(x.numpy(), y.numpy())
    assert abs(float(mol.wp_1d(x, y)) - exact) < 1e-12
    # W2 for unequal sizes: replicate to equal sizes (each x 2 times, each y 3 times), Hungarian
    w2 = mol.exact_w2(x.repeat_interleave(2)[:, None], y.repeat_interleave(3)[:, None])
    assert abs(float(mol.wp_1d(x, y, 2)) - w2) < 1e-12
    cols = mol.wp_1d(torch.stack([x, 2 * x], 1), torch.stack([y, 2 * y], 1), 2)
    torch.testing.assert_close(cols, torch.tensor([w2, 2 * w2], dtype=F64))


def test_mmd_closed_form_and_invariant_features():
    u, v = torch.zeros(1, 3, dtype=F64), torch.tensor([[1.0, 2.0, 2.0]], dtype=F64)
    assert abs(mol.mmd(u, v, 1.5) - math.sqrt(2 - 2 * math.exp(-9 / 4.5))) < 1e-12
    system = lj13()
    x = torch.randn(5, 13, 3, generator=_gen(2), dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=_gen(3), dtype=F64))
    moved = (x @ q.T + torch.randn(5, 1, 3, generator=_gen(4), dtype=F64))[:, torch.randperm(13)]
    torch.testing.assert_close(
        mol.invariant_features(moved, system), mol.invariant_features(x, system)
    )


@pytest.mark.slow
def test_tiny_run_writes_every_method_and_respects_the_time_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("SMCDIFF_CACHE", str(tmp_path / "cache"))
    size = dict(n_train=32, n_ref=32, n_particles=16, n_iters=3, batch_size=8, hidden=8,
                depth=2, n_steps=3, ref={"n_chains": 32, "n_warmup": 5, "thin": 2})  # fmt: skip
    tiny = dict(tasks=["dw4-anneal", "lj13-reward"], methods=["none", "fk", "fkc-target"],
                n_moves=2, dw4=size, lj13=size, fkc_options={"step_control": "off"},
                first_runs=1)  # fmt: skip
    real, calls = mol.run_method, []

    def flaky(task, name, *args):  # the FK call fails: recorded, not rerun, the rest go on
        calls.append((task, name))
        if name == "fk":
            raise NonFiniteError("particles is not finite", quantity="particles", step=1)
        return real(task, name, *args)

    monkeypatch.setattr(mol, "run_method", flaky)
    summary = mol.run(tmp_path, quick=True, progress=False, **tiny)
    names = {(r["task"], r["method"]) for r in summary}
    with_moves = ("fkc-target", "fkc-target+mala")
    assert names == {("dw4-anneal", m) for m in ("none", *with_moves)} | {
        ("lj13-reward", m) for m in ("none", *with_moves)
    }
    assert calls.count(("lj13-reward", "fk")) == 1  # pass 1 (run 1) does not retry it
    assert calls[:2] == [("dw4-anneal", "none"), ("lj13-reward", "none")]  # model checks first
    for r in summary:
        assert r["n_runs"] == 2
        assert all(math.isfinite(r[k][0]) for k in mol.METRICS), r
    blob = json.loads((tmp_path / "molecules.json").read_text())
    assert {"settings", "systems", "paper", "rows", "summary"} <= blob.keys()
    assert set(blob["systems"]) == {"dw4", "lj13"} and not blob["skipped"]
    assert list(blob["errors"]) == ["lj13-reward/fk"]
    assert "NonFiniteError (lj13-reward/fk runs 0-0)" in blob["errors"]["lj13-reward/fk"]
    # runs 0 and 1 come from two steer calls (first_runs=1): seeds 0 and 1
    assert {(r["run"], r["seed"]) for r in blob["rows"]} == {(0, 0), (1, 1)}
    assert "dnll_T0" in next(r for r in blob["rows"] if r["method"] == "none")
    table = (tmp_path / "molecules.md").read_text()
    assert "| fkc-target+mala |" in table and "VCG-SMC (DriftLite)" in table
    assert "| fk | failed: NonFiniteError (below) |" in table
    assert (tmp_path / "molecules_histograms.png").stat().st_size > 0
    assert "floor (exact draws)" in mol.format_table(summary)  # the CLI prints this
    late = tmp_path / "late"
    assert mol.run(late, quick=True, progress=False, time_budget_s=0.0, **tiny) == []
    assert json.loads((late / "molecules.json").read_text())["skipped"] == tiny["tasks"]


def test_priority_passes_and_estimates():
    plan = {"dw4": ["dw4-anneal", "dw4-reward"], "lj13": ["lj13-reward"]}
    cfg = {"methods": ["none", "fk", "fkc-target"]}
    assert mol.priority(plan, cfg) == [
        ("dw4-anneal", "none"), ("dw4-reward", "none"), ("lj13-reward", "none"),
        ("dw4-anneal", "fkc-target"), ("dw4-reward", "fkc-target"), ("lj13-reward", "fkc-target"),
        ("dw4-reward", "fk"), ("lj13-reward", "fk"),
    ]  # fmt: skip
    assert mol.seed_passes(10) == [range(3), range(3, 6), range(6, 10)]
    assert mol.seed_passes(2) == [range(2)] and mol.seed_passes(3) == [range(3)]
    assert mol.seed_passes(2, 1) == [range(1), range(1, 2)]
    costs = {("dw4-anneal", "none"): 1.0, ("dw4-anneal", "fk"): 2.0}
    assert mol.estimate_s(costs, "dw4-anneal", "fk", 7) == 14.0  # its own cost per run
    assert mol.estimate_s(costs, "dw4-reward", "fk", 3) == 6.0  # the method on another task
    assert mol.estimate_s(costs, "dw4-reward", "fkc-target", 3) == 18.0  # 3 x the dearest
    assert mol.estimate_s(costs, "lj13-reward", "none", 3) == 0.0  # nothing on the system yet


@pytest.mark.slow
def test_training_that_does_not_fit_is_skipped():
    cfg = dict(hidden=8, depth=2, n_iters=100, batch_size=8, lr=1e-3)
    data = torch.randn(32, 4, 2, generator=_gen(5))
    model, info = mol.train_prior("dw4", data, cfg, "cpu", False, seconds=0.0)
    assert model is None and info["n_iters"] < 50 and info["n_iters_planned"] == 100
    assert info["s_per_iter"] > 0


def test_a_system_that_fails_to_prepare_is_recorded(tmp_path, monkeypatch):
    def broken(name, *args):
        raise RuntimeError(f"CUDA error on {name}")

    monkeypatch.setattr(mol, "prepare_system", broken)
    assert mol.run(tmp_path, quick=True, progress=False, tasks=["dw4-anneal"]) == []
    blob = json.loads((tmp_path / "molecules.json").read_text())
    assert blob["errors"] == {"dw4/prepare": "RuntimeError: CUDA error on dw4"}
    assert blob["skipped"] == ["dw4-anneal (its system failed to prepare)"]
    assert "failed: dw4/prepare: RuntimeError" in (tmp_path / "molecules.md").read_text()
