"""Energy-defined targets x samplers: the table of BENCHMARKS.md, seeds 0-9, counted evaluations.

For every target (ground truth from ``smcdiff_targets``: exact samples and log Z) and method,
runs ``smcdiff.sample`` once per seed and reports mean ± std over seeds of: log Z error (signed),
mode coverage and mode-weight TV (where the target has ``mode_index``), entropic W2 (reg 0.05,
2000-point subsamples), exact W2 for d <= 8, sliced KS (funnel), P(x1 > 0) (many-well),
std(x0) (funnel neck), final ESS / N, target and gradient evaluations, wall time.

Run: ``smcdiff run energy --device cuda --out results/energy`` (``--quick`` for a smoke test), or
``python -m smcdiff_experiments.energy_benchmarks --help`` for the options. Results go to
``energy.json`` and ``energy.md`` in the output folder; docs/energy-results.md is made from them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import smcdiff
from smcdiff.diagnostics.transport import entropic_wasserstein2, sliced_ks, wasserstein2

DESCRIPTION = "energy targets (gmm40, funnel, many-well, mw5, dw50, mog40-50d) x samplers vs truth"
DEFAULT_TARGETS = ("gmm40_fab", "funnel10", "manywell32", "mw5", "dw50", "mog40_50d")
N_MODES = {"gmm40_fab": 40, "mw5": 32, "dw5": 32, "dw50": 32, "mog40_50d": 40}
ISSUE13_TARGETS = ("mw5", "dw50", "manywell32", "funnel10", "mog40_50d")
"""Issue 13's targets: where tempering struggles (narrow multi-well modes in high dimension, the
funnel's neck, 40 modes in 50-D)."""
REFINED = {"method": "diffusion", "score": "refined", "n_steps": 40, "n_mc": 32, "n_chains": 16,
           "n_chain_steps": 0}  # fmt: skip
"""Diffusion-path SMC with the refined mixture estimator (RDMCRefinedScore, Laplace components at
the modes the inner chains climb to): per particle and step 16 chains x 33 gradients and 32
importance draws."""


ADAPTIVE = {**REFINED, "grid": "adaptive", "target_ess": 0.5, "search_fraction": 0.25}
"""The refined sampler on the adaptive grid (:mod:`smcdiff.energy.time_grid_adaptive`): each
next time by CESS bisection (target 0.5, at most 40 steps), candidates scored on a quarter of
the particles (~2.25 estimator passes a step), every pass counted."""


def _targets(names: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, tuple[Callable, float]]:
    """name -> (constructor, reference std) from ``smcdiff_targets.TARGETS`` (targets with exact
    samplers; the particle systems and the logistic regression need their reference sets)."""
    from smcdiff_targets import TARGETS

    return {name: TARGETS[name] for name in names}


def _truth(make: Callable, n: int = 20_000) -> torch.Tensor:
    """``n`` exact samples drawn on the CPU at a fixed seed (same set on every device), float64."""
    return make().sample(n, generator=torch.Generator().manual_seed(12345)).double()


def methods_for(name: str) -> dict[str, dict]:
    """Sampler settings per target; the tempered budgets are the BlackJAX peer's
    (HMC 10 leapfrog steps; 5 moves per temperature on gmm40 and the funnel, 10 otherwise)."""
    moves = 5 if name in ("gmm40_fab", "funnel10") else 10
    out = {
        "tempered-hmc": {"method": "tempered", "kernel": "hmc", "n_moves": moves},
        "tempered-mala": {"method": "tempered", "kernel": "mala", "n_moves": 20},
        "diffusion-rdmc": {"method": "diffusion", "n_steps": 100, "n_mc": 64},
        "diffusion-refined": dict(REFINED),
        "diffusion-refined-adaptive": dict(ADAPTIVE),
        # 16x the importance draws (cheap next to the chains' gradients): the estimator's noise
        "diffusion-refined-draws512": {**REFINED, "n_mc": 512},
        "diffusion-refined-adaptive-draws512": {**ADAPTIVE, "n_mc": 512},
        # tempered SMC at a budget nearer the refined sampler's (10x the moves)
        "tempered-mala-x10": {"method": "tempered", "kernel": "mala", "n_moves": 200},
    }
    if name == "funnel10":  # the non-centred parameterisation (smcdiff.energy.reparam)
        out["tempered-mala-noncentred"] = {**out["tempered-mala"], "reparam": "funnel"}
        out["diffusion-refined-noncentred"] = {**REFINED, "reparam": "funnel"}
    return out


def reparameterised(target, kw: dict):
    """``(target to sample, map back to x or None, sampler options)`` for a method entry with a
    ``reparam`` key (``"funnel"``: :func:`smcdiff.energy.reparam.funnel_noncentred`)."""
    kw = dict(kw)
    if kw.pop("reparam", None) != "funnel":
        return target, None, kw
    from smcdiff.energy.reparam import funnel_noncentred

    nc = funnel_noncentred(target)
    return nc, nc.to_x, kw


ISSUE13_METHODS = (
    "tempered-mala", "tempered-mala-x10", "diffusion-refined", "diffusion-refined-adaptive",
    "diffusion-refined-draws512", "tempered-mala-noncentred", "diffusion-refined-noncentred",
)  # fmt: skip


def floors(out_dir: str | Path, device: str, names: tuple[str, ...] = ISSUE13_TARGETS) -> dict:
    """Entropic W2 between two independent exact sample sets per target (the metric's floor at
    this sample size); writes ``entropic_w2_floors.json``."""
    out = {}
    for name, (make, _) in _targets(names).items():
        target = make()
        a = _truth(make).to(device)
        b = target.sample(20_000, generator=torch.Generator().manual_seed(999)).double().to(device)
        out[name] = entropic_wasserstein2(a, b)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "entropic_w2_floors.json").write_text(json.dumps(out, indent=1))
    return out


PEER = {  # the BlackJAX peer's settings (peer_blackjax_tempered.py): inner kernel, moves
    "gmm40_fab": ("hmc", 5),
    "funnel10": ("hmc", 5),
    "manywell32": ("hmc", 10),
    "mw5": ("hmc", 10),
}


def timing(out_dir: str | Path, device: str = "cuda", ns: tuple[int, ...] = (10_000, 100_000)):
    """Wall time of ``sample(method="tempered")`` in the BlackJAX peer's configurations (HMC with
    10 leapfrog steps, target ESS 0.5, systematic resampling every step), each timed on its second
    run (the first warms up kernels and caches). Writes ``energy_timing.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (make, ref_std) in _targets(tuple(PEER)).items():
        target = make()
        target = target.to(device) if hasattr(target, "to") else target
        truth = _truth(make)
        kernel, moves = PEER[name]
        for n in ns:
            kw = {"method": "tempered", "kernel": kernel, "n_moves": moves, "n_particles": n}
            smcdiff.sample(target, seed=0, device=device, reference_std=ref_std, **kw)
            res = smcdiff.sample(target, seed=1, device=device, reference_std=ref_std, **kw)
            row = {"target": name, "n": n, "kernel": kernel, "n_moves": moves, "device": device}
            row.update(evaluate(target, name, res, truth, float(getattr(target, "log_z", 0.0))))
            row.update(
                wall_s=res.info["wall_time_s"],
                n_temperatures=res.info["n_temperatures"],
                n_grad_evals=res.info["n_grad_evals"],
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "energy_timing.json").write_text(json.dumps(rows, indent=1))
    return rows


def evaluate(
    target, name: str, res, truth: torch.Tensor, log_z_true: float, to_x: Callable | None = None
) -> dict:
    """Metrics of one run against the truth; ``to_x`` maps reparameterised particles back."""
    x, w = res.particles.detach(), res.weights.detach()
    if to_x is not None:
        x = to_x(x)
    row = {
        "log_z_err": float(res.log_z) - log_z_true,
        "ess_frac": float(res.final_ess) / x.shape[0],
    }
    if x.device.type == "cuda":  # log-domain Sinkhorn at reg 0.05: minutes per call on a CPU
        row["entropic_w2"] = entropic_wasserstein2(x, truth, w)
    if target.dim <= 8:
        row["w2"] = wasserstein2(x, truth, w, max_points=2000)
    if callable(getattr(target, "mode_index", None)):
        n_modes = N_MODES[name]
        idx = target.mode_index(x)
        mass = torch.zeros(n_modes, dtype=torch.float64, device=x.device).scatter_add_(0, idx, w)
        row["modes_covered"] = int((mass > 0).sum())
        row["mode_tv"] = float(0.5 * (mass - 1.0 / n_modes).abs().sum())
    if name == "funnel10":
        row["sliced_ks"] = sliced_ks(x, truth, w)
        m0 = float((w * x[:, 0]).sum())
        row["x0_std"] = float((w * (x[:, 0] - m0) ** 2).sum().sqrt())
    if name == "manywell32":
        row["p_x1_pos"] = float((w.unsqueeze(-1) * (x[:, 0::2] > 0)).sum(0).mean())
    return row


class Budget:
    """A wall-time budget shared by the rows still to run: each row may start seeds until its
    share (what is left over the rows left) is spent, and always runs at least one seed while
    any budget is left; ``None``: no limit. Counted from ``start`` (``time.perf_counter()``)."""

    def __init__(self, seconds: float | None, n_rows: int, start: float | None = None):
        self.seconds, self.rows_left = seconds, max(n_rows, 1)
        self.start = time.perf_counter() if start is None else start

    def row_deadline(self) -> float | None:
        """The time after which the next row starts no new seed (``None``: never; ``-inf``: the
        budget is spent, skip the row)."""
        if self.seconds is None:
            return None
        left = self.seconds - (time.perf_counter() - self.start)
        share = left / self.rows_left
        self.rows_left = max(self.rows_left - 1, 1)
        return -math.inf if left <= 0 else time.perf_counter() + share


def run_row(
    name: str, meth: str, kw: dict, target, truth: torch.Tensor, ref_std, n_particles: int,
    seeds: tuple[int, ...], device: str, deadline: float | None,
) -> dict | None:  # fmt: skip
    """One (target, method) row over ``seeds`` (stopping at ``deadline`` after at least one
    seed; ``None`` if the budget is spent before the first)."""
    if deadline == -math.inf:
        return None
    log_z_true = float(getattr(target, "log_z", 0.0))
    sampled, to_x, kw = reparameterised(target, kw)
    if kw.get("score") == "refined" and device != "cpu":  # the mixture density is (rows, n_mc,
        # n_chains, d) float64: 16384 rows x 32 draws is one batch a step (3.4 GB in 50-D)
        kw.setdefault("chunk_size", max(256, 16_384 * 32 // kw.get("n_mc", 32)))
    per_seed = []
    for seed in seeds:
        if per_seed and deadline is not None and time.perf_counter() > deadline:
            break
        res = smcdiff.sample(
            sampled, n_particles=n_particles, seed=seed, device=device,
            reference_std=ref_std, progress=False, **kw,
        )  # fmt: skip
        r = evaluate(target, name, res, truth, log_z_true, to_x)
        r.update(
            n_target_evals=res.info["n_target_evals"],
            n_grad_evals=res.info["n_grad_evals"],
            wall_s=res.info["wall_time_s"],
            n_temperatures=res.info.get("n_temperatures"),
            n_steps=res.info.get("n_steps"),
        )
        per_seed.append(r)
    row = {"target": name, "method": meth, "n": n_particles, "device": device}
    row.update(_aggregate(per_seed))
    row["n_seeds"] = len(per_seed)
    return row


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    n_particles: int = 10_000,
    seeds: tuple[int, ...] = tuple(range(10)),
    targets: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    progress: bool = True,
    time_budget: float | None = None,
    start: float | None = None,
) -> list[dict]:
    """Every (target, method) row over ``seeds``; ``energy.json`` / ``energy.md`` rewritten after
    each row (a run stopped by a time limit keeps what it finished). ``time_budget``: seconds
    (from ``start``) shared by the rows (:class:`Budget`); rows record ``n_seeds``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        n_particles, seeds = 1000, (0, 1)
    registry = _targets(targets or DEFAULT_TARGETS)
    plan = [(n, m) for n in registry for m in methods_for(n) if not methods or m in methods]
    budget = Budget(time_budget, len(plan), start)
    rows: list[dict] = []
    for name in registry:
        make, ref_std = registry[name]
        target = make()
        if hasattr(target, "to"):
            target = target.to(device)
        truth = _truth(make)
        for meth, kw in methods_for(name).items():
            if methods and meth not in methods:
                continue
            row = run_row(name, meth, kw, target, truth, ref_std, n_particles, seeds, device,
                          budget.row_deadline())  # fmt: skip
            if row is None:
                print(f"{name} {meth}: skipped (time budget spent)", flush=True)
                continue
            rows.append(row)
            if progress:
                print(_line(row), flush=True)
            (out / "energy.json").write_text(json.dumps(rows, indent=1))
            (out / "energy.md").write_text(render(rows))
    return rows


def _aggregate(per_seed: list[dict]) -> dict:
    agg = {}
    for key in per_seed[0]:
        vals = [r[key] for r in per_seed if r[key] is not None]
        if not vals:
            continue
        t = torch.tensor(vals, dtype=torch.float64)
        agg[key] = float(t.mean())
        agg[key + "_std"] = float(t.std()) if len(vals) > 1 else 0.0
    return agg


COLUMNS = [
    ("log_z_err", "log Ẑ − log Z"),
    ("entropic_w2", "entropic W2"),
    ("w2", "W2"),
    ("mode_tv", "mode TV"),
    ("modes_covered", "modes"),
    ("sliced_ks", "sliced KS"),
    ("x0_std", "std(x0)"),
    ("p_x1_pos", "P(x1>0)"),
    ("ess_frac", "ESS/N"),
    ("n_target_evals", "target evals"),
    ("n_grad_evals", "grad evals"),
    ("n_steps", "steps"),
    ("wall_s", "wall s"),
    ("n_seeds", "seeds"),
]


def _fmt(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    v, s = row[key], row.get(key + "_std", 0.0)
    if key in ("n_grad_evals", "n_target_evals"):
        return f"{v:.2e}"
    if key in ("modes_covered", "n_steps"):
        return f"{v:.1f}"
    if key == "n_seeds":
        return str(v)
    return f"{v:.3f} ± {s:.3f}"


def render(rows: list[dict]) -> str:
    head = "| target | method | N | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = " | ".join(_fmt(r, k) for k, _ in COLUMNS)
        lines.append(f"| {r['target']} | {r['method']} | {r['n']} | {cells} |")
    return "\n".join(lines) + "\n"


format_table = render  # the table `smcdiff run energy` prints


def _line(row: dict) -> str:
    keys = ("log_z_err", "entropic_w2", "mode_tv", "sliced_ks", "p_x1_pos", "wall_s")
    parts = [f"{k}={row[k]:.4g}" for k in keys if k in row]
    return f"{row['target']:>11} {row['method']:<16} " + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/energy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--targets", nargs="*")
    p.add_argument("--methods", nargs="*")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole run, shared by the rows (each runs >= 1 seed)",
    )
    p.add_argument("--timing", action="store_true", help="only the timing runs vs the peer")
    p.add_argument("--issue13", action="store_true",
                   help="issue 13's targets and methods (tempered vs refined diffusion)")  # fmt: skip
    a = p.parse_args(argv)
    if a.issue13:
        a.targets = a.targets or list(ISSUE13_TARGETS)
        a.methods = a.methods or list(ISSUE13_METHODS)
    t0 = time.perf_counter()
    if a.issue13 and a.device != "cpu":
        print("entropic W2 floors:", floors(a.out, a.device), flush=True)
    if a.timing:
        timing(a.out, a.device)
        return 0
    run(
        a.out, a.device, a.quick, a.n, tuple(range(a.seeds)),
        tuple(a.targets) if a.targets else None, tuple(a.methods) if a.methods else None,
        time_budget=a.time_budget, start=t0,
    )  # fmt: skip
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
