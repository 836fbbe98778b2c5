r"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) in vacuum, Amber ff96, as a batched torch energy.

The standard Boltzmann-generator molecule: the system of ``openmmtools.testsystems.
AlanineDipeptideVacuum(constraints=None)`` (its prmtop, built by tleap with ``leaprc.ff96``, ships
in ``data/``), its parameters exported once from OpenMM by ``data/alanine_export.py`` into
``data/alanine_dipeptide.json``. OpenMM is needed only to regenerate that file. OpenMM MD
reference sets at 300 K (12 ns) and 1000 K (1 ns) ship as ``data/alanine_md_{300,1000}K.npz``
(:func:`load_alanine_md`; made by ``experiments/alanine.py``, docs/alanine.md).

Conventions: positions ``x`` ``(N, 22, 3)`` in nm, atoms in the prmtop's order (:attr:`atom_names`);
energies in kJ/mol; :math:`\log\pi(x) = -U(x)/(k_B T)`, :math:`k_B T = R\,T` with
:math:`R = 0.00831446261815324` kJ mol⁻¹ K⁻¹ (OpenMM's ``BOLTZMANN * AVOGADRO``).

.. math::
    U(x) = \sum_{\text{bonds}} \tfrac12 k_b (r - r_0)^2
         + \sum_{\text{angles}} \tfrac12 k_\theta (\theta - \theta_0)^2
         + \sum_{\text{torsions}} k_\phi [1 + \cos(n\phi - \phi_0)]
         + \sum_{(i,j)} \Big[ \frac{C\, q_{ij}}{r_{ij}}
           + 4\varepsilon_{ij}\Big(\frac{\sigma_{ij}^{12}}{r_{ij}^{12}}
           - \frac{\sigma_{ij}^{6}}{r_{ij}^{6}}\Big)\Big]

— OpenMM's ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce`` and
``NonbondedForce`` with ``NoCutoff`` (vacuum: no cutoff, no reaction field, no dispersion
correction). The nonbonded sum runs over (a) every pair ``i < j`` that is not an exception, with
Lorentz–Berthelot combination :math:`q_{ij} = q_i q_j`, :math:`\sigma_{ij} = (\sigma_i +
\sigma_j)/2`, :math:`\varepsilon_{ij} = \sqrt{\varepsilon_i\varepsilon_j}`, and (b) the
exceptions with their own ``chargeProd``, ``sigma``, ``epsilon``: the 1-4 pairs (Amber's scaled
1/1.2 Coulomb and 1/2 LJ) and the 1-2 / 1-3 exclusions (all zero, so they drop out).
:math:`C = 1/(4\pi\varepsilon_0) = 138.935457...` kJ mol⁻¹ nm e⁻², measured from OpenMM.
The constraint-free system has flexible X-H bonds, as in FAB's target.

Exact, with no softening: the energy is :math:`+\infty`/NaN at coincident atoms and huge at
near-overlaps (as OpenMM's). :math:`U` is invariant to rigid motions, so :math:`e^{-U/k_BT}` is an
improper density on :math:`\mathbb R^{66}` (``log_z = None``): compare samples through internal
coordinates (:meth:`AlanineDipeptide.phi_psi`) or energies.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcdiff.checks import check_number, check_shape

__all__ = [
    "MOLAR_GAS_CONSTANT",
    "AlanineDipeptide",
    "dihedral",
    "load_alanine_md",
    "load_alanine_parameters",
]

MOLAR_GAS_CONSTANT = 0.00831446261815324
"""R = k_B N_A in kJ mol⁻¹ K⁻¹ (OpenMM's ``BOLTZMANN * AVOGADRO``)."""

_DATA = Path(__file__).resolve().parent / "data"
TERMS = ("bonds", "angles", "torsions", "nonbonded")


@cache
def _read(name: str) -> dict[str, Any]:
    return json.loads((_DATA / name).read_text())


def load_alanine_parameters() -> dict[str, Any]:
    """The exported force-field parameters (``data/alanine_dipeptide.json``, OpenMM units)."""
    return _read("alanine_dipeptide.json")


def load_alanine_checks() -> dict[str, Any]:
    """OpenMM's stored energies and forces on fixed configurations
    (``data/alanine_dipeptide_checks.json``; see ``data/alanine_export.py``)."""
    return _read("alanine_dipeptide_checks.json")


def load_alanine_md(temperature: float = 300.0) -> dict[str, Any]:
    """The shipped OpenMM MD reference at ``temperature`` (300 or 1000 K;
    ``data/alanine_md_{T}K.npz``, written by ``experiments/alanine.py``): ``phi_psi`` ``(n, 2)``
    rad and ``energy`` ``(n,)`` kJ/mol every 0.5 ps, ``block`` ``(n,)`` the 1 ns block of each
    frame, ``configs`` ``(m, 22, 3)`` nm (thinned; float64 tensors), and ``meta`` (the run's
    settings: integrator, time step, friction, length, wall time)."""
    path = _DATA / f"alanine_md_{temperature:g}K.npz"
    if not path.exists():
        shipped = sorted(p.name for p in _DATA.glob("alanine_md_*K.npz"))
        raise ValueError(f"load_alanine_md: no MD set at {temperature:g} K (shipped: {shipped})")
    with np.load(path) as z:
        out: dict[str, Any] = {
            k: torch.from_numpy(z[k]).double() for k in ("phi_psi", "energy", "configs")
        }
        out["block"] = torch.from_numpy(z["block"]).long()
        out["meta"] = json.loads(str(z["meta"]))
    return out


def dihedral(x: torch.Tensor, atoms: tuple[int, int, int, int]) -> torch.Tensor:
    r"""Signed dihedral angle (IUPAC, radians in :math:`(-\pi, \pi]`) of atoms ``(i, j, k, l)``,
    ``(N, n_atoms, 3) -> (N,)``.

    With :math:`b_1 = x_j - x_i`, :math:`b_2 = x_k - x_j`, :math:`b_3 = x_l - x_k`,
    :math:`n_1 = b_1\times b_2`, :math:`n_2 = b_2\times b_3`:
    :math:`\phi = \operatorname{atan2}(|b_2|\, b_1\cdot n_2,\; n_1\cdot n_2)` (OpenMM's and
    MDTraj's convention; trans = :math:`\pi`).
    """
    idx = torch.tensor([list(atoms)], device=x.device)
    return _dihedrals(x, idx)[:, 0]


def _angle(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Bond angles at the middle atom, ``(N, A)``, via atan2 (smooth near 0 and pi)."""
    u = x[:, idx[:, 0]] - x[:, idx[:, 1]]
    v = x[:, idx[:, 2]] - x[:, idx[:, 1]]
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def _dihedrals(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Dihedrals ``(N, T)`` of the atom quadruples ``idx`` ``(T, 4)`` (as :func:`dihedral`)."""
    b1 = x[:, idx[:, 1]] - x[:, idx[:, 0]]
    b2 = x[:, idx[:, 2]] - x[:, idx[:, 1]]
    b3 = x[:, idx[:, 3]] - x[:, idx[:, 2]]
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def _nonbonded_pairs(nb: dict[str, Any], n_atoms: int) -> dict[str, torch.Tensor]:
    """Every interacting pair with its ``(q_ij, sigma_ij, eps_ij)``, float64: the non-exception
    pairs ``i < j`` with Lorentz–Berthelot combination, then the exceptions whose charge
    product or epsilon is non-zero (the 1-4 pairs)."""
    q = torch.tensor(nb["charge"], dtype=torch.float64)
    sig = torch.tensor(nb["sigma"], dtype=torch.float64)
    eps = torch.tensor(nb["epsilon"], dtype=torch.float64)
    exc = nb["exceptions"]
    excluded = {tuple(sorted(p)) for p in exc["index"]}
    i, j = torch.triu_indices(n_atoms, n_atoms, 1)
    keep = torch.tensor(
        [(a, b) not in excluded for a, b in zip(i.tolist(), j.tolist(), strict=True)]
    )
    i, j = i[keep], j[keep]
    e_idx = torch.tensor(exc["index"], dtype=torch.long)
    e_q = torch.tensor(exc["charge_prod"], dtype=torch.float64)
    e_s = torch.tensor(exc["sigma"], dtype=torch.float64)
    e_e = torch.tensor(exc["epsilon"], dtype=torch.float64)
    live = (e_q != 0) | (e_e != 0)
    return {
        "i": torch.cat([i, e_idx[live, 0]]),
        "j": torch.cat([j, e_idx[live, 1]]),
        "qq": torch.cat([q[i] * q[j], e_q[live]]),
        "sigma": torch.cat([0.5 * (sig[i] + sig[j]), e_s[live]]),
        "epsilon": torch.cat([torch.sqrt(eps[i] * eps[j]), e_e[live]]),
    }


def _atom_indices(names: list[tuple[str, str]], *atoms: tuple[str, str]) -> tuple[int, ...]:
    """Indices of ``(residue, atom name)`` pairs in ``names``; each must occur exactly once."""
    out = []
    for atom in atoms:
        hits = [k for k, ra in enumerate(names) if ra == atom]
        if len(hits) != 1:
            raise ValueError(f"alanine dipeptide: expected one atom {atom}, found {hits}")
        out.append(hits[0])
    return tuple(out)


class AlanineDipeptide:
    r"""Alanine dipeptide in vacuum at ``temperature`` (K): ``log_prob(x)`` :math:`= -U(x)/k_BT`
    for ``x`` ``(N, 22, 3)`` in nm (module docstring: the energy, units, conventions).

    Follows ``x``'s device and dtype (float64 matches OpenMM's Reference platform to ~1e-10
    relative; float32 to ~1e-5). The small parameter tensors are cached per device and dtype.
    Attributes: ``atom_names``, ``residue_names``, ``elements``, ``masses`` (amu, ``(22,)``),
    ``phi_atoms`` / ``psi_atoms`` (the backbone dihedrals C-N-CA-C and N-CA-C-N),
    ``kT`` (kJ/mol), ``parameters`` (the exported dict).
    """

    n_atoms = 22
    spatial_dim = 3
    event_shape = (22, 3)
    dim = 66
    log_z = None

    def __init__(self, temperature: float = 300.0) -> None:
        self.temperature = check_number(
            "temperature", temperature, minimum=0.0, strict_min=True, where="AlanineDipeptide"
        )
        self.kT = MOLAR_GAS_CONSTANT * self.temperature
        self.parameters = p = load_alanine_parameters()
        self.name = "alanine_dipeptide"
        self.atom_names: list[str] = list(p["atoms"]["name"])
        self.residue_names: list[str] = list(p["atoms"]["residue"])
        self.elements: list[str] = list(p["atoms"]["element"])
        self.masses = torch.tensor(p["atoms"]["mass"], dtype=torch.float64)
        names = list(zip(self.residue_names, self.atom_names, strict=True))
        self.phi_atoms = _atom_indices(
            names, ("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C")
        )
        self.psi_atoms = _atom_indices(
            names, ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")
        )
        self._base = self._build_tensors(p)
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    @staticmethod
    def _build_tensors(p: dict[str, Any]) -> dict[str, torch.Tensor]:
        f64 = torch.float64
        t = {
            "bond_idx": torch.tensor(p["bonds"]["index"]),
            "bond_r0": torch.tensor(p["bonds"]["length"], dtype=f64),
            "bond_k": torch.tensor(p["bonds"]["k"], dtype=f64),
            "angle_idx": torch.tensor(p["angles"]["index"]),
            "angle_0": torch.tensor(p["angles"]["angle"], dtype=f64),
            "angle_k": torch.tensor(p["angles"]["k"], dtype=f64),
            "tors_idx": torch.tensor(p["torsions"]["index"]),
            "tors_n": torch.tensor(p["torsions"]["periodicity"], dtype=f64),
            "tors_phase": torch.tensor(p["torsions"]["phase"], dtype=f64),
            "tors_k": torch.tensor(p["torsions"]["k"], dtype=f64),
        }
        pairs = _nonbonded_pairs(p["nonbonded"], AlanineDipeptide.n_atoms)
        t.update({f"pair_{k}": v for k, v in pairs.items()})
        t["pair_qq"] = t["pair_qq"] * p["nonbonded"]["coulomb_constant"]  # C q_i q_j
        return t

    def __repr__(self) -> str:
        return f"AlanineDipeptide(temperature={self.temperature})"

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AlanineDipeptide:
        """``self``: every method follows ``x``'s device and dtype."""
        return self

    def _params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = {
                k: v.to(x.device, x.dtype if v.is_floating_point() else v.dtype)
                for k, v in self._base.items()
            }
        return self._cache[key]

    def _check(self, x: torch.Tensor, where: str) -> None:
        check_shape("x", x, (None, *self.event_shape), where=f"AlanineDipeptide.{where}")

    @property
    def n_pairs(self) -> int:
        """Number of interacting nonbonded pairs (non-excluded pairs and 1-4 pairs)."""
        return int(self._base["pair_i"].numel())

    def positions(
        self, device: str | torch.device | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """The prmtop's companion crd configuration (leap's extended build), ``(1, 22, 3)`` nm."""
        pos = torch.tensor(self.parameters["positions"], dtype=torch.float64)
        return pos.to(device=device, dtype=dtype).unsqueeze(0)

    # ----------------------------------------------------------------- energies
    def energy_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each force's energy (kJ/mol), ``(N, 22, 3) -> {term: (N,)}`` for the terms
        ``bonds``, ``angles``, ``torsions``, ``nonbonded`` (OpenMM's force groups)."""
        self._check(x, "energy_terms")
        p = self._params(x)
        bi = p["bond_idx"]
        r = (x[:, bi[:, 1]] - x[:, bi[:, 0]]).norm(dim=-1)
        theta = _angle(x, p["angle_idx"])
        phi = _dihedrals(x, p["tors_idx"])
        d = x[:, p["pair_i"]] - x[:, p["pair_j"]]
        r2 = d.square().sum(-1)
        s6 = (p["pair_sigma"].square() / r2) ** 3
        lj = 4.0 * p["pair_epsilon"] * (s6.square() - s6)
        return {
            "bonds": (0.5 * p["bond_k"] * (r - p["bond_r0"]).square()).sum(-1),
            "angles": (0.5 * p["angle_k"] * (theta - p["angle_0"]).square()).sum(-1),
            "torsions": (p["tors_k"] * (1.0 + torch.cos(p["tors_n"] * phi - p["tors_phase"]))).sum(
                -1
            ),
            "nonbonded": (lj + p["pair_qq"] * torch.rsqrt(r2)).sum(-1),
        }

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energy :math:`U(x)` in kJ/mol, ``(N, 22, 3) -> (N,)``."""
        return sum(self.energy_terms(x).values())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`-U(x)/k_BT`, ``(N, 22, 3) -> (N,)`` (unnormalised, improper: module docstring)."""
        return -self.energy(x) / self.kT

    def forces(self, x: torch.Tensor) -> torch.Tensor:
        r"""Forces :math:`-\nabla U(x)` in kJ/mol/nm, ``(N, 22, 3)`` (autograd; detached)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(xg).sum(), xg)
        return -grad

    # ----------------------------------------------------------------- coordinates
    def phi_psi(self, x: torch.Tensor) -> torch.Tensor:
        r"""Backbone dihedrals :math:`(\phi, \psi)` in radians, ``(N, 22, 3) -> (N, 2)``:
        :math:`\phi` = C(ACE)-N-CA-C, :math:`\psi` = N-CA-C-N(NME) (IUPAC signs)."""
        self._check(x, "phi_psi")
        idx = torch.tensor([self.phi_atoms, self.psi_atoms], device=x.device)
        return _dihedrals(x, idx)
