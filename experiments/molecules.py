r"""Particle systems with a learned equivariant prior: DriftLite Table 1 and FKC Table 3.

Tasks (:data:`TASKS`): a prior learned at :math:`T_0 = 2` is steered to a colder target.

- ``dw4-anneal``: DW-4, :math:`p^\gamma` with :math:`\gamma = 2` (T = 1);
- ``lj13-anneal``: LJ-13, :math:`\gamma = 2` (T = 1); ``lj13-anneal-2.5``: :math:`\gamma =
  2.5` (T = 0.8, FKC Table 3's temperature and DriftLite's LJ-13 :math:`\gamma`);
- ``dw4-reward`` / ``lj13-reward``: the reward tilt :math:`p\,e^{r}` with the true energy,
  :math:`r = -U(1/T - 1/T_0) = -U/2` (target :math:`e^{-U}`, T = 1). DriftLite's reward is not
  stated in a form we could check; this one has an exact target.

Protocol, per system (docs/molecules.md):

1. **Data.** :func:`smcdiff_targets.reference_samples` (our HMC; replica exchange for DW-4,
   plain HMC for LJ-13; split R-hat from dispersed starts reported) draws configurations at
   :math:`T_0` and at every target T, each set split by chains into two independent halves:
   T0 training data and a T0 check set; a T reference and a T floor set (the metrics' value for
   exact draws).
2. **Prior.** :class:`smcdiff.nets.EGNN` eps-model under ``MeanFree(GeometricVE)`` trained by
   :func:`smcdiff.train_score`; convergence: the loss curve and the untilted sampler (``none``)
   at :math:`T_0` against the T0 check set, beside its floor.
3. **Methods** (one :func:`smcdiff.steer` call with ``n_runs`` independent runs each):
   ``none`` (the prior), ``fkc-target`` / ``fkc-tempered`` (FKC, ``noise="target"`` /
   ``"tempered"``; on reward tasks only the first, as tempered noise :math:`h^2 = g^2/\gamma`
   is the target noise at :math:`\gamma = 1`), ``driftlite-vcg`` / ``driftlite-ecg``, and on
   reward tasks ``fk``; anneal
   tasks use model scores only (``anneal=gamma``), reward tasks the true energy. Each weighted
   method also ``+mala``: its particles resampled, then ``n_moves`` MALA moves on the true
   target :math:`e^{-U/T}` on the mean-free subspace
   (:func:`smcdiff.processes.meanfree.subspace_corrector`: an MCMC corrector on the true energy).
4. **Metrics** (:func:`metrics`) per run against the T reference, on the particles resampled to
   equal weights: dNLL (mean energy difference / T: the NLL difference under the exact target,
   whose unknown log Z cancels), MMD and sliced W2 of the sorted interatomic-distance vector,
   W1 of the pooled interatomic distances, energy W1 / W2, and W2 (exact OT on the sorted
   distance vectors); ESS/N, NFE, wall seconds; mean ± std over runs. The papers' numbers
   (:data:`PAPER`) sit beside ours; their networks, data and metric details differ.

Order and budget (:func:`run`): the reference sets and prior of every system first (each
prior trained once, reused by every method and run), then every method on every task for runs
0-2 (one ``steer`` call, seed 0), method by method (:data:`METHOD_PRIORITY`: ``none``, with the
T0 model check, first), then the same for runs 3-5 (seed 1) and 6-9 (seed 2).
``time_budget_s`` covers everything, training included: training iterations are cut to the
time left (measured on a short probe), and a method call starts only if its expected time
(measured on earlier calls) fits; what does not fit is listed as skipped.
Outputs go to ``out_dir`` after every stage and call (``molecules.json``, ``molecules.md``;
atomic replace), so a run cut short by a kill keeps what finished; a method that raises is
recorded with its error, and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment
from smcdiff_experiments.progress import run_bar
from smcdiff_targets.particles import ParticleSystem, dw4, lj13, reference_samples

import smcdiff
from smcdiff.nets import EGNN
from smcdiff.processes import GeometricVE, MeanFree
from smcdiff.processes.meanfree import center, subspace_corrector

DESCRIPTION = (
    "DW-4 / LJ-13 annealing and reward tilts with a learned EGNN prior (FK, FKC, DriftLite)"
)

SYSTEMS = {"dw4": dw4, "lj13": lj13}
T_PRIOR = 2.0
TASKS = {  # system, kind, gamma (target T = T_PRIOR / gamma)
    "dw4-anneal": ("dw4", "anneal", 2.0),
    "dw4-reward": ("dw4", "reward", 2.0),
    "lj13-anneal-2.5": ("lj13", "anneal", 2.5),
    "lj13-reward": ("lj13", "reward", 2.0),
    "lj13-anneal": ("lj13", "anneal", 2.0),
}
METHODS = {
    "anneal": {
        "none": {"method": "none"},
        "fkc-target": {"method": "fkc", "noise": "target"},
        "fkc-tempered": {"method": "fkc", "noise": "tempered"},
        "driftlite-vcg": {"method": "driftlite-vcg"},
        "driftlite-ecg": {"method": "driftlite-ecg", "basis": ("x",)},
    },
    "reward": {
        "none": {"method": "none"},
        "fk": {"method": "fk"},
        "fkc-target": {"method": "fkc", "noise": "target"},  # = "tempered" here (h^2 = g^2 / 1)
        "driftlite-vcg": {"method": "driftlite-vcg"},
        "driftlite-ecg": {"method": "driftlite-ecg", "basis": ("reward", "x")},
    },
}
METRICS = ("dnll", "mmd", "swd", "w1_dist", "w1_energy", "w2_energy", "w2")
_DL = ("dnll", "mmd", "swd", "w1_dist", "w1_energy")


def _paper(*vals, keys=_DL) -> dict:
    return dict(zip(keys, vals, strict=True))


PAPER = {  # DriftLite Table 1 (G-SMC / VCG-SMC) and FKC Table 3; DEM's LJ convention (2x pairs)
    "dw4-anneal": {
        "G-SMC (DriftLite)": _paper(0.038, 0.365, 1.012, 0.208, 0.190),
        "VCG-SMC (DriftLite)": _paper(-0.032, 0.014, 0.035, 0.060, 0.031),
    },
    "lj13-anneal-2.5": {
        "G-SMC (DriftLite)": _paper(13.64, 0.616, 0.523, 0.040, 13.48),
        "VCG-SMC (DriftLite)": _paper(-0.699, 0.102, 0.098, 0.002, 0.286),
        "target-score + FKC (FKC, T=0.8)": _paper(
            0.048, 6.25, 6.36, keys=("w2", "w1_energy", "w2_energy")
        ),
    },
    "dw4-reward": {
        "G-SMC (DriftLite)": _paper(0.329, 0.087, 0.194, 0.118, 0.330),
        "VCG-SMC (DriftLite)": _paper(0.296, 0.021, 0.048, 0.107, 0.296),
    },
    "lj13-reward": {
        "G-SMC (DriftLite)": _paper(1.783, 0.081, 0.084, 0.023, 1.784),
        "VCG-SMC (DriftLite)": _paper(1.734, 0.015, 0.015, 0.022, 1.735),
    },
}

_DW4_REF = {"n_chains": 500, "n_warmup": 500, "thin": 25}
_LJ_REF = {"n_chains": 1000, "n_warmup": 600, "thin": 50}
PROFILES = {
    # CI smoke: DW-4 annealing only, tiny sizes
    "quick": dict(tasks=["dw4-anneal"], methods=["none", "fkc-tempered", "driftlite-vcg"],
                  n_runs=2, n_moves=20, fkc_options={"divergence": "hutchinson"},
                  dw4=dict(n_train=500, n_ref=500, hidden=32, depth=3, n_iters=300,
                           batch_size=128, lr=2e-3, n_particles=256, n_steps=30,
                           ref={"n_chains": 250, "n_warmup": 300, "thin": 20}),
                  lj13=dict(n_train=256, n_ref=256, hidden=16, depth=2, n_iters=100,
                            batch_size=64, lr=2e-3, n_particles=64, n_steps=20,
                            ref={"n_chains": 128, "n_warmup": 200, "thin": 20})),
    # 2 CPU cores: smaller nets and sets, 3 runs
    "cpu": dict(tasks=list(TASKS), methods=None, n_runs=3, n_moves=50, sample_reserve=0.4,
                fkc_options={"divergence": "hutchinson", "max_substeps": 8},
                dw4=dict(n_train=2000, n_ref=1000, hidden=64, depth=3, n_iters=800,
                         batch_size=128, lr=2e-3, n_particles=300, n_steps=40,
                         ref={"n_chains": 250, "n_warmup": 400, "thin": 25}),
                lj13=dict(n_train=2000, n_ref=1000, hidden=32, depth=3, n_iters=500,
                          batch_size=64, lr=2e-3, n_particles=128, n_steps=30,
                          ref={"n_chains": 250, "n_warmup": 500, "thin": 50})),
    # one H200, ~400 s with --time-budget, training included: DEM's network sizes, 10 runs
    # (runs 0-2 of every method first); 40% of the budget is kept for the methods while the
    # systems are prepared, and training iterations are cut to what fits
    "cuda": dict(tasks=list(TASKS), methods=None, n_runs=10, n_moves=100,
                 fkc_options={"max_substeps": 8}, sample_reserve=0.4, first_runs=3,
                 dw4=dict(n_train=5000, n_ref=2000, hidden=128, depth=3, n_iters=3000,
                          batch_size=512, lr=1e-3, n_particles=1000, n_steps=100, ref=_DW4_REF,
                          reserve_s=20, fkc_options={"max_substeps": 16}),
                 lj13=dict(n_train=4000, n_ref=2000, hidden=128, depth=5, n_iters=3000,
                           batch_size=256, lr=1e-3, n_particles=500, n_steps=100, ref=_LJ_REF,
                           reserve_s=40)),
}  # fmt: skip
SIGMAS = {"dw4": (0.01, 5.0), "lj13": (0.01, 3.0)}  # GeometricVE (sigma_min, sigma_max) at T0


def dw4_at(temperature: float) -> ParticleSystem:
    """``dw4`` at ``temperature``: :math:`U/T`."""
    return dw4().at_temperature(temperature)


def settings(profile: str, **over) -> dict:
    """Sizes of a profile (``quick``, ``cpu``, ``cuda``); ``over`` replaces top-level entries,
    and per-system entries given as ``dw4={...}`` / ``lj13={...}`` update them (a system's
    ``fkc_options`` update the profile's for its tasks)."""
    cfg = json.loads(json.dumps(PROFILES[profile]))
    for key, val in over.items():
        if key in SYSTEMS and isinstance(val, dict):
            cfg.setdefault(key, {}).update(val)
        else:
            cfg[key] = val
    cfg["profile"] = profile
    return cfg


# ----------------------------------------------------------------------------- metrics
def wp_1d(x: torch.Tensor, y: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    r"""Exact p-Wasserstein distance :math:`(\int_0^1 |F_x^{-1}(u) - F_y^{-1}(u)|^p du)^{1/p}`
    between equal-weight samples ``x`` ``(n, L)`` and ``y`` ``(m, L)``, per column ``(L,)``
    (1-D tensors give a 0-d result): the quantile functions are step functions, integrated
    exactly over the merged breakpoints :math:`\{i/n\} \cup \{j/m\}`."""
    flat = x.dim() == 1
    xs = torch.sort(x.double().reshape(x.shape[0], -1), 0).values
    ys = torch.sort(y.double().reshape(y.shape[0], -1), 0).values
    n, m = xs.shape[0], ys.shape[0]
    f64 = torch.float64
    u = torch.cat([torch.arange(1, n + 1, dtype=f64) / n, torch.arange(1, m + 1, dtype=f64) / m])
    u = torch.unique(u)
    u = u.to(xs.device)
    lo = torch.cat([u.new_zeros(1), u[:-1]])
    mid = 0.5 * (lo + u)
    qx = xs[(mid * n).long().clamp(max=n - 1)]
    qy = ys[(mid * m).long().clamp(max=m - 1)]
    out = ((u - lo)[:, None] * (qx - qy).abs().pow(p)).sum(0).pow(1.0 / p)
    return out[0] if flat else out


def invariant_features(x: torch.Tensor, system: ParticleSystem) -> torch.Tensor:
    """Sorted interatomic distances ``(N, n_pairs)`` of particles ``(N, n, s)``: invariant to
    rotations, reflections, translations and permutations."""
    return system.interatomic_distances(x.reshape(x.shape[0], -1)).sort(-1).values.double()


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    r"""Biased (V-statistic) MMD :math:`\sqrt{\max(0, \overline{k_{aa}} + \overline{k_{bb}} -
    2\overline{k_{ab}})}` with the Gaussian kernel of ``bandwidth``."""

    def k(u, v):
        return torch.exp(-torch.cdist(u, v).square() / (2 * bandwidth**2)).mean()

    return float((k(a, a) + k(b, b) - 2 * k(a, b)).clamp(min=0).sqrt())


def exact_w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W2 between two equal-size equal-weight sets ``(n, d)`` (Hungarian assignment)."""
    cost = torch.cdist(a, b).square().cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean() ** 0.5)


def metrics(x: torch.Tensor, ref: dict, system: ParticleSystem, temperature: float) -> dict:
    """Every metric (module docstring) of equal-weight particles ``x`` ``(N, n, s)`` against the
    reference ``ref`` (``x``, ``feat``, ``energy``, ``bandwidth``, ``dirs``); energies are
    :math:`U` of ``system`` (T = 1)."""
    flat = x.reshape(x.shape[0], -1).to(ref["x"].dtype)
    feat, energy = invariant_features(x, system), system.energy(flat).double()
    n_ot = min(feat.shape[0], ref["feat"].shape[0], 500)
    return {
        "dnll": float(energy.mean() - ref["energy"].mean()) / temperature,
        "mmd": mmd(feat, ref["feat"], ref["bandwidth"]),
        "swd": float(wp_1d(feat @ ref["dirs"], ref["feat"] @ ref["dirs"], 2).square().mean())
        ** 0.5,
        "w1_dist": float(wp_1d(feat.reshape(-1), ref["feat"].reshape(-1))),
        "w1_energy": float(wp_1d(energy, ref["energy"])),
        "w2_energy": float(wp_1d(energy, ref["energy"], 2)),
        "w2": exact_w2(feat[:n_ot], ref["feat"][:n_ot]),
    }


def reference_entry(x: torch.Tensor, system: ParticleSystem, n_slices: int = 64) -> dict:
    """What :func:`metrics` needs of a reference set ``(M, dim)``: features, energies, the MMD
    bandwidth (median pairwise feature distance of its first 500) and fixed slicing
    directions."""
    feat = invariant_features(x, system)
    sub = feat[:500]
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(feat.shape[1], n_slices, generator=gen, dtype=torch.float64)
    energy = system.energy(x).double()
    lo, hi = torch.quantile(
        energy, torch.tensor([0.0, 0.995], dtype=energy.dtype, device=energy.device)
    )
    span = float(hi - lo)
    entry = {
        "x": x,
        "feat": feat,
        "energy": energy,
        "bandwidth": float(torch.cdist(sub, sub).median()),
        "dirs": (dirs / dirs.norm(dim=0)).to(feat.device),
        "bins": {
            "dist": torch.linspace(0.0, float(feat.max()) * 1.1, 61).tolist(),
            "energy": torch.linspace(float(lo) - 0.1 * span, float(hi) + 0.3 * span, 61).tolist(),
        },
    }
    entry["hist"] = histograms(x, entry["bins"], system)
    return entry


def histograms(x: torch.Tensor, bins: dict, system: ParticleSystem) -> dict:
    """Density histograms (lists) of the pooled interatomic distances and of the energies of
    equal-weight particles ``x`` on ``bins`` (mass outside the bins is dropped)."""
    flat = x.reshape(x.shape[0], -1)
    out = {}
    for key, vals in (
        ("dist", system.interatomic_distances(flat)),
        ("energy", system.energy(flat)),
    ):
        edges = torch.tensor(bins[key], dtype=torch.float64)
        v = vals.detach().double().reshape(-1).cpu()
        counts = torch.histogram(v, edges).hist
        out[key] = (counts / (v.numel() * torch.diff(edges))).tolist()
    return out


# ----------------------------------------------------------------------------- data, prior
def _split_chains(x: torch.Tensor, n_chains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a reference set ``(draws * C, d)`` (draw-major rows) into the draws of the first
    and of the second half of its ``C`` independent chains: two independent sets."""
    chains = x.view(-1, n_chains, x.shape[-1])
    half = n_chains // 2
    return chains[:, :half].reshape(-1, x.shape[-1]), chains[:, half:].reshape(-1, x.shape[-1])


def two_sets(system: ParticleSystem, n: int, ref: dict, seed: int, device: str):
    """``2 n`` reference draws of ``system`` split by chains into two independent halves, with
    the sampler's summary (R-hat, acceptance, swap rate, seconds)."""
    n_chains = min(int(ref.get("n_chains", system.reference["n_chains"])), 2 * n)
    if (2 * n) % n_chains:
        raise ValueError(f"molecules: 2 n = {2 * n} must be a multiple of n_chains = {n_chains}")
    kw = {"device": device, **ref, "n_chains": n_chains, "return_info": True}
    x, info = reference_samples(system, 2 * n, seed=seed, **kw)
    keep = ("rhat", "accept_rate", "swap_rate", "seconds", "draws_per_chain")
    return *_split_chains(x, n_chains), {k: info[k] for k in keep}


def _net(name: str, cfg: dict) -> tuple[torch.nn.Module, MeanFree]:
    """A fresh (seeded) EGNN of system ``name``'s sizes and its ``MeanFree(GeometricVE)``."""
    torch.manual_seed(0)
    base = SYSTEMS[name]()
    n, s = base.n_particles, base.spatial_dim
    proc = MeanFree(GeometricVE(*SIGMAS[name]), n, s)
    return EGNN(n, s, hidden=cfg["hidden"], depth=cfg["depth"]), proc


def fit_eps(net, proc, data: torch.Tensor, cfg: dict, device: str, n_iters: int, progress):
    """``train_score`` of an eps-model ``net`` under ``proc`` for ``n_iters`` iterations (AdamW,
    cosine decay after a warm-up of min(200, n_iters/10), EMA 0.995 below 5000 iterations else
    0.999; seed 0; ``cfg``: ``batch_size``, ``lr``): the particle priors' recipe."""
    return smcdiff.train_score(
        net, data.float(), proc, "eps", n_iters=n_iters, batch_size=cfg["batch_size"],
        lr=cfg["lr"], lr_schedule="cosine", warmup=min(200, n_iters // 10), seed=0,
        device=device, ema_decay=0.995 if n_iters < 5000 else 0.999, progress=progress,
    )  # fmt: skip


def loss_summary(model, net) -> dict:
    """Mean training loss of the first and last 10 % of iterations, and the net's parameters."""
    losses = model.training.losses
    tenth = max(1, len(losses) // 10)
    return {
        "loss_first_10pct": float(losses[:tenth].mean()),
        "loss_last_10pct": float(losses[-tenth:].mean()),
        "n_params": sum(p.numel() for p in net.parameters()),
    }


def _fit(name: str, data: torch.Tensor, cfg: dict, device: str, n_iters: int, progress):
    """:func:`fit_eps` of system ``name``'s prior: the model and the net."""
    net, proc = _net(name, cfg)
    return fit_eps(net, proc, data, cfg, device, n_iters, progress), net


def training_speed(name: str, data: torch.Tensor, cfg: dict, device: str, n_probe: int = 40):
    """Seconds per training iteration of system ``name``'s prior on ``device``, timed on a
    throwaway run of ``n_probe`` iterations (the first quarter excluded: warm-up), and the
    probe's own seconds. Syncs the device at the two timestamps."""
    stamps: dict[int, float] = {}
    skip = max(1, n_probe // 4)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def stamp(k: int, _info: dict) -> None:
        if k in (skip, n_probe):
            sync()
            stamps[k] = time.perf_counter()

    start = time.perf_counter()
    _fit(name, data, cfg, device, n_probe, stamp)
    per_it = (stamps[n_probe] - stamps[skip]) / (n_probe - skip)
    return per_it, time.perf_counter() - start


def train_prior(name: str, data: torch.Tensor, cfg: dict, device: str, progress: bool,
                seconds: float | None = None):  # fmt: skip
    """The EGNN eps-model of system ``name`` under ``MeanFree(GeometricVE)``, with its training
    summary (loss of the first and last 10% of iterations, parameters, seconds). ``seconds``:
    the time it may take; the iterations are then cut to what :func:`training_speed` says fits
    (the cosine schedule follows the cut). Returns ``(None, summary)`` when not even a tenth of
    ``cfg["n_iters"]`` (and 50) fits."""
    start, planned = time.perf_counter(), cfg["n_iters"]
    n_iters, info = planned, {"n_iters_planned": planned}
    if seconds is not None:
        per_it, probe = training_speed(name, data, cfg, device)
        fit = int(0.9 * (seconds - probe) / per_it)
        info.update(s_per_iter=per_it, probe_s=probe)
        n_iters = min(planned, fit)
        if n_iters < max(50, planned // 10):
            return None, {**info, "n_iters": n_iters, "seconds": time.perf_counter() - start}
    model, net = _fit(name, data, cfg, device, n_iters, progress)
    cut = "" if n_iters == planned else f" (cut from {planned} to fit the time budget)"
    return model, {
        **info,
        "n_iters": n_iters,
        **loss_summary(model, net),
        "seconds": time.perf_counter() - start,
        "sizes": f"{cfg['depth']}x{cfg['hidden']}, {n_iters} it{cut}, {data.shape[0]} samples",
    }


def reference_sets(name: str, temps: list[float], cfg: dict, device: str) -> dict:
    """Reference sets of system ``name`` (T0 training + check, and reference + floor at every
    target T), the floors and the histograms' reference: everything but the prior."""
    base, c = SYSTEMS[name](), cfg[name]
    n, s = base.n_particles, base.spatial_dim
    start = time.perf_counter()
    train, check, info_hot = two_sets(base.at_temperature(T_PRIOR), c["n_train"], c["ref"], 0,
                                      device)  # fmt: skip
    prep = {"info": {f"T{T_PRIOR:g}": info_hot}, "refs": {}, "floors": {}, "hists": {}}
    for i, temp in enumerate(temps):
        ref, floor, info = two_sets(base.at_temperature(temp), c["n_ref"], c["ref"], 1 + i, device)
        prep["info"][f"T{temp:g}"] = info
        prep["refs"][temp] = reference_entry(ref, base)
        floor_x = floor[: c["n_particles"]].view(-1, n, s)
        prep["floors"][temp] = metrics(floor_x, prep["refs"][temp], base, temp)
        prep["hists"][f"T{temp:g}"] = {"bins": prep["refs"][temp]["bins"],
                                       "reference": prep["refs"][temp]["hist"]}  # fmt: skip
    prep["refs"][T_PRIOR] = reference_entry(check, base)
    floor_hot = train[: c["n_particles"]].view(-1, n, s)
    prep["floors"][T_PRIOR] = metrics(floor_hot, prep["refs"][T_PRIOR], base, T_PRIOR)
    prep["train"] = center(train.view(-1, n, s))
    prep["ref_seconds"] = time.perf_counter() - start
    return prep


def prepare_system(name: str, temps: list[float], cfg: dict, device: str, progress: bool,
                   seconds: float | None = None):  # fmt: skip
    """:func:`reference_sets` and the trained prior (``prep["model"]``, ``prep["training"]``);
    ``seconds``: the time both may take (training gets what the reference sets leave, and
    ``prep["model"]`` is ``None`` when too little is left)."""
    prep = reference_sets(name, temps, cfg, device)
    left = None if seconds is None else seconds - prep["ref_seconds"]
    prep["model"], prep["training"] = train_prior(name, prep["train"], cfg[name], device,
                                                  progress, left)  # fmt: skip
    return prep


# ----------------------------------------------------------------------------- methods
def method_options(task: str, name: str, fkc_options: dict | None = None) -> dict:
    """``steer`` options of method ``name`` on ``task``: ``anneal=gamma`` (anneal tasks) or the
    true-energy reward :math:`r = -U(1/T - 1/T_0)` (reward tasks); ``fkc_options`` (e.g.
    ``divergence``) go to the FKC / DriftLite methods."""
    fkc_options = fkc_options or {}
    system, kind, gamma = TASKS[task]
    opts = dict(METHODS[kind][name])
    if name == "none":
        return opts
    if opts["method"] != "fk":  # FKC / DriftLite: how divergences are computed (profile)
        opts.update(fkc_options)
    if kind == "anneal":
        return {**opts, "anneal": gamma}
    base = SYSTEMS[system]()
    coef = (gamma - 1.0) / T_PRIOR

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -coef * base.energy(x.reshape(x.shape[0], -1))

    return {**opts, "reward": reward}


def mala_on_target(x: torch.Tensor, system: ParticleSystem, n_moves: int, seed: int):
    """``n_moves`` MALA moves of equal-weight particles ``x`` ``(N, n, s)`` on the true
    :math:`e^{-U_T}` (``system`` at T) on the mean-free subspace, each particle adapting its own
    step size (``mcmc_corrector(per_particle=True)``: configurations with overlapping atoms do
    not shrink everyone's step); returns the moved particles, the mean acceptance and the
    median step size."""
    n, s = system.n_particles, system.spatial_dim
    proc = MeanFree(GeometricVE(), n, s)

    def log_target(k: int, y: torch.Tensor) -> torch.Tensor:
        return -system.energy(y.reshape(y.shape[0], -1))

    h0 = 1e-3 if n > 4 else 1e-2
    corr = subspace_corrector(proc, "mala", log_target, n_moves, h0, per_particle=True)
    gen = torch.Generator(device=x.device).manual_seed(10_000 + seed)
    state, info = corr(0, {"x": center(x)}, gen)
    return state["x"], float(info["accept"]), float(info["step_size"])


def run_method(task: str, name: str, prep: dict, cfg: dict, device: str,
               runs: range | None = None, seed: int = 0) -> list[dict]:  # fmt: skip
    """One ``steer`` call (``seed``; one independent particle system per run in ``runs``,
    default all ``n_runs``) of ``name`` on ``task``, and its ``+mala`` variant: one row per run
    with every metric; ``run`` is the run's index in ``runs``."""
    system, _, gamma = TASKS[task]
    c, temp, base = cfg[system], T_PRIOR / gamma, SYSTEMS[system]()
    runs = range(cfg["n_runs"]) if runs is None else runs
    n_part = c["n_particles"]
    start = time.perf_counter()
    opts = method_options(task, name, {**cfg.get("fkc_options", {}), **c.get("fkc_options", {})})
    res = smcdiff.steer(prep["model"], n_particles=n_part, n_steps=c["n_steps"],
                        n_runs=len(runs), seed=seed, device=device, progress=False,
                        **opts)  # fmt: skip
    wall = time.perf_counter() - start
    xs = res.resample(seed=seed).detach()  # (R, N, n, s)
    ess = (res.final_ess / n_part).reshape(-1).tolist()
    min_ess = (res.min_ess / n_part).reshape(-1).tolist()
    ref, nfe = prep["refs"][temp], res.info.get("nfe")
    rows = []
    for i, r in enumerate(runs):
        row = {"task": task, "method": name, "run": r, "seed": seed, "nfe": nfe,
               "wall_s": wall / len(runs), "ess_frac": ess[i], "min_ess_frac": min_ess[i],
               **metrics(xs[i], ref, base, temp)}  # fmt: skip
        if r == 0:
            row["hist"] = histograms(xs[i], ref["bins"], base)
        if name == "none":
            hot = metrics(xs[i], prep["refs"][T_PRIOR], base, T_PRIOR)
            row.update({f"{k}_T0": v for k, v in hot.items()})
        rows.append(row)
    if name != "none" and cfg["n_moves"] > 0:
        moved, acc, h = mala_on_target(xs.flatten(0, 1), base.at_temperature(temp),
                                       cfg["n_moves"], seed)  # fmt: skip
        moved = moved.view(xs.shape)
        for i, r in enumerate(runs):
            row = {"task": task, "method": f"{name}+mala", "run": r, "seed": seed, "nfe": nfe,
                   "mala_accept": acc, "mala_step": h, "n_target_grads": cfg["n_moves"] * n_part,
                   **metrics(moved[i], ref, base, temp)}  # fmt: skip
            if r == 0:
                row["hist"] = histograms(moved[i], ref["bins"], base)
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over runs of every numeric column, per (task, method) in first-seen order."""
    out = []
    for key in dict.fromkeys((r["task"], r["method"]) for r in rows):
        group = [r for r in rows if (r["task"], r["method"]) == key]
        entry = {"task": key[0], "method": key[1], "n_runs": len(group)}
        for k, v in group[0].items():
            if k in ("run", "seed") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            vals = torch.tensor([float(g[k]) for g in group if g.get(k) is not None])
            if vals.numel():
                std = float(vals.std()) if vals.numel() > 1 else 0.0
                entry[k] = [float(vals.mean()), std]
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- driver
class Clock:
    """Seconds since the start of a run against an optional budget (``None``: no limit)."""

    def __init__(self, budget: float | None):
        self.t0, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.elapsed()

    def fits(self, need: float) -> bool:
        """Can a stage expected to take ``need`` seconds still start?"""
        return self.left() >= need


def _write(out: Path, blob: dict) -> list[dict]:
    """Write ``molecules.json`` and ``molecules.md`` from ``blob`` (atomic replace); returns
    the summary rows, each with a ``context`` (systems, skipped, errors) for
    :func:`format_table`."""
    blob["summary"] = summarise(blob["rows"])
    for name, text in (
        ("molecules.json", json.dumps(blob, indent=1, default=float) + "\n"),
        ("molecules.md", format_table(blob["summary"], blob) + "\n"),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    systems = {k: {n: v for n, v in info.items() if n != "hists"}
               for k, info in blob["systems"].items()}  # fmt: skip
    context = {"systems": systems, "skipped": blob["skipped"], "errors": blob["errors"]}
    return [{**r, "context": context} for r in blob["summary"]]


def _plan(cfg: dict) -> dict:
    """``{system: [task, ...]}`` of the configured tasks, systems in first-seen order."""
    plan: dict = {}
    for task in cfg["tasks"]:
        if task not in TASKS:
            raise ValueError(f"molecules: unknown task {task!r}; choose from {sorted(TASKS)}")
        plan.setdefault(TASKS[task][0], []).append(task)
    return plan


def seed_passes(n_runs: int, first: int = 3) -> list[range]:
    """The runs in priority order, in passes of ``first`` (the last one takes the remainder):
    pass ``p`` is one ``steer`` call per method with seed ``p``. For 10 runs: 0-2, 3-5, 6-9.
    (Small passes keep a pass's expected time, estimated linearly in the runs, near the
    first's.)"""
    starts = list(range(0, max(n_runs - first, 0) + 1, first)) or [0]
    stops = [*starts[1:], n_runs]
    return [range(a, b) for a, b in zip(starts, stops, strict=True)]


METHOD_PRIORITY = ("none", "fkc-target", "driftlite-vcg", "fk", "fkc-tempered", "driftlite-ecg")
"""The order methods run in, each on every task before the next: the prior (with its T0 model
check), then the papers' two headline methods (G-SMC ~ ``fkc-target``, VCG-SMC), then the
rest."""


def priority(plan: dict, cfg: dict) -> list[tuple[str, str]]:
    """``(task, method)`` in priority order: method by method (:data:`METHOD_PRIORITY`), each
    on every task that has it, so a tight budget still covers every task's main methods."""
    pairs = [(t, m) for tasks in plan.values() for t in tasks for m in _methods(cfg, t)]
    return sorted(pairs, key=lambda p: METHOD_PRIORITY.index(p[1]))


def estimate_s(costs: dict, task: str, name: str, n_runs: int) -> float:
    """Expected seconds of ``n_runs`` runs of ``name`` on ``task``, from the seconds per run
    measured so far (``costs``, ``{(task, method): s}``): the pair's own, else the method's on
    another task of the system, else 3 x the system's most expensive so far (0 when nothing
    ran on the system yet)."""
    if (task, name) in costs:
        return costs[task, name] * n_runs
    system = TASKS[task][0]
    mine = {(t, m): v for (t, m), v in costs.items() if TASKS[t][0] == system}
    same = [v for (_, m), v in mine.items() if m == name]
    if same:
        return max(same) * n_runs
    return 3.0 * max(mine.values(), default=0.0) * n_runs


def prepare_all(plan: dict, cfg: dict, device: str, progress: bool, clock: Clock, blob: dict,
                out: Path) -> dict:  # fmt: skip
    """Reference sets and prior of every planned system, in order (``{system: prep}``). With a
    budget, ``sample_reserve`` (a fraction of it) is kept for the methods; each system may use
    an equal share of the rest (what one leaves goes to the next), starts only if its share is
    at least its ``reserve_s``, and is skipped when its training does not fit."""
    preps: dict = {}
    reserve = cfg.get("sample_reserve", 0.0) * (clock.budget or 0.0)
    for i, (system, tasks) in enumerate(plan.items()):
        share = (clock.left() - reserve) / (len(plan) - i)
        if not share >= cfg[system].get("reserve_s", 0.0):
            blob["skipped"] += tasks
            continue
        temps = sorted({T_PRIOR / TASKS[t][2] for t in tasks}, reverse=True)
        seconds = None if clock.budget is None else share
        try:  # a failing reference sampler or training loses its system, not the run
            prep = prepare_system(system, temps, cfg, device, progress, seconds)
        except Exception as err:
            blob["errors"][f"{system}/prepare"] = f"{type(err).__name__}: {err}"[:500]
            blob["skipped"] += [f"{t} (its system failed to prepare)" for t in tasks]
            _write(out, blob)
            continue
        blob["systems"][system] = {"references": prep["info"], "training": prep["training"],
                                   "floors": {f"T{k:g}": v for k, v in prep["floors"].items()},
                                   "hists": prep["hists"]}  # fmt: skip
        if prep["model"] is None:
            blob["skipped"] += [f"{t} (its prior's training does not fit)" for t in tasks]
        else:
            preps[system] = prep
        _write(out, blob)
    return preps


def run_all_methods(plan: dict, preps: dict, cfg: dict, device: str, clock: Clock,
                    blob: dict, out: Path, progress: bool) -> None:  # fmt: skip
    """Every (task, method) of the systems in ``preps``, pass by pass (:func:`seed_passes`),
    in :func:`priority` order; a call starts only if :func:`estimate_s` says it fits. The
    output files are rewritten after every call; a failing method (any exception) is recorded
    with its error and not run again in later passes."""
    passes, order = seed_passes(cfg["n_runs"], cfg.get("first_runs", 3)), priority(plan, cfg)
    tick = run_bar(len(passes) * len(order), progress, "molecules")
    costs: dict = {}
    for p, runs in enumerate(passes):
        for task, name in order:
            key, system = f"{task}/{name}", TASKS[task][0]
            label = f"{key} runs {runs.start}-{runs.stop - 1}"
            tick(label)
            if system not in preps or key in blob["errors"]:
                continue
            if not clock.fits(estimate_s(costs, task, name, len(runs))):
                blob["skipped"].append(label)
                continue
            start = time.perf_counter()
            try:  # one failing method (NaN particles, out of memory) is reported, the rest go on
                blob["rows"] += run_method(task, name, preps[system], cfg, device, runs, p)
            except Exception as err:
                blob["errors"][key] = f"{type(err).__name__} ({label}): {err}"[:500]
                if str(device).startswith("cuda"):
                    torch.cuda.empty_cache()
            costs[task, name] = (time.perf_counter() - start) / len(runs)
            blob["elapsed_s"] = clock.elapsed()
            _write(out, blob)
        _plot(blob, out)  # after every pass: a run killed later keeps a figure too


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    progress: bool = True,
    n_particles: int | None = None,
    time_budget_s: float | None = None,
    profile: str | None = None,
    **overrides,
) -> list[dict]:
    """Every configured task: the reference sets and prior of every system (trained once),
    then every method, runs 0-2 first (seed 0), then 3-5 and 6-9 (seeds 1, 2); writes
    ``molecules.json`` / ``molecules.md`` into ``out_dir`` after each stage, and
    ``molecules_histograms.png`` after each pass. ``profile``: ``quick`` / ``cpu`` / ``cuda``
    (default: ``quick`` when ``quick``, else from ``device``); ``time_budget_s``: the whole
    run's seconds, training included (:func:`prepare_all`, :func:`run_all_methods`; what does
    not fit is listed under ``skipped``). Returns the summary rows."""
    clock = Clock(time_budget_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = profile or ("quick" if quick else "cuda" if str(device).startswith("cuda") else "cpu")
    cfg = settings(profile, **overrides)
    if n_particles is not None:
        for name in SYSTEMS:
            cfg.get(name, {})["n_particles"] = n_particles
    blob = {"settings": cfg, "device": str(device), "time_budget_s": time_budget_s,
            "paper": PAPER, "systems": {}, "rows": [], "skipped": [], "errors": {}}  # fmt: skip
    plan = _plan(cfg)
    preps = prepare_all(plan, cfg, device, progress, clock, blob, out)
    run_all_methods(plan, preps, cfg, device, clock, blob, out, progress)
    blob["elapsed_s"] = clock.elapsed()
    return _write(out, blob)


def _plot(blob: dict, out: Path) -> None:
    """``molecules_histograms.png`` from the rows so far (none without rows or matplotlib)."""
    if blob["rows"]:
        try:  # matplotlib is optional, and the tables are written already
            plot_histograms(blob, out / "molecules_histograms.png")
        except Exception as err:
            print(f"molecules: no histogram figure ({type(err).__name__}: {err})")


def _methods(cfg: dict, task: str) -> list[str]:
    """The configured methods that ``task``'s kind has (all of them when not configured)."""
    names = list(METHODS[TASKS[task][1]])
    return names if cfg.get("methods") is None else [m for m in names if m in cfg["methods"]]


# ----------------------------------------------------------------------------- tables
def _cell(v, p: int = 3) -> str:
    """A number or ``[mean, std]`` with ``p`` decimals (3 significant digits from 1e4 on)."""
    if v is None:
        return "-"
    mean, std = (v, None) if isinstance(v, (int, float)) else v

    def f(x: float) -> str:
        return f"{x:.3g}" if abs(x) >= 1e4 else f"{x:.{p}f}"

    return f(mean) if std is None else f"{f(mean)} ± {f(std)}"


def task_table(task: str, rows: list[dict], blob: dict | None = None) -> str:
    """Markdown table of one task: our summary rows, the papers' rows, the floor and (for the
    ``none`` row) the T0 model check."""
    system, _, gamma = TASKS[task]
    temp = T_PRIOR / gamma
    cols = ("ΔNLL", "MMD", "SWD", "W1 dist", "W1 energy", "W2 energy", "W2", "ESS/N (min)",
            "NFE", "s/run", "runs")  # fmt: skip
    lines = [f"**{task}** ({system}, T0 = {T_PRIOR:g} → T = {temp:g}, γ = {gamma:g})", "",
             "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    for r in rows:
        ess = "-" if "ess_frac" not in r else f"{r['ess_frac'][0]:.2f} ({r['min_ess_frac'][0]:.2f})"
        cells = [_cell(r.get(k)) for k in METRICS]
        cells += [ess, _cell(r.get("nfe"), 0), _cell(r.get("wall_s"), 1), str(r["n_runs"])]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    for key, msg in (blob or {}).get("errors", {}).items():
        if key.split("/")[0] == task:
            cells = [f"failed: {msg.split(' ')[0]} (below)"] + ["-"] * (len(cols) - 1)
            lines.append(f"| {key.split('/')[1]} | " + " | ".join(cells) + " |")
    for name, vals in PAPER.get(task, {}).items():
        cells = [_cell(vals.get(k)) for k in METRICS] + ["-"] * 4
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    info = (blob or {}).get("systems", {}).get(system)
    if info:
        fl = info["floors"].get(f"T{temp:g}")
        if fl:
            lines.append("| floor (exact draws) | " + " | ".join(_cell(fl[k]) for k in METRICS)
                         + " | - | - | - | - |")  # fmt: skip
    none = next((r for r in rows if r["method"] == "none" and "w1_energy_T0" in r), None)
    if none and info:
        fh = info["floors"][f"T{T_PRIOR:g}"]
        lines.append(f"\nmodel check at T0 (none vs T0 reference): W1 energy "
                     f"{_cell(none['w1_energy_T0'])}, W1 dist {_cell(none['w1_dist_T0'])}, MMD "
                     f"{_cell(none['mmd_T0'])}; floor {fh['w1_energy']:.3f} / "
                     f"{fh['w1_dist']:.3f} / {fh['mmd']:.3f}")  # fmt: skip
    return "\n".join(lines)


def format_table(rows: list[dict], blob: dict | None = None) -> str:
    """Every task's table, then per system the training and reference-set summaries (from
    ``blob``, the JSON, or else from the rows' ``context``)."""
    blob = blob or (rows[0].get("context") if rows else None)
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows):
        parts.append(task_table(task, [r for r in rows if r["task"] == task], blob))
    for system, info in (blob or {}).get("systems", {}).items():
        tr = info["training"]
        rhat = {k: max(v["rhat"].values(), default=float("nan"))
                for k, v in info["references"].items()}  # fmt: skip
        trained = (
            f"training {tr['sizes']}: loss {tr['loss_first_10pct']:.3f} (first 10%) -> "
            f"{tr['loss_last_10pct']:.3f} (last 10%), {tr['n_params']} parameters, "
            f"{tr['seconds']:.0f} s"
            if "sizes" in tr
            else f"training did not fit the time budget ({tr['n_iters']} of "
            f"{tr['n_iters_planned']} iterations)"
        )
        parts.append(
            f"{system}: {trained}; reference sets, worst split R-hat: "
            + ", ".join(f"{k} {v:.3f}" for k, v in rhat.items())
        )
    for key, msg in (blob or {}).get("errors", {}).items():
        parts.append(f"failed: {key}: {msg}")
    if (blob or {}).get("skipped"):
        parts.append("skipped (time budget): " + ", ".join(blob["skipped"]))
    return "\n\n".join(parts)


def plot_histograms(blob: dict, path: str | Path, methods: tuple[str, ...] | None = None) -> None:
    """One row per task: the interatomic-distance and energy histograms of run 0 of each
    method (``methods``, default all) against the reference (grey), from ``blob`` (the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in blob["rows"]))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.8 * len(tasks)), squeeze=False)
    for ax_row, task in zip(axes, tasks, strict=True):
        system, _, gamma = TASKS[task]
        hist = blob["systems"][system]["hists"][f"T{T_PRIOR / gamma:g}"]
        rows = [r for r in blob["rows"] if r["task"] == task and "hist" in r
                and (methods is None or r["method"] in methods)]  # fmt: skip
        for ax, key, label in zip(ax_row, ("dist", "energy"), ("interatomic distance", "energy U"),
                                  strict=True):  # fmt: skip
            edges = torch.tensor(hist["bins"][key])
            mids = 0.5 * (edges[1:] + edges[:-1])
            ax.fill_between(
                mids, hist["reference"][key], step="mid", color="0.8", label="reference"
            )
            for r in rows:
                ls = "--" if r["method"].endswith("+mala") else "-"
                ax.plot(mids, r["hist"][key], ls, drawstyle="steps-mid", lw=1, label=r["method"])
            ax.set_xlabel(label)
            ax.set_title(f"{task} (T = {T_PRIOR / gamma:g})", fontsize=9)
        ax_row[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """``python -m smcdiff_experiments.molecules --device cuda --time-budget 420 --out DIR``."""
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    ap.add_argument("--out", default="results/molecules")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds")
    ap.add_argument("--tasks", nargs="*", default=None, choices=sorted(TASKS))
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method")
    ap.add_argument("--n-runs", type=int, default=None)
    args = ap.parse_args(argv)
    given = (("tasks", args.tasks), ("methods", args.methods), ("n_runs", args.n_runs))
    over = {k: v for k, v in given if v is not None}
    rows = run(args.out, device=args.device, progress=True, time_budget_s=args.time_budget,
               profile=args.profile, **over)  # fmt: skip
    print(format_table(rows, json.loads((Path(args.out) / "molecules.json").read_text())))


if __name__ == "__main__":
    main()
