"""Alanine dipeptide: the torch energy against OpenMM.

Two sources of truth: OpenMM's energies, forces and dihedrals stored once in
``targets/data/alanine_dipeptide_checks.json`` (Reference platform, double precision; always
run), and a live OpenMM on fresh random and MD configurations (run when ``openmm`` is installed:
``pip install -e .[openmm]``).
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import smcdiff_targets
import torch
from smcdiff_targets.alanine import (
    MOLAR_GAS_CONSTANT,
    TERMS,
    AlanineDipeptide,
    dihedral,
    load_alanine_checks,
    load_alanine_md,
    load_alanine_parameters,
)

from smcdiff.errors import SMCDiffError
from smcdiff.seeding import seeded_generator as gen

F64 = torch.float64
EXPORT = Path(smcdiff_targets.__file__).resolve().parent / "data" / "alanine_export.py"


@pytest.fixture(scope="module")
def mol() -> AlanineDipeptide:
    return AlanineDipeptide()


@pytest.fixture(scope="module")
def stored() -> dict:
    c = load_alanine_checks()
    return {
        "x": torch.tensor(c["positions"], dtype=F64),
        "energy": {
            k: torch.tensor([e[k] for e in c["energies"]], dtype=F64) for k in c["energies"][0]
        },
        "forces": torch.tensor(c["forces"], dtype=F64),
        "phi_psi": torch.tensor(c["phi_psi"], dtype=F64),
        "kind": c["kind"],
    }


def _assert_match(mol, x, energy, forces, rtol):
    """Every term and the total within ``rtol`` of the largest |value| of that quantity, forces
    within ``rtol`` of the largest |force| component."""
    terms = mol.energy_terms(x)
    for name in TERMS:
        scale = energy[name].abs().max().clamp_min(1.0)
        err = (terms[name].to(F64) - energy[name]).abs().max()
        assert err <= rtol * scale, (name, float(err), float(scale))
    total = mol.energy(x).to(F64)
    assert (total - energy["total"]).abs().max() <= rtol * energy["total"].abs().max()
    f = mol.forces(x).to(F64)
    assert (f - forces).abs().max() <= rtol * forces.abs().max()


def test_stored_configurations_cover_md_and_perturbations(stored):
    kinds = set(stored["kind"])
    assert {"crd", "md300K", "md1000K"} <= kinds and len(stored["kind"]) >= 10
    assert stored["x"].shape[1:] == (22, 3)


def test_energies_and_forces_match_stored_openmm_float64(mol, stored):
    _assert_match(mol, stored["x"], stored["energy"], stored["forces"], rtol=1e-10)


def test_energies_and_forces_match_stored_openmm_float32(mol, stored):
    x32 = stored["x"].float()
    assert mol.energy(x32).dtype == torch.float32
    _assert_match(mol, x32, stored["energy"], stored["forces"], rtol=2e-5)


def test_phi_psi_match_openmm_dihedrals(mol, stored):
    """OpenMM's own ``CustomTorsionForce("theta")``: same signs (IUPAC) and values."""
    got = mol.phi_psi(stored["x"])
    assert torch.allclose(got, stored["phi_psi"], atol=1e-12, rtol=0)
    names = [(mol.residue_names[k], mol.atom_names[k]) for k in mol.phi_atoms + mol.psi_atoms]
    phi = [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C")]
    psi = [("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    assert names == phi + psi
    assert torch.allclose(dihedral(stored["x"], mol.phi_atoms), got[:, 0], atol=0, rtol=0)


def test_dihedral_of_a_known_geometry():
    """A hand-built quadruple: +60 degrees, its mirror image -60, cis 0, trans 180."""
    rows = []
    for ang in (60.0, -60.0, 0.0, 180.0):
        a = math.radians(ang)
        rows.append([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.0], [math.cos(a), math.sin(a), 1.0]])
    got = torch.rad2deg(dihedral(torch.tensor(rows, dtype=F64), (0, 1, 2, 3)))
    assert torch.allclose(got.abs(), torch.tensor([60.0, 60, 0, 180], dtype=F64), atol=1e-9)
    assert got[0] == -got[1] and got[0] > 0  # IUPAC: clockwise looking down j->k is positive


def test_log_prob_is_minus_energy_over_kT_and_rigid_invariant(mol, stored):
    hot = AlanineDipeptide(temperature=600.0)
    x = stored["x"]
    u = mol.energy(x)
    assert torch.allclose(mol.log_prob(x), -u / (MOLAR_GAS_CONSTANT * 300.0), rtol=1e-14)
    assert torch.allclose(hot.log_prob(x), 0.5 * mol.log_prob(x), rtol=1e-14)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(0), dtype=F64))
    moved = x @ q.T + torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    assert torch.allclose(mol.energy(moved), u, rtol=1e-11, atol=1e-9)
    perm = torch.randperm(x.shape[0], generator=gen(1))
    assert torch.equal(mol.energy(x[perm]), u[perm])  # rows never interact


def test_nonbonded_pairs_and_parameters(mol):
    p = load_alanine_parameters()
    n_exc = len(p["nonbonded"]["exceptions"]["index"])
    one_four = sum(
        q != 0 or e != 0
        for q, e in zip(
            p["nonbonded"]["exceptions"]["charge_prod"],
            p["nonbonded"]["exceptions"]["epsilon"],
            strict=True,
        )
    )
    assert mol.n_pairs == 22 * 21 // 2 - n_exc + one_four
    assert abs(p["nonbonded"]["coulomb_constant"] - 138.935457) < 1e-5
    assert abs(sum(p["nonbonded"]["charge"])) < 1e-6  # a neutral molecule


def test_bad_input_shape_and_temperature_raise(mol):
    with pytest.raises(SMCDiffError, match="x"):
        mol.energy(torch.zeros(2, 66, dtype=F64))
    with pytest.raises(SMCDiffError, match="temperature"):
        AlanineDipeptide(temperature=0.0)


# ----------------------------------------------------------------------------- live OpenMM
def _export_module():
    pytest.importorskip("openmm", reason="live comparison needs OpenMM: pip install -e .[openmm]")
    if not EXPORT.exists():
        pytest.skip("the export script ships with the repository, not the installed package")
    spec = importlib.util.spec_from_file_location("alanine_export", EXPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_live_openmm_random_and_md_configurations(mol):
    """Fresh configurations (not the stored ones): perturbations at other seeds and MD at 500 K."""
    ex = _export_module()  # skips without OpenMM
    import numpy as np
    import openmm as mm

    _, system, pos = ex.load_system()
    rng = np.random.default_rng(123)
    configs = [pos + s * rng.standard_normal(pos.shape) for s in (0.003, 0.008, 0.015)]
    configs += ex.md_frames(system, pos, 500.0, 3, 200, seed=7)
    ref = mm.Platform.getPlatformByName("Reference")
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), ref)
    evals = [ex._evaluate(ctx, c) for c in configs]
    energy = {k: torch.tensor([e[k] for e, _ in evals], dtype=F64) for k in evals[0][0]}
    forces = torch.tensor(np.stack([f for _, f in evals]), dtype=F64)
    _assert_match(mol, torch.tensor(np.stack(configs), dtype=F64), energy, forces, rtol=1e-10)


def test_live_openmm_reexport_equals_shipped_parameters():
    """The shipped parameter file is what the export script produces with this OpenMM."""
    ex = _export_module()
    fresh = json.loads(json.dumps(ex.export_parameters()))  # as the file stores it
    shipped = load_alanine_parameters()
    assert fresh["atoms"] == shipped["atoms"]
    for key in ("positions", "bonds", "angles", "torsions", "nonbonded"):
        got, want = _numbers(fresh[key]), _numbers(shipped[key])
        assert len(got) == len(want), key
        assert torch.allclose(torch.tensor(got, dtype=F64), torch.tensor(want, dtype=F64),
                              rtol=1e-12, atol=0), key  # fmt: skip


def _numbers(tree) -> list[float]:
    """Every number of a nested dict / list, in order."""
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in _numbers(tree[k])]
    if isinstance(tree, list):
        return [v for item in tree for v in _numbers(item)]
    return [float(tree)]


# ----------------------------------------------------------------------------- MD reference
@pytest.mark.parametrize("temperature", [300.0, 1000.0])
def test_shipped_md_sets_are_of_this_energy(mol, temperature):
    """The shipped OpenMM MD frames: their stored potential energies (OpenMM's) equal the torch
    energy of the stored configurations, and their stored (phi, psi) equal ``phi_psi`` of them
    (float32 storage: 1e-2 kJ/mol, 1e-5 rad). Configurations are every ``config_every``-th
    saved frame."""
    md = load_alanine_md(temperature)
    meta = md["meta"]
    every = round(meta["config_every_ps"] / meta["save_every_ps"])
    x = md["configs"]
    frames = torch.arange(x.shape[0]) * every
    assert meta["n_blocks"] == int(md["block"].max()) + 1 and meta["dt_fs"] == 1.0
    assert torch.allclose(mol.energy(x), md["energy"][frames], atol=1e-2, rtol=0)
    assert torch.allclose(mol.phi_psi(x), md["phi_psi"][frames], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="shipped"):
        load_alanine_md(450.0)
