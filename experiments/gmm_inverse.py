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
unweighted), ``fk`` and ``tds`` at their defaults (adaptive tilting: more network evaluations when
the exact score gives path correction) and, at the NFE of ``none``, ``fk-snr`` / ``tds-snr``
(``tilt_schedule="snr"``). Metric: sliced Wasserstein (100 slices, p = 2) of the weighted particles
to ``n_ref`` exact posterior samples, mean ± 1.96 SE over problems, beside the floor (the same
distance for ``n_particles`` exact samples); |log Z error| for the weighted methods.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from smcdiff_experiments.progress import run_bar
from torch import nn

import smcdiff
from smcdiff.diagnostics import sliced_wasserstein
from smcdiff.errors import SMCDiffError
from smcdiff.nets import MLP

DESCRIPTION = "MCGdiff/DCPS GMM inverse problems: exact vs learned score, none/guidance/fk/tds"

F64 = torch.float64
METHODS = {
    "none": {"method": "none"},
    "guidance": {"method": "guidance"},
    "fk": {"method": "fk"},
    "tds": {"method": "tds"},
    "fk-snr": {"method": "fk", "tilt_schedule": "snr"},
    "tds-snr": {"method": "tds", "tilt_schedule": "snr"},
}
WEIGHTED = ("fk", "tds")
N_SLICES = 100


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
    res = smcdiff.steer(
        model, log_likelihood=log_likelihood_fn(problem, device), n_particles=cfg["n_particles"],
        n_steps=cfg["n_steps"], seed=seed, device=device, progress=False, **kw,
    )  # fmt: skip
    weighted = kw["method"] in WEIGHTED
    x = res.particles.to(torch.float64)
    w = res.weights if weighted else None
    row = {
        "sw": swd(x, problem["ref"], w),
        "nfe": res.info["nfe"],
        "n_grad": res.info["n_grad"],
        "wall_s": res.info["wall_time_s"],
    }
    if weighted:
        row["log_z_err"] = float(res.log_z) - problem["log_evidence"]
        row["ess_frac"] = float(res.final_ess) / cfg["n_particles"]
    return row


def prior_error(model, prior_ref, cfg, device) -> dict:
    """Model error on the prior: SW of the untilted sampler (no observation) to exact samples."""
    res = smcdiff.steer(
        model, method="none", n_particles=cfg["n_ref"], n_steps=cfg["n_steps"], seed=1,
        device=device, progress=False,
    )  # fmt: skip
    return {"sw": swd(res.particles.to(F64), prior_ref), "nfe": res.info["nfe"]}


def settings(quick: bool, **over) -> dict:
    """Run settings (full or ``quick``), overridden by ``over`` (e.g. ``n_problems=1``)."""
    if quick:
        cfg = dict(
            dims=(8,), d_ys=(1, 2), n_problems=1, n_particles=256, n_steps=40, n_ref=1000,
            methods=("none", "guidance", "fk-snr", "tds-snr"), tracks=("exact", "learned"),
            n_data=10_000, train_iters={8: 500}, hidden=64, depth=2, batch_size=256,
        )  # fmt: skip
    else:
        cfg = dict(
            dims=(8, 80), d_ys=(1, 2, 4), n_problems=20, n_particles=1000, n_steps=100,
            n_ref=2000, methods=tuple(METHODS), tracks=("exact", "learned"), n_data=50_000,
            train_iters={8: 4000, 80: 8000}, hidden=256, depth=3, batch_size=512,
        )  # fmt: skip
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
    **overrides,
) -> list[dict]:
    """Run every cell; write ``gmm_inverse.json`` (settings, per-problem rows, summary, prior
    errors, training) and figures into ``out_dir``; return the summary rows."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cfg = settings(quick, **overrides)
    proc = smcdiff.VP()
    t_min = float(proc.t_min)
    bar = run_bar(_n_jobs(cfg), progress, "gmm_inverse")
    rows, priors, training = [], [], []
    for d in cfg["dims"]:
        prior = make_prior(d)
        models = _models(prior, proc, cfg, d, device, training, progress)
        prior_ref = prior.noised(proc, t_min).sample(cfg["n_ref"], generator=_gen(d)).to(F64)
        for track, model in models.items():
            priors.append({"track": track, "d": d, **prior_error(model, prior_ref, cfg, device)})
        for d_y in cfg["d_ys"]:
            for p in range(cfg["n_problems"]):
                problem = _with_truth(prior, proc, t_min, d_y, p, cfg)
                for track, model in models.items():
                    for method in cfg["methods"]:
                        r = _attempt(model, problem, method, cfg, p, device)
                        key = {"track": track, "d": d, "d_y": d_y, "problem": p, "method": method}
                        rows.append({**key, "sw_floor": problem["floor"], **r})
                        bar(f"d={d} d_y={d_y} #{p} {track} {method}")
    summary = summarise(rows)
    _write(out, cfg, rows, summary, priors, training)
    _figures(out, summary, priors)
    return summary


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
        models["exact"] = smcdiff.exact_score(prior.to(dtype=torch.float32), proc)
    if "learned" in cfg["tracks"]:
        iters = cfg["train_iters"][d]
        score, secs = train_mlp(
            prior, proc, cfg["n_data"], iters, cfg["hidden"], cfg["depth"], cfg["batch_size"],
            seed=d, device=device, progress=progress,
        )  # fmt: skip
        models["learned"] = score
        training.append({"d": d, "n_iters": iters, "seconds": secs, "n_data": cfg["n_data"]})
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
    n = len(cfg["dims"]) * len(cfg["d_ys"]) * cfg["n_problems"]
    return n * len(cfg["tracks"]) * len(cfg["methods"])


def mean_ci(vals) -> list[float]:
    """``[mean, 1.96 * standard error]`` (half-width 0 for one value)."""
    t = torch.tensor(vals, dtype=F64)
    half = 1.96 * float(t.std()) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return [float(t.mean()), half]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (track, d, d_y, method): SW, floor, |log Z err|, ESS/N (mean ± 1.96 SE), mean NFE."""
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
        row["nfe"] = sum(r["nfe"] for r in rs) / len(rs) if rs else None
        row["wall_s"] = sum(r["wall_s"] for r in rs) / len(rs) if rs else None
        out.append(row)
    return out


def _write(out: Path, cfg, rows, summary, priors, training) -> None:
    doc = {
        "settings": {
            k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in cfg.items()
        },
        "summary": summary,
        "prior_error": priors,
        "training": training,
        "problems": rows,
    }
    (out / "gmm_inverse.json").write_text(json.dumps(doc, indent=1))
    (out / "gmm_inverse.md").write_text(format_table(summary, priors))


def _figures(out: Path, summary: list[dict], priors: list[dict]) -> None:
    """Per d: SW to the posterior by method and d_y, exact vs learned score, with the floor."""
    from matplotlib.figure import Figure

    for d in sorted({r["d"] for r in summary}):
        rs = [r for r in summary if r["d"] == d]
        d_ys = sorted({r["d_y"] for r in rs})
        methods = [m for m in METHODS if any(r["method"] == m for r in rs)]
        tracks = list(dict.fromkeys(r["track"] for r in rs))
        fig = Figure(figsize=(3.6 * len(d_ys), 3.4))
        axes = fig.subplots(1, len(d_ys), squeeze=False)[0]
        for ax, d_y in zip(axes, d_ys, strict=True):
            for k, track in enumerate(tracks):
                pts = [next(r for r in rs if (r["d_y"], r["track"], r["method"]) == (d_y, track, m))
                       for m in methods]  # fmt: skip
                xs = [i + 0.15 * (2 * k - 1) for i in range(len(methods))]
                sw = [p["sw"] or [math.nan, 0.0] for p in pts]
                ax.errorbar(xs, [v[0] for v in sw], yerr=[v[1] for v in sw],
                            fmt="o", capsize=3, label=f"{track} score")  # fmt: skip
            floor = next(r for r in rs if r["d_y"] == d_y)["sw_floor"][0]
            ax.axhline(floor, color="k", lw=0.8, ls="--", label="floor (exact samples)")
            ax.set(xticks=range(len(methods)), yscale="log", title=f"d = {d}, d_y = {d_y}")
            ax.set_ylim(top=min(ax.get_ylim()[1], 300.0))  # diverged runs (SW ~ 1e18) off-chart
            ax.set_xticklabels(methods, rotation=45, fontsize=8)
        axes[0].set_ylabel("sliced W2 to the posterior")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "figures" / f"gmm_inverse_d{d}.png", dpi=120)


def format_table(rows: list[dict], priors: list[dict] | None = None) -> str:
    """Markdown table of the summary rows (and the prior errors, if given)."""

    def f(v, p=3):
        return "-" if v is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"

    def g(v, p):
        return "-" if v is None else f"{v:.{p}f}"

    head = (
        "| track | d | d_y | method | sliced W2 | floor | abs log Z err | ESS/N | NFE | s/run "
        "| failed |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['track']} | {r['d']} | {r['d_y']} | {r['method']} | {f(r['sw'])} | "
            f"{r['sw_floor'][0]:.3f} | {f(r['abs_log_z_err'])} | {f(r['ess_frac'], 2)} | "
            f"{g(r['nfe'], 0)} | {g(r['wall_s'], 2)} | {r['n_failed']}/{r['n_problems']} |"
        )
    lines.append("mean ± 1.96 SE over problems; floor: the same distance for exact samples")
    for p in priors or []:
        lines.append(f"prior error ({p['track']} score, d = {p['d']}): sliced W2 {p['sw']:.3f}")
    return "\n".join(lines)
