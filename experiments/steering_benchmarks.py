"""Steering benchmark (issue 3, items 7-8): FK, TDS, FKC and DriftLite against exact targets.

Tasks (every target is a Gaussian mixture in closed form, taken at the grid's end ``t_min``):

* ``anneal30d-g{2,2.2,2.5}``: DriftLite-style annealing ``q^gamma`` of a 30-D, 4-mode mixture
  with well-separated modes (>= 14 std apart), so ``q^gamma`` is the mixture with weights
  ``w_k^gamma det(C_k)^((1-gamma)/2)`` and covariances ``C_k / gamma`` up to a tiny overlap
  term; the log Z used as truth is an exact-weight importance sampler (200k draws from that
  mixture, its relative ESS is recorded in ``truth.json``);
* ``tilt30d``: the same prior tilted by the quadratic reward ``r = b.x - x.Qx/2`` (exact:
  ``GaussianMixture.tilt``);
* ``gmm_inverse-d{8,80}``: MCGdiff's 25-mode inverse problem: means ``(8i, 8j, 8i, 8j, ...)``,
  ``i, j in -2..2``, identity covariances, equal weights, ``y = A x* + sigma_y e`` with
  ``A = U diag(s) V^T`` (Haar U, V; s ~ U(0, 1)), ``d_y = 2`` (exact: ``GaussianMixture.posterior``);
* ``fourmode2d-anneal``: FKC's 2-D four-mode toy annealed with gamma = 2 (separated modes, truth
  as for the 30-D task);
* ``poe2d``: a product of two 2-D mixture experts (exact: the product of two mixtures is a
  mixture of the pairwise Gaussian products).

Methods, at equal network evaluations (same N, same steps; ``nfe`` and ``n_grad`` are reported):
``guidance`` (DPS-style, unweighted), ``fk``, ``tds``, ``fkc`` (= DriftLite's G-SMC),
``vcg-smc`` / ``ecg-smc`` (``driftlite-vcg`` / ``-ecg``); on the 30-D annealing tasks also the
variants without resampling ``g``, ``vcg``, ``ecg`` (``ess_threshold=0``). Annealed and product
targets reach FK / TDS / guidance as reward tilts of the (first) prior: ``q^gamma = q e^{(gamma-1)
log q}`` and ``q1 q2 = q1 e^{log q2}``, with the exact ``log q`` of the prior at ``t_min``.

Metrics, mean ± std over 10 independent runs (one batched call, ``n_runs=10``, seed 0): energy
distance, sliced W2, Gaussian MMD and ΔNLL (``E_w[-log pi(x)] - E_pi[-log pi(x)]``) against
exact samples, mode-weight TV, log Z error, final ESS / N, mean per-step weight variance (FKC
family: ``trace["weight_var"]``), wall time per call. Plus an N-convergence curve (N = 250..4000)
for every weighted method on one task, and per-task figures of ESS and weight variance over steps.

Regenerate (CPU, ~5 min on 2 cores; the table in docs/steering-results.md)::

    OMP_NUM_THREADS=2 python experiments/steering_benchmarks.py --out results/steering

GPU settings (the integrator's run)::

    python experiments/steering_benchmarks.py --device cuda --n-particles 4000 --n-steps 200 \
        --out results/steering-gpu

``--quick`` is a smoke run (seconds). Outputs: ``steering.json``, ``steering.md``,
``convergence.json``, ``truth.json``, ``figures/*.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import smcdiff
from smcdiff.diagnostics.metrics import energy_distance, gaussian_mmd, sliced_wasserstein

DESCRIPTION = "steering benchmark: FK / TDS / FKC / DriftLite vs exact targets"

F64 = torch.float64
LOG2PI = math.log(2 * math.pi)
TASKS = (
    "anneal30d-g2",
    "anneal30d-g2.2",
    "anneal30d-g2.5",
    "tilt30d",
    "gmm_inverse-d8",
    "gmm_inverse-d80",
    "fourmode2d-anneal",
    "poe2d",
)
# name -> steer() keywords; which rows a task gets is decided by Task.kind
METHODS: dict[str, dict] = {
    "guidance": {"method": "guidance"},
    "fk": {"method": "fk"},
    "tds": {"method": "tds"},
    "fkc": {"method": "fkc"},
    "vcg-smc": {"method": "driftlite-vcg"},
    "ecg-smc": {"method": "driftlite-ecg"},
    "g": {"method": "fkc", "ess_threshold": 0.0},
    "vcg": {"method": "driftlite-vcg", "ess_threshold": 0.0},
    "ecg": {"method": "driftlite-ecg", "ess_threshold": 0.0},
}
WEIGHTED = ("fk", "tds", "fkc", "vcg-smc", "ecg-smc")
COLUMNS = (
    "task",
    "method",
    "energy_dist",
    "sliced_w2",
    "mmd",
    "delta_nll",
    "mode_tv",
    "log_z_err",
    "ess_frac",
    "weight_var",
    "nfe",
    "n_grad",
    "wall_s",
)


@dataclass
class Task:
    """A steering problem with its exact target ``exact`` (a mixture) and ``log_z``.

    ``fkc_kwargs`` / ``fk_kwargs``: the ``steer`` keywords (besides the method) that pose the
    problem to the FKC family and to FK / TDS / guidance; ``fkc_model`` / ``fk_model``: the score
    models they steer. ``log_pi``: the exact log density of the target up to a constant.
    """

    name: str
    kind: str  # "anneal" | "reward" | "inverse" | "product"
    fk_model: object
    fkc_model: object
    fk_kwargs: dict
    fkc_kwargs: dict
    exact: smcdiff.GaussianMixture
    log_pi: Callable[[torch.Tensor], torch.Tensor]
    log_z: float
    truth: dict = field(default_factory=dict)

    def methods(self, with_unresampled: bool) -> list[str]:
        names = ["guidance", "fk", "tds", "fkc", "vcg-smc", "ecg-smc"]
        if with_unresampled and self.name.startswith("anneal30d"):
            names += ["g", "vcg", "ecg"]
        return names


# ----------------------------------------------------------------------------- ground truth
def _diag_mixture(w, means, variances, device) -> smcdiff.GaussianMixture:
    return smcdiff.GaussianMixture(
        torch.as_tensor(w, dtype=F64),
        torch.as_tensor(means, dtype=F64),
        torch.as_tensor(variances, dtype=F64),
    ).to(device=device, dtype=torch.float32)


def _diag_vars(mix: smcdiff.GaussianMixture) -> torch.Tensor:
    return mix.covs.double().diagonal(dim1=-2, dim2=-1)


def annealed_truth(
    q: smcdiff.GaussianMixture, gamma: float, n_is: int, gen: torch.Generator
) -> tuple[smcdiff.GaussianMixture, float, dict]:
    r"""``q^gamma`` of a diagonal mixture with separated modes, and its exact log Z.

    Separated modes: :math:`q^\gamma \approx \sum_k w_k^\gamma \mathcal N(x; m_k, C_k)^\gamma`
    and :math:`\mathcal N(m, C)^\gamma = (2\pi)^{d(1-\gamma)/2}|C|^{(1-\gamma)/2}\gamma^{-d/2}
    \mathcal N(m, C/\gamma)`. The truth is then corrected exactly: :math:`\log\int q^\gamma =
    \log \mathbb E_a[q^\gamma / a]` under that mixture ``a`` (``n_is`` draws); the relative ESS of
    those weights measures how far ``a`` is from the normalised ``q^gamma``.
    """
    d = q.dim
    w, m, c = q.weights.double(), q.means.double(), _diag_vars(q)
    logc = c.log().sum(-1)
    log_mass = gamma * w.log() + 0.5 * (1 - gamma) * (d * LOG2PI + logc) - 0.5 * d * math.log(gamma)
    approx64 = smcdiff.GaussianMixture(torch.softmax(log_mass, 0), m, c / gamma)
    approx64 = approx64.to("cpu")  # the truth is computed on the CPU (same numbers everywhere)
    x = approx64.sample(n_is, generator=gen)
    q64 = q.to(device="cpu", dtype=F64)
    lw = gamma * q64.log_prob(x) - approx64.log_prob(x)
    log_z = float(torch.logsumexp(lw, 0) - math.log(n_is))
    wn = torch.softmax(lw, 0)
    info = {
        "log_z_mixture": float(torch.logsumexp(log_mass, 0)),
        "log_z_is": log_z,
        "is_rel_ess": float(1.0 / (wn.square().sum() * n_is)),
        "is_draws": n_is,
    }
    return approx64.to(device=q.device, dtype=torch.float32), log_z, info


def product_truth(p1: smcdiff.GaussianMixture, p2: smcdiff.GaussianMixture):
    r"""Exact :math:`p_1 p_2 / Z` for diagonal mixtures: components :math:`(i, j)` with precision
    :math:`C_i^{-1} + C_j^{-1}`, weight :math:`\propto w_i w_j \mathcal N(m_i; m_j, C_i + C_j)`;
    :math:`\log Z = \operatorname{logsumexp}_{ij}` of those log-weights."""
    w1, m1, c1 = p1.weights.double(), p1.means.double(), _diag_vars(p1)
    w2, m2, c2 = p2.weights.double(), p2.means.double(), _diag_vars(p2)
    cs = c1[:, None] + c2[None]
    diff = m1[:, None] - m2[None]
    log_n = -0.5 * (LOG2PI + cs.log() + diff.square() / cs).sum(-1)
    logits = (w1.log()[:, None] + w2.log()[None] + log_n).flatten()
    cov = 1.0 / (1.0 / c1[:, None] + 1.0 / c2[None])
    mean = cov * (m1[:, None] / c1[:, None] + m2[None] / c2[None])
    d = m1.shape[1]
    mix = smcdiff.GaussianMixture(torch.softmax(logits, 0), mean.reshape(-1, d), cov.reshape(-1, d))
    return mix.to(device=p1.device, dtype=torch.float32), float(torch.logsumexp(logits, 0))


# ----------------------------------------------------------------------------- tasks
def _mixture30d(device) -> smcdiff.GaussianMixture:
    """4 modes in 30-D: mode k sits at 6 in coordinates 2k, 2k+1 (12 apart, variances <= 0.8)."""
    d, k = 30, 4
    means = torch.zeros(k, d, dtype=F64)
    for i in range(k):
        means[i, 2 * i : 2 * i + 2] = 6.0
    var = torch.tensor([0.5, 0.8, 0.3, 0.6], dtype=F64)[:, None].expand(k, d)
    return _diag_mixture([0.4, 0.3, 0.2, 0.1], means, var, device)


def _fourmode2d(device) -> smcdiff.GaussianMixture:
    means = [[-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0], [3.0, 3.0]]
    var = [[0.4, 0.3], [0.3, 0.5], [0.5, 0.5], [0.25, 0.4]]
    return _diag_mixture([0.4, 0.3, 0.2, 0.1], means, var, device)


def _anneal_task(name, prior, gamma, proc, t_min, n_is, gen) -> Task:
    q = prior.noised(proc, t_min)
    q64 = q.to(dtype=F64)
    exact, log_z, info = annealed_truth(q, gamma, n_is, gen)
    model = smcdiff.exact_score(prior, proc)

    def reward(x):  # q^gamma = q e^{(gamma - 1) log q}
        return (gamma - 1.0) * q.log_prob(x)

    return Task(
        name, "anneal", model, model,
        {"reward": reward, "beta": 1.0}, {"anneal": gamma},
        exact, lambda x: gamma * q64.log_prob(x.to(F64)), log_z, info,
    )  # fmt: skip


def _tilt_task(prior, proc, t_min, beta=1.0) -> Task:
    q = prior.noised(proc, t_min)
    d = prior.dim
    q_mat = 0.2 * torch.eye(d, dtype=F64, device=prior.device)
    b = q_mat @ prior.means.double()[3]  # pulls towards the lightest mode
    exact, log_norm = q.tilt(b, q_mat, beta)
    q64, b32, qm32 = q.to(dtype=F64), b.float().to(prior.device), q_mat.float().to(prior.device)

    def reward(x):
        return x @ b32 - 0.5 * ((x @ qm32) * x).sum(-1)

    def log_pi(x):
        x = x.to(F64)
        return q64.log_prob(x) + beta * (
            x @ b.to(x.device) - 0.5 * ((x @ q_mat.to(x.device)) * x).sum(-1)
        )

    model = smcdiff.exact_score(prior, proc)
    kw = {"reward": reward, "beta": beta}
    return Task("tilt30d", "reward", model, model, kw, kw, exact, log_pi, float(log_norm))


def _inverse_task(d, proc, t_min, device, d_y=2, sigma_y=0.1, seed=0) -> Task:
    gen = torch.Generator().manual_seed(1000 + d)
    ij = torch.tensor([[i, j] for i in range(-2, 3) for j in range(-2, 3)], dtype=F64)
    means = 8.0 * ij.repeat(1, d // 2 + 1)[:, :d]
    prior64 = smcdiff.GaussianMixture(
        torch.ones(25, dtype=F64), means, torch.ones(25, d, dtype=F64)
    )
    u, _ = torch.linalg.qr(torch.randn(d_y, d_y, generator=gen, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    s = torch.sort(torch.rand(d_y, generator=gen, dtype=F64), descending=True).values
    a = u @ torch.diag(s) @ v[:, :d_y].T
    x_star = prior64.sample(1, generator=gen)[0]
    y = a @ x_star + sigma_y * torch.randn(d_y, generator=gen, dtype=F64)
    prior = prior64.to(device=device, dtype=torch.float32)
    q = prior64.noised(proc, t_min)
    exact64, log_ev = q.posterior(a, y, sigma_y)
    a32, y32 = a.float().to(device), y.float().to(device)
    const = -0.5 * d_y * (LOG2PI + 2 * math.log(sigma_y))

    def log_lik(x):
        return const - 0.5 * ((x @ a32.T - y32) / sigma_y).square().sum(-1)

    model = smcdiff.exact_score(prior, proc)
    kw = {"log_likelihood": log_lik}
    exact_dev = exact64.to(device=device)
    return Task(
        f"gmm_inverse-d{d}", "inverse", model, model, kw, kw,
        exact_dev.to(dtype=torch.float32), lambda x: exact_dev.log_prob(x.to(F64)), float(log_ev),
        {"d_y": d_y, "sigma_y": sigma_y, "singular_values": s.tolist()},
    )  # fmt: skip


def _poe_task(proc, t_min, device) -> Task:
    p1 = _fourmode2d(device)
    p2 = _diag_mixture([0.5, 0.5], [[-2.0, 2.5], [2.5, 2.0]], [[4.0, 4.0], [3.0, 5.0]], device)
    q1, q2 = p1.noised(proc, t_min), p2.noised(proc, t_min)
    exact, log_z = product_truth(q1, q2)
    exact64 = exact.to(dtype=F64)
    m1, m2 = smcdiff.exact_score(p1, proc), smcdiff.exact_score(p2, proc)
    return Task(
        "poe2d", "product", m1, smcdiff.product(m1, m2),
        {"reward": q2.log_prob, "beta": 1.0}, {},
        exact, lambda x: exact64.log_prob(x.to(F64)), log_z,
    )  # fmt: skip


def make_task(name: str, proc, t_min: float, device, n_is: int = 200_000) -> Task:
    gen = torch.Generator().manual_seed(7)
    if name.startswith("anneal30d-g"):
        gamma = float(name.removeprefix("anneal30d-g"))
        return _anneal_task(name, _mixture30d(device), gamma, proc, t_min, n_is, gen)
    if name == "tilt30d":
        return _tilt_task(_mixture30d(device), proc, t_min)
    if name.startswith("gmm_inverse-d"):
        return _inverse_task(int(name.removeprefix("gmm_inverse-d")), proc, t_min, device)
    if name == "fourmode2d-anneal":
        return _anneal_task(name, _fourmode2d(device), 2.0, proc, t_min, n_is, gen)
    if name == "poe2d":
        return _poe_task(proc, t_min, device)
    raise ValueError(f"unknown task {name!r}; choose from {TASKS}")


# ----------------------------------------------------------------------------- running
def run_method(task: Task, method: str, n_particles: int, n_steps: int, n_runs: int, seed: int,
               device: str, t_min: float) -> smcdiff.SMCResult:  # fmt: skip
    kw = dict(METHODS[method])
    fkc_family = kw["method"] in ("fkc", "driftlite-vcg", "driftlite-ecg")
    model = task.fkc_model if fkc_family else task.fk_model
    extra = task.fkc_kwargs if fkc_family else task.fk_kwargs
    return smcdiff.steer(
        model, **extra, **kw, n_particles=n_particles, n_steps=n_steps, n_runs=n_runs,
        seed=seed, device=device, t_min=t_min,
    )  # fmt: skip


def _ms(vals: Sequence[float]) -> list[float]:
    t = torch.tensor(vals, dtype=F64)
    return [float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0]


def evaluate(task: Task, name: str, res, ref: torch.Tensor, ref_nll: float, sample_metrics=True):
    """Metrics of one batched call (``R`` runs) as mean ± std over the runs."""
    weighted = name != "guidance"
    x = res.particles.detach()
    w = res.weights.detach() if weighted else torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=F64)
    w = w.to(x.device)
    row: dict = {"task": task.name, "method": name, "n_particles": res.n_particles}
    if sample_metrics:
        row["energy_dist"] = _ms(
            [float(energy_distance(xr, ref, wr)) for xr, wr in zip(x, w, strict=True)]
        )
        row["sliced_w2"] = _ms(
            [float(sliced_wasserstein(xr, ref, wr)) for xr, wr in zip(x, w, strict=True)]
        )
        row["mmd"] = _ms([float(gaussian_mmd(xr, ref, wr)) for xr, wr in zip(x, w, strict=True)])
    nll = -task.log_pi(x.reshape(-1, x.shape[-1])).reshape(w.shape).to(F64)
    row["delta_nll"] = _ms(((w * nll).sum(1) - ref_nll).tolist())
    comp = task.exact.component_log_prob(x.reshape(-1, x.shape[-1])).argmax(-1).reshape(w.shape)
    mass = torch.zeros(w.shape[0], task.exact.n_components, dtype=F64, device=w.device)
    mass.scatter_add_(1, comp, w)
    row["mode_tv"] = _ms((0.5 * (mass - task.exact.weights.double()).abs().sum(1)).tolist())
    if weighted:
        lz = res.log_z.double().cpu() - task.log_z
        row["log_z_err"] = _ms(lz.tolist())
        row["abs_log_z_err"] = _ms(lz.abs().tolist())
        row["ess_frac"] = _ms((res.final_ess / res.n_particles).tolist())
    if "weight_var" in res.trace:
        row["weight_var"] = _ms(res.trace["weight_var"][1:].double().mean(0).tolist())
    row.update(nfe=res.info["nfe"], n_grad=res.info["n_grad"], wall_s=res.info["wall_time_s"])
    return row


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    tasks: Sequence[str] = TASKS,
    n_particles: int = 1000,
    n_steps: int = 100,
    n_runs: int = 10,
    seed: int = 0,
    n_ref: int = 2000,
    convergence_task: str = "fourmode2d-anneal",
    convergence_ns: Sequence[int] = (250, 500, 1000, 2000, 4000),
    with_unresampled: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Run every task x method; write ``steering.json``, ``steering.md``, ``convergence.json``,
    ``truth.json`` and figures under ``out_dir``; return the rows of the main table."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    n_is = 200_000
    if quick:
        tasks = ("anneal30d-g2", "gmm_inverse-d8", "poe2d")
        n_particles, n_steps, n_runs, n_ref, n_is = 200, 20, 2, 300, 5000
        convergence_ns, with_unresampled = (100, 200), False
    proc = smcdiff.VP()
    t_min = proc.t_min
    rows, truth, traces = [], {}, {}
    for tname in tasks:
        task = make_task(tname, proc, t_min, device, n_is=n_is)
        truth[tname] = {"log_z": task.log_z, **task.truth}
        ref = task.exact.sample(n_ref, generator=torch.Generator(device=device).manual_seed(1234))
        ref_nll = float(-task.log_pi(ref).mean())
        ref2 = task.exact.sample(n_ref, generator=torch.Generator(device=device).manual_seed(99))
        truth[tname]["energy_dist_floor"] = float(energy_distance(ref2, ref))
        traces[tname] = {}
        for name in task.methods(with_unresampled):
            t0 = time.perf_counter()
            try:
                res = run_method(task, name, n_particles, n_steps, n_runs, seed, device, t_min)
                row = evaluate(task, name, res, ref, ref_nll)
                traces[tname][name] = {
                    k: res.trace[k].double().mean(-1).tolist()
                    for k in ("ess", "weight_var")
                    if k in res.trace
                }
                traces[tname][name]["ess"] = [v / n_particles for v in traces[tname][name]["ess"]]
            except Exception as err:  # recorded in the table, not fatal
                row = {"task": tname, "method": name, "error": f"{type(err).__name__}: {err}"}
            rows.append(row)
            if progress:
                print(f"{tname:<20}{name:<10}{time.perf_counter() - t0:6.1f}s", flush=True)
    conv = convergence(
        convergence_task, proc, t_min, device, n_steps, n_runs, seed, convergence_ns, n_ref, n_is,
        progress,
    )  # fmt: skip
    (out / "steering.json").write_text(json.dumps(rows, indent=1))
    (out / "convergence.json").write_text(json.dumps(conv, indent=1))
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    (out / "traces.json").write_text(json.dumps(traces))
    settings = dict(device=device, n_particles=n_particles, n_steps=n_steps, n_runs=n_runs,
                    seed=seed, n_ref=n_ref)  # fmt: skip
    (out / "steering.md").write_text(
        format_table(rows, settings) + "\n\n" + format_convergence(conv) + "\n"
    )
    _trace_figures(traces, out)
    _convergence_figure(conv, out)
    return rows


def convergence(task_name, proc, t_min, device, n_steps, n_runs, seed, ns, n_ref, n_is, progress):
    """Every weighted method on one task for growing N: mode TV, |log Z err|, ΔNLL, energy dist."""
    task = make_task(task_name, proc, t_min, device, n_is=n_is)
    ref = task.exact.sample(n_ref, generator=torch.Generator(device=device).manual_seed(1234))
    ref_nll = float(-task.log_pi(ref).mean())
    rows = []
    for name in WEIGHTED:
        for n in ns:
            try:
                res = run_method(task, name, n, n_steps, n_runs, seed + 1, device, t_min)
                rows.append(evaluate(task, name, res, ref, ref_nll))
            except Exception as err:
                rows.append({"task": task_name, "method": name, "n_particles": n,
                             "error": f"{type(err).__name__}: {err}"})  # fmt: skip
            if progress:
                print(f"convergence {name:<10} N={n}", flush=True)
    return rows


# ----------------------------------------------------------------------------- output
def _f(v, p=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.{p}g}" if isinstance(v, float) else str(v)
    mean, std = v
    if mean != 0 and (abs(mean) < 1e-3 or abs(mean) >= 1e4):
        return f"{mean:.2e}±{std:.1e}"
    return f"{mean:.{p}f}±{std:.{p}f}"


def format_table(rows: list[dict], settings: dict | None = None) -> str:
    """Markdown table with ``COLUMNS``; failed methods read ``n/a (reason)``."""
    head = "| " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "error" in r:
            cells = [r["task"], r["method"], f"n/a ({r['error'][:120]})"] + [""] * (
                len(COLUMNS) - 3
            )
        else:
            cells = [r["task"], r["method"]]
            for c in COLUMNS[2:]:
                p = 4 if c in ("energy_dist", "mmd") else 3
                cells.append("-" if r.get(c) is None else _f(r[c], p))
        lines.append("| " + " | ".join(cells) + " |")
    note = "mean ± std over independent runs; wall_s: one batched call of all runs"
    if settings:
        note += "; " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return "\n".join(lines) + "\n\n" + note


def format_convergence(rows: list[dict]) -> str:
    cols = ("method", "n_particles", "mode_tv", "abs_log_z_err", "delta_nll", "energy_dist")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n_particles']} | n/a ({r['error'][:100]}) | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['n_particles']} | "
            + " | ".join(_f(r.get(c), 4) for c in cols[2:])
            + " |"
        )
    task = rows[0]["task"] if rows else "?"
    return f"N-convergence on {task}:\n\n" + "\n".join(lines)


def _trace_figures(traces: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    for tname, per in traces.items():
        fig = Figure(figsize=(10, 3.6), layout="constrained")
        ax_ess, ax_var = fig.subplots(1, 2)
        for name, tr in per.items():
            if name == "guidance":
                continue
            ax_ess.plot(tr["ess"], label=name)
            if "weight_var" in tr:
                ax_var.plot(range(1, len(tr["weight_var"])), tr["weight_var"][1:], label=name)
        ax_ess.set(xlabel="step", ylabel="ESS / N (mean over runs)", title=f"{tname}: ESS")
        ax_var.set(xlabel="step", ylabel="weight-increment variance", yscale="log",
                   title=f"{tname}: per-step weight variance (FKC family)")  # fmt: skip
        ax_ess.legend(fontsize=7)
        ax_var.legend(fontsize=7)
        fig.savefig(out / "figures" / f"{tname}_ess_weight_var.png", dpi=110)


def _convergence_figure(rows: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    keys = ("mode_tv", "abs_log_z_err", "delta_nll", "energy_dist")
    fig = Figure(figsize=(14, 3.6), layout="constrained")
    axes = fig.subplots(1, len(keys))
    for name in WEIGHTED:
        rs = [r for r in rows if r["method"] == name and "error" not in r]
        if not rs:
            continue
        ns = [r["n_particles"] for r in rs]
        for ax, k in zip(axes, keys, strict=True):
            vals = [abs(r[k][0]) for r in rs]
            ax.errorbar(ns, vals, yerr=[r[k][1] for r in rs], marker="o", capsize=2, label=name)
    for ax, k in zip(axes, keys, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="particles N", title=k)
    axes[0].legend(fontsize=7)
    task = rows[0]["task"] if rows else ""
    fig.suptitle(f"N-convergence on {task} (mean ± std over runs)")
    fig.savefig(out / "figures" / "convergence.png", dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--out", default="results/steering")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--n-particles", type=int, default=1000)
    p.add_argument("--n-steps", type=int, default=100)
    p.add_argument("--n-runs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-ref", type=int, default=2000)
    p.add_argument("--convergence-task", default="fourmode2d-anneal", choices=TASKS)
    p.add_argument("--convergence-ns", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    a = p.parse_args(argv)
    rows = run(
        a.out, device=a.device, quick=a.quick, tasks=a.tasks, n_particles=a.n_particles,
        n_steps=a.n_steps, n_runs=a.n_runs, seed=a.seed, n_ref=a.n_ref,
        convergence_task=a.convergence_task, convergence_ns=a.convergence_ns,
    )  # fmt: skip
    print((Path(a.out) / "steering.md").read_text())
    del rows


if __name__ == "__main__":
    main()
