"""Weight-degeneracy diagnostics: the issue's collapsed FK run (beta=100) is flagged by each of
the three numbers, with a DegeneracyWarning and a readable report; the README run (beta=2) is not.

Measured (seed 0, CPU): collapsed run: minimum ESS 4.1 of 1000 at step 48 (threshold 10), 2
distinct ancestors (threshold 5; 3 on CUDA), Pareto k 1.15 at an ESS of 31 (threshold 0.7 where ESS < 100);
README run: minimum ESS 1981 of 4096, 1931 ancestors, largest Pareto k 0.39. Both far from the
thresholds, so the seeded tests cannot flake.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff.diagnostics import degeneracy as dg
from smcdiff.errors import DegeneracyWarning, NonFiniteError

PRIOR = smcdiff.GaussianMixture(
    weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 0.0]], covs=[[0.5, 0.5], [0.5, 0.5]]
)
MODEL = smcdiff.exact_score(PRIOR, smcdiff.VP())


def bad_reward(x):
    return x @ torch.tensor([0.0, 1.5]) - (x**2).sum(-1) / 2


@pytest.fixture(scope="module")
def collapsed():
    with pytest.warns(DegeneracyWarning, match=r"the ESS fell to .* at step \d+") as rec:
        res = smcdiff.steer(MODEL, reward=bad_reward, beta=100.0, method="fk", n_particles=1000,
                            seed=0, progress=False, tilt_schedule="snr")  # fmt: skip
    assert len(rec) == 1
    return res


@pytest.fixture(scope="module")
def healthy():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegeneracyWarning)
        return smcdiff.steer(MODEL, reward=lambda x: -x[:, 1] ** 2, beta=2.0, method="fk",
                             n_particles=4096, n_steps=100, seed=0, progress=False,
                             tilt_schedule="snr")  # fmt: skip


def test_degeneracy_warning_is_a_user_warning_exported_at_the_top():
    assert smcdiff.DegeneracyWarning is DegeneracyWarning
    assert issubclass(DegeneracyWarning, UserWarning)


def test_min_ess_flags_the_collapsed_run_not_the_healthy_one(collapsed, healthy):
    bad, good = collapsed.diagnose(), healthy.diagnose()
    assert bad.min_ess[0] < dg.MIN_ESS_FRACTION * 1000 < bad.final_ess[0]  # final ESS looks fine
    assert any("ESS fell" in p for p in bad.problems)
    assert good.min_ess[0] > 0.3 * 4096 and not any("ESS fell" in p for p in good.problems)
    assert float(collapsed.min_ess) == pytest.approx(bad.min_ess[0])


def test_distinct_ancestors_flag_the_collapsed_run_not_the_healthy_one(collapsed, healthy):
    bad, good = collapsed.diagnose(), healthy.diagnose()
    assert bad.distinct_ancestors[0] < dg.MIN_DISTINCT_FLOOR
    assert any("descend from" in p for p in bad.problems)
    assert good.distinct_ancestors[0] > 1000 and not any("descend" in p for p in good.problems)
    assert bad.per_step["distinct_ancestors"].shape == bad.per_step["ess"].shape


def test_per_step_pareto_k_flags_the_collapsed_run_not_the_healthy_one(collapsed, healthy):
    bad, good = collapsed.diagnose(), healthy.diagnose()
    assert bad.max_pareto_k[0] > 0.9 and any("Pareto k" in p for p in bad.problems)
    assert good.max_pareto_k[0] < 0.55 and not any("Pareto k" in p for p in good.problems)
    # the final weights alone look fine: that is why per-step k is needed
    assert collapsed.pareto_k() < dg.PARETO_K_MAX


def test_the_report_says_what_where_and_what_to_try(collapsed, healthy):
    text = str(collapsed.diagnose())
    assert "DEGENERATE" in text and "step" in text and "what to try" in text
    assert "n_particles" in text and "(t=" in text
    assert healthy.diagnose().ok and "no sign of weight degeneracy" in str(healthy.diagnose())


def test_repr_shows_the_minimum_ess_and_its_step(collapsed):
    r = repr(collapsed)
    step = int(collapsed.ess.argmin())
    assert f"min_ess={float(collapsed.min_ess):.1f} (step {step})" in r and "final_ess=" in r


def test_arviz_posterior_does_not_claim_more_draws_than_the_minimum_ess(collapsed, healthy):
    idata = collapsed.to_arviz()
    n = round(float(collapsed.min_ess))
    assert idata.posterior["x"].shape == (1, n, 2) and n < 10
    diag = idata["smc_diagnostics"]
    assert set(diag.data_vars) == {"ess", "distinct_ancestors", "pareto_k"}
    assert diag["ess"].dims == ("chain", "step") and diag.attrs["degenerate"] == 1
    assert "ESS fell" in diag.attrs["problems"]
    assert healthy.to_arviz()["smc_diagnostics"].attrs["degenerate"] == 0
    assert collapsed.to_arviz(n_draws=1000).posterior["x"].shape == (1, 1000, 2)


def test_grouped_runs_name_the_run():
    with pytest.warns(DegeneracyWarning, match=r"run \d: the ESS fell"):
        res = smcdiff.steer(MODEL, reward=bad_reward, beta=100.0, n_particles=1000, n_runs=2,
                            seed=1, progress=False, tilt_schedule="snr")  # fmt: skip
    rep = res.diagnose()
    assert rep.min_ess.shape == (2,) and rep.per_step["pareto_k"].shape == (101, 2)
    assert res.min_ess.shape == (2,)


def test_an_errors_partial_is_an_smc_result():
    calls = {"n": 0}

    def reward(x):
        calls["n"] += 1
        r = -(x**2).sum(-1)
        return r if calls["n"] < 4 else torch.full_like(r, math.nan)

    with pytest.raises(NonFiniteError, match="reward") as e:
        smcdiff.steer(MODEL, reward=reward, n_particles=64, n_steps=10, seed=0, progress=False)
    part = e.value.partial
    assert isinstance(part, smcdiff.SMCResult)
    assert part.completed_steps == e.value.step - 1 and part.ess.shape == (e.value.step,)
    assert part.resample(8, seed=0).shape == (8, 2) and part.diagnose().per_step["ess"].shape[0]
    assert part.to_arviz()["smc_diagnostics"]["ess"].shape == (1, e.value.step)
    assert part.info["method"] == "fk"


@pytest.mark.parametrize("method", ["mala", "tempered"])
def test_sample_results_have_ess_resample_arviz_and_a_report(method):
    target = smcdiff.as_target(lambda x: -0.5 * (x**2).sum(-1), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegeneracyWarning)
        res = smcdiff.sample(target, method=method, n_particles=64, seed=0, progress=False,
                             **({"n_steps": 20} if method == "mala" else {}))  # fmt: skip
    assert res.ess.shape[0] >= 1 and res.resample(5, seed=0).shape == (5, 2)
    assert res.to_arviz().posterior["x"].shape[1] == round(float(res.min_ess))
    assert res.diagnose().ok and "min_ess=" in repr(res)


def test_a_result_without_a_trace_has_a_one_step_ess():
    lw = torch.log_softmax(torch.randn(50, dtype=torch.float64), 0)
    res = smcdiff.SMCResult(torch.randn(50, 2), lw, torch.tensor(0.0), {})
    assert res.ess.shape == (1,) and res.diagnose().min_ess.shape == (1,)


def test_plot_ancestors_draws_the_collapse(collapsed, healthy):
    import matplotlib

    from smcdiff.diagnostics import plot_ancestors

    matplotlib.use("Agg")
    fig = plot_ancestors([("beta=100", collapsed), ("beta=2", healthy)])
    ax = fig.axes[0]
    bad, good = ax.lines[0].get_ydata(), ax.lines[1].get_ydata()
    assert bad[0] == 1.0 and bad[-1] * 1000 < dg.MIN_DISTINCT_FLOOR and good[-1] > 0.3
    assert ax.get_yscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]
    with pytest.raises(smcdiff.SMCDiffError, match="genealogy"):
        plot_ancestors(smcdiff.SMCResult(torch.zeros(4, 2), torch.zeros(4), torch.tensor(0.0), {}))


@pytest.mark.parametrize("low, flagged", [(9.9, True), (10.1, False)])
def test_the_min_ess_threshold_is_max_of_floor_and_one_percent(low, flagged):
    n = 1000
    lw = torch.full((n,), -math.log(n), dtype=torch.float64)
    ess = torch.tensor([n, low, n], dtype=torch.float64)
    res = smcdiff.SMCResult(torch.zeros(n, 2), lw, torch.tensor(0.0), {"ess": ess})
    assert (not res.diagnose().ok) is flagged


def test_a_warning_lists_a_few_problems_and_counts_the_rest():
    n, runs = 100, 10
    lw = torch.full((runs, n), -math.log(n), dtype=torch.float64)
    ess = torch.tensor([[n] * runs, [1.0] * runs, [n] * runs], dtype=torch.float64)
    res = smcdiff.SMCResult(torch.zeros(runs, n, 2), lw, torch.zeros(runs), {"ess": ess})
    with pytest.warns(DegeneracyWarning, match=r"run 5: .*\(and 4 more\)") as rec:
        res.diagnose().warn()
    assert "run 6" not in str(rec[0].message) and len(res.diagnose().problems) == runs


def test_the_front_doors_cheap_check_gives_the_full_verdict(collapsed, healthy):
    assert collapsed.diagnose(full=False).problems == collapsed.diagnose().problems
    cheap = healthy.diagnose(full=False)
    assert cheap.ok and np.isnan(cheap.per_step["pareto_k"]).all()
