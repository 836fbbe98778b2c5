"""alanine experiment: tempering from hot-law draws is exact on a Gaussian (log Z ratio and
moments in closed form); the configurational temperature identity holds on the shipped MD sets
and on tempered SMC's 300 K particles; the basin partition; a tiny end-to-end run."""

import json
import math

import pytest
import torch
from smcdiff_experiments import alanine as ala
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


def test_tiny_run_writes_results(tmp_path):
    rows = ala.run(tmp_path, quick=True, progress=False, n_particles=24, n_moves=1,
                   n_leapfrog=2, final_moves=1, n_tconf_md=16, figure=False)  # fmt: skip
    blob = json.loads((tmp_path / "alanine.json").read_text())
    assert [r["method"] for r in rows][-1] == "tempered-hmc"
    assert blob["md"]["n_blocks"] >= 4
    assert "C7eq" in (tmp_path / "alanine.md").read_text()
