"""GMM inverse problems (MCGdiff/DCPS protocol): exact vs learned score, SMC vs model error.

Problem (docs/gmm-inverse.md, /work/shared/benchmarks/BENCHMARKS.md): prior of 25 unit-covariance
Gaussians with means ``8 (i, j, i, j, ...)``, ``i, j in -2..2`` (the 2-D grid repeated over the
``d / 2`` coordinate pairs), weights ``w ∝ N(0, 1)^2``; observation ``y = A x* + sigma_y e`` with
``x* ~ prior``, ``A = U diag(s) V[:d_y]`` (Haar ``U``, ``V``; ``s`` sorted ``U(0, 1)``) and
``sigma_y = U(0, 1) * max(s)``. The posterior is a Gaussian mixture in closed form
(:meth:`smcdiff.GaussianMixture.posterior`, taken at the grid's end ``t_min``), with its evidence.

One deviation from the protocol: the prior weights are drawn once per dimension ``d`` (not per
problem), so that one learned network serves the 20 problems of a cell and the two tracks solve the
same problems. Tracks:

* ``exact``: :func:`smcdiff.exact_score` of the prior: the distance to the posterior is the error
  of the sampler alone (SMC + discretisation + Monte Carlo);
* ``learned``: a :class:`smcdiff.nets.MLP` trained by :func:`smcdiff.train_score` on samples of the
  prior: the total error. Its model error is measured on the prior itself: the sliced
  Wasserstein distance of the untilted sampler (``none``, no observation) to exact prior samples,
  for the learned net and for the exact score (the sampler's own floor).

Methods: ``none`` (the prior, the baseline every method must beat), ``guidance`` (DPS-style,
unweighted), the papers' baselines ``mcgdiff`` (MCGdiff, weighted, with log Z) and ``ddrm`` (DDRM,
unweighted), both given the observation as a :class:`smcdiff.LinearGaussianObservation`;
``fk`` and ``tds`` with adaptive tilting (``tilt_schedule="adaptive"``: more network evaluations
when the exact score gives path correction) and, at the NFE of ``none``, ``fk-snr`` /
``tds-snr`` (``tilt_schedule="snr"``). Metric: sliced Wasserstein (100 slices, p = 2) of the weighted particles
to ``n_ref`` exact posterior samples, mean ± 1.96 SE over problems, beside the floor (the same
distance for ``n_particles`` exact samples); |log Z error| for the weighted methods.

Batching: the problems of a cell are solved by one ``steer`` call with ``n_runs`` = the number
of problems (independent particle systems; the likelihood maps each block of ``n_particles`` rows
to its problem), so a GPU sees ``n_problems * n_particles`` rows per step. A batch that stops on
an error is solved again problem by problem (``batched: false`` in its rows). Cost per row: NFE,
wall seconds per problem (the batch's wall time / its problems) and milliseconds per NFE (the
batch's wall time / NFE). On a CUDA device (not ``quick``) the sizes are the GPU's
(:func:`settings`) and a time budget stops launching jobs when it runs out (skipped jobs are
listed in the outputs).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from smcdiff_experiments.progress import run_bar
from smcdiff_experiments.runtools import (
    LINEAR_METHODS,
    STEER_METHODS,
    Budget,
    fmt,
    net_timing,
    raise_recompile_limit,
    steer_recording,
    timing_table,
)
from torch import nn

import smcdiff
from smcdiff.diagnostics import sliced_wasserstein
from smcdiff.errors import SMCDiffError
from smcdiff.nets import MLP

DESCRIPTION = (
    "MCGdiff/DCPS GMM inverse problems: exact vs learned score, none/guidance/fk/tds/mcgdiff/ddrm"
)

F64 = torch.float64
METHODS = {
    **{m: STEER_METHODS[m] for m in ("none", "guidance", "fk", "tds", "fk-snr", "tds-snr")},
    **LINEAR_METHODS,
}
WEIGHTED = ("fk", "tds", "mcgdiff")
N_SLICES = 100
# The published tables of this protocol could not be read here (BENCHMARKS.md): MCGdiff (Cardoso
# et al., ICLR 2024, arXiv:2308.07983), Table 1; DCPS (Janati et al., NeurIPS 2024,
# arXiv:2403.11407), Table 1. Their baselines are regenerated under our protocol instead.
ANCHORS = (
    "Anchors: MCGdiff (Cardoso et al. 2024, arXiv:2308.07983, Table 1) and DCPS (Janati et al. "
    "2024, arXiv:2403.11407, Table 1) report SW on this protocol for DPS, DDRM, MCGdiff, ...; "
    "their values could not be read offline here (BENCHMARKS.md). Their baselines are "
    "regenerated under our protocol: `guidance` (DPS-style), `ddrm` (DDRM, eta = 0.85, "
    "eta_b = 1) and `mcgdiff` (MCGdiff, with the paper's potentials; the absorption times are "
    "not snapped to the grid), beside `none` (the prior)."
)


def grid_means(d: int) -> torch.Tensor:
    """``(25, d)`` means ``8 (i, j, i, j, ...)``, ``i, j in -2..2`` (``d`` even)."""
    if d < 2 or d % 2:
        raise ValueError(f"gmm_inverse: d must be even and >= 2, got {d}")
    ij = torch.tensor([[i, j] for i in range(-2, 3) for j in range(-2, 3)], dtype=F64)
    return 8.0 * ij.repeat(1, d // 2)


def make_prior(d: int, seed: int = 0) -> smcdiff.GaussianMixture:
    """The 25-mode prior in ``d`` dimensions, weights ``∝ N(0, 1)^2`` seeded by ``(seed, d)``."""
    gen = torch.Generator().manual_seed(10_000 * seed + d)
    w = torch.randn(25, generator=gen, dtype=F64).square()
    return smcdiff.GaussianMixture(w / w.sum(), grid_means(d), torch.ones(25, d, dtype=F64))


def make_problem(prior: smcdiff.GaussianMixture, d_y: int, index: int) -> dict:
    """Problem ``index`` of a cell: ``A`` ``(d_y, d)``, ``y`` ``(d_y,)``, ``sigma_y``, ``x_star``
    (float64, seeded by ``(d, d_y, index)``)."""
    d = prior.dim
    gen = torch.Generator().manual_seed(1_000_000 + 1000 * d + 100 * d_y + index)
    u, _ = torch.linalg.qr(torch.randn(d_y, d_y, generator=gen, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    s = torch.sort(torch.rand(d_y, generator=gen, dtype=F64), descending=True).values
    a = u @ torch.diag(s) @ v[:d_y]
    sigma_y = float(torch.rand((), generator=gen, dtype=F64)) * float(s[0])
    x_star = prior.sample(1, generator=gen)[0]
    y = a @ x_star + sigma_y * torch.randn(d_y, generator=gen, dtype=F64)
    return {"A": a, "y": y, "sigma_y": sigma_y, "x_star": x_star, "singular_values": s}


def log_likelihood_fn(problem: dict, device):
    r""":math:`\log\mathcal N(y; A x, \sigma_y^2 I)` on rows ``x`` ``(N, d)``."""
    a = problem["A"].to(device=device, dtype=torch.float32)
    y = problem["y"].to(device=device, dtype=torch.float32)
    sig = problem["sigma_y"]
    const = -0.5 * y.shape[0] * math.log(2 * math.pi * sig**2)

    def log_lik(x: torch.Tensor) -> torch.Tensor:
        return const - 0.5 * ((x @ a.T - y) / sig).square().sum(-1)

    return log_lik


class InputScaled(nn.Module):
    r"""``net(c_in(t) x, t)`` with EDM's input scaling :math:`c_{in}(t) = (\alpha_t^2 c^2 +
    \sigma_t^2)^{-1/2}` (``c``: the data's standard deviation), so the net sees unit-scale inputs at
    every noise level (the prior's means reach 16)."""

    def __init__(self, net: nn.Module, process, data_std: float):
        super().__init__()
        self.net, self.process, self.data_std = net, process, float(data_std)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.process.alpha(t), self.process.sigma(t)
        c_in = (a.square() * self.data_std**2 + s.square()).rsqrt().to(x.dtype)
        return self.net(x * c_in.reshape(-1, *([1] * (x.dim() - 1))), t)


def train_mlp(prior, process, n_data, n_iters, hidden, depth, batch_size, seed, device, progress):
    """An eps-MLP (input-scaled) trained on ``n_data`` prior samples; returns
    ``(score model, seconds)``."""
    gen = torch.Generator().manual_seed(seed)
    data = prior.sample(n_data, generator=gen).to(device=device, dtype=torch.float32)
    torch.manual_seed(seed)  # the net's initial weights
    t0 = time.perf_counter()
    data_std = float(prior.covariance().diagonal().mean().sqrt())
    net = InputScaled(MLP(prior.dim, hidden=hidden, depth=depth), process, data_std)
    score = smcdiff.train_score(
        net, data, process, "eps", n_iters=n_iters, batch_size=batch_size, lr=2e-3,
        lr_schedule="cosine", seed=seed, device=device, progress=progress,
    )  # fmt: skip
    return score, time.perf_counter() - t0


def swd(x, ref, w=None) -> float:
    """Sliced Wasserstein-2 (100 slices) of weighted ``x`` to ``ref``."""
    return float(sliced_wasserstein(x, ref, weights_x=w, n_projections=N_SLICES))


def solve(model, problem, method, cfg, seed, device) -> dict:
    """One method on one problem: SW to the exact posterior, log Z error, NFE, wall time."""
    kw = METHODS[method]
    res, degenerate = steer_recording(
        model, n_particles=cfg["n_particles"], n_steps=cfg["n_steps"], seed=seed, device=device,
        progress=False, **tilt_options(method, [problem], cfg["n_particles"], device), **kw,
    )  # fmt: skip
    weighted = kw["method"] in WEIGHTED
    x = res.particles.to(torch.float64).cpu()
    w = res.weights.cpu() if weighted else None
    wall = res.info["wall_time_s"]
    row = {
        "sw": swd(x, problem["ref"], w),
        "nfe": res.info["nfe"],
        "n_grad": res.info["n_grad"],
        "wall_s": wall,
        "ms_per_nfe": 1000 * wall / max(res.info["nfe"], 1),
        "batched": False,
        "degenerate": degenerate,
    }
    if weighted:
        row["log_z_err"] = float(res.log_z) - problem["log_evidence"]
        row["ess_frac"] = float(res.final_ess) / cfg["n_particles"]
    return row


def batched_log_likelihood(problems: list[dict], n: int, device):
    r"""The likelihoods of ``G`` problems on ``G * n`` rows (``steer(n_runs=G)``): rows
    ``g n .. (g + 1) n - 1`` are run ``g``'s, scored by :math:`\log\mathcal N(y_g; A_g x,
    \sigma_{y,g}^2 I)`; ``(G n, d) -> (G n,)``."""
    a = torch.stack([p["A"] for p in problems]).to(device=device, dtype=torch.float32)
    y = torch.stack([p["y"] for p in problems]).to(device=device, dtype=torch.float32)
    sig = torch.tensor([p["sigma_y"] for p in problems], dtype=torch.float32, device=device)
    g, d_y = y.shape
    const = -0.5 * d_y * torch.log(2 * math.pi * sig.square())

    def log_lik(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != g * n:
            raise SMCDiffError(
                f"gmm_inverse: the batched likelihood got {x.shape[0]} rows; it maps blocks of "
                f"n_particles = {n} rows to {g} problems and needs {g * n}"
            )
        ax = torch.einsum("gnd,gkd->gnk", x.reshape(g, n, -1), a.to(x.dtype))
        r = (ax - y[:, None].to(x.dtype)) / sig[:, None, None].to(x.dtype)
        return (const[:, None].to(x.dtype) - 0.5 * r.square().sum(-1)).reshape(-1)

    return log_lik


def observation(problems: list[dict]) -> smcdiff.LinearGaussianObservation:
    """The problems' ``y = A x + sigma_y e`` as one :class:`smcdiff.LinearGaussianObservation`
    (batched, ``A`` ``(G, d_y, d)``, when there are several) for ``mcgdiff`` / ``ddrm``."""
    if len(problems) == 1:
        p = problems[0]
        return smcdiff.LinearGaussianObservation(p["A"], p["y"], p["sigma_y"])
    return smcdiff.LinearGaussianObservation(
        torch.stack([p["A"] for p in problems]), torch.stack([p["y"] for p in problems]),
        torch.tensor([p["sigma_y"] for p in problems], dtype=F64),
    )  # fmt: skip


def tilt_options(method: str, problems: list[dict], n: int, device) -> dict:
    """``steer`` keywords that give ``method`` the problems (one run each, ``n`` particles):
    ``observation=`` for the linear inverse-problem methods, else ``log_likelihood=``."""
    if method in LINEAR_METHODS:
        return {"observation": observation(problems)}
    if len(problems) == 1:
        return {"log_likelihood": log_likelihood_fn(problems[0], device)}
    return {"log_likelihood": batched_log_likelihood(problems, n, device)}


def solve_batch(model, problems: list[dict], method: str, cfg: dict, device) -> list[dict]:
    """One method on every problem of a cell in one ``steer(n_runs=len(problems))`` call: a row
    per problem (as :func:`solve`; ``wall_s`` is the batch's wall time / its problems)."""
    kw, n, g = METHODS[method], cfg["n_particles"], len(problems)
    res, degenerate = steer_recording(
        model, n_particles=n, n_runs=g, n_steps=cfg["n_steps"], seed=0, device=device,
        progress=False, **tilt_options(method, problems, n, device), **kw,
    )  # fmt: skip
    weighted = kw["method"] in WEIGHTED
    x = res.particles.to(F64).cpu()
    w = res.weights.cpu() if weighted else None
    wall, nfe = res.info["wall_time_s"], res.info["nfe"]
    rows = []
    for i, problem in enumerate(problems):
        row = {"sw": swd(x[i], problem["ref"], None if w is None else w[i]), "nfe": nfe,
               "n_grad": res.info["n_grad"], "wall_s": wall / g, "batch_wall_s": wall,
               "ms_per_nfe": 1000 * wall / max(nfe, 1), "batched": True,
               "degenerate": degenerate}  # fmt: skip
        if weighted:
            row["log_z_err"] = float(res.log_z[i]) - problem["log_evidence"]
            row["ess_frac"] = float(res.final_ess[i]) / n
        rows.append(row)
    return rows


def solve_cell(model, problems: list[dict], method: str, cfg: dict, device) -> list[dict]:
    """:func:`solve_batch` (``cfg["batch"]``), or problem by problem when it is off or the batch
    stops on an error; a problem that stops on its own is an ``{"error": ...}`` row."""
    if cfg["batch"] and len(problems) > 1:
        try:
            return solve_batch(model, problems, method, cfg, device)
        except SMCDiffError:
            pass  # one problem's failure stopped the batch: solve them one by one
    return [_attempt(model, p, method, cfg, i, device) for i, p in enumerate(problems)]


def prior_error(model, prior_ref, cfg, device) -> dict:
    """Model error on the prior: SW of the untilted sampler (no observation) to exact samples."""
    res = smcdiff.steer(
        model, method="none", n_particles=cfg["n_ref"], n_steps=cfg["n_steps"], seed=1,
        device=device, progress=False,
    )  # fmt: skip
    return {"sw": swd(res.particles.to(F64).cpu(), prior_ref), "nfe": res.info["nfe"]}


def settings(quick: bool, gpu: bool = False, **over) -> dict:
    """Run settings (``quick``, the GPU's with ``gpu``, else the full protocol sized for a CPU),
    overridden by ``over`` (e.g. ``n_problems=1``). ``time_budget_s``: stop launching jobs after
    that many seconds (``None``: no limit); ``batch``: solve a cell's problems in one call."""
    if quick:
        cfg = dict(
            dims=(8,), d_ys=(1, 2), n_problems=1, n_particles=256, n_steps=40, n_ref=1000,
            methods=("none", "guidance", "fk-snr", "tds-snr"), tracks=("exact", "learned"),
            n_data=10_000, train_iters={8: 500}, hidden=64, depth=2, batch_size=256,
        )  # fmt: skip
    elif gpu:  # one H200: the whole grid in ~5 min (docs/gmm-inverse.md, "H200")
        cfg = dict(
            dims=(8, 80), d_ys=(1, 2, 4), n_problems=20, n_particles=2000, n_steps=100,
            n_ref=2000, methods=tuple(METHODS), tracks=("exact", "learned"), n_data=200_000,
            train_iters={8: 8000, 80: 15000}, hidden=512, depth=4, batch_size=2048,
            time_budget_s=320.0,
        )  # fmt: skip
    else:
        cfg = dict(
            dims=(8, 80), d_ys=(1, 2, 4), n_problems=20, n_particles=1000, n_steps=100,
            n_ref=2000, methods=tuple(METHODS), tracks=("exact", "learned"), n_data=50_000,
            train_iters={8: 4000, 80: 8000}, hidden=256, depth=3, batch_size=512,
        )  # fmt: skip
    cfg = {"batch": True, "time_budget_s": None, "compile": None, **cfg}
    unknown = set(over) - set(cfg)
    if unknown:
        raise ValueError(f"gmm_inverse: unknown settings {sorted(unknown)}; valid: {sorted(cfg)}")
    cfg.update(over)
    return cfg


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    progress: bool = True,
    n_particles: int | None = None,
    compile: str | None = None,
    **overrides,
) -> list[dict]:
    """Run every cell; write ``gmm_inverse.json`` (settings, per-problem rows, summary, prior
    errors, training, timings, skipped jobs), ``gmm_inverse.md`` (the tables) and figures into
    ``out_dir``; return the summary rows. ``n_particles``: per problem; ``compile``: a
    ``torch.compile`` mode for the learned nets (the eager-vs-compiled timing is then measured
    too). On a CUDA device, unless ``quick``, the GPU's settings."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    gpu = torch.device(device).type == "cuda" and not quick
    extra = {"n_particles": n_particles} if n_particles is not None else {}
    cfg = settings(quick, gpu, **{**overrides, **extra, "compile": compile})
    budget = Budget(cfg["time_budget_s"])
    if compile:
        raise_recompile_limit()
    bar = run_bar(_n_jobs(cfg), progress, "gmm_inverse")
    rec = {"rows": [], "priors": [], "training": [], "timing": [], "skipped": []}
    save = partial(_save, out, cfg, rec, device, budget)
    for d in cfg["dims"]:
        _run_dim(d, cfg, device, progress, budget, bar, rec, save)
    summary = save(complete=True)
    _figures(out, summary, rec["priors"])
    return summary


def _save(out: Path, cfg, rec, device, budget, complete: bool = False) -> list[dict]:
    """Write ``gmm_inverse.json`` / ``.md`` from what is finished (``complete=False``: after a
    cell, so that a run stopped by a time limit keeps its cells); return the summary."""
    summary = summarise(rec["rows"])
    rec["wall_s"] = budget.elapsed()
    _write(out, cfg, summary, rec, device, complete)
    return summary


def _run_dim(d, cfg, device, progress, budget, bar, rec, save) -> None:
    """Train (learned track), measure the prior errors and timings, then every cell of ``d``
    (``save()`` after each); nothing (all of ``d``'s jobs listed as skipped) when the budget is
    already spent."""
    if not budget.left():
        for d_y, track, method in itertools.product(cfg["d_ys"], cfg["tracks"], cfg["methods"]):
            rec["skipped"].append({"track": track, "d": d, "d_y": d_y, "method": method})
            bar(f"d={d} d_y={d_y} {track} {method} (skipped: time budget)")
        return
    proc = smcdiff.VP()
    t_min = float(proc.t_min)
    prior = make_prior(d)
    models = _models(prior, proc, cfg, d, device, rec["training"], progress)
    n_rows = cfg["n_problems"] * cfg["n_particles"] if cfg["batch"] else cfg["n_particles"]
    if "learned" in models:
        timing = net_timing(models["learned"], n_rows, device, cfg["compile"])
        rec["timing"].append({"label": f"learned MLP, d = {d}", "d": d, **timing})
    prior_ref = prior.noised(proc, t_min).sample(cfg["n_ref"], generator=_gen(d)).to(F64)
    for track, model in models.items():
        rec["priors"].append({"track": track, "d": d, **prior_error(model, prior_ref, cfg, device)})
    for d_y in cfg["d_ys"]:
        problems = [_with_truth(prior, proc, t_min, d_y, p, cfg) for p in range(cfg["n_problems"])]
        for track, model in models.items():
            for method in cfg["methods"]:
                key = {"track": track, "d": d, "d_y": d_y, "method": method}
                if not budget.left():
                    rec["skipped"].append(key)
                    bar(f"d={d} d_y={d_y} {track} {method} (skipped: time budget)")
                    continue
                for p, r in enumerate(solve_cell(model, problems, method, cfg, device)):
                    row = {**key, "problem": p, "sw_floor": problems[p]["floor"], **r}
                    rec["rows"].append(row)
                save()
                bar(f"d={d} d_y={d_y} {track} {method}")
    if "learned" in models:  # whether the runs used the compiled net, or why not
        rec["training"][-1]["compile_info"] = models["learned"].compile_info


def _attempt(model, problem, method, cfg, seed, device) -> dict:
    """:func:`solve`, or ``{"error": ...}`` when the run stops (e.g. a learned net's non-finite
    score): a failure is a result, counted in the summary."""
    try:
        return solve(model, problem, method, cfg, seed=seed, device=device)
    except SMCDiffError as err:
        return {"error": f"{type(err).__name__}: {err}"}


def _models(prior, proc, cfg, d, device, training, progress) -> dict:
    models = {}
    if "exact" in cfg["tracks"]:
        models["exact"] = smcdiff.exact_score(prior.to(device, torch.float32), proc)
    if "learned" in cfg["tracks"]:
        iters = cfg["train_iters"][d]
        score, secs = train_mlp(
            prior, proc, cfg["n_data"], iters, cfg["hidden"], cfg["depth"], cfg["batch_size"],
            seed=d, device=device, progress=progress,
        )  # fmt: skip
        models["learned"] = score.compile(cfg["compile"] or False)
        training.append({"d": d, "n_iters": iters, "seconds": secs, "n_data": cfg["n_data"],
                         "hidden": cfg["hidden"], "depth": cfg["depth"],
                         "batch_size": cfg["batch_size"]})  # fmt: skip
    return models


def _with_truth(prior, proc, t_min, d_y, p, cfg) -> dict:
    """The problem with its exact posterior at ``t_min``, reference samples and SW floor."""
    problem = make_problem(prior, d_y, p)
    post, log_ev = prior.noised(proc, t_min).posterior(
        problem["A"], problem["y"], problem["sigma_y"]
    )
    gen = _gen(prior.dim, d_y, p)
    problem["ref"] = post.sample(cfg["n_ref"], generator=gen).to(F64)
    problem["log_evidence"] = float(log_ev)
    problem["floor"] = swd(post.sample(cfg["n_particles"], generator=gen).to(F64), problem["ref"])
    return problem


def _gen(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) % (2**31))


def _n_jobs(cfg) -> int:
    """Progress-bar jobs: one per (d, d_y, track, method) batch."""
    return len(cfg["dims"]) * len(cfg["d_ys"]) * len(cfg["tracks"]) * len(cfg["methods"])


def mean_ci(vals) -> list[float]:
    """``[mean, 1.96 * standard error]`` (half-width 0 for one value)."""
    t = torch.tensor(vals, dtype=F64)
    half = 1.96 * float(t.std()) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return [float(t.mean()), half]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (track, d, d_y, method): SW, floor, |log Z err|, ESS/N (mean ± 1.96 SE), mean NFE,
    wall seconds per problem, milliseconds per NFE, the fraction of degenerate runs."""
    keys = sorted({(r["track"], r["d"], r["d_y"], r["method"]) for r in rows}, key=str)
    out = []
    for track, d, d_y, method in keys:
        rs = [
            r for r in rows
            if (r["track"], r["d"], r["d_y"], r["method"]) == (track, d, d_y, method)
        ]  # fmt: skip
        row = {"track": track, "d": d, "d_y": d_y, "method": method, "n_problems": len(rs)}
        row["sw_floor"] = mean_ci([r["sw_floor"] for r in rs])
        row["n_failed"] = sum("error" in r for r in rs)
        rs = [r for r in rs if "error" not in r]
        row["sw"] = mean_ci([r["sw"] for r in rs]) if rs else None
        weighted = bool(rs) and "log_z_err" in rs[0]
        row["abs_log_z_err"] = mean_ci([abs(r["log_z_err"]) for r in rs]) if weighted else None
        row["ess_frac"] = mean_ci([r["ess_frac"] for r in rs]) if weighted else None
        for k in ("nfe", "wall_s", "ms_per_nfe"):
            row[k] = sum(r[k] for r in rs) / len(rs) if rs else None
        row["degenerate_frac"] = sum(r["degenerate"] for r in rs) / len(rs) if rs else None
        out.append(row)
    return out


def _write(out: Path, cfg, summary, rec, device, complete: bool = True) -> None:
    doc = {
        "complete": complete,
        "settings": {
            k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in cfg.items()
        },
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if torch.device(device).type == "cuda" else "cpu",
        "torch": torch.__version__,
        "wall_s": rec["wall_s"],
        "summary": summary,
        "prior_error": rec["priors"],
        "training": rec["training"],
        "timing": rec["timing"],
        "skipped": rec["skipped"],
        "problems": rec["rows"],
    }  # fmt: skip
    (out / "gmm_inverse.json").write_text(json.dumps(doc, indent=1))
    (out / "gmm_inverse.md").write_text(format_report(doc))


def _figures(out: Path, summary: list[dict], priors: list[dict]) -> None:
    """Per d: SW to the posterior by method and d_y, exact vs learned score, with the floor."""
    from matplotlib.figure import Figure

    for d in sorted({r["d"] for r in summary}):
        rs = {(r["d_y"], r["track"], r["method"]): r for r in summary if r["d"] == d}
        d_ys = sorted({k[0] for k in rs})
        methods = [m for m in METHODS if any(k[2] == m for k in rs)]
        tracks = list(dict.fromkeys(k[1] for k in rs))
        fig = Figure(figsize=(3.6 * len(d_ys), 3.4))
        axes = fig.subplots(1, len(d_ys), squeeze=False)[0]
        for ax, d_y in zip(axes, d_ys, strict=True):
            for k, track in enumerate(tracks):
                sw = [(rs.get((d_y, track, m)) or {}).get("sw") or [math.nan, 0.0]
                      for m in methods]  # fmt: skip
                xs = [i + 0.15 * (2 * k - 1) for i in range(len(methods))]
                ax.errorbar(xs, [v[0] for v in sw], yerr=[v[1] for v in sw],
                            fmt="o", capsize=3, label=f"{track} score")  # fmt: skip
            floor = next(r for k, r in rs.items() if k[0] == d_y)["sw_floor"][0]
            ax.axhline(floor, color="k", lw=0.8, ls="--", label="floor (exact samples)")
            ax.set(xticks=range(len(methods)), yscale="log", title=f"d = {d}, d_y = {d_y}")
            ax.set_ylim(top=min(ax.get_ylim()[1], 300.0))  # far-off rows off-chart
            ax.set_xticklabels(methods, rotation=45, fontsize=8)
        axes[0].set_ylabel("sliced W2 to the posterior")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "figures" / f"gmm_inverse_d{d}.png", dpi=120)


def format_table(rows: list[dict], priors: list[dict] | None = None) -> str:
    """Markdown table of the summary rows (and the prior errors, if given)."""

    def f(v, p=3):
        return "-" if v is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"

    head = (
        "| track | d | d_y | method | sliced W2 | floor | abs log Z err | ESS/N | NFE | s/problem "
        "| ms/NFE | degen | failed |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['track']} | {r['d']} | {r['d_y']} | {r['method']} | {f(r['sw'])} | "
            f"{r['sw_floor'][0]:.3f} | {f(r['abs_log_z_err'])} | {f(r['ess_frac'], 2)} | "
            f"{fmt(r['nfe'], 0)} | {fmt(r['wall_s'], 3)} | {fmt(r['ms_per_nfe'], 2)} | "
            f"{fmt(r['degenerate_frac'], 2)} | {r['n_failed']}/{r['n_problems']} |"
        )
    lines.append(
        "\nmean ± 1.96 SE over problems; floor: the same distance for exact samples; s/problem: "
        "the batch's wall time / its problems; ms/NFE: the batch's wall time / NFE; degen: "
        "fraction of runs warned of degenerate weights"
    )
    for p in priors or []:
        lines.append(f"prior error ({p['track']} score, d = {p['d']}): sliced W2 {p['sw']:.3f}")
    return "\n".join(lines)


def model_error_table(rows: list[dict]) -> str:
    """Markdown: per (d, d_y, method), the exact-score SW (SMC error), the learned-net SW (total
    error) and their difference (model error), beside the floor."""
    by = {(r["track"], r["d"], r["d_y"], r["method"]): r for r in rows}
    lines = ["| d | d_y | method | exact score (SMC error) | learned net (total) | "
             "learned − exact (model error) | floor |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (track, d, d_y, method), ex in by.items():
        le = by.get(("learned", d, d_y, method))
        if track != "exact" or le is None or ex["sw"] is None or le["sw"] is None:
            continue
        lines.append(f"| {d} | {d_y} | {method} | {ex['sw'][0]:.3f} | {le['sw'][0]:.3f} | "
                     f"{le['sw'][0] - ex['sw'][0]:+.3f} | {ex['sw_floor'][0]:.3f} |")  # fmt: skip
    return "\n".join(lines)


def format_report(doc: dict) -> str:
    """The markdown file: settings line, results, model error, anchors, training, timings."""
    cfg = doc["settings"]
    parts = [
        f"# gmm_inverse on {doc['device_name']} (torch {doc['torch']})",
        f"d = {cfg['dims']}, d_y = {cfg['d_ys']}, {cfg['n_problems']} problems per cell, "
        f"N = {cfg['n_particles']} particles, K = {cfg['n_steps']} steps, {cfg['n_ref']} "
        f"reference samples, compile = {cfg['compile']}; whole run {doc['wall_s']:.0f} s."
        + (
            ""
            if doc.get("complete", True)
            else " **Partial**: written after each finished cell; the run had not ended."
        ),
        "## Results\n\n" + format_table(doc["summary"], doc["prior_error"]),
        "## SMC error and model error\n\n" + model_error_table(doc["summary"]),
        "## Anchors\n\n" + ANCHORS,
    ]
    if doc["training"]:
        parts.append("## Training\n\n" + "\n".join(
            f"- d = {t['d']}: MLP hidden {t['hidden']}, depth {t['depth']}, {t['n_iters']} "
            f"iterations, batch {t['batch_size']}, {t['n_data']} prior samples: "
            f"{t['seconds']:.1f} s{_compiled_note(t.get('compile_info'))}"
            for t in doc["training"]))  # fmt: skip
    if doc["timing"]:
        parts.append("## Network timing (eager vs torch.compile)\n\n"
                     + timing_table(doc["timing"]))  # fmt: skip
    if doc["skipped"]:
        parts.append(f"## Skipped (time budget {cfg['time_budget_s']} s)\n\n" + "\n".join(
            f"- d = {k['d']}, d_y = {k['d_y']}, {k['track']}, {k['method']}"
            for k in doc["skipped"]))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def _compiled_note(info: dict | None) -> str:
    """``; compiled (first call N s)`` / ``; compile fell back: error`` / ``""`` (eager)."""
    if not info:
        return ""
    if info["error"]:
        return f"; torch.compile fell back to eager: {info['error']}"
    first = info["first_call_s"]
    return "; compiled" + (f" (first call {first:.1f} s)" if first is not None else "")
