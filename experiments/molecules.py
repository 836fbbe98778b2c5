r"""DW-4 temperature annealing with a learned equivariant prior (DriftLite Table 1, first row).

Protocol (docs/molecules.md):

1. **Data.** ``dw4`` at temperature T is :math:`e^{-U/T}` (``dw4_at(T)``: the pair energy
   divided by T, same centre-of-mass term). :func:`smcdiff_targets.reference_samples` (our
   replica-exchange HMC, split R-hat reported) draws ``2 n_ref`` configurations at T = 2 and at
   T = 1; each set is split by chains into two independent halves: T = 2 training data (made
   mean-free) and a T = 2 check set; the T = 1 reference and a T = 1 floor set (the metric's
   value for ``n_particles`` exact draws).
2. **Prior.** :class:`smcdiff.nets.EGNN` (DEM's DW-4 size: 3 layers x 128 in the full run),
   eps-prediction, trained by :func:`smcdiff.train_score` under
   ``MeanFree(GeometricVE(0.01, 5.0), 4, 2)`` (AdamW, cosine decay, EMA). Convergence checks:
   the loss curve (first vs last 10% of iterations) and the untilted sampler (``none``) at
   T = 2 against the T = 2 reference, beside its floor.
3. **Annealing to T = 1** (:math:`p^\gamma`, :math:`\gamma = 2`): ``fkc`` and
   ``driftlite-vcg`` with ``anneal=2`` (model scores only); ``fk`` with the reward
   :math:`r = -U/2` on the *true* energy (target :math:`p_\theta e^{-U/2} \approx e^{-U}`);
   each also ``+mala``: the weighted particles resampled, then ``n_moves`` MALA moves on the
   true T = 1 density (step size adapted over the first half, an MCMC corrector on the true
   energy). ``none`` (the T = 2 prior itself) is the baseline every method must beat.
4. **Metrics** against the T = 1 reference, weighted where the method weights: W1 of the
   energy histogram, W1 of the pooled interatomic distances; ESS/N, NFE, wall seconds; mean ±
   std over ``seeds``. The paper's numbers (DriftLite Table 1; its ``W1-RDF`` is a W1 over
   interatomic distances, its setting and network are not ours) are printed beside them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from smcdiff_experiments.progress import run_bar
from smcdiff_targets.particles import ParticleSystem, dw4, quartic_pair, reference_samples

import smcdiff
from smcdiff.mcmc import get_kernel, rm_gain, robbins_monro
from smcdiff.nets import EGNN
from smcdiff.processes import GeometricVE, MeanFree
from smcdiff.processes.meanfree import center

DESCRIPTION = "DW-4 annealing T=2 -> T=1 with a learned EGNN prior: FKC, DriftLite, FK, +MALA"

PAPER = {  # DriftLite Table 1, DW-4 annealing (T=2, gamma=2): W1-RDF / W1-energy
    "G-SMC (paper)": (0.208, 0.190),
    "VCG-SMC (paper)": (0.060, 0.031),
}
METHODS = {
    "none": {"method": "none"},
    "fkc": {"method": "fkc", "anneal": 2.0},
    "driftlite-vcg": {"method": "driftlite-vcg", "anneal": 2.0},
    "fk-energy": {"method": "fk", "reward": "energy"},
}
WITH_MOVES = ("fkc", "fk-energy")


def dw4_at(temperature: float) -> ParticleSystem:
    """``dw4`` at ``temperature``: :math:`U/T` (the quartic pair energy's coefficients / T)."""
    if temperature == 1.0:
        return dw4()
    base = dw4()
    return ParticleSystem(
        4,
        2,
        quartic_pair(0.9 / temperature, -4.0 / temperature, 4.0),
        name=f"dw4_T{temperature:g}",
        reference=base.reference,
    )


def settings(quick: bool, **over) -> dict:
    """Sizes of the quick (CI smoke) and full runs; ``over`` replaces entries."""
    if quick:
        cfg = dict(n_ref=500, hidden=32, depth=3, n_iters=600, batch_size=128,
                   lr=2e-3, n_particles=256, n_steps=40, seeds=[0, 1], n_moves=20)  # fmt: skip
    else:
        cfg = dict(n_ref=10_000, hidden=128, depth=3, n_iters=20_000,
                   batch_size=512, lr=1e-3, n_particles=2000, n_steps=100, seeds=list(range(10)),
                   n_moves=100)  # fmt: skip
    # reference_samples overrides (quick: fewer chains and steps; R-hat still reported)
    cfg.update(methods=list(METHODS), sigma_min=0.01, sigma_max=5.0, ref={"n_chains": 250, "n_warmup": 300, "thin": 20}
               if quick else {})  # fmt: skip
    cfg.update(over)
    return cfg


def w1_1d(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor | None = None) -> float:
    r"""Exact 1-D Wasserstein-1 :math:`\int|F_x - F_y|` between weighted draws ``x`` (weights
    ``wx``, default equal) and equal-weight draws ``y``."""
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    wx = torch.ones_like(x) if wx is None else wx.double().reshape(-1)
    wx = wx / wx.sum()
    grid, _ = torch.sort(torch.cat([x, y]))
    xs, order = torch.sort(x)
    cx = torch.cat([torch.zeros(1, dtype=x.dtype), torch.cumsum(wx[order], 0)])
    fx = cx[torch.searchsorted(xs, grid, right=True)]
    fy = torch.searchsorted(torch.sort(y).values, grid, right=True).double() / y.numel()
    return float(((fx - fy).abs()[:-1] * torch.diff(grid)).sum())


def metrics(x: torch.Tensor, w: torch.Tensor | None, ref: torch.Tensor, target) -> dict:
    """Energy W1 and interatomic-distance W1 of weighted particles ``x`` ``(N, 4, 2)`` against
    reference draws ``ref`` ``(M, 8)`` (energies of ``target``)."""
    flat = x.reshape(x.shape[0], -1).double()
    ref = ref.double()
    dx, dr = target.interatomic_distances(flat), target.interatomic_distances(ref)
    wd = None if w is None else w.double()[:, None].expand_as(dx)
    return {
        "w1_energy": w1_1d(target.energy(flat), target.energy(ref), w),
        "w1_dist": w1_1d(dx, dr, wd),
    }


def _split_chains(x: torch.Tensor, n_chains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a reference set ``(draws * C, d)`` (draw-major rows) into the draws of the first
    and of the second half of its ``C`` independent chains: two independent sets."""
    chains = x.view(-1, n_chains, x.shape[-1])
    half = n_chains // 2
    return chains[:, :half].reshape(-1, x.shape[-1]), chains[:, half:].reshape(-1, x.shape[-1])


def reference_sets(cfg: dict, device: str) -> dict:
    """Two replica-exchange reference sets of ``2 n_ref`` draws, at T = 2 and T = 1, each split
    by chains into two independent halves: T = 2 training draws (mean-free, ``(n_ref, 4, 2)``)
    and a T = 2 check set; the T = 1 reference and an independent T = 1 floor set."""
    hot, cold = dw4_at(2.0), dw4()
    n_chains = min(int(cfg["ref"].get("n_chains", hot.reference["n_chains"])), 2 * cfg["n_ref"])
    if (2 * cfg["n_ref"]) % n_chains:
        raise ValueError(f"molecules: 2 n_ref = {2 * cfg['n_ref']} must be a multiple of n_chains")
    kw = {"device": device, **cfg["ref"], "n_chains": n_chains, "return_info": True}
    x_hot, info_t = reference_samples(hot, 2 * cfg["n_ref"], seed=0, **kw)
    x_cold, info_r = reference_samples(cold, 2 * cfg["n_ref"], seed=1, **kw)
    train, hot_ref = _split_chains(x_hot, n_chains)
    ref, floor = _split_chains(x_cold, n_chains)
    keep = ("rhat", "accept_rate", "swap_rate", "seconds", "draws_per_chain")
    return {
        "train": center(train.view(-1, 4, 2)),
        "hot_ref": hot_ref,
        "ref": ref,
        "floor": floor[: cfg["n_particles"]],
        "info": {
            "T2": {k: info_t[k] for k in keep},
            "T1": {k: info_r[k] for k in keep},
        },
    }


def train_prior(data: torch.Tensor, cfg: dict, device: str, progress: bool):
    """The EGNN eps-model under ``MeanFree(GeometricVE)``, with its convergence summary."""
    torch.manual_seed(0)
    proc = MeanFree(GeometricVE(cfg["sigma_min"], cfg["sigma_max"]), 4, 2)
    net = EGNN(4, 2, hidden=cfg["hidden"], depth=cfg["depth"])
    start = time.perf_counter()
    model = smcdiff.train_score(
        net, data.float(), proc, "eps", n_iters=cfg["n_iters"], batch_size=cfg["batch_size"],
        lr=cfg["lr"], lr_schedule="cosine", warmup=min(200, cfg["n_iters"] // 10), seed=0,
        device=device, ema_decay=0.995 if cfg["n_iters"] < 5000 else 0.999, progress=progress,
    )  # fmt: skip
    losses = model.training.losses
    tenth = max(1, len(losses) // 10)
    summary = {
        "loss_first_10pct": float(losses[:tenth].mean()),
        "loss_last_10pct": float(losses[-tenth:].mean()),
        "seconds": time.perf_counter() - start,
        "n_params": sum(p.numel() for p in net.parameters()),
    }
    return model, summary


def mala_moves(x: torch.Tensor, target, n_moves: int, seed: int) -> tuple[torch.Tensor, float]:
    """``n_moves`` MALA moves of ``x`` ``(N, 4, 2)`` on the true ``target`` (step size adapted by
    Robbins–Monro over the first half, then frozen); returns the moved particles and the mean
    acceptance of the second half."""
    gen = torch.Generator(device=x.device).manual_seed(10_000 + seed)
    factory = get_kernel("mala")
    kernel = factory(target.log_prob)
    state = kernel.init(center(x).reshape(x.shape[0], -1).double(), gen)
    log_h = torch.full((x.shape[0],), math.log(0.05), dtype=torch.float64, device=x.device)
    acc = []
    for it in range(1, n_moves + 1):
        state, info = kernel.step(state, log_h.exp(), gen)
        if it <= n_moves // 2:
            log_h = robbins_monro(
                log_h, info.accept_prob, factory.default_target_accept, rm_gain(it)
            )
        else:
            acc.append(info.accept_prob.mean())
    rate = float(torch.stack(acc).mean()) if acc else float("nan")
    return state.x.reshape(x.shape).to(x.dtype), rate


def run_method(model, name: str, cfg: dict, sets: dict, seed: int, device: str) -> list[dict]:
    """One seed of one method (and its ``+mala`` variant): metrics against the T = 1 (and,
    for ``none``, the T = 2) reference."""
    opts = dict(METHODS[name])
    cold = dw4()
    if opts.pop("reward", None) == "energy":
        opts["reward"] = lambda x: -0.5 * cold.energy(x.reshape(x.shape[0], -1))
    start = time.perf_counter()
    res = smcdiff.steer(model, n_particles=cfg["n_particles"], n_steps=cfg["n_steps"], seed=seed,
                        device=device, progress=False, **opts)  # fmt: skip
    wall = time.perf_counter() - start
    x, w = res.particles.detach(), res.weights.detach()
    base = {"method": name, "seed": seed, "nfe": res.info.get("nfe"), "wall_s": wall,
            "ess_frac": float(res.final_ess) / cfg["n_particles"],
            "min_ess_frac": float(res.min_ess) / cfg["n_particles"]}  # fmt: skip
    rows = [{**base, **metrics(x, w, sets["ref"], cold)}]
    if name == "none":
        rows[0].update({f"{k}_T2": v for k, v in metrics(x, w, sets["hot_ref"], cold).items()})
    if name in WITH_MOVES and cfg["n_moves"] > 0:
        xr = res.resample(seed=seed)
        moved, rate = mala_moves(xr, cold, cfg["n_moves"], seed)
        rows.append({**base, "method": f"{name}+mala", "mala_accept": rate,
                     "n_target_grads": cfg["n_moves"] * cfg["n_particles"],
                     **metrics(moved, None, sets["ref"], cold)})  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds of every numeric column, per method (first-seen order)."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        keys = [k for k, v in group[0].items() if isinstance(v, (int, float)) and k != "seed"]
        entry = {"method": name, "n_seeds": len(group)}
        for k in keys:
            vals = torch.tensor(
                [float(r[k]) for r in group if r.get(k) is not None], dtype=torch.float64
            )
            if vals.numel():
                std = float(vals.std()) if vals.numel() > 1 else 0.0
                entry[k] = [float(vals.mean()), std]
        out.append(entry)
    return out


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    progress: bool = True,
    n_particles: int | None = None,
    **overrides,
) -> list[dict]:
    """Reference sets, training, then every method x seed; writes ``molecules.json`` and
    ``molecules.md`` into ``out_dir``; returns the summary rows (the ``none`` row also carries
    the floors and the training summary, for :func:`format_table`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if n_particles is not None:
        overrides["n_particles"] = n_particles
    cfg = settings(quick, **overrides)
    sets = reference_sets(cfg, device)
    model, training = train_prior(sets["train"], cfg, device, progress)
    cold = dw4()
    floor = metrics(sets["floor"].view(-1, 4, 2), None, sets["ref"], cold)
    n = min(cfg["n_particles"], sets["train"].shape[0])
    floor_t2 = metrics(sets["train"][:n], None, sets["hot_ref"], cold)
    tick = run_bar(len(cfg["methods"]) * len(cfg["seeds"]), progress, "molecules")
    rows = []
    for name in cfg["methods"]:
        for seed in cfg["seeds"]:
            rows += run_method(model, name, cfg, sets, seed, device)
            tick(f"{name} seed {seed}")
    summary = summarise(rows)
    for r in summary:
        if r["method"] == "none":
            r.update(floor_T1=floor, floor_T2=floor_t2, training=training)
    blob = {"settings": cfg, "training": training, "references": sets["info"],
            "floor_T1": floor, "floor_T2": floor_t2, "paper": PAPER, "rows": rows,
            "summary": summary}  # fmt: skip
    (out / "molecules.json").write_text(json.dumps(blob, indent=1, default=float) + "\n")
    table = format_table(summary)
    (out / "molecules.md").write_text(table + "\n")
    return summary


def format_table(
    rows: list[dict], floor: dict | None = None, floor_t2: dict | None = None, training=None
) -> str:
    """Markdown table of the summary rows, the floors, the paper's numbers and training (read
    from the ``none`` row when not given)."""
    base = next((r for r in rows if r["method"] == "none"), {})
    floor = floor or base.get("floor_T1")
    floor_t2 = floor_t2 or base.get("floor_T2")
    training = training or base.get("training")

    def f(v, p=3):
        return "-" if v is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"

    head = "| method | W1 distances | W1 energy | ESS/N (min) | NFE | s/run |"
    lines = [head, "|" + "---|" * 6]
    for r in rows:
        ess = r.get("ess_frac")
        ess_s = (
            "-"
            if r["method"].endswith("+mala") or ess is None
            else (f"{ess[0]:.2f} ({r['min_ess_frac'][0]:.2f})")
        )
        lines.append(
            f"| {r['method']} | {f(r.get('w1_dist'))} | {f(r.get('w1_energy'))} | {ess_s} | "
            f"{f(r.get('nfe'), 0)} | {f(r.get('wall_s'), 1)} |"
        )
    for name, (rdf, energy) in PAPER.items():
        lines.append(f"| {name} | {rdf:.3f} | {energy:.3f} | - | - | - |")
    if floor:
        lines.append(f"floor (independent T=1 reference draws): W1 distances "
                     f"{floor['w1_dist']:.3f}, W1 energy {floor['w1_energy']:.3f}")  # fmt: skip
    for r in rows:
        if r["method"] == "none" and "w1_energy_T2" in r and floor_t2:
            lines.append(
                f"model check at T=2 (none vs T=2 reference): W1 distances "
                f"{f(r['w1_dist_T2'])}, W1 energy {f(r['w1_energy_T2'])}; floor "
                f"{floor_t2['w1_dist']:.3f} / {floor_t2['w1_energy']:.3f}"
            )
    if training:
        lines.append(
            f"training: loss {training['loss_first_10pct']:.3f} (first 10%) -> "
            f"{training['loss_last_10pct']:.3f} (last 10%), {training['n_params']} parameters, "
            f"{training['seconds']:.0f} s"
        )
    return "\n".join(lines)
