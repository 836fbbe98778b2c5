"""gmm_inverse experiment: the problems follow the protocol, truths are exact, FK/TDS with the
exact score land near the closed-form posterior (far nearer than the prior), outputs are written."""

import json

import pytest
import torch
from smcdiff_experiments import gmm_inverse as gi

import smcdiff


def test_problem_follows_the_protocol():
    prior = gi.make_prior(8)
    assert prior.n_components == 25 and prior.dim == 8
    means = prior.means.double()
    assert torch.equal(means[:, :2], means[:, 2:4]) and torch.equal(means[:, :2], means[:, 6:8])
    assert set(means[:, 0].tolist()) == {-16.0, -8.0, 0.0, 8.0, 16.0}
    assert torch.allclose(prior.covs.double(), torch.eye(8, dtype=torch.float64).expand(25, 8, 8))
    p = gi.make_problem(prior, 2, 3)
    s = torch.linalg.svdvals(p["A"])
    assert p["A"].shape == (2, 8) and torch.allclose(s, p["singular_values"])
    assert 0 < p["sigma_y"] < float(s[0]) and bool((s > 0).all() and (s < 1).all())
    again = gi.make_problem(prior, 2, 3)  # seeded: the same problem every time
    assert torch.equal(again["y"], p["y"]) and again["sigma_y"] == p["sigma_y"]


def test_truth_is_the_exact_posterior():
    """The posterior used as truth equals prior x likelihood, normalised by the evidence, on
    points of the prior (log densities compared pointwise)."""
    proc = smcdiff.VP()
    prior = gi.make_prior(8)
    p = gi.make_problem(prior, 4, 0)
    q = prior.noised(proc, proc.t_min)
    post, log_ev = q.posterior(p["A"], p["y"], p["sigma_y"])
    x = q.sample(500, generator=torch.Generator().manual_seed(0)).double()
    lik = gi.log_likelihood_fn(p, "cpu")(x.float()).double()
    assert torch.allclose(post.log_prob(x), q.log_prob(x) + lik - log_ev, atol=2e-3)


def test_batched_likelihood_is_each_problems_likelihood():
    """Rows n*g .. n*(g+1)-1 of a batched run are scored by problem g's own likelihood."""
    prior = gi.make_prior(8)
    problems = [gi.make_problem(prior, d_y, i) for d_y, i in ((2, 0), (2, 1), (2, 2))]
    n = 5
    x = torch.randn(3 * n, 8)
    got = gi.batched_log_likelihood(problems, n, "cpu")(x)
    want = torch.cat([gi.log_likelihood_fn(p, "cpu")(x[i * n : (i + 1) * n])
                      for i, p in enumerate(problems)])  # fmt: skip
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(smcdiff.SMCDiffError, match="needs 15"):
        gi.batched_log_likelihood(problems, n, "cpu")(x[:10])


@pytest.mark.slow
def test_exact_score_fk_tds_reach_the_posterior(tmp_path):
    """At the NFE of the prior sampler (tilt_schedule="snr"; the adaptive default is ~10x slower
    on CPU, run by the full experiment), with the exact score; problem by problem (each run seeded
    by its problem; the batched path is tested below)."""
    rows = gi.run(
        tmp_path, quick=True, progress=False, d_ys=(2,), n_problems=2, n_particles=512,
        methods=("none", "fk-snr", "tds-snr"), tracks=("exact",), batch=False,
    )  # fmt: skip
    doc = json.loads((tmp_path / "gmm_inverse.json").read_text())
    assert {"settings", "summary", "prior_error", "training", "timing", "problems"} <= set(doc)
    assert doc["summary"] == json.loads(json.dumps(rows)) and doc["skipped"] == []
    assert (tmp_path / "figures" / "gmm_inverse_d8.png").is_file()
    assert "## SMC error and model error" in (tmp_path / "gmm_inverse.md").read_text()
    assert all(not r["batched"] and r["ms_per_nfe"] > 0 for r in doc["problems"])
    per = {(r["problem"], r["method"]): r for r in doc["problems"]}
    for p in range(2):
        none = per[p, "none"]
        assert none["sw"] > 10  # the prior is far from these posteriors
        for m in ("fk-snr", "tds-snr"):
            r = per[p, m]
            assert r["sw"] < 0.3 * none["sw"], (p, m, r["sw"], none["sw"])
            assert abs(r["log_z_err"]) < 1.5 and 0 < r["ess_frac"] <= 1
            assert r["nfe"] == none["nfe"]  # equal network evaluations
    # On problem 0, FK lands within 3 floors (the SW of 512 exact samples) of the exact
    # posterior (measured 1.8 floors). Problem 1 is not held to it: its error is dominated by
    # the mode weights at N = 512 and swings with float rounding across CPUs (2.2 floors on
    # one, 5.7 on another: a rounding difference changes the resampling's ancestors), which
    # docs/gmm-inverse.md reports; it keeps the 0.3-of-the-prior bound above.
    fk = per[0, "fk-snr"]
    assert fk["sw"] < 3 * fk["sw_floor"] + 0.1, (fk["sw"], fk["sw_floor"])


@pytest.mark.slow
def test_batched_runs_solve_their_own_problems():
    """Two problems in one steer(n_runs=2) call: each run lands near its own posterior (SW under
    a tenth of the prior's; measured 0.15-1.1 against 18-20 over seeds 0-5) and far from the other
    problem's (the rows are mapped to the right problem)."""
    proc, prior = smcdiff.VP(), gi.make_prior(8)
    cfg = gi.settings(True, d_ys=(4,), n_problems=2, n_particles=512)
    probs = [gi._with_truth(prior, proc, float(proc.t_min), 4, p, cfg) for p in range(2)]
    model = smcdiff.exact_score(prior.to(dtype=torch.float32), proc)
    none = gi.solve_batch(model, probs, "none", cfg, "cpu")
    for method in ("fk-snr", "tds-snr"):
        rows = gi.solve_batch(model, probs, method, cfg, "cpu")
        assert all(r["batched"] and r["nfe"] == none[0]["nfe"] for r in rows)
        for i, r in enumerate(rows):
            assert r["sw"] < 0.1 * none[i]["sw"], (method, i, r["sw"], none[i]["sw"])
    res = smcdiff.steer(model, method="fk", tilt_schedule="snr", n_particles=512, n_runs=2,
                        n_steps=40, seed=0, progress=False,
                        log_likelihood=gi.batched_log_likelihood(probs, 512, "cpu"))  # fmt: skip
    x = res.particles.double()
    for i in range(2):
        own = gi.swd(x[i], probs[i]["ref"], res.weights[i])
        other = gi.swd(x[i], probs[1 - i]["ref"], res.weights[i])
        assert other > 3 * own, (i, own, other)


@pytest.mark.slow
def test_time_budget_skips_jobs_and_says_so(tmp_path):
    """A budget of 0 s: no job starts; every (cell, track, method) is listed as skipped."""
    gi.run(tmp_path, quick=True, progress=False, d_ys=(1,), methods=("none", "fk-snr"),
           tracks=("exact",), time_budget_s=0.0)  # fmt: skip
    doc = json.loads((tmp_path / "gmm_inverse.json").read_text())
    assert doc["problems"] == [] and len(doc["skipped"]) == 2
    assert "Skipped (time budget" in (tmp_path / "gmm_inverse.md").read_text()


def test_a_failed_batch_is_solved_problem_by_problem(monkeypatch):
    """One problem's error stops a batched call; the cell is then solved problem by problem."""
    proc, prior = smcdiff.VP(), gi.make_prior(8)
    cfg = gi.settings(True, n_particles=16, n_steps=3, n_ref=50)
    probs = [gi._with_truth(prior, proc, float(proc.t_min), 1, p, cfg) for p in range(2)]
    model = smcdiff.exact_score(prior.to(dtype=torch.float32), proc)

    def failing_batch(*args, **kwargs):
        raise smcdiff.SMCDiffError("a non-finite particle in run 1")

    monkeypatch.setattr(gi, "solve_batch", failing_batch)
    rows = gi.solve_cell(model, probs, "none", cfg, "cpu")
    assert len(rows) == 2 and not any(r["batched"] for r in rows)
    assert all(r["nfe"] == 4 and r["sw"] > 0 for r in rows)


def test_outputs_are_written_after_each_cell(tmp_path, monkeypatch):
    """A run stopped after its first cell (here by an interrupt in the second) has already
    written that cell to gmm_inverse.json / .md, marked as partial."""
    calls = []
    real = gi.solve_cell

    def stop_on_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gi, "solve_cell", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        gi.run(tmp_path, quick=True, progress=False, d_ys=(1,), methods=("none", "ddrm"),
               tracks=("exact",), n_particles=16, n_steps=3, n_ref=50)  # fmt: skip
    doc = json.loads((tmp_path / "gmm_inverse.json").read_text())
    assert doc["complete"] is False and [r["method"] for r in doc["problems"]] == ["none"]
    assert [r["method"] for r in doc["summary"]] == ["none"]
    assert "**Partial**" in (tmp_path / "gmm_inverse.md").read_text()


@pytest.mark.slow
def test_mcgdiff_and_ddrm_rows_get_the_observation():
    """The papers' baselines through the experiment's rows: batched (A stacked per problem) and
    problem by problem. MCGdiff (exact score) lands near each posterior, with log Z; DDRM (not
    exact) is at least nearer than the prior."""
    proc, prior = smcdiff.VP(), gi.make_prior(8)
    cfg = gi.settings(True, d_ys=(4,), n_problems=2, n_particles=512)
    probs = [gi._with_truth(prior, proc, float(proc.t_min), 4, p, cfg) for p in range(2)]
    model = smcdiff.exact_score(prior.to(dtype=torch.float32), proc)
    none = gi.solve_batch(model, probs, "none", cfg, "cpu")
    mcg = gi.solve_batch(model, probs, "mcgdiff", cfg, "cpu")
    ddrm = gi.solve_batch(model, probs, "ddrm", cfg, "cpu")
    for i in range(2):
        assert mcg[i]["batched"] and mcg[i]["nfe"] == cfg["n_steps"]  # none: one more
        assert mcg[i]["sw"] < 0.1 * none[i]["sw"], (i, mcg[i]["sw"], none[i]["sw"])
        assert abs(mcg[i]["log_z_err"]) < 2.0 and 0 < mcg[i]["ess_frac"] <= 1
        assert ddrm[i]["sw"] < none[i]["sw"] and "log_z_err" not in ddrm[i]
    one = gi.solve(model, probs[1], "mcgdiff", cfg, seed=0, device="cpu")
    assert one["sw"] < 0.1 * none[1]["sw"] and not one["batched"]
