"""The digits experiment: its helpers against exact answers, the shipped prior, and small steering
runs whose effect cannot be luck (steered PSNR and class accuracy far above the prior's)."""

import json
import warnings

import pytest
import torch
from smcdiff_experiments import digits as D

import smcdiff
from smcdiff.errors import DegeneracyWarning


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = D.load_digits_split()
    return data, D.load_prior(), D.train_classifier(data)


def test_split_is_fixed_and_disjoint(setup):
    a, b = setup[0], D.load_digits_split()
    assert a["x_train"].shape == (1437, 1, 8, 8) and a["x_test"].shape == (360, 1, 8, 8)
    assert torch.equal(a["x_test"], b["x_test"]) and torch.equal(a["y_train"], b["y_train"])
    assert a["x_train"].min() == -1 and a["x_train"].max() == 1
    train = {tuple(r.tolist()) for r in a["x_train"].flatten(1)}
    # load_digits holds a few duplicate images; nearly all test images are unseen
    assert sum(tuple(r.tolist()) in train for r in a["x_test"].flatten(1)) < 10


def test_operators_are_the_stated_linear_maps():
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sr = D.operator("sr2x")(x).reshape(3, 4, 4)
    assert torch.allclose(sr[:, 1, 2], x[:, 0, 2:4, 4:6].mean((-1, -2)))
    assert D.operator("inpaint_half")(x).shape == (3, 32)
    assert torch.equal(D.operator("inpaint_half")(x), x[:, 0, :4].flatten(1))
    k = D.blur_kernel()
    assert torch.isclose(k.sum(), torch.tensor(1.0)) and k[0, 0, 1, 1] == k.max()
    blurred = D.operator("blur")(torch.ones(1, 1, 8, 8)).reshape(8, 8)
    assert torch.allclose(blurred[1:-1, 1:-1], torch.ones(6, 6))  # a constant stays constant
    # y = A x + sigma eps: the residual of the true image is the noise, ~ chi^2_m / 2
    x0 = torch.zeros(1, 1, 8, 8)
    ll = torch.stack([D.observe("sr2x", x0, seed=s)[1](x0) for s in range(400)])
    assert abs(float(ll.mean()) + 16 / 2) < 4 * (2 * 16) ** 0.5 / 2 / 20


def test_batched_likelihood_scores_each_block_against_its_own_image(setup):
    """observe_batch: rows g*n .. (g+1)*n-1 are scored by image g's own likelihood (observe)."""
    x_true, n = setup[0]["x_test"][:3], 4
    ys, ll = D.observe_batch("sr2x", x_true, [100, 101, 102], n)
    x = torch.randn(3 * n, 1, 8, 8)
    for g in range(3):
        y, ll_g = D.observe("sr2x", x_true[g : g + 1], seed=100 + g)
        assert torch.equal(ys[g : g + 1], y)
        assert torch.allclose(ll(x)[g * n : (g + 1) * n], ll_g(x[g * n : (g + 1) * n]))
    with pytest.raises(ValueError, match="needs 3 x 4 rows"):
        ll(x[:5])


def test_weighted_quantiles_and_kid_are_exact():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(201, 5, generator=gen, dtype=torch.float64)
    w = torch.full((201,), 1 / 201, dtype=torch.float64)
    q = D.weighted_quantiles(x, w, (0.05, 0.5, 0.95))
    # the smallest value with cumulative weight >= q: the ceil(q N)-th order statistic
    ref = x.sort(0).values[[10, 100, 190]]
    assert torch.allclose(q, ref)
    w2 = torch.zeros(201, dtype=torch.float64)
    w2[7] = 1.0  # all mass on one row: every quantile is that row
    assert torch.allclose(D.weighted_quantiles(x, w2, (0.05, 0.95)), x[7].expand(2, 5))
    a, b = torch.randn(300, 64, generator=gen), torch.randn(300, 64, generator=gen)
    assert abs(D.kid(a, b)) < 0.01 < D.kid(a, b + 0.5)
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert D.diversity(pts) == pytest.approx(5.0)


def test_shipped_prior_is_the_scripts_own_and_denoises(setup):
    data, prior, _ = setup
    entry = smcdiff.training.checkpoint.read_checkpoint(D.CHECKPOINT)
    assert entry["net"]["config"] == {**entry["net"]["config"], **D.NET}
    assert D.CHECKPOINT.stat().st_size < 1_000_000
    # reloading reproduces the network exactly
    again = smcdiff.load_score(D.CHECKPOINT)
    x, t = data["x_test"][:50], torch.full((50,), 0.3)
    assert torch.equal(prior.net(x, t), again.net(x, t))
    # held-out eps error at t = 0.3 far below the error of predicting 0 (= E|eps|^2 = 1)
    gen = torch.Generator().manual_seed(0)
    x0 = data["x_test"]
    eps = torch.randn(x0.shape, generator=gen)
    tt = torch.full((len(x0),), 0.3)
    proc = prior.process
    a, s = proc.alpha(tt)[:, None, None, None], proc.sigma(tt)[:, None, None, None]
    with torch.no_grad():
        err = ((prior.net(a * x0 + s * eps, tt) - eps) ** 2).mean()
    assert err < 0.35


@pytest.mark.slow
def test_steering_beats_the_prior(setup):
    data, prior, clf = setup
    gains = {"fk": [], "tds": []}
    agree = {"fk": [], "tds": [], "none": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegeneracyWarning)
        for i in range(2):
            x_true, label = data["x_test"][i : i + 1], int(data["y_test"][i])
            _, ll = D.observe("inpaint_half", x_true, seed=100 + i)
            run = {m: smcdiff.steer(prior, method=m, log_likelihood=ll, n_particles=32,
                                    n_steps=50, seed=i, progress=False)
                   for m in ("none", "fk", "tds")}  # fmt: skip
            m = {k: D.inverse_metrics(r, x_true, label, clf) for k, r in run.items()}
            for k in agree:
                agree[k].append(m[k]["agreement"] / 2)
            for k in gains:
                gains[k].append(m[k]["psnr"] - m["none"]["psnr"])
    # dB of the posterior mean over the prior's mean; classifier agreement with the true class
    assert all(sum(g) / 2 > 3.0 for g in gains.values()), gains
    assert all(sum(agree[k]) > sum(agree["none"]) + 0.5 for k in gains), agree


@pytest.mark.slow
def test_class_reward_steers_fk_and_best_of_n(setup):
    data, prior, clf = setup
    cfg = {"n_out": 32, "n_cand": 8, "n_steps": 25}

    def log_p(x):
        return torch.log_softmax(clf(x), -1)[:, 3]

    acc = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegeneracyWarning)
        for m in ("none", "fk", "best-of-n"):
            x, nfe, _ = D.reward_outputs(prior, m, log_p, cfg, seed=0, device="cpu")
            acc[m] = D.reward_row(m, "log_p", 3, x, nfe, clf, data, 0.0)
    assert acc["fk"]["nfe_per_sample"] == acc["best-of-n"]["nfe_per_sample"] == 8 * 26
    assert acc["none"]["accuracy"] < 0.3
    assert acc["fk"]["accuracy"] > acc["none"]["accuracy"] + 0.4
    assert acc["best-of-n"]["accuracy"] > acc["none"]["accuracy"] + 0.2


@pytest.mark.slow
def test_tiny_run_writes_json_table_and_figures(tmp_path):
    sizes = {"n_images": 1, "problems": ("sr2x",), "n_particles": 16, "n_steps": 10,
             "classes": (3,), "n_out": 8, "n_cand": 2}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegeneracyWarning)
        rows = D.run(tmp_path, quick=True, progress=False, sizes=sizes)
    out = json.loads((tmp_path / "digits.json").read_text())
    assert out["summary"] == json.loads(json.dumps(rows))
    assert {r["method"] for r in out["inverse"]} == set(D.METHODS)
    assert len(out["reward"]) == sum(len(m) for m in D.REWARD_TASKS.values())
    assert out["meta"]["classifier_test_accuracy"] > 0.95
    for r in out["inverse"]:
        weighted = r["method"] in ("fk", "fk-snr", "tds", "tds-snr")
        assert (r["log_z"] is not None) == weighted and 0 <= r["coverage90"] <= 1
    for name in ("digits_inverse.png", "digits_reward.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
    assert "tds-snr" in D.format_table(rows)
    md = (tmp_path / "digits.md").read_text()
    assert "## Inverse problems" in md and "| sr2x | tds-snr |" in md and "eager ms/call" in md
    assert all(r["ms_per_nfe"] > 0 for r in out["inverse"] + out["reward"])
    assert out["timing"][0]["eager_ms"] > 0 and out["skipped"] == []
