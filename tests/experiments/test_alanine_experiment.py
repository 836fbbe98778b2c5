"""alanine experiment: tempering from hot-law draws is exact on a Gaussian (log Z ratio and
moments in closed form); the configurational temperature identity holds on the shipped MD sets
and on tempered SMC's 300 K particles; the basin partition; a tiny end-to-end run."""

import json
import math

import pytest
import torch
from smcdiff_experiments import alanine as ala
from smcdiff_experiments import alanine_prior as ap
from smcdiff_targets.alanine import AlanineDipeptide, load_alanine_md

from smcdiff.energy.options import TemperedOptions
from smcdiff.engine.smc import run_smc
from tests.stats import assert_unbiased, assert_within

F64 = torch.float64


class Gaussian15:
    """:math:`\\tilde\\pi(x) = e^{-|x|^2/2\\sigma^2}` on particles of shape (5, 3) (the molecule's
    layout): :math:`\\tilde\\pi^r` is :math:`N(0, \\sigma^2/r)`, and
    :math:`\\log Z_\\pi/Z_{\\pi^r} = (d/2)\\log r` exactly."""

    dim, event_shape, sigma = 15, (5, 3), 0.5

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum((-1, -2)) / self.sigma**2


def test_hot_start_tempering_is_exact_on_a_gaussian():
    """Pool: exact draws of pi^r; 16 independent runs of 400 particles. log Z-hat averages to the
    closed form and the final second moment is d sigma^2 (both z-tests on the runs' spread)."""
    tgt, r, G, N = Gaussian15(), 0.25, 16, 400
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(20_000, 5, 3, generator=gen, dtype=F64) * (tgt.sigma / math.sqrt(r))
    opts = TemperedOptions(kernel="mala", n_moves=3, target_ess=0.5, step_size=0.1)
    fk = ala.HotStartTempering(tgt, pool, r, opts, dtype=F64)
    run = run_smc(fk, N, n_groups=G, generator=torch.Generator().manual_seed(1),
                      progress=False)  # fmt: skip
    assert float(run.trace["temperature"][-1].min()) == 1.0
    exact = 0.5 * tgt.dim * math.log(r)
    assert_unbiased(run.log_z, exact, n_se=4.5, bias=0.02, max_se=0.08, what="log Z ratio")
    x = run.state["x"].reshape(G, N, -1)
    m2 = (run.log_weights.exp() * x.square().sum(-1)).sum(-1)
    assert_unbiased(m2, tgt.dim * tgt.sigma**2, n_se=4.5, max_se=0.05, what="E|x|^2")


@pytest.mark.slow
def test_configurational_temperature_of_md_sets():
    """T_conf = <|grad U|^2> / (R <lap U>) reads the MD temperatures (an exact identity; the
    integrator's configurational bias at 1 fs is far below the error). 320 evenly spaced
    configurations in 4 chunks, SE from the chunks (~2 %: |grad U|^2 varies ~40 % per
    configuration)."""
    for temp in (300.0, 1000.0):
        x = ala.spread(load_alanine_md(temp)["configs"], 320)
        mol = AlanineDipeptide(temp)
        chunks = [ala.configurational_temperature(mol, c) for c in x.chunk(4)]
        assert_unbiased(torch.tensor(chunks), temp, n_se=4.5, max_se=0.04 * temp,
                        what=f"T_conf at {temp:g} K")  # fmt: skip


@pytest.mark.slow
def test_tempered_smc_reaches_300_kelvin():
    """1000 K MD pool -> 300 K, 8 independent runs of 64 particles (one batched engine run): the
    weighted particles' configurational temperature is 300 K (the runs' spread as the SE, ~6 K);
    a sampler ending at 333 K (target 0.9 log pi) fails it."""
    mol = AlanineDipeptide(300.0)
    pool = load_alanine_md(1000.0)["configs"]
    opts = TemperedOptions(kernel="hmc", n_moves=2, target_ess=0.5, step_size=0.002,
                           kernel_options={"n_leapfrog": 8})  # fmt: skip
    fk = ala.HotStartTempering(mol, pool, 0.3, opts, dtype=F64)
    G, N = 8, 64
    run = run_smc(fk, N, n_groups=G, generator=torch.Generator().manual_seed(0), progress=False)
    assert float(run.trace["temperature"][-1].min()) == 1.0
    x, w = run.state["x"].reshape(G, N, 22, 3), run.log_weights.exp()
    temps = [ala.configurational_temperature(mol, x[g], w[g]) for g in range(G)]
    assert_unbiased(torch.tensor(temps), 300.0, n_se=4.5, max_se=8.0, what="T_conf (SMC)")


def test_basins_partition_the_torus():
    deg = torch.tensor([[-150.0, 160.0], [-80.0, 70.0], [-70.0, -40.0], [60.0, 40.0],
                        [70.0, -70.0], [-150.0, -170.0], [-10.0, 31.0]])  # fmt: skip
    got = ala.basin_index(torch.deg2rad(deg)).tolist()
    assert got == [0, 1, 2, 3, 3, 0, 1]
    grid = torch.deg2rad(torch.cartesian_prod(torch.arange(-180.0, 180.0, 7.0),
                                              torch.arange(-180.0, 180.0, 7.0)))  # fmt: skip
    pops = ala.basin_populations(grid)
    assert abs(float(pops.sum()) - 1.0) < 1e-9 and bool((pops > 0).all())


def test_kl_is_zero_on_itself_and_free_energies():
    pp = load_alanine_md(300.0)["phi_psi"]
    assert ala.kl_phi_psi(pp, pp) == pytest.approx(0.0, abs=1e-12)
    assert ala.kl_phi_psi(pp, load_alanine_md(1000.0)["phi_psi"]) > 0.05
    pops = torch.tensor([0.2, 0.5, 0.2, 0.1], dtype=F64)
    df = ala.free_energies(pops, 2.0)
    assert_within(df, -2.0 * torch.log(pops / 0.5), torch.full((4,), 1e-12), n_se=1.0)


TINY = dict(n_particles=24, n_moves=1, n_leapfrog=2, final_moves=1, n_tconf_md=16,
            figure=False)  # fmt: skip
TINY_PRIOR = dict(hidden=8, depth=2, n_iters=10, batch_size=16, n_particles=16, n_steps=3,
                  corrector_moves=2)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["quick", "cuda"])
def test_tiny_run_writes_every_route(tmp_path, profile):
    """``--quick``'s code path, and the ``cuda`` profile's (its FKC options, one seed of its
    three) at tiny sizes on the CPU: every tempered and learned-prior row is written, with
    finite KL and populations summing to 1."""
    prior = TINY_PRIOR if profile == "quick" else {**TINY_PRIOR, "augment": [1, 1, 2, 0.002]}
    rows = ala.run(tmp_path, quick=profile == "quick", profile=profile, progress=False,
                   seeds=[0], prior=prior, **TINY)  # fmt: skip
    blob = json.loads((tmp_path / "alanine.json").read_text())
    methods = [r["method"] for r in rows]
    prior = [f"prior {m}{c}" for m in ap.PRIOR_METHODS for c in ("", "+mala")]
    assert set(prior) <= set(methods) and "tempered-hmc" in methods, (methods, blob["errors"])
    assert not blob["errors"] and not blob["skipped"]
    assert blob["md"]["n_blocks"] >= 4 and blob["training"]["n_params"] > 0
    for r in blob["rows"]:
        if r["seed"] is not None:
            assert math.isfinite(r["kl"]) and abs(sum(r["populations"]) - 1) < 1e-9
    text = (tmp_path / "alanine.md").read_text()
    assert "C7eq" in text and "model check, prior at 1000 K" in text


def test_hot_samples_keep_the_law():
    """HMC sets grown from exact draws of a Gaussian (the (5, 3) layout) stay draws of it: the
    mean of |x|^2 / (d sigma^2) of each new set of 4000 is 1 (SE ~ 1.5 % per set, the sets'
    own spread); the sets moved away from the pool."""
    tgt = Gaussian15()
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(4000, 5, 3, generator=gen, dtype=F64) * tgt.sigma
    data, acc = ap.hot_samples(pool, tgt.log_prob, 3, 4, 5, 0.3 * tgt.sigma, seed=0)
    assert data.shape == (16_000, 5, 3) and torch.equal(data[:4000], pool) and 0.5 < acc < 1
    ratio = data[4000:].reshape(3, 4000, -1).square().sum(-1) / (tgt.dim * tgt.sigma**2)
    se = float(ratio.std() / math.sqrt(4000))
    for r in ratio:
        assert abs(float(r.mean()) - 1.0) < 4.5 * se
    assert float((data[-4000:] - pool.float()).abs().mean()) > 0.1 * tgt.sigma


def test_outputs_survive_an_interrupted_run(tmp_path, monkeypatch):
    """Rows are written as each run finishes: a run killed in its second stage leaves the first
    stage's row in ``alanine.json``."""
    calls = []
    real = ala.sampler_row

    def once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ala, "sampler_row", once)
    with pytest.raises(KeyboardInterrupt):
        ala.run(tmp_path, quick=True, progress=False, seeds=[0], kernels=["hmc", "mala"],
                prior_methods=[], **TINY)  # fmt: skip
    blob = json.loads((tmp_path / "alanine.json").read_text())
    assert [r["method"] for r in blob["rows"]][-1] == "tempered-hmc"


def test_time_budget_skips_what_does_not_fit(tmp_path):
    """A budget shorter than the prior's training reserve: the tempered run (no estimate yet)
    runs, the training is skipped and so is every prior run (no prior), all listed; the tables
    are still written."""
    ala.run(tmp_path, quick=True, progress=False, seeds=[0], time_budget_s=30.0,
            prior={"reserve_s": 1e6}, **TINY)  # fmt: skip
    blob = json.loads((tmp_path / "alanine.json").read_text())
    assert [r["method"] for r in blob["rows"]][-1] == "tempered-hmc"
    assert blob["skipped"] == ["train prior seed 0"] + [
        f"prior {m} seed 0 (no prior)" for m in ap.PRIOR_METHODS
    ]
    assert "skipped (time budget): train prior seed 0" in (tmp_path / "alanine.md").read_text()


@pytest.mark.slow
def test_metrics_of_md_frames_against_md():
    """:func:`sample_metrics` on 200 evenly spaced stored 300 K configurations (a subset of the
    reference frames): the KL is at most its floor for 200 evenly spaced frames, the energy W1
    is that of 200 frames, T_conf reads 300 K (SE ~ 10 K at 200 configurations); weighted
    populations are those of :func:`basin_populations`."""
    md = load_alanine_md(300.0)
    x = ala.spread(md["configs"], 200)
    got = ala.sample_metrics(x, None, md, 300.0, 24)
    assert got["kl"] <= ala.kl_floor(md["phi_psi"], 200) + 0.05
    assert got["w1_energy"] < 3.0 and got["nonfinite_energy_frac"] == 0.0
    assert abs(got["T_conf"] - 300.0) < 45.0
    weights = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=F64)
    pops = ala.sample_metrics(x, weights, md, 300.0, 24)["populations"]
    want = ala.basin_populations(AlanineDipeptide().phi_psi(x), weights).tolist()
    assert pops == pytest.approx(want, abs=1e-12)


def test_fk_reward_turns_the_hot_law_into_the_cold_one():
    """log pi_1000(x) + r(x) = log pi_300(x) exactly for FK's reward r = -U (1/kT - 1/kT0), on
    model coordinates (Å) of MD configurations; FKC / DriftLite anneal by gamma = T0 / T."""
    cfg = ala.settings(True)
    x = load_alanine_md(1000.0)["configs"][:50]
    energy = ap.EnergyCounter(AlanineDipeptide(300.0))
    opts = ap.steer_options("fk", cfg, energy)
    got = AlanineDipeptide(1000.0).log_prob(x) + opts["reward"](ap.to_model(x))
    assert torch.allclose(got, AlanineDipeptide(300.0).log_prob(x), rtol=1e-12, atol=1e-9)
    assert energy.rows == 50
    assert ap.steer_options("fkc-target", cfg, energy)["anneal"] == pytest.approx(1000 / 300)


def test_chirality_fold_is_a_symmetry():
    """U(-x) = U(x) (the fold's premise) up to the prmtop's rounding of 180 deg to 3.141594 rad:
    cos(n phi - p) - cos(n phi + p) = -2 sin(n phi) sin(p - pi), so |U(-x) - U(x)| <= 2 |p - pi|
    sum_k k (5e-4 kJ/mol, 2e-4 kT at 300 K); bonds, angles, nonbonded exactly. Every MD frame
    is L (chirality +1), a reflected frame is D and the fold maps it back exactly; (phi, psi)
    of -x is -(phi, psi)."""
    mol = AlanineDipeptide(300.0)
    x = load_alanine_md(300.0)["configs"][::40]
    tors = mol.parameters["torsions"]
    flat = [(k, ph) for k, ph in zip(tors["k"], tors["phase"], strict=True) if ph > 1]
    bound = 2 * sum(abs(k) * abs(math.sin(ph - math.pi)) for k, ph in flat)
    assert 0 < bound < 1e-3
    terms, reflected = mol.energy_terms(x), mol.energy_terms(-x)
    for name in ("bonds", "angles", "nonbonded"):
        assert torch.allclose(terms[name], reflected[name], rtol=1e-12, atol=1e-10)
    assert float((terms["torsions"] - reflected["torsions"]).abs().max()) <= bound * (1 + 1e-9)
    assert bool((ap.chirality(x) > 0).all()) and bool((ap.chirality(-x) < 0).all())
    mixed = torch.where((torch.arange(x.shape[0]) % 2 == 0)[:, None, None], -x, x)
    assert torch.equal(ap.fold_chirality(mixed), x)
    pp, pp_reflected = mol.phi_psi(x), mol.phi_psi(-x)
    assert torch.allclose(torch.sin(pp_reflected), -torch.sin(pp), atol=1e-12)


def test_atom_egnn_is_e3_equivariant_but_tells_atoms_apart():
    """Rotations and reflections map the output, translations leave it; permuting two atoms does
    not permute it (the atom embedding), unlike the plain EGNN; the output is mean-free."""
    torch.manual_seed(0)
    net = ap.AtomEGNN(22, hidden=8, depth=2).double()
    with torch.no_grad():
        net.layers[0].atom_embedding.mul_(10.0)
    x, t = torch.randn(3, 22, 3, dtype=F64), torch.rand(3, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64))
    out = net(x, t)
    assert torch.allclose(net(x @ q.T + 1.5, t), out @ q.T, atol=1e-10)
    assert torch.allclose(net(-x, t), -out, atol=1e-10)
    assert torch.allclose(out.mean(1), torch.zeros(3, 3, dtype=F64), atol=1e-12)
    perm = torch.arange(22)
    perm[[0, 5]] = perm[[5, 0]]
    assert not torch.allclose(net(x[:, perm], t), out[:, perm], atol=1e-6)
