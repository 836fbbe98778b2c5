r"""Alanine dipeptide in vacuum (Amber ff96) at 300 K: tempered SMC and a learned prior vs MD.

Protocol (docs/alanine.md):

1. **MD reference** (:func:`md_trajectory`, needs OpenMM; run once, shipped as package data in
   ``smcdiff_targets/data/alanine_md_{300,1000}K.npz``, read by
   :func:`smcdiff_targets.alanine.load_alanine_md`, so nothing here needs OpenMM). The System
   of ``targets/data/alanine_export.py`` (the parameters of
   :class:`~smcdiff_targets.AlanineDipeptide`), ``LangevinMiddleIntegrator`` (1 fs, friction
   1/ps), CPU platform, energy minimisation and 100 ps of discarded equilibration, then blocks
   of 1 ns; (φ, ψ) and the potential energy every 0.5 ps, a configuration every 10 ps (300 K)
   or 0.5 ps (1000 K).
2. **Reference statistics** (:func:`md_summary`): basin populations (:data:`BASINS`), per block
   and their mean ± standard error over blocks; free-energy differences
   :math:`\Delta F_i = -k_BT\ln(p_i/p_{\rm C7eq})` (error from the blocks' spread); the KL
   between the (φ, ψ) histograms of the two halves (convergence).
3. **Sampler** (:class:`HotStartTempering`): tempered SMC on the torch energy along
   :math:`\pi_\beta \propto e^{-\beta U}`, :math:`\beta: \beta_{1000} \to \beta_{300}`, started
   from the shipped 1000 K MD configurations, HMC (or MALA) moves in Cartesian coordinates,
   CESS-adaptive temperatures, then ``final_moves`` more moves at 300 K
   (:func:`temper_from_pool`).
4. **Metrics** (weighted): KL of the (φ, ψ) histogram against MD (:func:`kl_phi_psi`), beside
   its floor (the same KL for as many MD frames as particles), basin populations, the
   configurational temperature :math:`T_{\rm conf} = \langle|\nabla U|^2\rangle /
   (k_B\langle\nabla^2 U\rangle)` (exact for any Boltzmann law: it must read 300 K), energy
   evaluations, wall and CPU seconds; the energy W1 against the MD energies.
5. **Learned prior** (:mod:`smcdiff_experiments.alanine_prior`): an equivariant diffusion prior
   trained on the 1000 K configurations, annealed to 300 K by FK / FKC / DriftLite, each with
   and without a MALA corrector on the true energy; same metrics, plus network evaluations.

:func:`run` writes ``alanine.json`` / ``alanine.md`` after every run and takes a time budget
(profiles ``quick`` / ``cpu`` / ``cuda`` / ``cuda-long``: :data:`PROFILES`,
:data:`PRIOR_PROFILES`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smcdiff_experiments.molecules import wp_1d
from smcdiff_experiments.progress import run_bar
from smcdiff_targets.alanine import MOLAR_GAS_CONSTANT, AlanineDipeptide, load_alanine_md

from smcdiff.checks import nan_or_posinf, nonfinite_rows
from smcdiff.energy.options import TemperedOptions
from smcdiff.energy.tempered import TemperedSMC, check_reached_target
from smcdiff.engine.model import StepOutput
from smcdiff.engine.smc import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.registry import get_kernel
from smcdiff.resampling.policies import policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.seeding import make_generator

DESCRIPTION = (
    "alanine dipeptide (Amber ff96, vacuum): tempered SMC and a learned prior (FK / FKC / "
    "DriftLite), 1000 K -> 300 K, vs OpenMM MD"
)

BASINS: dict[str, tuple[tuple[float, float], tuple[float, float] | None]] = {
    "C5/beta": ((-180.0, -120.0), None),
    "C7eq": ((-120.0, 0.0), None),
    "alphaR": ((-180.0, 0.0), (-120.0, 30.0)),
    "C7ax/alphaL": ((0.0, 180.0), None),
}
r"""Basin boxes in degrees, a partition of the (φ, ψ) torus: name -> (φ range, ψ range).
``None`` for ψ: every ψ *outside* the αR band :math:`[-120°, 30°)` (C5/β, C7eq) or every ψ
(φ > 0). Checked against the 300 K MD density's minima (docs/alanine.md)."""
ALPHA_R_PSI = (-120.0, 30.0)
EXPORT = Path(__file__).resolve().parents[1] / "targets" / "data" / "alanine_export.py"


# ----------------------------------------------------------------------------- MD (OpenMM)
def _export_module():
    """The export script (``targets/data/alanine_export.py``): its ``load_system`` builds the
    OpenMM System whose parameters the torch energy uses."""
    if not EXPORT.exists():
        raise SMCDiffError(f"alanine MD: {EXPORT} not found (run from a repository clone)")
    spec = importlib.util.spec_from_file_location("alanine_export", EXPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def md_trajectory(
    temperature: float, n_blocks: int, out_dir: str | Path, *, block_ps: float = 1000.0,
    save_fs: float = 500.0, config_every: int = 20, seed: int = 0, dt_fs: float = 1.0,
    friction: float = 1.0,
) -> None:  # fmt: skip
    """Langevin MD with OpenMM (CPU platform, one thread): minimise, 100 ps equilibration
    (discarded), then ``n_blocks`` blocks of ``block_ps``, each written as
    ``T{temperature}_block{k}.npz`` (``phi_psi`` (n, 2) rad and ``energy`` (n,) kJ/mol every
    ``save_fs``; ``configs`` every ``config_every``-th saved frame, nm) as it finishes."""
    import openmm as mm

    ex = _export_module()
    _, system, pos = ex.load_system()
    integ = mm.LangevinMiddleIntegrator(temperature, friction, dt_fs * 1e-3)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(pos)
    mm.LocalEnergyMinimizer.minimize(ctx, 1.0, 1000)
    ctx.setVelocitiesToTemperature(temperature, seed)
    integ.step(int(100_000 / dt_fs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    every, n_save = int(save_fs / dt_fs), int(block_ps * 1000 / save_fs)
    mol = AlanineDipeptide(temperature)
    for b in range(n_blocks):
        t0, xs, es = time.time(), [], []
        for _ in range(n_save):
            integ.step(every)
            st = ctx.getState(getPositions=True, getEnergy=True)
            xs.append(np.asarray(st.getPositions(asNumpy=True)._value))
            es.append(st.getPotentialEnergy()._value)
        x = np.stack(xs)
        np.savez(
            out / f"T{temperature:g}_block{b:03d}.npz",
            phi_psi=mol.phi_psi(torch.from_numpy(x)).numpy().astype(np.float32),
            energy=np.asarray(es, dtype=np.float32),
            configs=x[::config_every].astype(np.float32),
            seconds=time.time() - t0,
        )
        print(f"T={temperature:g} K block {b} ({block_ps:g} ps) in {time.time() - t0:.0f} s")


def pack_md(parts_dir: str | Path, temperature: float, dest: str | Path, **meta: Any) -> None:
    """Concatenate the blocks of :func:`md_trajectory` into one compressed ``.npz`` (the shipped
    file): ``phi_psi`` (n, 2), ``energy`` (n,), ``configs`` (m, 22, 3) float32, ``block``
    (n,) the block index of each frame, ``meta`` a JSON string (``meta``: the settings)."""
    files = sorted(Path(parts_dir).glob(f"T{temperature:g}_block*.npz"))
    if not files:
        raise SMCDiffError(f"alanine MD: no blocks for T={temperature:g} K in {parts_dir}")
    parts = [np.load(f) for f in files]
    meta = {**meta, "n_blocks": len(files), "seconds": float(sum(p["seconds"] for p in parts))}
    np.savez_compressed(
        dest,
        phi_psi=np.concatenate([p["phi_psi"] for p in parts]),
        energy=np.concatenate([p["energy"] for p in parts]),
        configs=np.concatenate([p["configs"] for p in parts]),
        block=np.concatenate([np.full(len(p["energy"]), k) for k, p in enumerate(parts)]),
        meta=np.asarray(json.dumps(meta)),
    )


# ----------------------------------------------------------------------------- statistics
def basin_index(phi_psi: torch.Tensor) -> torch.Tensor:
    """Basin of each (φ, ψ) (radians), ``(N, 2) -> (N,)`` long, in the order of :data:`BASINS`
    (a partition: every point has exactly one)."""
    deg = torch.rad2deg(phi_psi)
    phi, psi = deg[:, 0], deg[:, 1]
    in_alpha = (psi >= ALPHA_R_PSI[0]) & (psi < ALPHA_R_PSI[1])
    neg = phi < 0
    beta = neg & ~in_alpha & (phi < BASINS["C5/beta"][0][1])
    c7eq = neg & ~in_alpha & ~beta
    out = torch.full_like(phi, 3, dtype=torch.long)  # C7ax/alphaL: phi >= 0
    out = torch.where(neg & in_alpha, 2, out)
    out = torch.where(c7eq, 1, out)
    return torch.where(beta, 0, out)


def basin_populations(phi_psi: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted fraction of the points in each basin, ``(N, 2), (N,) -> (len(BASINS),)``."""
    n = phi_psi.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.to(torch.float64)
    w = w.cpu() / w.sum()
    idx = basin_index(phi_psi).cpu()
    return torch.zeros(len(BASINS), dtype=torch.float64).index_add_(0, idx, w)


def free_energies(pops: torch.Tensor, kT: float) -> torch.Tensor:
    r""":math:`\Delta F_i = -k_BT\ln(p_i / p_{\rm C7eq})` (kJ/mol), ``(..., B) -> (..., B)``."""
    return -kT * (pops.log() - pops[..., 1:2].log())


def histogram(phi_psi: torch.Tensor, weights: torch.Tensor | None, bins: int) -> torch.Tensor:
    """Weighted counts on a ``bins x bins`` grid over :math:`[-\\pi, \\pi)^2`, summing to the
    sample size (weights rescaled to sum to N), ``(bins, bins)`` float64."""
    n = phi_psi.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    w = w * (n / w.sum())
    ij = ((phi_psi.double() + math.pi) / (2 * math.pi) * bins).floor().long().clamp(0, bins - 1)
    flat = torch.zeros(bins * bins, dtype=torch.float64)
    return flat.index_add_(0, ij[:, 0] * bins + ij[:, 1], w).reshape(bins, bins)


def kl_phi_psi(
    ref: torch.Tensor, other: torch.Tensor, weights: torch.Tensor | None = None, bins: int = 24
) -> float:
    r""":math:`\mathrm{KL}(p_{\rm ref}\,\|\,q)` of the (φ, ψ) histograms (``bins`` x ``bins``,
    15° at 24), each smoothed by half a count per bin (Krichevsky–Trofimov:
    :math:`p_b = (n_b + 1/2)/(n + B/2)`), so empty bins stay finite; ``weights`` of ``other``
    (any scale). Its value for ``n`` exact draws is not 0: compare with :func:`kl_floor`."""
    p, q = histogram(ref, None, bins) + 0.5, histogram(other, weights, bins) + 0.5
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p.log() - q.log())).sum())


def kl_floor(ref: torch.Tensor, n: int, bins: int = 24, n_draws: int = 5) -> float:
    """Mean :func:`kl_phi_psi` of ``n`` frames of ``ref`` evenly spaced through it (as close to
    independent draws as the trajectory allows) against the whole of ``ref``: what an exact
    sampler of ``n`` particles scores."""
    vals = []
    for k in range(n_draws):
        idx = (torch.arange(n) * (ref.shape[0] / n) + k * ref.shape[0] / (n * n_draws)).long()
        vals.append(kl_phi_psi(ref, ref[idx.clamp(max=ref.shape[0] - 1)], bins=bins))
    return float(np.mean(vals))


def configurational_temperature(
    mol: AlanineDipeptide, x: torch.Tensor, weights: torch.Tensor | None = None
) -> float:
    r""":math:`T_{\rm conf} = \langle|\nabla U|^2\rangle / (R\,\langle\nabla^2 U\rangle)` (K) over
    the weighted configurations ``x`` ``(N, 22, 3)``: exact for any Boltzmann law
    :math:`e^{-U/RT}` (integration by parts), whatever the basin populations. The Laplacian is
    exact: 66 Hessian-diagonal passes. Float64."""
    x = x.detach().double().requires_grad_(True)
    if weights is None:
        w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    else:
        w = weights.detach().to(device=x.device, dtype=torch.float64)
    w = w / w.sum()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(mol.energy(x).sum(), x, create_graph=True)
        lap = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        flat = g.reshape(x.shape[0], -1)
        for c in range(flat.shape[1]):
            (h,) = torch.autograd.grad(flat[:, c].sum(), x, retain_graph=True)
            lap = lap + h.reshape(x.shape[0], -1)[:, c]
    grad2 = flat.detach().square().sum(-1)
    return float((w * grad2).sum() / (MOLAR_GAS_CONSTANT * (w * lap.detach()).sum()))


def md_summary(md: dict[str, torch.Tensor], temperature: float, bins: int = 24) -> dict:
    """Block statistics of an MD set (:func:`load_alanine_md`): populations per block and their
    mean ± standard error, ΔF per block and its mean ± standard error (basins empty in a block
    are left out of that basin's ΔF spread), the halves' KL, and ``n_blocks``."""
    pp, block = md["phi_psi"], md["block"]
    n_blocks = int(block.max()) + 1
    pops = torch.stack([basin_populations(pp[block == b]) for b in range(n_blocks)])
    kT = MOLAR_GAS_CONSTANT * temperature
    df = free_energies(pops, kT)
    df_mean = torch.stack([c[c.isfinite()].mean() for c in df.T])
    df_se = torch.stack([c[c.isfinite()].std() / c.isfinite().sum().sqrt() for c in df.T])
    half = pp.shape[0] // 2
    return {
        "temperature": temperature,
        "n_frames": int(pp.shape[0]),
        "n_blocks": n_blocks,
        "populations": basin_populations(pp).tolist(),
        "populations_se": (pops.std(0) / math.sqrt(n_blocks)).tolist(),
        "block_populations": pops.tolist(),
        "dF": free_energies(basin_populations(pp), kT).tolist(),
        "dF_block_mean": df_mean.tolist(),
        "dF_se": df_se.tolist(),
        "kl_halves": kl_phi_psi(pp[:half], pp[half:], bins=bins),
        "kl_halves_reverse": kl_phi_psi(pp[half:], pp[:half], bins=bins),
    }


# ----------------------------------------------------------------------------- sampler
class _Tempered:
    """A per-sampler view of the cold target (its own object, so cached CUDA graphs, keyed by
    the target's id, are never shared between samplers of different hot temperatures)."""

    def __init__(self, mol: AlanineDipeptide):
        self.mol, self.dim, self.event_shape = mol, mol.dim, mol.event_shape

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.mol.log_prob(x)


class HotStartTempering(TemperedSMC):
    r"""Tempered SMC from a hot law :math:`\pi^r` (:math:`r = T_{\rm cold}/T_{\rm hot} \in (0,
    1)`, i.e. :math:`e^{-U/k_BT_{\rm hot}}` for a Boltzmann target) to the target :math:`\pi`,
    started from given draws of the hot law (``pool`` ``(M, *event_shape)``, e.g. MD frames).

    :class:`~smcdiff.energy.tempered.TemperedSMC` with the reference :math:`\rho = \pi^r`
    (unnormalised: :math:`\log\rho(x) = r\log\tilde\pi(x)`), so the path is
    :math:`\rho^{1-\lambda}\tilde\pi^\lambda = \tilde\pi^{\,r + \lambda(1-r)}`
    (:math:`\beta = \beta_{\rm hot} + \lambda(\beta_{\rm cold}-\beta_{\rm hot})`),
    :math:`\ell = (1-r)\log\tilde\pi` and the run's :math:`\log\hat Z` estimates
    :math:`\log(Z_\pi / Z_{\pi^r})`. ``init`` draws the particles from ``pool`` (without
    replacement when ``n <= M``). Exact as far as the pool is a sample of :math:`\pi^r`.

    The moves run eagerly: the compiled moves and the fused reweighting of
    :class:`~smcdiff.energy.tempered.TemperedSMC` use the Gaussian reference's closed form, so
    for a subclass with its own :meth:`log_reference` ``compile="auto"`` stays eager and
    ``compile=True`` raises.

    :math:`\log\rho` is read from the target evaluation just made on the same tensor (the
    tempered moves and weights evaluate the target, then the reference, on one ``x``), so each
    point costs one energy evaluation, not two.
    """

    def __init__(
        self, target: Any, pool: torch.Tensor, exponent: float,
        options: TemperedOptions | None = None, *, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):  # fmt: skip
        if not 0.0 < exponent < 1.0:
            raise SMCDiffError(f"HotStartTempering: exponent must be in (0, 1), got {exponent}")
        view = _Tempered(target) if isinstance(target, AlanineDipeptide) else target
        super().__init__(view, options, reference_std=1.0, device=device, dtype=dtype)
        self.exponent = float(exponent)
        self.pool = pool.to(device=self.device, dtype=dtype)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        base = self.target_log_prob

        def remember(x: torch.Tensor) -> torch.Tensor:
            lp = base(x)
            self._last = (x, lp)
            return lp

        self.target_log_prob = remember

    def log_reference(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`r\\log\\tilde\\pi(x)`, ``(N,)`` (from the last target evaluation if on ``x``)."""
        last = self._last
        lp = last[1] if last is not None and last[0] is x else self.target_log_prob(x)
        return self.exponent * lp

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        m = self.pool.shape[0]
        dev = self.pool.device
        if n <= m:
            idx = torch.randperm(m, generator=generator, device=dev)[:n]
        else:
            idx = torch.randint(m, (n,), generator=generator, device=dev)
        x = self.pool[idx]
        lp = self.target_log_prob(x)
        ell = lp.double() - self.log_reference(x).double()
        checks = {"particles": nonfinite_rows(x), "target log_prob": nan_or_posinf(lp)}
        zero = torch.zeros(n, dtype=torch.float64, device=self.device)
        log_h = torch.full((n,), math.log(self.step_size0), dtype=self.dtype, device=self.device)
        state = {"x": x, "ell": ell, "lam": zero, "log_h": log_h}
        return StepOutput(state, zero, checks, nfe=n, info={"temperature": zero[:1].clone()})


def temper_from_pool(
    target: Any, pool: torch.Tensor, exponent: float, n_particles: int, options: TemperedOptions,
    *, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
    ess_threshold: float = 1.0, final_moves: int = 0,
) -> tuple[SMCResult, float]:  # fmt: skip
    """One :class:`HotStartTempering` run (resampling when the ESS falls below
    ``ess_threshold * N``; it must reach the target), then ``final_moves`` more moves of the
    options' kernel at the target, at the run's last adapted step size (each particle keeps its
    weight: the moves leave the target invariant). Returns the result (``info``: target and
    gradient evaluations, number of temperatures, the final moves' acceptance) and its wall
    seconds."""
    fk = HotStartTempering(target, pool, exponent, options, device=device, dtype=dtype)
    generator, _ = make_generator(seed, torch.device(device))
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    run = run_smc(
        fk, n_particles, policy=policy_from_threshold(ess_threshold), generator=generator,
        progress=False,
    )  # fmt: skip
    check_reached_target(run, fk, grouped=False)
    info = {
        "n_target_evals": int(run.trace["nfe"].sum()),
        "n_grad_evals": int(run.trace["n_grad"].sum()),
        "n_temperatures": run.completed_steps,
    }
    if final_moves:
        h = float(run.trace["step_size"][-1].reshape(-1)[0])
        kern = get_kernel(options.kernel)(fk.target_log_prob, **dict(options.kernel_options))
        state = kern.init(run.state["x"], generator)
        acc = torch.zeros((), dtype=torch.float64, device=state.x.device)
        for _ in range(final_moves):
            state, move = kern.step(state, h, generator)
            acc = acc + move.accept_prob.double().mean()
        run.state["x"] = state.x.detach()
        per_move = n_particles * int(dict(options.kernel_options).get("n_leapfrog", 1))
        info["n_grad_evals"] += final_moves * per_move
        info["n_target_evals"] += final_moves * per_move
        info["final_accept"] = float(acc) / final_moves
    sync(device)
    wall = time.perf_counter() - t0
    info["cpu_s"] = time.process_time() - c0
    return SMCResult.from_run(run, grouped=False, info=info), wall


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall times measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- experiment
PROFILES: dict[str, dict] = {
    "quick": dict(n_particles=128, seeds=[0], kernels=["hmc"], n_moves=2, n_leapfrog=10,
                  target_ess=0.5, final_moves=10, n_tconf_md=200),
    "cpu": {},
    "cuda": dict(n_particles=10_000, seeds=[0, 1, 2], n_moves=5, final_moves=50),
    "cuda-long": dict(n_particles=10_000, seeds=[0, 1, 2], n_moves=5, final_moves=50),
}  # fmt: skip
"""Tempered sizes per profile, over the CPU defaults of :func:`settings`."""
PRIOR_PROFILES: dict[str, dict] = {
    "quick": dict(hidden=16, depth=2, n_iters=150, batch_size=32, lr=2e-3, n_particles=64,
                  n_steps=10, corrector_moves=10, reserve_s=20.0,
                  fkc_options={"divergence": "hutchinson", "max_substeps": 4}),
    "cpu": dict(hidden=32, depth=3, n_iters=400, batch_size=64, lr=2e-3, n_particles=128,
                n_steps=30, corrector_moves=100, reserve_s=150.0,
                fkc_options={"divergence": "hutchinson", "max_substeps": 4}),
    "cuda": dict(hidden=64, depth=4, n_iters=4000, batch_size=256, lr=1e-3, n_particles=5000,
                 n_steps=100, corrector_moves=500, reserve_s=90.0, augment=[4, 10, 20, 0.003],
                 fkc_options={"max_substeps": 8}),
    "cuda-long": dict(hidden=128, depth=5, n_iters=12_000, batch_size=256, lr=1e-3,
                      n_particles=2000, n_steps=200, corrector_moves=1000, reserve_s=300.0,
                      augment=[8, 10, 20, 0.003],
                      fkc_options={"max_substeps": 8}),
}  # fmt: skip
"""Learned-prior sizes per profile (:mod:`smcdiff_experiments.alanine_prior`): the EGNN
(``depth`` x ``hidden``, ``n_iters`` of ``batch_size``), particles and grid steps per
``steer`` run, MALA corrector moves; ``reserve_s`` is the time budget's estimate for training;
``augment``: (rounds, trajectories, leapfrog steps, step nm) of HMC at 1000 K growing the
training set from the MD pool (:func:`~smcdiff_experiments.alanine_prior.hot_samples`)."""


def settings(quick: bool, device: str = "cpu", profile: str | None = None, **over: Any) -> dict:
    """Sizes of ``profile`` (default ``quick`` when ``quick``, else ``cuda`` on a CUDA device,
    else ``cpu``): ``quick`` (CPU smoke, < 60 s), ``cpu``, ``cuda`` (about 4 min on one H200 with
    the learned prior's training), ``cuda-long`` (DEM's 5 x 128 EGNN for 3 x the iterations,
    twice the grid steps and corrector moves: for a budget of about 10 min); ``over`` replaces
    entries (``prior={...}`` updates the
    learned-prior entries). ``prior_methods=[]`` or ``kernels=[]`` drops a route."""
    if profile is None:
        profile = "quick" if quick else "cuda" if torch.device(device).type == "cuda" else "cpu"
    if profile not in PROFILES:
        raise SMCDiffError(f"alanine: unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    cfg = dict(
        n_particles=256, seeds=[0, 1], kernels=["hmc", "mala"], n_moves=3, n_leapfrog=40,
        target_ess=0.8, final_moves=25, hot=1000.0, cold=300.0, bins=24, dtype="float32",
        hmc_step=0.002, mala_step=1.5e-6, figure=True, n_tconf_md=1000,
        prior_methods=["none", "fk", "fkc-target", "driftlite-vcg"],
    )  # fmt: skip
    cfg.update(PROFILES[profile])
    prior = dict(sigmas=[0.01, 5.0], mala_step=1e-4, augment=[0, 0, 0, 0.0])
    prior.update(PRIOR_PROFILES[profile])
    prior.update(over.pop("prior", {}))
    cfg.update(over, prior=prior, profile=profile)
    return cfg


def final_moves(cfg: dict, kernel: str) -> int:
    """Moves at 300 K after the tempering: ``final_moves`` HMC trajectories, or as many MALA
    steps as they have gradients."""
    return cfg["final_moves"] * (1 if kernel == "hmc" else cfg["n_leapfrog"])


def _options(cfg: dict, kernel: str) -> TemperedOptions:
    """HMC (``n_moves`` trajectories of ``n_leapfrog`` steps per temperature) or MALA (as many
    steps as HMC has gradients). Eager moves (``cuda_graph=False``): the moves' CUDA-graph cache
    key of ``TemperedSMC`` is not built for particles of shape (22, 3)."""
    if kernel == "hmc":
        return TemperedOptions(
            kernel="hmc", n_moves=cfg["n_moves"], target_ess=cfg["target_ess"],
            step_size=cfg["hmc_step"], kernel_options={"n_leapfrog": cfg["n_leapfrog"]},
            cuda_graph=False,
        )  # fmt: skip
    return TemperedOptions(
        kernel=kernel, n_moves=cfg["n_moves"] * cfg["n_leapfrog"],
        target_ess=cfg["target_ess"], step_size=cfg["mala_step"], cuda_graph=False,
    )  # fmt: skip


def sample_metrics(
    x_nm: torch.Tensor, w: torch.Tensor | None, ref: dict, temperature: float, bins: int,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Metrics of weighted configurations ``x_nm`` ``(N, 22, 3)`` (nm) against an MD set ``ref``
    (``phi_psi``, ``energy``) at ``temperature``: the weighted KL (:func:`kl_phi_psi`), basin
    populations and T_conf; the energy W1 (:func:`~smcdiff_experiments.molecules.wp_1d`) on
    ``N`` equal-weight multinomial draws (non-finite energies left out and counted)."""
    mol = AlanineDipeptide(temperature)
    x = x_nm.detach().double()
    n = x.shape[0]
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
    wt = uniform if w is None else w.detach().double().to(x.device)
    pp, w_cpu = mol.phi_psi(x).cpu(), wt.cpu()
    if w is not None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        x_eq = x[torch.multinomial(wt, n, replacement=True, generator=gen)]
    energies = mol.energy(x if w is None else x_eq).cpu()
    finite = energies.isfinite()
    return {
        "kl": kl_phi_psi(ref["phi_psi"], pp, w_cpu, bins),
        "populations": basin_populations(pp, w_cpu).tolist(),
        "T_conf": configurational_temperature(mol, x, wt),
        "w1_energy": float(wp_1d(energies[finite], ref["energy"].double())),
        "nonfinite_energy_frac": float(1.0 - finite.double().mean()),
        "median_energy": float(energies.median()),
    }


def sampler_row(
    kernel: str, seed: int, cfg: dict, md: dict, pool: torch.Tensor, device: str
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One tempered run and its metrics (:func:`sample_metrics`) against the MD reference
    ``md``; also returns the particles' (φ, ψ) and weights (CPU) for the figure."""
    mol = AlanineDipeptide(cfg["cold"])
    dtype = getattr(torch, cfg["dtype"])
    res, wall = temper_from_pool(
        mol, pool, cfg["cold"] / cfg["hot"], cfg["n_particles"], _options(cfg, kernel),
        seed=seed, device=device, dtype=dtype, final_moves=final_moves(cfg, kernel),
    )  # fmt: skip
    x, w = res.particles.double(), res.weights.double()
    row = {
        "method": f"tempered-{kernel}", "seed": seed, "n_particles": cfg["n_particles"],
        **sample_metrics(x, w, md, cfg["cold"], cfg["bins"], seed),
        "ess_min_frac": float(res.ess.min()) / cfg["n_particles"],
        "log_z": float(res.log_z), "wall_s": wall, **res.info,
    }  # fmt: skip
    return row, mol.phi_psi(x).cpu(), w.cpu()


def spread(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, evenly spaced through it (first and last included)."""
    return x[torch.linspace(0, x.shape[0] - 1, min(n, x.shape[0])).long()]


def reference_rows(cfg: dict, md: dict, hot: dict) -> list[dict]:
    """Rows for the MD sets: the 300 K reference (T_conf on ``n_tconf_md`` evenly spaced
    configurations), the floor (as many evenly spaced MD frames as particles, when that is at
    most a quarter of the frames; beyond, the halves' KL of :func:`md_summary` is the floor) and
    the 1000 K start (the pool, unweighted)."""
    mol = AlanineDipeptide(cfg["cold"])
    n, n_md = cfg["n_particles"], md["phi_psi"].shape[0]
    m, hot_mol = cfg["n_tconf_md"], AlanineDipeptide(cfg["hot"])
    start = {
        "method": f"MD {cfg['hot']:g} K pool (start)", "seed": None,
        "n_particles": int(hot["configs"].shape[0]),
        "kl": kl_phi_psi(md["phi_psi"], hot["phi_psi"], bins=cfg["bins"]),
        "populations": basin_populations(hot["phi_psi"]).tolist(),
        "T_conf": configurational_temperature(hot_mol, spread(hot["configs"], m)),
    }  # fmt: skip
    ref = {
        "method": f"MD {cfg['cold']:g} K (reference)", "seed": None, "n_particles": int(n_md),
        "kl": 0.0, "populations": basin_populations(md["phi_psi"]).tolist(), "w1_energy": 0.0,
        "T_conf": configurational_temperature(mol, spread(md["configs"], m)),
    }  # fmt: skip
    start["w1_energy"] = float(wp_1d(hot["energy"], md["energy"]))
    rows = [ref, start]
    tempered = [n] if cfg["kernels"] else []
    sizes = dict.fromkeys(
        tempered + ([cfg["prior"]["n_particles"]] if cfg["prior_methods"] else [])
    )
    for k, size in enumerate(s for s in sizes if 4 * s <= n_md):
        rows.insert(1 + k, floor_row(md, size, cfg))
    return rows


def floor_row(md: dict, n: int, cfg: dict) -> dict:
    """What an exact sampler of ``n`` particles scores: the KL (:func:`kl_floor`) and energy W1
    of ``n`` evenly spaced MD frames against the whole MD set."""
    idx = torch.linspace(0, md["energy"].shape[0] - 1, n).long()
    return {
        "method": f"MD {cfg['cold']:g} K, {n} frames (floor)", "seed": None, "n_particles": n,
        "kl": kl_floor(md["phi_psi"], n, cfg["bins"]),
        "w1_energy": float(wp_1d(md["energy"][idx], md["energy"])),
    }  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every numeric entry of each method's rows, and
    of the basin populations (``populations_sd``); MD rows (``seed`` None) as they are."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        if group[0]["seed"] is None:
            out.append({k: ([v, 0.0] if isinstance(v, float) else v) for k, v in group[0].items()})
            continue
        entry: dict[str, Any] = {"method": name, "n_seeds": len(group),
                                 "n_particles": group[0]["n_particles"]}  # fmt: skip
        for k, v in group[0].items():
            if (
                k in ("seed", "n_particles")
                or isinstance(v, bool)
                or not isinstance(v, int | float)
            ):
                continue
            v = torch.tensor([float(r.get(k, math.nan)) for r in group], dtype=torch.float64)
            entry[k] = [float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0]
        pops = torch.tensor([r["populations"] for r in group], dtype=torch.float64)
        entry["populations"] = pops.mean(0).tolist()
        entry["populations_sd"] = (pops.std(0) if len(group) > 1 else 0 * pops[0]).tolist()
        out.append(entry)
    return out


def stages(cfg: dict) -> list[tuple[str, str, int]]:
    """The runs in order, ``(kind, name, seed)``: per seed, the first tempered kernel, the
    learned-prior methods (the prior trained once, before the first), the other kernels, so a
    run cut short by its time budget has each route's first seed."""
    kernels, methods = list(cfg["kernels"]), list(cfg["prior_methods"])
    out: list[tuple[str, str, int]] = []
    for seed in cfg["seeds"]:
        out += [("tempered", k, seed) for k in kernels[:1]]
        if methods and not out.count(("train", "prior", 0)):
            out.append(("train", "prior", 0))
        out += [("prior", m, seed) for m in methods]
        out += [("tempered", k, seed) for k in kernels[1:]]
    return out


def write_outputs(out: Path, blob: dict) -> list[dict]:
    """Write ``alanine.json`` and ``alanine.md`` from ``blob`` (atomic replace); returns the
    summary rows, the first carrying the MD statistics and the run's context (training,
    skipped, errors) for :func:`format_table`."""
    summary = summarise(blob["rows"])
    context = {k: blob.get(k) for k in ("training", "skipped", "errors", "elapsed_s")}
    summary[0] = {**summary[0], "md": blob["md"], "context": context}
    blob["summary"] = summary
    for name, text in (("alanine.json", json.dumps(blob, indent=1, default=float) + "\n"),
                       ("alanine.md", format_table(summary) + "\n")):  # fmt: skip
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return summary


def run_stage(
    stage: tuple[str, str, int], cfg: dict, data: dict, blob: dict, device: str, progress: bool
) -> None:
    """Run one stage of :func:`stages`, appending its rows to ``blob`` (training: its summary,
    and the model into ``data["prior"]``); keeps the first tempered and the first corrected
    ``fk`` particles in ``data["shown"]`` for the figure."""
    from smcdiff_experiments import alanine_prior as ap

    kind, name, seed = stage
    md, hot = data["md"], data["hot"]
    if kind == "tempered":
        row, pp, w = sampler_row(name, seed, cfg, md, hot["configs"], device)
        blob["rows"].append(row)
        data["shown"].setdefault("tempered", (row["method"], pp, w))
    elif kind == "train":
        model, info = ap.train_alanine_prior(hot["configs"], cfg["prior"], device, progress,
                                             cfg["hot"])  # fmt: skip
        data["prior"], blob["training"] = {"model": model}, info
    else:
        rows, shown = ap.prior_rows(name, seed, data["prior"], cfg, md, hot, device)
        blob["rows"] += rows
        if "corrector_error" in rows[0]:
            blob["errors"][f"prior {name}+mala seed {seed}"] = rows[0]["corrector_error"]
        if name == "fk":
            data["shown"].setdefault("prior", shown)


def _family(stage: tuple[str, str, int]) -> str:
    """The stage's kind, with the learned-prior FKC / DriftLite methods (sub-stepped, with
    divergences: several times the cost of FK per grid step) a family of their own."""
    kind, name, _ = stage
    return f"{kind} fkc" if kind == "prior" and name.startswith(("fkc", "driftlite")) else kind


def estimate(stage: tuple[str, str, int], longest: dict[str, float], cfg: dict) -> float:
    """Seconds a stage is expected to take: the longest run of the same method so far, else of
    its family (:func:`_family`), else for FKC / DriftLite the longest learned-prior run times
    ``max_substeps`` (the network evaluations per grid step they may take), else 0 (training:
    ``reserve_s``)."""
    kind, name, _ = stage
    for key in (f"{kind} {name}", _family(stage)):
        if key in longest:
            return longest[key]
    if _family(stage) == kind:
        return 0.0
    return float(cfg["prior"]["fkc_options"].get("max_substeps", 64)) * longest.get(kind, 0.0)


def run(
    out_dir: str | Path, device: str = "cpu", quick: bool = False, progress: bool = True,
    n_particles: int | None = None, time_budget_s: float | None = None,
    profile: str | None = None, **overrides: Any,
) -> list[dict]:  # fmt: skip
    """MD statistics, then the runs of :func:`stages` (tempered SMC 1000 K -> 300 K, and the
    learned prior annealed by FK / FKC / DriftLite, :mod:`smcdiff_experiments.alanine_prior`).
    ``alanine.json`` / ``alanine.md`` are rewritten after every run, so a run cut short keeps
    what finished; ``time_budget_s``: a run starts only if the longest run of its kind so far
    (training: the profile's ``reserve_s``) still fits, else it is listed as skipped; a failing
    run is listed with its error. ``alanine_ramachandran.png`` at the end. Returns the summary
    rows (the first carries the MD block statistics)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if n_particles is not None:
        overrides["n_particles"] = n_particles
    cfg = settings(quick, device, profile, **overrides)
    md, hot = load_alanine_md(cfg["cold"]), load_alanine_md(cfg["hot"])
    blob: dict[str, Any] = {
        "settings": cfg, "device": str(device), "time_budget_s": time_budget_s,
        "md": {**md_summary(md, cfg["cold"], cfg["bins"]), "meta": md["meta"],
               "hot_meta": hot["meta"]},
        "rows": reference_rows(cfg, md, hot), "training": None, "skipped": [], "errors": {},
    }  # fmt: skip
    summary = write_outputs(out, blob)
    plan = stages(cfg)
    tick = run_bar(len(plan), progress, "alanine")
    data: dict[str, Any] = {"md": md, "hot": hot, "shown": {}, "prior": None}
    longest: dict[str, float] = {"train": float(cfg["prior"]["reserve_s"])}
    for stage in plan:
        label = f"{stage[0]} {stage[1]} seed {stage[2]}"
        need = estimate(stage, longest, cfg)
        if stage[0] == "prior" and data["prior"] is None:
            blob["skipped"].append(f"{label} (no prior)")
        elif time_budget_s is not None and time.perf_counter() - t0 + need > time_budget_s:
            blob["skipped"].append(label)
        else:
            start = time.perf_counter()
            try:  # a failing run (non-finite particles, out of memory) is reported, not fatal
                run_stage(stage, cfg, data, blob, device, progress)
            except (SMCDiffError, RuntimeError) as err:
                blob["errors"][label] = f"{type(err).__name__}: {err}"[:500]
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()  # after an out-of-memory error
            took = time.perf_counter() - start
            for key in (_family(stage), f"{stage[0]} {stage[1]}"):
                longest[key] = max(longest.get(key, 0.0), took)
        blob["elapsed_s"] = time.perf_counter() - t0
        summary = write_outputs(out, blob)
        tick(label)
    if cfg["figure"] and data["shown"]:
        try:  # matplotlib is optional: the tables are written already
            ramachandran_figure(md, hot, list(data["shown"].values()),
                                out / "alanine_ramachandran.png", cfg["bins"])  # fmt: skip
        except ImportError as err:
            print(f"alanine: no Ramachandran figure ({err})")
    return summary


def _pm(v: Any, p: int = 3) -> str:
    """``[mean, sd]`` with ``p`` decimals (3 significant digits from 1e5 on)."""
    if v is None:
        return "-"

    def f(x: float) -> str:
        return f"{x:.3g}" if abs(x) >= 1e5 and p > 0 else f"{x:.{p}f}"

    return f"{f(v[0])} ± {f(v[1])}" if v[1] else f(v[0])


def format_table(rows: list[dict]) -> str:
    """Markdown: the sampler table (KL vs MD, basin populations, T_conf, energy W1, ESS,
    network and energy evaluations, wall time), the learned prior's model check and training,
    skipped and failed runs, and, from the first row's ``md`` entry, the MD block statistics and
    ΔF table."""
    names = list(BASINS)
    head = ("| method | N | KL(MD‖q) | " + " | ".join(f"p({b})" for b in names)
            + " | T_conf (K) | energy W1 (kJ/mol) | min ESS/N | net evals | energy evals "
            "| temps | wall s | CPU s |")  # fmt: skip
    lines = [head, "|" + "---|" * (len(names) + 10)]
    for r in rows:
        pops = r.get("populations")
        sd = r.get("populations_sd") or [0.0] * len(names)
        cells = ["-"] * len(names) if pops is None else [
            f"{p:.3f}" + (f" ± {s:.3f}" if s else "") for p, s in zip(pops, sd, strict=True)
        ]  # fmt: skip
        lines.append(
            f"| {r['method']} | {r['n_particles']} | {_pm(r.get('kl'))} | "
            + " | ".join(cells)
            + f" | {_pm(r.get('T_conf'), 1)} | {_pm(r.get('w1_energy'), 1)} | "
            f"{_pm(r.get('ess_min_frac'), 2)} | {_pm(r.get('net_evals'), 0)} | "
            f"{_pm(r.get('n_target_evals'), 0)} | {_pm(r.get('n_temperatures'), 1)} | "
            f"{_pm(r.get('wall_s'), 1)} | {_pm(r.get('cpu_s'), 1)} |"
        )
    lines += context_lines(rows)
    md = rows[0].get("md") if rows else None
    if md:
        lines += ["", md_table(md)]
    return "\n".join(lines)


def context_lines(rows: list[dict]) -> list[str]:
    """The learned prior's model check (``prior none`` against the 1000 K MD, beside the floor
    when there is one), its training, and the skipped and failed runs (from the first row's
    ``context``)."""
    ctx = (rows[0].get("context") if rows else None) or {}
    out = []
    none = next((r for r in rows if r["method"] == "prior none" and "kl_T0" in r), None)
    if none:
        floor = f" (floor {none['kl_floor_T0'][0]:.3f})" if "kl_floor_T0" in none else ""
        out.append(f"\nmodel check, prior at 1000 K against the 1000 K MD: KL {_pm(none['kl_T0'])}"
                   f"{floor}, energy W1 {_pm(none['w1_energy_T0'], 1)} kJ/mol, T_conf "
                   f"{_pm(none['T_conf_T0'], 1)} K")  # fmt: skip
    tr = ctx.get("training")
    if tr:
        out.append(f"\nprior training ({tr['sizes']}): loss {tr['loss_first_10pct']:.3f} (first "
                   f"10%) -> {tr['loss_last_10pct']:.3f} (last 10%), {tr['n_params']} "
                   f"parameters, {tr['seconds']:.1f} s")  # fmt: skip
        if "augment_accept" in tr:
            out[-1] += (f"; training set grown by HMC at 1000 K from the MD pool: acceptance "
                        f"{tr['augment_accept']:.2f}, T_conf of its last set "
                        f"{tr['augment_T_conf']:.0f} K, {tr['augment_seconds']:.1f} s")  # fmt: skip
    for key, msg in (ctx.get("errors") or {}).items():
        out.append(f"\nfailed: {key}: {msg}")
    if ctx.get("skipped"):
        out.append("\nskipped (time budget): " + ", ".join(ctx["skipped"]))
    return out


def md_table(md: dict) -> str:
    """Markdown: MD basin populations (± standard error over blocks) and ΔF vs C7eq."""
    meta = md.get("meta", {})
    lines = [
        f"MD {md['temperature']:g} K: {md['n_blocks']} blocks of "
        f"{meta.get('block_ps', 1000) / 1000:g} ns, {md['n_frames']} frames; KL between the "
        f"halves' histograms {md['kl_halves']:.4f} / {md['kl_halves_reverse']:.4f}",
        "",
        "| basin | population | ± s.e. (blocks) | ΔF vs C7eq (kJ/mol) | ± s.e. (blocks) |",
        "|---|---|---|---|---|",
    ]
    for k, name in enumerate(BASINS):
        lines.append(
            f"| {name} | {md['populations'][k]:.4f} | {md['populations_se'][k]:.4f} | "
            f"{md['dF'][k]:.2f} | {md['dF_se'][k]:.2f} |"
        )
    return "\n".join(lines)


def _basin_lines(ax: Any) -> None:
    """The basin boxes of :data:`BASINS` as lines on a (φ, ψ) panel in degrees."""
    kw = {"color": "0.35", "lw": 0.8, "ls": "--"}
    ax.axvline(0.0, **kw)
    ax.axvline(BASINS["C5/beta"][0][1], ymin=0.0, ymax=1.0, **kw)
    for psi in ALPHA_R_PSI:
        ax.plot([-180, 0], [psi, psi], **kw)


def ramachandran_figure(
    md: dict, hot: dict, shown: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path,
    bins: int,
) -> None:  # fmt: skip
    """Panels of :math:`-\\ln p(\\phi, \\psi)` (in k_BT, empty bins blank): the 1000 K start,
    each sampler's weighted 300 K particles (``shown``: name, (φ, ψ), weights), the 300 K MD
    reference; basin boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("MD 1000 K (start)", hot["phi_psi"], None),
              *((f"{name}, 300 K", pp, w) for name, pp, w in shown),
              ("MD 300 K (reference)", md["phi_psi"], None)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.9), sharey=True)
    fine = 2 * bins
    for ax, (title, ang, wt) in zip(axes, panels, strict=True):
        h = histogram(ang, wt, fine)
        f = -(h / h.sum()).log()
        f = (f - f[f.isfinite()].min()).numpy()
        im = ax.imshow(f.T, origin="lower", extent=(-180, 180, -180, 180), vmin=0, vmax=8,
                       cmap="viridis", aspect="equal")  # fmt: skip
        _basin_lines(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("φ (degrees)")
    axes[0].set_ylabel("ψ (degrees)")
    fig.colorbar(im, ax=axes, shrink=0.85, label="-ln p (relative)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m smcdiff_experiments.alanine md T N_BLOCKS PARTS_DIR [--config-every K]``:
    OpenMM MD blocks; ``... pack T PARTS_DIR DEST``: the shipped ``.npz`` (needs OpenMM for
    ``md`` only)."""
    import argparse

    p = argparse.ArgumentParser(description="alanine dipeptide MD reference (OpenMM)")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("md")
    m.add_argument("temperature", type=float)
    m.add_argument("n_blocks", type=int)
    m.add_argument("parts_dir")
    m.add_argument("--config-every", type=int, default=20)
    m.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("pack")
    k.add_argument("temperature", type=float)
    k.add_argument("parts_dir")
    k.add_argument("dest")
    k.add_argument("--config-every", type=int, default=20)
    k.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "md":
        md_trajectory(a.temperature, a.n_blocks, a.parts_dir, config_every=a.config_every,
                      seed=a.seed)  # fmt: skip
    else:
        meta = {"integrator": "LangevinMiddleIntegrator", "platform": "CPU", "dt_fs": 1.0,
                "friction_per_ps": 1.0, "temperature_K": a.temperature, "block_ps": 1000.0,
                "save_every_ps": 0.5, "config_every_ps": 0.5 * a.config_every,
                "equilibration_ps": 100.0, "seed": a.seed,
                "system": "targets/data/alanine_export.py load_system()"}  # fmt: skip
        pack_md(a.parts_dir, a.temperature, a.dest, **meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
