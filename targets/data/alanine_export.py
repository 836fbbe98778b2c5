r"""Regenerate ``alanine_dipeptide.json`` and ``alanine_dipeptide_checks.json`` from OpenMM.

Run once, from the repository root, with OpenMM installed (``pip install -e .[openmm]``)::

    python targets/data/alanine_export.py

Source of the system (nothing here needs the network):

* ``alanine-dipeptide.prmtop`` / ``alanine-dipeptide.crd`` in this folder are byte copies of
  ``openmmtools/data/alanine-dipeptide-gbsa/`` from the ``openmmtools`` 0.27.0 wheel on PyPI
  (MIT licence; built by tleap from ``sequence {ACE ALA NME}`` with ``leaprc.ff96``: Amber ff96).
  They are what ``openmmtools.testsystems.AlanineDipeptideVacuum`` loads; its system is
  ``AmberPrmtopFile(prmtop).createSystem(implicitSolvent=None, constraints=..., nonbondedCutoff=None)``
  and we use ``constraints=None`` (as FAB does): every bond is flexible.
* The system has a ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``,
  ``NonbondedForce`` (``NoCutoff``) and a ``CMMotionRemover`` (no energy). Their parameters are
  read from the OpenMM ``System`` (so unit conversions and the 1-4 scaling of the Amber
  exceptions, SCEE = 1.2, SCNB = 2.0, are OpenMM's), and the Coulomb constant is measured from
  OpenMM's Reference platform on a two-charge system.

``alanine_dipeptide_checks.json``: positions (nm) and OpenMM's energies (kJ/mol, per force and
total) and forces (kJ/mol/nm) on the Reference platform in double precision for: the crd
configuration; OpenMM's own (phi, psi) (``CustomTorsionForce("theta")``); random perturbations of it (Gaussian noise, std 0.005 / 0.01 / 0.02 nm); frames
of short Langevin MD at 300 K and at 1000 K (0.5 fs steps, seed fixed). The tests of
``smcdiff_targets.AlanineDipeptide`` compare against these values (always) and against a live
OpenMM (when it is installed).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PRMTOP = HERE / "alanine-dipeptide.prmtop"
CRD = HERE / "alanine-dipeptide.crd"
PHI = (4, 6, 8, 14)  # C(ACE) N CA C: checked against the atom names in the tests
PSI = (6, 8, 14, 16)  # N CA C N(NME)
FORCE_NAMES = {
    "HarmonicBondForce": "bonds",
    "HarmonicAngleForce": "angles",
    "PeriodicTorsionForce": "torsions",
    "NonbondedForce": "nonbonded",
}


def load_system():
    """``(topology, system, positions (22, 3) nm)`` of the vacuum system, every force in its
    own force group (bonds 0, angles 1, torsions 2, nonbonded 3)."""
    import openmm.app as app
    from openmm import unit

    prmtop = app.AmberPrmtopFile(str(PRMTOP))
    system = prmtop.createSystem(implicitSolvent=None, constraints=None, nonbondedCutoff=None)
    order = list(FORCE_NAMES)
    for force in system.getForces():
        name = type(force).__name__
        force.setForceGroup(order.index(name) if name in FORCE_NAMES else 31)
    pos = app.AmberInpcrdFile(str(CRD)).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return prmtop.topology, system, np.asarray(pos, dtype=np.float64)


def coulomb_constant() -> float:
    """OpenMM's :math:`1/(4\\pi\\varepsilon_0)` in kJ mol^-1 nm e^-2: the energy of two unit
    charges 1 nm apart under ``NonbondedForce`` (NoCutoff), Reference platform."""
    import openmm as mm

    system = mm.System()
    force = mm.NonbondedForce()
    for _ in range(2):
        system.addParticle(1.0)
        force.addParticle(1.0, 1.0, 0.0)
    system.addForce(force)
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions([mm.Vec3(0, 0, 0), mm.Vec3(1.0, 0, 0)])
    return ctx.getState(getEnergy=True).getPotentialEnergy()._value


def _params(system) -> dict:
    """Every energy term's parameters in OpenMM's units (nm, rad, kJ/mol, e)."""
    import openmm as mm

    out: dict = {}
    for force in system.getForces():
        if isinstance(force, mm.HarmonicBondForce):
            rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
            out["bonds"] = {
                "index": [[r[0], r[1]] for r in rows],
                "length": [r[2]._value for r in rows],
                "k": [r[3]._value for r in rows],
            }
        elif isinstance(force, mm.HarmonicAngleForce):
            rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
            out["angles"] = {
                "index": [list(r[:3]) for r in rows],
                "angle": [r[3]._value for r in rows],
                "k": [r[4]._value for r in rows],
            }
        elif isinstance(force, mm.PeriodicTorsionForce):
            rows = [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
            out["torsions"] = {
                "index": [list(r[:4]) for r in rows],
                "periodicity": [r[4] for r in rows],
                "phase": [r[5]._value for r in rows],
                "k": [r[6]._value for r in rows],
            }
        elif isinstance(force, mm.NonbondedForce):
            out["nonbonded"] = _nonbonded(force)
    return out


def _nonbonded(force) -> dict:
    import openmm as mm

    if force.getNonbondedMethod() != mm.NonbondedForce.NoCutoff:
        raise RuntimeError("expected NonbondedForce.NoCutoff for the vacuum system")
    parts = [force.getParticleParameters(i) for i in range(force.getNumParticles())]
    exc = [force.getExceptionParameters(i) for i in range(force.getNumExceptions())]
    return {
        "charge": [p[0]._value for p in parts],
        "sigma": [p[1]._value for p in parts],
        "epsilon": [p[2]._value for p in parts],
        "exceptions": {
            "index": [[e[0], e[1]] for e in exc],
            "charge_prod": [e[2]._value for e in exc],
            "sigma": [e[3]._value for e in exc],
            "epsilon": [e[4]._value for e in exc],
        },
        "coulomb_constant": coulomb_constant(),
    }


def export_parameters() -> dict:
    """The content of ``alanine_dipeptide.json``."""
    import openmm

    topology, system, pos = load_system()
    atoms = list(topology.atoms())
    return {
        "name": "alanine dipeptide (ACE-ALA-NME), vacuum, Amber ff96, no constraints",
        "source": {
            "prmtop": PRMTOP.name,
            "prmtop_sha256": hashlib.sha256(PRMTOP.read_bytes()).hexdigest(),
            "origin": "openmmtools 0.27.0 wheel (PyPI), data/alanine-dipeptide-gbsa (MIT)",
            "create_system": "AmberPrmtopFile.createSystem(implicitSolvent=None, "
            "constraints=None, nonbondedCutoff=None)",
            "openmm_version": openmm.__version__,
            "script": "targets/data/alanine_export.py",
        },
        "units": {"length": "nm", "energy": "kJ/mol", "charge": "e", "angle": "rad"},
        "atoms": {
            "name": [a.name for a in atoms],
            "residue": [a.residue.name for a in atoms],
            "element": [a.element.symbol for a in atoms],
            "mass": [system.getParticleMass(i)._value for i in range(system.getNumParticles())],
        },
        "positions": pos.tolist(),
        **_params(system),
    }


def _evaluate(context, pos: np.ndarray) -> tuple[dict, np.ndarray]:
    """OpenMM's energies per force group and total (kJ/mol) and forces (kJ/mol/nm)."""
    context.setPositions(pos)
    energies = {}
    for group, name in enumerate(FORCE_NAMES.values()):
        state = context.getState(getEnergy=True, groups={group})
        energies[name] = state.getPotentialEnergy()._value
    state = context.getState(getEnergy=True, getForces=True)
    energies["total"] = state.getPotentialEnergy()._value
    return energies, np.asarray(state.getForces(asNumpy=True)._value)


def md_frames(system, pos, temperature: float, n_frames: int, every: int, seed: int) -> list:
    """``n_frames`` positions from Langevin MD (0.5 fs, friction 1/ps) after a 1 ps warm-up."""
    import openmm as mm

    integ = mm.LangevinMiddleIntegrator(temperature, 1.0, 0.0005)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(temperature, seed)
    integ.step(2000)
    frames = []
    for _ in range(n_frames):
        integ.step(every)
        frames.append(np.asarray(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value))
    return frames


def openmm_dihedrals(configs: list, quads: list) -> list:
    """OpenMM's own dihedral angles (rad) of the atom quadruples ``quads`` for each
    configuration: a ``CustomTorsionForce("theta")`` per quadruple, read as an energy."""
    import openmm as mm

    system = mm.System()
    for _ in range(22):
        system.addParticle(1.0)
    for group, quad in enumerate(quads):
        force = mm.CustomTorsionForce("theta")
        force.addTorsion(*quad, [])
        force.setForceGroup(group)
        system.addForce(force)
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    out = []
    for c in configs:
        ctx.setPositions(c)
        out.append(
            [
                ctx.getState(getEnergy=True, groups={g}).getPotentialEnergy()._value
                for g in range(len(quads))
            ]
        )
    return out


def export_checks(seed: int = 0) -> dict:
    """The content of ``alanine_dipeptide_checks.json`` (module docstring)."""
    import openmm as mm

    _, system, pos = load_system()
    rng = np.random.default_rng(seed)
    configs, kinds = [pos], ["crd"]
    for std in (0.005, 0.01, 0.02):
        configs += [pos + std * rng.standard_normal(pos.shape) for _ in range(2)]
        kinds += [f"crd+N(0,{std}^2)"] * 2
    for temp, n in ((300.0, 4), (1000.0, 4)):
        configs += md_frames(system, pos, temp, n, 500, seed + int(temp))
        kinds += [f"md{temp:g}K"] * n
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for c in configs:
        e, f = _evaluate(ctx, c)
        energies.append(e)
        forces.append(f.tolist())
    return {
        "platform": "Reference (double precision)",
        "openmm_version": mm.__version__,
        "kind": kinds,
        "positions": [np.asarray(c).tolist() for c in configs],
        "energies": energies,
        "forces": forces,
        "phi_psi_atoms": [list(PHI), list(PSI)],
        "phi_psi": openmm_dihedrals(configs, [PHI, PSI]),
    }


def main() -> int:
    params = export_parameters()
    (HERE / "alanine_dipeptide.json").write_text(json.dumps(params, indent=1) + "\n")
    checks = export_checks()
    (HERE / "alanine_dipeptide_checks.json").write_text(json.dumps(checks) + "\n")
    print(f"wrote {HERE / 'alanine_dipeptide.json'} and alanine_dipeptide_checks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
