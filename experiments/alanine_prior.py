r"""Alanine dipeptide: a prior learned from the 1000 K MD, annealed to 300 K (FK, FKC, DriftLite).

The learned-prior route of issue 11 (docs/alanine.md, "Learned prior"), run by
``smcdiff run alanine`` (:func:`smcdiff_experiments.alanine.run`) after or between the tempered
rows:

1. **Prior.** :class:`AtomEGNN` (:class:`smcdiff.nets.EGNN` plus a learned per-atom embedding in
   the node features: the 22 atoms are not interchangeable) as an eps-model under
   ``MeanFree(GeometricVE(sigma_min, sigma_max))``, trained by :func:`smcdiff.train_score` on the
   shipped 1000 K MD configurations (:func:`smcdiff_targets.alanine.load_alanine_md`, 2000
   frames of 1 ns), centred. The model works in Å (:data:`SCALE` times nm, a constant change of
   variables: the laws map exactly), where the EGNN's bounded coordinate updates and the
   schedule have the scale of DEM's particle systems.
2. **Chirality.** The EGNN is E(3)-equivariant, reflections included, and the Gaussian reference
   is symmetric, so :math:`p_\theta(-x) = p_\theta(x)`; Amber's energy is reflection-invariant too
   (:math:`U(-x) = U(x)`: bonds, angles, distances, and torsions with phases 0 or π). The
   sampled law is therefore a 50/50 mixture of L- and D-alanine, which MD never mixes (the
   chiral centre cannot invert). :func:`fold_chirality` maps the D rows to L by
   :math:`x \mapsto -x`: exact for any reflection-symmetric law (TBG does the same).
3. **Methods** (one :func:`smcdiff.steer` call per method and seed, options as
   ``experiments/molecules.py``'s :data:`~smcdiff_experiments.molecules.METHODS`): ``none``
   (the prior, at 1000 K: the model check against the 1000 K MD; at 300 K: the baseline),
   ``fk`` with the true energy as reward :math:`r(x) = -U(x)\,(1/k_BT - 1/k_BT_0)` (target
   :math:`p_\theta\,e^{r} = e^{-U/k_BT}` if :math:`p_\theta = e^{-U/k_BT_0}`), and ``fkc-target``
   / ``driftlite-vcg`` with ``anneal`` :math:`\gamma = T_0/T` (model scores only:
   :math:`p_\theta^\gamma`). Each also ``+mala``: its particles resampled to equal weights, then
   ``corrector_moves`` adapted MALA moves on the true :math:`e^{-U/k_BT}` on the mean-free
   subspace (:func:`smcdiff.processes.meanfree.subspace_corrector`).
4. **Metrics** (:func:`sample_metrics`): the tempered table's weighted KL of the (φ, ψ) histogram
   against the 12 ns MD (:func:`~smcdiff_experiments.alanine.kl_phi_psi`), basin populations,
   :math:`T_{\rm conf}`, energy W1 against the MD energies (particles resampled to equal
   weights; :func:`~smcdiff_experiments.molecules.wp_1d`), ESS, network evaluations (rows),
   true-energy evaluations (rows; a value with its gradient counts as one), wall seconds.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from smcdiff_experiments.alanine import (
    configurational_temperature,
    kl_floor,
    sample_metrics,
    sync,
)
from smcdiff_experiments.molecules import METHODS, fit_eps, loss_summary
from smcdiff_targets.alanine import MOLAR_GAS_CONSTANT, AlanineDipeptide
from torch import nn

import smcdiff
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.registry import get_kernel
from smcdiff.nets import EGNN
from smcdiff.processes import GeometricVE, MeanFree
from smcdiff.processes.meanfree import subspace_corrector
from smcdiff.seeding import make_generator

SCALE = 10.0
"""Model coordinates are Å: ``y = SCALE * x`` for ``x`` in nm."""
CHIRAL_ATOMS = (6, 8, 14, 10)
"""N, CA, C, CB of the alanine residue: the chirality of CA is the sign of
:math:`((x_N - x_{CA}) \\times (x_C - x_{CA}))\\cdot(x_{CB} - x_{CA})` (+1 for every MD frame)."""
PRIOR_METHODS = {
    "none": METHODS["anneal"]["none"],
    "fk": METHODS["reward"]["fk"],
    "fkc-target": METHODS["anneal"]["fkc-target"],
    "driftlite-vcg": METHODS["anneal"]["driftlite-vcg"],
}
"""``steer`` options per method (``fk`` adds the reward, FKC / DriftLite ``anneal``)."""


def _add_atom_embedding(layer: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the first EGNN layer: node features ``h`` ``(N, n, H)`` plus the
    layer's ``atom_embedding`` ``(n, H)``."""
    return (args[0] + layer.atom_embedding, *args[1:])


class AtomEGNN(EGNN):
    r""":class:`smcdiff.nets.EGNN` whose node features are the time embedding plus a learned
    embedding of each atom's index, :math:`h_i^0 = \mathrm{emb}(t) + e_i` (``(n, hidden)``; the
    same as a linear map of one-hot atom indices). Still exactly E(3)-equivariant and
    translation-invariant with a mean-free output; no longer permutation-equivariant, which a
    molecule with distinct atoms needs. (``EGNN`` takes no node features; the embedding enters
    through a forward pre-hook of its first layer.)"""

    def __init__(self, n_atoms: int, hidden: int = 64, depth: int = 3, **kwargs: Any):
        super().__init__(n_atoms, 3, hidden=hidden, depth=depth, **kwargs)
        first = self.layers[0]
        first.atom_embedding = nn.Parameter(torch.randn(n_atoms, hidden))
        first.register_forward_pre_hook(_add_atom_embedding)


def to_model(x: torch.Tensor) -> torch.Tensor:
    """Configurations in nm ``(N, 22, 3)`` -> centred model coordinates (Å)."""
    return SCALE * (x - x.mean(1, keepdim=True))


def chirality(x: torch.Tensor) -> torch.Tensor:
    """Sign of the CA chirality triple product (:data:`CHIRAL_ATOMS`), ``(N, 22, 3) -> (N,)``."""
    n, ca, c, cb = (x[:, i] for i in CHIRAL_ATOMS)
    return torch.sign((torch.linalg.cross(n - ca, c - ca) * (cb - ca)).sum(-1))


def fold_chirality(x: torch.Tensor) -> torch.Tensor:
    """Rows of negative chirality (D-alanine) reflected, :math:`x \\mapsto -x` (module
    docstring: exact for a reflection-symmetric law)."""
    return torch.where((chirality(x) < 0)[:, None, None], -x, x)


def hot_samples(
    pool: torch.Tensor, log_prob: Any, rounds: int, n_traj: int, n_leapfrog: int, step: float,
    seed: int = 0, device: str = "cpu",
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """The pool ``(M, *event)`` followed by ``rounds`` more sets of ``M``: each the previous set
    after ``n_traj`` HMC trajectories (``n_leapfrog`` steps of size ``step``, unit mass) on the
    exact ``log_prob``, and the mean acceptance. HMC leaves the law of ``log_prob`` invariant, so
    every set is a sample of it as far as the pool is; consecutive sets are correlated (more
    decorrelated configurations for training, not independent ones). Float32 on ``device``."""
    if rounds == 0:
        return pool, float("nan")
    kern = get_kernel("hmc")(log_prob, n_leapfrog=n_leapfrog)
    gen, _ = make_generator(seed, torch.device(device))
    state = kern.init(pool.to(device=device, dtype=torch.float32), gen)
    sets, acc = [pool], torch.zeros((), dtype=torch.float64, device=state.x.device)
    for _ in range(rounds):
        for _ in range(n_traj):
            state, move = kern.step(state, step, gen)
            acc = acc + move.accept_prob.double().mean()
        sets.append(state.x.detach().to(device=pool.device, dtype=pool.dtype))
    return torch.cat(sets), float(acc) / (rounds * n_traj)


def train_alanine_prior(
    data_nm: torch.Tensor, cfg: dict, device: str, progress: bool = False,
    temperature: float = 1000.0,
) -> tuple[Any, dict]:  # fmt: skip
    """The :class:`AtomEGNN` eps-model under ``MeanFree(GeometricVE(*cfg["sigmas"]))`` trained on
    ``data_nm`` ``(M, 22, 3)`` (nm, at ``temperature`` K) and, with ``cfg["augment"]`` =
    (rounds, trajectories, leapfrog steps, step nm), the :func:`hot_samples` HMC sets grown from
    it; its summary (loss over the first and last 10% of iterations, parameters, seconds,
    sizes; with augmentation its acceptance and the T_conf of the last set's first 200)."""
    torch.manual_seed(0)
    sync(device)
    start = time.perf_counter()
    rounds, n_traj, n_leap, step = cfg["augment"]
    mol = AlanineDipeptide(temperature)
    data, acc = hot_samples(data_nm, mol.log_prob, rounds, n_traj, n_leap, step, 0, device)
    extra = {}
    if rounds:
        extra = {
            "augment_accept": acc,
            "augment_seconds": time.perf_counter() - start,
            "augment_T_conf": configurational_temperature(mol, data[-200:].to(device)),
        }
    proc = MeanFree(GeometricVE(*cfg["sigmas"]), 22, 3)
    net = AtomEGNN(22, hidden=cfg["hidden"], depth=cfg["depth"])
    sync(device)
    start = time.perf_counter()
    model = fit_eps(net, proc, to_model(data), cfg, device, cfg["n_iters"], progress)
    sync(device)
    return model, {
        **loss_summary(model, net),
        "seconds": time.perf_counter() - start,
        "sizes": f"{cfg['depth']}x{cfg['hidden']}, {cfg['n_iters']} it, batch "
        f"{cfg['batch_size']}, {data.shape[0]} configurations",
        **extra,
    }


class EnergyCounter:
    """:math:`U(y/\\mathrm{SCALE})` (kJ/mol) of model coordinates ``y`` ``(N, 22, 3)`` (Å),
    counting the rows it evaluates in ``rows``."""

    def __init__(self, mol: AlanineDipeptide):
        self.mol, self.rows = mol, 0

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        self.rows += y.shape[0]
        return self.mol.energy(y.reshape(y.shape[0], 22, 3) / SCALE)


def steer_options(name: str, cfg: dict, energy: EnergyCounter) -> dict:
    """``steer`` options of ``name`` (:data:`PRIOR_METHODS`): the reward
    :math:`r = -U(1/k_BT - 1/k_BT_0)` for ``fk``, ``anneal`` :math:`T_0/T` and the profile's
    ``fkc_options`` for FKC / DriftLite."""
    opts = dict(PRIOR_METHODS[name])
    if name == "none":
        return opts
    if name == "fk":
        coef = (1.0 / cfg["cold"] - 1.0 / cfg["hot"]) / MOLAR_GAS_CONSTANT

        def reward(y: torch.Tensor) -> torch.Tensor:
            return -coef * energy(y)

        return {**opts, "reward": reward}
    return {**opts, **cfg["prior"]["fkc_options"], "anneal": cfg["hot"] / cfg["cold"]}


def corrector_moves(
    y: torch.Tensor, energy: EnergyCounter, temperature: float, n_moves: int, step: float,
    seed: int,
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """``n_moves`` adapted MALA moves of equal-weight particles ``y`` (Å) on the true
    :math:`e^{-U/k_BT}` in the mean-free subspace's coordinates; returns the moved particles
    and the mean acceptance."""
    proc = MeanFree(GeometricVE(), 22, 3)
    kT = MOLAR_GAS_CONSTANT * temperature

    def log_target(k: int, z: torch.Tensor) -> torch.Tensor:
        return -energy(z) / kT

    corr = subspace_corrector(proc, "mala", log_target, n_moves, step)
    gen = torch.Generator(device=y.device).manual_seed(10_000 + seed)
    state, info = corr(0, {"x": y}, gen)
    return state["x"].detach(), float(info["accept"])


def steered(
    name: str, seed: int, prep: dict, cfg: dict, device: str
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One ``steer`` run of ``name`` from the trained prior: particles in nm (chirality folded),
    normalised weights, and its cost (network and energy evaluations as rows, ESS, seconds)."""
    pc = cfg["prior"]
    energy = EnergyCounter(AlanineDipeptide(cfg["cold"]))
    opts = steer_options(name, cfg, energy)
    sync(device)
    start = time.perf_counter()
    res = smcdiff.steer(prep["model"], n_particles=pc["n_particles"], n_steps=pc["n_steps"],
                        seed=seed, device=device, progress=False, **opts)  # fmt: skip
    sync(device)
    n = pc["n_particles"]
    info = {
        "wall_s": time.perf_counter() - start,
        "net_evals": int(res.info.get("nfe", 0)) * n,
        "n_target_evals": energy.rows,
        "ess_final_frac": float(res.final_ess) / n,
        "ess_min_frac": float(res.min_ess) / n,
        "log_z": float(res.log_z),
    }
    x = fold_chirality(res.particles.detach().reshape(n, 22, 3) / SCALE)
    return x, res.weights.detach(), info


def prior_rows(
    name: str, seed: int, prep: dict, cfg: dict, md: dict, hot: dict, device: str
) -> tuple[list[dict], tuple[str, torch.Tensor, torch.Tensor]]:
    """The rows of method ``name`` and seed ``seed``: the steered particles against the 300 K MD
    (for ``none`` also the model check against the 1000 K MD, with its floor when the MD has 4N
    frames), then ``+mala``: resampled to equal weights and moved by the corrector on the true
    300 K energy. Also the last row's (name, (φ, ψ), weights) on the CPU, for the figure."""
    pc, bins, n = cfg["prior"], cfg["bins"], cfg["prior"]["n_particles"]
    x, w, info = steered(name, seed, prep, cfg, device)
    base = {"method": f"prior {name}", "seed": seed, "n_particles": n}
    rows = [{**base, **info, **sample_metrics(x, w, md, cfg["cold"], bins, seed)}]
    shown = (rows[0]["method"], AlanineDipeptide().phi_psi(x.double()).cpu(), w.double().cpu())
    if name == "none":
        hot_m = sample_metrics(x, w, hot, cfg["hot"], bins, seed)
        rows[0].update({f"{k}_T0": v for k, v in hot_m.items()})
        if 4 * n <= hot["phi_psi"].shape[0]:
            rows[0]["kl_floor_T0"] = kl_floor(hot["phi_psi"], n, bins)
    if pc["corrector_moves"] > 0:
        try:
            row, shown = corrected(base["method"], x, w, info, cfg, md, seed, device)
            rows.append({**base, **row})
        except SMCDiffError as err:  # e.g. a NaN energy at a proposal: the plain row stays
            rows[0]["corrector_error"] = f"{type(err).__name__}: {err}"[:300]
    return rows, shown


def corrected(
    label: str, x: torch.Tensor, w: torch.Tensor, info: dict, cfg: dict, md: dict, seed: int,
    device: str,
) -> tuple[dict, tuple[str, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """The ``+mala`` row (``label+mala``) of steered particles ``x`` (nm) with weights ``w``:
    resampled to equal weights (multinomial), ``corrector_moves`` MALA moves on the true energy
    at ``cfg["cold"]``, chirality folded; its metrics and cost (the steering's plus the
    corrector's), and the figure's (name, (φ, ψ), weights) on the CPU."""
    pc, n = cfg["prior"], x.shape[0]
    gen = torch.Generator(device=w.device).manual_seed(seed)
    idx = torch.multinomial(w.double(), n, replacement=True, generator=gen)
    energy = EnergyCounter(AlanineDipeptide(cfg["cold"]))
    sync(device)
    start = time.perf_counter()
    moved, acc = corrector_moves(to_model(x[idx]), energy, cfg["cold"], pc["corrector_moves"],
                                 pc["mala_step"], seed)  # fmt: skip
    sync(device)
    out = fold_chirality(moved / SCALE)
    name = f"{label}+mala"
    row = {
        "method": name, "net_evals": info["net_evals"],
        "n_target_evals": info["n_target_evals"] + energy.rows, "mala_accept": acc,
        "wall_s": info["wall_s"] + time.perf_counter() - start,
        **sample_metrics(out, None, md, cfg["cold"], cfg["bins"], seed),
    }  # fmt: skip
    pp = AlanineDipeptide().phi_psi(out.double()).cpu()
    return row, (name, pp, torch.full((n,), 1.0 / n, dtype=torch.float64))
