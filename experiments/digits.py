r"""Digits: a diffusion prior learned from scikit-learn's ``load_digits`` (8×8), steered two ways.

*Inverse problems* on held-out test images: the observation is :math:`y = A x + \sigma_y
\varepsilon` with :math:`A` one of half-image inpainting, random-pixel inpainting, 2× average-pool
super-resolution and a 3×3 Gaussian blur; the likelihood :math:`\log p(y \mid x) = -\lVert y - A
x\rVert^2 / (2\sigma_y^2)` (up to its constant, so ``log_z`` is the log evidence up to that same
constant) steers the prior by ``none`` (the prior itself), ``guidance`` (DPS-style), ``fk`` and
``tds``. Metrics: PSNR of the (weighted) posterior mean to the true image, coverage of the true
pixels by the per-pixel 90 % credible intervals, agreement of a digits classifier with the true
class, final ESS / N and log Z.

*Reward steering*: the classifier's :math:`\log p(c \mid x)` (differentiable) and the indicator
"classified as :math:`c`" (not differentiable) as rewards; ``fk``, ``tds``, ``guidance`` and
best-of-n at equal NFE. Metrics: class accuracy, diversity (mean pairwise distance) and KID
against the test images of class :math:`c`.

Pixels are scaled to :math:`[-1, 1]` (``x / 8 - 1``); the split is a fixed permutation (seed 0,
1437 train / 360 test images). The prior is an eps-prediction :class:`smcdiff.nets.MLP` on the
VP process, trained by :func:`smcdiff.train_score` on the train split; the script ships the
checkpoint it produced (``data/digits_eps.pt``) and retrains when it is missing
(``retrain=True`` forces it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from smcdiff_experiments.progress import run_bar
from smcdiff_experiments.runtools import (
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
from smcdiff.nets import MLP

DESCRIPTION = "digits (8x8) prior: inpainting / super-resolution / blur and class steering"

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "digits_eps.pt"
NET = {"dim": [1, 8, 8], "hidden": 128, "depth": 3}
TRAIN = {"n_iters": 16000, "batch_size": 128, "lr": 2e-3, "seed": 0, "lr_schedule": "cosine"}
N_TRAIN = 1437
SIGMA_Y = 0.2
REWARD_TASKS = {  # reward -> methods (the indicator has no gradient: no guidance, no tds)
    "log_p": ("none", "guidance", "fk", "tds", "best-of-n"),
    "indicator": ("fk", "best-of-n"),
}
PROBLEMS = ("inpaint_half", "inpaint_random", "sr2x", "blur")
METHODS = dict(STEER_METHODS)


def load_digits_split(device: str = "cpu") -> dict[str, torch.Tensor]:
    """The fixed split: ``x_train`` ``(1437, 1, 8, 8)``, ``x_test`` ``(360, 1, 8, 8)`` in
    :math:`[-1, 1]`, and their labels ``y_train`` / ``y_test``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return {k: v.to(device) for k, v in
            {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}.items()}  # fmt: skip


def train_prior(x_train: torch.Tensor, progress: bool = False, **overrides) -> smcdiff.NetworkScore:
    """Train the eps-prediction MLP prior (settings ``TRAIN``, updated by ``overrides``)."""
    net = MLP(**NET).to(x_train.device)
    return smcdiff.train_score(net, x_train, smcdiff.VP(), "eps", progress=progress,
                               **{**TRAIN, **overrides})  # fmt: skip


def load_prior(
    device: str = "cpu", retrain: bool = False, path: Path = CHECKPOINT, progress: bool = False
) -> smcdiff.NetworkScore:
    """The shipped prior (``path``), or a freshly trained one written to ``path``."""
    if retrain or not path.exists():
        score = train_prior(load_digits_split(device)["x_train"], progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        smcdiff.save_score(score, path)
    return smcdiff.load_score(path, map_location=device)


class Classifier(nn.Module):
    """A digits classifier ``(N, 1, 8, 8) -> (N, 10)`` logits (one hidden layer)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def train_classifier(data: dict[str, torch.Tensor], n_iters: int = 200) -> Classifier:
    """Full-batch Adam on the train split (seed 0, a second on a CPU); augmented with a little
    pixel noise so it also reads slightly imperfect samples. Returns it in eval mode."""
    gen = torch.Generator(device=data["x_train"].device).manual_seed(0)
    torch.manual_seed(0)
    clf = Classifier().to(data["x_train"].device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2, weight_decay=1e-4)
    x, y = data["x_train"], data["y_train"]
    for _ in range(n_iters):
        noisy = x + 0.1 * torch.randn(x.shape, generator=gen, device=x.device)
        loss = nn.functional.cross_entropy(clf(noisy), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval().requires_grad_(False)


# ---------------------------------------------------------------- observation operators


def blur_kernel(sigma: float = 0.8) -> torch.Tensor:
    """A normalised 3×3 Gaussian kernel ``(1, 1, 3, 3)``."""
    g = torch.exp(-(torch.tensor([-1.0, 0.0, 1.0]) ** 2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum())[None, None]


def operator(name: str, device: str = "cpu"):
    """The linear map ``A`` of problem ``name``: ``(N, 1, 8, 8) -> (N, m)``."""
    if name == "inpaint_half":
        mask = torch.zeros(8, 8, dtype=torch.bool, device=device)
        mask[:4] = True  # the top half is seen
        return lambda x: x[:, 0][:, mask]
    if name == "inpaint_random":
        gen = torch.Generator().manual_seed(1)
        mask = (torch.rand(8, 8, generator=gen) < 0.3).to(device)  # 30 % of the pixels seen
        return lambda x: x[:, 0][:, mask]
    if name == "sr2x":
        return lambda x: nn.functional.avg_pool2d(x, 2).flatten(1)
    if name == "blur":
        k = blur_kernel().to(device)
        return lambda x: nn.functional.conv2d(x, k.to(x.dtype), padding=1).flatten(1)
    raise ValueError(f"digits: unknown problem {name!r}; choose from {PROBLEMS}")


def observe(name: str, x_true: torch.Tensor, seed: int, sigma_y: float = SIGMA_Y):
    """``(y, log_likelihood)`` for one true image ``x_true`` ``(1, 1, 8, 8)``."""
    a = operator(name, str(x_true.device))
    gen = torch.Generator(device=x_true.device).manual_seed(seed)
    clean = a(x_true)
    y = clean + sigma_y * torch.randn(clean.shape, generator=gen, device=x_true.device)

    def log_likelihood(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((a(x) - y.to(x.dtype)) ** 2).sum(-1) / sigma_y**2

    return y, log_likelihood


def observe_batch(name: str, x_true: torch.Tensor, seeds, n: int, sigma_y: float = SIGMA_Y):
    """``(ys, log_likelihood)`` for ``G`` true images ``x_true`` ``(G, 1, 8, 8)`` (image ``g``'s
    noise seeded by ``seeds[g]``, as :func:`observe`), the likelihood on the ``G * n`` rows of
    ``steer(n_runs=G, n_particles=n)``: rows ``g n .. (g + 1) n - 1`` are scored against
    ``ys[g]``."""
    ys = torch.cat([observe(name, x_true[g : g + 1], s, sigma_y)[0] for g, s in enumerate(seeds)])
    a, g = operator(name, str(x_true.device)), len(seeds)

    def log_likelihood(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != g * n:
            raise ValueError(f"digits: the batched likelihood needs {g} x {n} rows, got "
                             f"{x.shape[0]}")  # fmt: skip
        r = a(x).reshape(g, n, -1) - ys[:, None].to(x.dtype)
        return (-0.5 * r.square().sum(-1) / sigma_y**2).reshape(-1)

    return ys, log_likelihood


class RunView:
    """Run ``i`` of a result with ``n_runs`` runs, read as a one-run result (``particles``,
    ``weights``, ``final_ess``, ``log_z``, ``info``, ``resample``)."""

    def __init__(self, res, i: int):
        self.res, self.i, self.info = res, i, res.info

    @property
    def particles(self) -> torch.Tensor:
        return self.res.particles[self.i]

    @property
    def weights(self) -> torch.Tensor:
        return self.res.weights[self.i]

    @property
    def final_ess(self) -> torch.Tensor:
        return self.res.final_ess[self.i]

    @property
    def log_z(self) -> torch.Tensor:
        return self.res.log_z[self.i]

    def resample(self, n=None, seed=None, scheme="systematic") -> torch.Tensor:
        return self.res.resample(n, seed, scheme)[self.i]


def observation_image(name: str, y: torch.Tensor) -> torch.Tensor:
    """``y`` drawn as an 8×8 image (unseen pixels NaN) for the figures."""
    img = torch.full((8, 8), float("nan"))
    y = y.detach().cpu().reshape(-1)
    if name.startswith("inpaint"):
        dummy = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
        idx = operator(name)(dummy).long().reshape(-1)
        img.view(-1)[idx] = y
    elif name == "sr2x":
        img = y.reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
    else:
        img = y.reshape(8, 8)
    return img


# ---------------------------------------------------------------- metrics


def weights_of(res) -> torch.Tensor:
    """Normalised weights ``(N,)`` (uniform for unweighted methods)."""
    if res.info["method"] in ("fk", "tds"):
        return res.weights.double()
    n = res.particles.shape[0]
    return torch.full((n,), 1.0 / n, dtype=torch.float64, device=res.particles.device)


def weighted_quantiles(x: torch.Tensor, w: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Per-column weighted quantiles of ``x`` ``(N, d)`` with weights ``w`` ``(N,)``: ``(len(qs),
    d)``, the smallest value whose cumulative weight reaches ``q``."""
    xs, order = x.double().sort(0)
    cw = w[order].cumsum(0)  # (N, d)
    out = []
    for q in qs:
        idx = (cw < q).sum(0).clamp(max=x.shape[0] - 1)
        out.append(xs.gather(0, idx[None]).squeeze(0))
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in :math:`[-1, 1]` (peak-to-peak 2)."""
    mse = ((a.double() - b.double()) ** 2).mean()
    return float(10 * torch.log10(4.0 / mse))


def inverse_metrics(res, x_true: torch.Tensor, label: int, clf: Classifier) -> dict:
    """PSNR of the posterior mean, 90 % coverage, classifier agreement, ESS / N, log Z."""
    w = weights_of(res)
    x = res.particles.reshape(len(w), -1)
    mean = (w[:, None] * x.double()).sum(0)
    lo, hi = weighted_quantiles(x, w, (0.05, 0.95))
    truth = x_true.reshape(-1).double()
    pred = clf(res.particles.float()).argmax(-1)
    weighted = res.info["method"] in ("fk", "tds")
    return {
        "psnr": psnr(mean, truth),
        "psnr_sample": float(
            (w * 10 * torch.log10(4.0 / (x.double() - truth).square().mean(1))).sum()
        ),
        "coverage90": float(((truth >= lo) & (truth <= hi)).double().mean()),
        "agreement": float((w * (pred == label).double()).sum()),
        "ess_frac": float(res.final_ess / len(w)) if weighted else None,
        "log_z": float(res.log_z) if weighted else None,
        "nfe": int(res.info["nfe"]),
        "n_grad": int(res.info.get("n_grad", 0)),
    }


def diversity(x: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between the rows of ``x`` ``(n, ...)``."""
    f = x.reshape(len(x), -1).double()
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


def kid(x: torch.Tensor, ref: torch.Tensor) -> float:
    r"""Kernel inception distance on pixels: the unbiased MMD² with the cubic polynomial kernel
    :math:`k(a, b) = (a^\top b / d + 1)^3` (Bińkowski et al. 2018), between ``x`` and ``ref``."""
    a, b = x.reshape(len(x), -1).double(), ref.reshape(len(ref), -1).double()
    d = a.shape[1]
    kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    saa = (kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1))
    sbb = (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
    return float(saa + sbb - 2 * kab.mean())


# ---------------------------------------------------------------- the runs


def settings(quick: bool, gpu: bool = False) -> dict:
    """Sizes of the full run, of ``--quick`` and of the GPU run (``gpu``: larger N and candidate
    sets, a time budget after which no job starts: skipped jobs are listed in the outputs)."""
    common = {"time_budget_s": None, "compile": None}
    if quick:
        return {**common, "n_images": 2, "problems": ("inpaint_half", "sr2x"), "n_particles": 64,
                "n_steps": 50, "classes": (3,), "n_out": 64, "n_cand": 8, "n_reward_runs": 1}  # fmt: skip
    if gpu:  # one H200: ~3 min (docs/digits.md, "H200")
        return {**common, "n_images": 32, "problems": PROBLEMS, "n_particles": 4096,
                "n_steps": 50, "classes": tuple(range(10)), "n_out": 128, "n_cand": 32,
                "n_reward_runs": 1, "time_budget_s": 200.0}  # fmt: skip
    return {**common, "n_images": 8, "problems": PROBLEMS, "n_particles": 256, "n_steps": 50,
            "classes": tuple(range(10)), "n_out": 128, "n_cand": 16, "n_reward_runs": 1}  # fmt: skip


def counted(prior, fn):
    """``(fn(), wall seconds, network evaluations of prior)``: the evaluations are the net's
    batched calls (:attr:`smcdiff.NetworkScore.nfe`), the wall time is synchronised."""
    prior.reset_nfe()
    t0 = time.perf_counter()
    out = fn()
    if prior.device is not None and prior.device.type == "cuda":
        torch.cuda.synchronize(prior.device)
    return out, time.perf_counter() - t0, prior.nfe


def run_inverse(prior, clf, data, cfg: dict, device: str, bar, budget=None, skipped=None):
    """Every (problem, test image, method): a row of metrics; also the results for the figure
    (first image of each problem). The images of a problem are solved in one
    ``steer(n_runs=n_images)`` call per method (independent particle systems, seed 0); per-image
    ``wall_s`` is the call's wall time / its images. Returns ``(rows, shown)``; jobs past
    ``budget`` are appended to ``skipped``; a call that stops on an error gives error rows."""
    rows, shown, g = [], {}, cfg["n_images"]
    x_true, labels = data["x_test"][:g], data["y_test"][:g].tolist()
    for problem in cfg["problems"]:
        ys, ll = observe_batch(problem, x_true, [100 + i for i in range(g)], cfg["n_particles"])
        for method, kw in METHODS.items():
            key = {"problem": problem, "method": method}
            if budget is not None and not budget.left():
                skipped.append({"table": "inverse", **key})
                bar(f"{problem} {method} (skipped)")
                continue
            try:
                (res, degenerate), wall, evals = counted(prior, lambda kw=kw, ll=ll: (
                    steer_recording(prior, log_likelihood=ll, n_particles=cfg["n_particles"],
                                    n_runs=g, n_steps=cfg["n_steps"], seed=0, device=device,
                                    progress=False, **kw)))  # fmt: skip
            except smcdiff.SMCDiffError as err:
                rows += [{**key, "image": i, "error": f"{type(err).__name__}: {err}"}
                         for i in range(g)]  # fmt: skip
                bar(f"{problem} {method} (failed)")
                continue
            for i in range(g):
                view = RunView(res, i)
                rows.append({**key, "image": i, "label": labels[i],
                             **inverse_metrics(view, x_true[i : i + 1], labels[i], clf),
                             "wall_s": wall / g, "ms_per_nfe": 1000 * wall / max(evals, 1),
                             "degenerate": degenerate})  # fmt: skip
            shown[(problem, method)] = (x_true[:1], ys[:1], RunView(res, 0))
            bar(f"{problem} {method}")
    return rows, shown


def steered_samples(res) -> torch.Tensor:
    """Equally weighted samples of a one-run result (multinomial resampling if weighted)."""
    if res.info["method"] in ("fk", "tds"):
        return res.resample(seed=0, scheme="multinomial")
    return res.particles


def reward_outputs(prior, method: str, reward, cfg: dict, seed: int, device: str):
    """``n_out`` samples of one method, the network evaluations each costs, and whether the
    weighted run warned of degenerate weights.

    ``fk`` / ``tds``: ``n_out`` independent systems of ``n_cand`` particles (one batched call,
    ``n_runs``), one particle drawn by weight from each; ``best-of-n``: the highest-reward of
    ``n_cand`` prior samples; ``guidance`` / ``none``: one trajectory per output."""
    n_out, n_cand, steps = cfg["n_out"], cfg["n_cand"], cfg["n_steps"]
    common = {"n_steps": steps, "seed": seed, "device": device, "progress": False}
    if method in ("fk", "tds"):
        res, degenerate = steer_recording(prior, method=method, reward=reward,
                                          n_particles=n_cand, n_runs=n_out, **common)  # fmt: skip
        x = res.resample(n=1, seed=seed, scheme="multinomial")[:, 0]
        return x, n_cand * res.info["nfe"], degenerate
    if method == "best-of-n":
        res = smcdiff.steer(prior, method="none", n_particles=n_out * n_cand, **common)
        x = res.particles.reshape(n_out, n_cand, *res.particles.shape[1:])
        best = reward(x.flatten(0, 1)).reshape(n_out, n_cand).argmax(1)
        return x[torch.arange(n_out, device=x.device), best], n_cand * res.info["nfe"], False
    res = smcdiff.steer(prior, method=method, reward=reward if method != "none" else None,
                        n_particles=n_out, **common)  # fmt: skip
    return res.particles, res.info["nfe"], False


def reward_row(name, kind, c, x, nfe, clf, data, wall, evals: int | None = None) -> dict:
    """Accuracy, diversity and KID to the test images of class ``c`` of samples ``x``;
    ``evals``: the network's batched calls (for milliseconds per NFE)."""
    ref = data["x_test"][data["y_test"] == c]
    pred = clf(x.float()).argmax(-1)
    return {"reward": kind, "class": c, "method": name, "n": len(x), "nfe_per_sample": int(nfe),
            "accuracy": float((pred == c).double().mean()), "diversity": diversity(x),
            "kid": kid(x, ref), "wall_s": wall,
            "ms_per_nfe": None if not evals else 1000 * wall / evals}  # fmt: skip


def run_rewards(prior, clf, data, cfg: dict, device: str, bar, budget=None, skipped=None):
    """Class steering by ``log p(c | x)`` (fk, tds, guidance, best-of-n, and the prior for
    reference) and by the non-differentiable indicator ``5 * 1[argmax = c]`` (fk, best-of-n).
    Returns ``(rows, shown)``; jobs past ``budget`` are appended to ``skipped``."""
    rows, shown = [], {}
    for c in cfg["classes"]:
        log_p = lambda x, c=c: torch.log_softmax(clf(x), -1)[:, c]  # noqa: E731
        hit = lambda x, c=c: (clf(x).argmax(-1) == c).to(x.dtype) * 5.0  # noqa: E731
        for kind, methods in REWARD_TASKS.items():
            reward = log_p if kind == "log_p" else hit
            for method in methods:
                for r in range(cfg["n_reward_runs"]):
                    if budget is not None and not budget.left():
                        skipped.append({"table": "reward", "reward": kind, "class": c,
                                        "method": method})  # fmt: skip
                        bar(f"class {c} {kind} {method} (skipped)")
                        continue
                    (x, nfe, degenerate), wall, evals = counted(
                        prior, lambda m=method, rw=reward, r=r: reward_outputs(
                            prior, m, rw, cfg, r, device))  # fmt: skip
                    x = x.detach()
                    rows.append(reward_row(method, kind, c, x, nfe, clf, data, wall, evals))
                    rows[-1]["degenerate"] = degenerate
                    shown.setdefault((kind, c, method), x)
                    bar(f"class {c} {kind} {method}")
    return rows, shown


def run(
    out_dir: str | Path,
    device: str = "cpu",
    quick: bool = False,
    progress: bool = True,
    retrain: bool = False,
    sizes: dict | None = None,
    n_particles: int | None = None,
    compile: str | None = None,
) -> list[dict]:
    """Train or load the prior, run both experiments, write ``digits.json``, ``digits.md`` (the
    tables in markdown, with the network timings) and the figures ``figures/digits_inverse.png``
    and ``figures/digits_reward.png``. ``sizes`` overrides entries of :func:`settings` (the GPU's
    on a CUDA device unless ``quick``); ``n_particles``: of the inverse problems; ``compile``: a
    ``torch.compile`` mode for the prior's net (eager-vs-compiled timing then measured too)."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    gpu = torch.device(device).type == "cuda" and not quick
    cfg = {**settings(quick, gpu), **(sizes or {}), "compile": compile}
    if n_particles is not None:
        cfg["n_particles"] = n_particles
    budget = Budget(cfg["time_budget_s"])
    if compile:
        raise_recompile_limit()
    data = load_digits_split(device)
    prior = load_prior(device, retrain=retrain, progress=progress)
    clf = train_classifier(data)
    test_acc = float((clf(data["x_test"]).argmax(-1) == data["y_test"]).double().mean())
    timing = [{"label": f"digits MLP, {lab}", **net_timing(prior, n, device, compile)}
              for lab, n in (("inverse", cfg["n_particles"] * cfg["n_images"]),
                             ("reward", cfg["n_out"] * cfg["n_cand"]))]  # fmt: skip
    prior.compile(compile or False)
    n_rew = sum(len(m) for m in REWARD_TASKS.values())
    n_jobs = len(cfg["problems"]) * cfg["n_images"] * len(METHODS) + len(
        cfg["classes"]) * n_rew * cfg["n_reward_runs"]  # fmt: skip
    bar, skipped = run_bar(n_jobs, progress, "digits"), []
    inv_rows, inv_shown = run_inverse(prior, clf, data, cfg, device, bar, budget, skipped)
    rew_rows, rew_shown = run_rewards(prior, clf, data, cfg, device, bar, budget, skipped)
    rows = summarise(inv_rows) + summarise_rewards(rew_rows)
    meta = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "classifier_test_accuracy": test_acc, "sigma_y": SIGMA_Y, "device": device,
            "device_name": torch.cuda.get_device_name(device) if gpu or "cuda" in str(device)
            else "cpu", "torch": torch.__version__, "wall_s": budget.elapsed(),
            "compile_info": prior.compile_info}  # fmt: skip
    doc = {"meta": meta, "summary": rows, "timing": timing, "skipped": skipped,
           "inverse": inv_rows, "reward": rew_rows}  # fmt: skip
    (out / "digits.json").write_text(json.dumps(doc, indent=2))
    (out / "digits.md").write_text(format_markdown(doc))
    if inv_shown:
        inverse_figure(inv_shown, out / "figures" / "digits_inverse.png")
    if rew_shown:
        reward_figure(rew_shown, out / "figures" / "digits_reward.png")
    return rows


def _mean_std(vals: list[float | None]) -> list[float] | None:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return None
    t = torch.tensor(vals, dtype=torch.float64)
    return [float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over test images per (problem, method)."""
    out = []
    keys = ("psnr", "psnr_sample", "coverage90", "agreement", "ess_frac", "log_z", "wall_s",
            "ms_per_nfe")  # fmt: skip
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for method in METHODS:
            rs = [r for r in rows if r["problem"] == problem and r["method"] == method]
            n_failed = sum("error" in r for r in rs)
            rs = [r for r in rs if "error" not in r]
            if not rs:  # skipped (time budget) or failed
                continue
            row = {"table": "inverse", "problem": problem, "method": method, "n": len(rs),
                   "nfe": rs[0]["nfe"], "n_grad": rs[0]["n_grad"]}  # fmt: skip
            row.update({k: _mean_std([r[k] for r in rs]) for k in keys})
            row["degenerate_frac"] = sum(r["degenerate"] for r in rs) / len(rs)
            row["n_failed"] = n_failed
            out.append(row)
    return out


def summarise_rewards(rows: list[dict]) -> list[dict]:
    """Mean ± std over classes and runs per (reward, method)."""
    out = []
    for kind in dict.fromkeys(r["reward"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["reward"] == kind):
            rs = [r for r in rows if r["reward"] == kind and r["method"] == method]
            row = {"table": "reward", "reward": kind, "method": method, "n": len(rs),
                   "nfe": _mean_std([r["nfe_per_sample"] for r in rs])[0]}  # fmt: skip
            row.update({k: _mean_std([r[k] for r in rs])
                        for k in ("accuracy", "diversity", "kid", "wall_s", "ms_per_nfe")})  # fmt: skip
            out.append(row)
    return out


# ---------------------------------------------------------------- figures and table


def _img(ax, img, title: str = "") -> None:
    ax.imshow(img.detach().cpu().reshape(8, 8).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def inverse_figure(shown: dict, path: Path, n_samples: int = 6) -> None:
    """Per problem: truth, observation, then per method its posterior mean and samples."""
    from matplotlib.figure import Figure

    problems = list(dict.fromkeys(p for p, _ in shown))
    n_rows = len(problems) * len(METHODS)
    fig = Figure(figsize=(1.0 * (n_samples + 3), 1.05 * n_rows))
    axes = fig.subplots(n_rows, n_samples + 3, squeeze=False)
    for pi, problem in enumerate(problems):
        for mi, method in enumerate(METHODS):
            if (problem, method) not in shown:  # skipped or failed
                continue
            x_true, y, res = shown[(problem, method)]
            row = axes[pi * len(METHODS) + mi]
            _img(row[0], x_true, "truth" if mi == 0 else "")
            _img(row[1], observation_image(problem, y), problem if mi == 0 else "")
            w = weights_of(res).to(res.particles.device)
            _img(row[2], (w[:, None] * res.particles.reshape(len(w), -1).double()).sum(0),
                 "mean" if mi == 0 else "")  # fmt: skip
            row[0].set_ylabel(method, fontsize=7)
            xs = steered_samples(res)
            for j in range(n_samples):
                _img(row[3 + j], xs[j])
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)


def reward_figure(shown: dict, path: Path, n_samples: int = 8) -> None:
    """Per (reward, class, method): ``n_samples`` samples."""
    from matplotlib.figure import Figure

    keys = list(shown)
    fig = Figure(figsize=(0.9 * n_samples + 1.6, 0.95 * len(keys)))
    axes = fig.subplots(len(keys), n_samples, squeeze=False)
    for row, key in zip(axes, keys, strict=True):
        kind, c, method = key
        for j in range(n_samples):
            _img(row[j], shown[key][j])
        row[0].set_ylabel(f"{method}\n{kind} c={c}", fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)


def format_table(rows: list[dict]) -> str:
    def f(v, p=2):
        return "-" if v is None else f"{v[0]:.{p}f}±{v[1]:.{p}f}"

    head = (f"{'problem':<15}{'method':<10}{'PSNR mean':>13}{'PSNR sample':>13}{'cover90':>12}"
            f"{'agree':>12}{'ESS/N':>12}{'degen':>6}{'log Z':>16}{'NFE':>7}{'s/run':>7}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in (r for r in rows if r["table"] == "inverse"):
        lines.append(
            f"{r['problem']:<15}{r['method']:<10}{f(r['psnr']):>13}{f(r['psnr_sample']):>13}"
            f"{f(r['coverage90']):>12}{f(r['agreement']):>12}{f(r['ess_frac']):>12}"
            f"{r['degenerate_frac']:>6.2f}{f(r['log_z'], 1):>16}{r['nfe']:>7}{r['wall_s'][0]:>7.1f}"
        )
    head2 = (f"\n{'reward':<11}{'method':<13}{'accuracy':>12}{'diversity':>12}{'KID':>16}"
             f"{'NFE':>8}{'s/run':>7}")  # fmt: skip
    lines += [head2, "-" * len(head2)]
    for r in (r for r in rows if r["table"] == "reward"):
        lines.append(
            f"{r['reward']:<11}{r['method']:<13}{f(r['accuracy']):>12}{f(r['diversity']):>12}"
            f"{f(r['kid'], 4):>16}{r['nfe']:>8.0f}{r['wall_s'][0]:>7.1f}"
        )
    lines.append("mean ± std over test images (inverse) and over classes and runs (reward); "
                 "log Z up to the likelihood's constant; degen: fraction of runs warned of "
                 "degenerate weights")  # fmt: skip
    return "\n".join(lines)


def format_markdown(doc: dict) -> str:
    """``digits.md``: settings, the inverse-problem and reward tables (markdown), the network
    timings (eager vs ``torch.compile``) and the skipped jobs."""
    meta, rows = doc["meta"], doc["summary"]
    cfg = meta["settings"]

    def f(v, p=2):
        return "-" if v is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"

    inv = ["| problem | method | PSNR of mean (dB) | PSNR per sample (dB) | 90 % coverage | "
           "class agreement | final ESS / N | degen | log Z | NFE | s / run | ms / NFE |",
           "|" + "---|" * 12]  # fmt: skip
    for r in (r for r in rows if r["table"] == "inverse"):
        inv.append(f"| {r['problem']} | {r['method']} | {f(r['psnr'])} | {f(r['psnr_sample'])} | "
                   f"{f(r['coverage90'])} | {f(r['agreement'])} | {f(r['ess_frac'])} | "
                   f"{r['degenerate_frac']:.2f} | {f(r['log_z'], 1)} | {r['nfe']} | "
                   f"{f(r['wall_s'])} | {f(r['ms_per_nfe'], 3)} |")  # fmt: skip
    rew = ["| reward | method | accuracy | diversity | KID | NFE / sample | s / run | ms / NFE |",
           "|" + "---|" * 8]  # fmt: skip
    for r in (r for r in rows if r["table"] == "reward"):
        rew.append(f"| {r['reward']} | {r['method']} | {f(r['accuracy'])} | "
                   f"{f(r['diversity'])} | {f(r['kid'], 4)} | {fmt(r['nfe'], 0)} | "
                   f"{f(r['wall_s'])} | {f(r['ms_per_nfe'], 3)} |")  # fmt: skip
    parts = [
        f"# digits on {meta['device_name']} (torch {meta['torch']})",
        f"{cfg['n_images']} test images × {len(cfg['problems'])} problems, N = "
        f"{cfg['n_particles']} particles, K = {cfg['n_steps']} steps; rewards: "
        f"{len(cfg['classes'])} classes, {cfg['n_out']} outputs of {cfg['n_cand']} candidates; "
        f"compile = {cfg['compile']}{_compile_note(meta.get('compile_info'))}; classifier test "
        f"accuracy "
        f"{meta['classifier_test_accuracy']:.3f}; whole run {meta['wall_s']:.0f} s.",
        "## Inverse problems\n\n" + "\n".join(inv),
        "## Class steering\n\n" + "\n".join(rew),
        "mean ± std over test images (inverse) and over classes and runs (reward); log Z up to "
        "the likelihood's constant; degen: fraction of images whose call (a problem's images in "
        "one steer(n_runs=...) call) warned of degenerate weights; "
        "ms / NFE: wall time / the network's batched calls (synchronised)",
        "## Network timing (eager vs torch.compile)\n\n" + timing_table(doc["timing"]),
    ]
    if doc["skipped"]:
        parts.append(f"## Skipped (time budget {cfg['time_budget_s']} s)\n\n"
                     f"{len(doc['skipped'])} jobs not started: " + ", ".join(
                         " ".join(str(v) for v in k.values()) for k in doc["skipped"]))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def _compile_note(info: dict | None) -> str:
    """`` (fell back to eager: error)`` when compilation failed, else ``""``."""
    return f" (fell back to eager: {info['error']})" if info and info["error"] else ""
