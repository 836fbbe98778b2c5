"""Benchmark (not a test): smcdiff against BlackJAX on BlackJAX's adaptive tempered SMC, one GPU call.

Runs, in one process on one GPU (about 5 minutes on an H200):

1. the row gather of resampling (N = 1e7, d = 32, float32): :func:`smcdiff.resampling.gather_rows`
   (Triton) against ``index_select`` and a device copy of the same bytes, in GB/s, after
   checking that both give ``x[idx]`` exactly;
2. the BlackJAX peer script, verbatim (``data/peer_blackjax_tempered.py.txt``, a copy of
   ``/work/shared/benchmarks/peer_blackjax_tempered.py``), in a subprocess;
3. ours on the peer's four targets x N = 1e4, 1e5 with the peer's settings (reference
   N(0, sigma0^2 I), target ESS 0.5, systematic resampling at every step, HMC with 10 leapfrog
   steps of fixed size 0.2, 5 or 10 moves per temperature), in four variants: ``engine`` (the
   engine's loop, moves as CUDA graphs: the code before issue 12), ``fused`` (whole steps as
   CUDA graphs, :mod:`smcdiff.energy.tempered_fused`), ``fused+grad`` (and the analytic gradients
   below), ``fused+grad+compile`` (those gradients through ``torch.compile``),
   ``fused+compiled-moves`` and ``fused+grad+compiled-moves`` (``sample(compile=True)``: each
   whole HMC move, all leapfrog steps and the accept step, one ``torch.compile``-d transition,
   :mod:`smcdiff.mcmc.compiled`; autograd / analytic gradients inside); wall time is the median
   of 3 runs after a warm-up run (graph capture, compilation: its time is ``warmup_s``) of
   ``smcdiff.sample``;
4. the FK-steering step timings of :mod:`smcdiff_experiments.bench_fk_step`;
5. CUDA profiles of one run per ``--profile-variant`` x target x N, where time is left: the
   number of GPU kernels, the GPU-busy ms (kernel intervals merged) against the span (the
   difference: the GPU waiting for the host) and the top kernels (``profile.txt``).

Writes ``bench_blackjax.json``, ``speed.md`` (the tables for docs/speed.md, including the
compiled-moves comparison) and ``profile.txt`` to ``--out`` after every part, so a run cut
short keeps what it measured.

    python -m smcdiff_experiments.bench_blackjax --out $OUT
    # compiled moves against eager moves (and the peer), the tables in $OUT/speed.md:
    python -m smcdiff_experiments.bench_blackjax --out $OUT --budget-s 210 --reserve-s 30 \
        --skip-gather --fk-sizes 1e4 --variants fused+grad,fused+grad+compiled-moves \
        --profile-variant fused+grad+compiled-moves
    # a dry run on the CPU (no peer, tiny sizes):
    python -m smcdiff_experiments.bench_blackjax --device cpu --skip-peer --sizes 300 \
        --targets mw5 --fk-sizes "" --variants fused+grad,fused+grad+compiled-moves
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import smcdiff
from smcdiff.resampling.gather import gather_rows, triton_available

PEER = {  # our name: (peer's name, reference std sigma0, HMC moves per temperature)
    "gmm40_fab": ("gmm40", 40.0, 5),
    "funnel10": ("funnel10", 3.0, 5),
    "manywell32": ("manywell32", 2.0, 10),
    "mw5": ("mw5", 2.5, 10),
}
SIZES = (10_000, 100_000)
FK_GRAPHED_MAX = 100_000  # FK steps also timed as CUDA graphs (one per step) up to this N
PEER_SCRIPT = Path(__file__).resolve().parent / "data" / "peer_blackjax_tempered.py.txt"
if not PEER_SCRIPT.exists():  # an installed copy without the data: the repository's
    PEER_SCRIPT = Path.cwd() / "experiments" / "data" / "peer_blackjax_tempered.py.txt"
VARIANTS = (
    "engine",
    "fused",
    "fused+grad",
    "fused+grad+compile",
    "fused+compiled-moves",
    "fused+grad+compiled-moves",
    "fused+grad+compiled-moves-static",
)
COMPILED_PAIRS = (  # (eager moves, compiled moves): the comparison table of compile=True
    ("fused", "fused+compiled-moves"),
    ("fused+grad", "fused+grad+compiled-moves"),
    ("fused+grad", "fused+grad+compiled-moves-static"),
)
_LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------- analytic gradients
class AnalyticTarget:
    """``target`` with an analytic ``grad_log_prob(x) -> (log_prob, grad)`` for the four peer
    targets (formulas below; checked against the target's ``log_prob`` and autograd in
    tests/energy/test_tempered_analytic_targets.py). ``compile``: the pair through
    ``torch.compile`` (falls back to eager, with the reason in ``self.mode``, if it fails)."""

    def __init__(self, name: str, target, device: torch.device):
        self.name, self.target, self.dim = name, target, int(target.dim)
        self.log_z = float(getattr(target, "log_z", 0.0))
        self.mode = "eager"
        # every instance has the same attributes: torch.compile's guards from one target's trace
        # are evaluated on the next target of this class, and a missing attribute there raised
        # (funnel10 after gmm40_fab ran eager on the H200: "no attribute 'means'")
        self.means, self.std = None, None
        if name == "gmm40_fab":
            self.means = target.means.to(device=device, dtype=torch.float32)
            self.std = float(target.std)
        self._pair = getattr(self, "_" + name)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.log_prob(x)

    def grad_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pair(x)

    def compile(self, probes: list[torch.Tensor]) -> None:
        """Compile the pair for the shapes in ``probes``; keep eager if that fails or the
        compiled values differ from the eager ones by more than float32 rounding."""
        eager = self._pair
        try:
            fn = torch.compile(eager, dynamic=False, fullgraph=True)
            for x in probes:
                (a, ga), (b, gb) = fn(x), eager(x)
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
                torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-3)
        except Exception as err:
            self.mode = f"eager (torch.compile failed: {type(err).__name__}: {str(err)[:200]})"
            print(f"  {self.name}: {self.mode}", flush=True)
            return
        self._pair, self.mode = fn, "compiled"

    def _gmm40_fab(self, x):
        s = self.std
        d = (x.unsqueeze(1) - self.means) / s  # (N, 40, 2)
        logits = -0.5 * (d * d).sum(-1)
        lp = torch.logsumexp(logits, -1) - math.log(40.0) - 2 * math.log(s) - _LOG_2PI
        r = torch.softmax(logits, -1).unsqueeze(-1)
        return lp, -(r * d).sum(1) / s

    def _funnel10(self, x):
        x0, rest = x[:, 0], x[:, 1:]
        k = x.shape[1] - 1
        e = torch.exp(-x0)
        sq = (rest * rest).sum(-1)
        lp = (
            -x0 * x0 / 18.0
            - 0.5 * _LOG_2PI
            - math.log(3.0)
            - 0.5 * sq * e
            - 0.5 * k * (x0 + _LOG_2PI)
        )
        g0 = -x0 / 9.0 + 0.5 * sq * e - 0.5 * k
        return lp, torch.cat([g0.unsqueeze(-1), -rest * e.unsqueeze(-1)], -1)

    def _manywell32(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        a2 = a * a
        lp = (-(a2 * a2) + 6.0 * a2 + 0.5 * a - 0.5 * b * b).sum(-1)
        ga = -4.0 * a2 * a + 12.0 * a + 0.5
        return lp, torch.stack([ga, -b], -1).reshape(x.shape)

    def _mw5(self, x):
        q = x * x - 4.0
        return -(q * q).sum(-1), -4.0 * x * q


def make_target(name: str, device: torch.device, variant: str, sizes=SIZES):
    """The peer target ``name`` on ``device``, wrapped with analytic gradients for the
    ``+grad`` variants (compiled for the particle counts ``sizes`` in ``+compile``)."""
    from smcdiff_targets import TARGETS

    target = TARGETS[name][0]()
    target = target.to(device) if hasattr(target, "to") else target
    if "grad" not in variant:
        return target
    wrapped = AnalyticTarget(name, target, device)
    if variant.endswith("+compile"):
        gen = torch.Generator(device=device).manual_seed(0)
        sigma0 = PEER[name][1]
        wrapped.compile([sigma0 * torch.randn(n, wrapped.dim, device=device, generator=gen)
                         for n in sizes])  # fmt: skip
    return wrapped


# ----------------------------------------------------------------- ours
def sample_kwargs(name: str, n: int, variant: str, device: torch.device) -> dict:
    """``smcdiff.sample`` options for the peer's settings (peer_blackjax_tempered.py)."""
    _, sigma0, moves = PEER[name]
    return dict(
        method="tempered", n_particles=n, device=device, reference_std=sigma0, kernel="hmc",
        n_moves=moves, step_size=0.2, adapt_gain=0.0, kernel_options={"n_leapfrog": 10},
        target_ess=0.5, resampling="systematic", ess_threshold=1.0, progress=False,
        fused=variant != "engine", compile=compile_option(variant),
    )  # fmt: skip


def compile_option(variant: str) -> bool | str:
    """``sample(compile=...)`` of a variant: ``"static"`` (one compilation per N),
    ``True`` (moves and temperature search compiled with a symbolic N) or ``False``."""
    if variant.endswith("compiled-moves-static"):
        return "static"
    return "compiled-moves" in variant


def time_ours(name: str, n: int, variant: str, target, device, repeats: int = 3) -> dict:
    """Median wall time of ``smcdiff.sample`` over ``repeats`` runs after one warm-up run, the
    log Z error of the last run and the warnings raised (a capture that fell back says so)."""
    kw = sample_kwargs(name, n, variant, device)
    walls, caught, log_zs = [], [], []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        smcdiff.sample(target, seed=0, **kw)
        sync(device)
        warmup = time.perf_counter() - t0
        for seed in range(1, repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            res = smcdiff.sample(target, seed=seed, **kw)
            sync(device)
            walls.append(time.perf_counter() - t0)
            log_zs.append(float(res.log_z))
        caught = sorted({str(m.message).splitlines()[0][:300] for m in w})
    log_z_true = float(getattr(target, "log_z", 0.0))
    return {
        "target": name, "n": n, "variant": variant, "wall_ms": 1e3 * statistics.median(walls),
        "wall_ms_all": [1e3 * t for t in walls], "log_z": float(res.log_z),
        "log_z_err": float(res.log_z) - log_z_true, "n_temps": n_lambdas(res),
        "n_steps": int(res.info["n_temperatures"]),
        "n_grad_evals": int(res.info["n_grad_evals"]), "warnings": caught,
        "grad_mode": getattr(target, "mode", "autograd"), "warmup_s": warmup,
        "compile": res.info.get("compile", "off"),
        "log_z_abs_err_mean": statistics.fmean(abs(v - log_z_true) for v in log_zs),
    }  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_BUILT: dict[tuple, object] = {}  # (target, device, variant) -> target: the profile reuses it


def run_ours(
    device: torch.device, variants, results: dict, out: Path, deadline: float,
    targets=tuple(PEER), sizes=SIZES,
) -> None:  # fmt: skip
    for name in targets:  # target-major: a run cut short keeps whole eager/compiled pairs
        for variant in variants:
            if time.perf_counter() > deadline:
                print(f"ours: out of time, skipping {variant} {name}", flush=True)
                continue
            try:
                target = make_target(name, device, variant, sizes)
                _BUILT[(name, str(device), variant)] = target  # its compiled moves are cached
                for n in sizes:
                    row = time_ours(name, n, variant, target, device)
                    results["ours"].append(row)
                    print(json.dumps(row), flush=True)
            except Exception as err:  # keep going: the table says which row failed
                results["ours"].append({"target": name, "variant": variant, "error": repr(err)})
                print(f"ours {variant} {name} FAILED: {err!r}", flush=True)
            write(results, out)


# ----------------------------------------------------------------- the peer
def run_peer(out: Path, timeout: float) -> dict:
    """The BlackJAX script in a subprocess (``OUT=out/peer``); its rows, or why there are none."""
    check = subprocess.run([sys.executable, "-c", "import jax, blackjax; print(jax.devices(), "
                            "blackjax.__version__)"], capture_output=True, text=True, timeout=120)  # fmt: skip
    if check.returncode != 0:
        msg = "import blackjax FAILED: " + (check.stderr.strip().splitlines() or ["?"])[-1][:500]
        print(msg, flush=True)
        return {"error": msg}
    print("peer:", check.stdout.strip(), flush=True)
    from importlib import resources

    means = resources.files("smcdiff_targets").joinpath("data/gmm40_fab_means.json")
    env = {**os.environ, "OUT": str(out / "peer"), "GMM40_MEANS": str(means),
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # fmt: skip
    try:
        proc = subprocess.run([sys.executable, str(PEER_SCRIPT)], env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        return {
            "error": f"peer script timed out after {timeout:.0f} s",
            "stdout": str(err.stdout)[-2000:],
        }
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    res = {"rows": rows, "versions": check.stdout.strip(), "returncode": proc.returncode}
    if proc.returncode != 0:
        res["error"] = "peer script failed: " + proc.stderr[-1500:]
    return res


# ----------------------------------------------------------------- gather, FK, profile
def bench_gather(device: torch.device, n: int = 10_000_000, d: int = 32, repeats: int = 20) -> dict:
    """Row gather of resampling: Triton kernel, index_select, and a device copy of the bytes."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=gen)
    idx = torch.sort(torch.randint(0, n, (n,), device=device, generator=gen)).values
    res: dict = {"n": n, "d": d, "triton_available": triton_available()}
    ref = x.index_select(0, idx)
    res["triton_equals_x_idx"] = bool(torch.equal(gather_rows(x, idx), ref))
    res["triton_equals_x_idx_int32"] = bool(torch.equal(gather_rows(x, idx.int()), ref))
    fns = {"triton": lambda: gather_rows(x, idx), "index_select": lambda: x.index_select(0, idx),
           "device_copy": lambda: x.clone()}  # fmt: skip
    moved = 2 * x.numel() * x.element_size()  # read + write of the rows
    for key, fn in fns.items():
        ms = 1e3 * median_time(fn, device, repeats)
        res[f"{key}_ms"], res[f"{key}_GBps"] = ms, moved / ms / 1e6
    res["triton_fraction_of_copy"] = res["device_copy_ms"] / res["triton_ms"]
    print("gather:", json.dumps(res), flush=True)
    return res


def median_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_fk(device: torch.device, sizes, deadline: float) -> dict:
    """FK-steering step times (bench_fk_step.fk_step_time, no path correction)."""
    from smcdiff_experiments.bench_fk_step import fk_step_point

    res = {}
    for n in sizes:
        if time.perf_counter() > deadline:
            res[f"N={n:.0e}"] = "skipped (time)"
            continue
        try:
            few = {"k1": 2, "k2": 5, "repeats": 1} if n > 10**7 else {}  # 1e8: ~1 s a step
            row = fk_step_point(n, device, False, n <= FK_GRAPHED_MAX, **few)
            res[f"N={n:.0e}"] = row.get("ms", row.get("error"))
            res[f"N={n:.0e} peak GB"] = row.get("peak_GB")
            if "graphed_ms" in row:  # the same steps replayed from CUDA graphs
                res[f"N={n:.0e} graphed"] = row["graphed_ms"]
        except Exception as err:
            res[f"N={n:.0e}"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
        print(f"FK step N={n:.0e}: {res[f'N={n:.0e}']}", flush=True)
    return res


def profile_one(
    device: torch.device, out: Path, variant: str = "fused", name: str = "manywell32",
    n: int = 10_000, results: dict | None = None,
) -> dict:  # fmt: skip
    """Profile one run of ``variant`` on ``name`` at ``n`` (after a warm-up run): its wall ms
    (under the profiler), GPU kernels, GPU-busy ms (`bench_fk_step.gpu_busy`) and the top CUDA kernels,
    appended to ``profile.txt`` (and the row to ``results["profile"]``)."""
    target = _BUILT.get((name, str(device), variant)) or make_target(name, device, variant, (n,))
    _BUILT[(name, str(device), variant)] = target
    kw = sample_kwargs(name, n, variant, device)
    smcdiff.sample(target, seed=0, **kw)
    sync(device)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        res = smcdiff.sample(target, seed=1, **kw)
        sync(device)
        wall = 1e3 * (time.perf_counter() - t0)
    from smcdiff_experiments.bench_fk_step import gpu_busy

    kernels, busy, span = gpu_busy(prof)
    row = {"target": name, "n": n, "variant": variant, "wall_ms_profiled": wall,
           "kernels": kernels, "gpu_busy_ms": busy, "gpu_span_ms": span,
           "n_steps": int(res.info["n_temperatures"]), "compile": res.info.get("compile")}  # fmt: skip
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    head = (f"{variant} run of {name}, N={n}: {kernels} GPU kernels and copies, GPU busy "
            f"{busy:.1f} ms of a {span:.1f} ms span (idle {span - busy:.1f} ms), wall "
            f"{wall:.1f} ms under the profiler, {row['n_steps']} steps")  # fmt: skip
    print(head, flush=True)
    with open(out / "profile.txt", "a") as f:
        f.write(f"{head}\n{table}\n\n")
    if results is not None:
        results.setdefault("profile", []).append(row)
        write(results, out)
    return row


def profile_all(device, out: Path, variants, targets, sizes, results: dict, deadline: float):
    """:func:`profile_one` for every variant x target x N, until ``deadline``."""
    (out / "profile.txt").write_text("")
    for variant in variants:
        for name in targets:
            for n in sizes:
                if time.perf_counter() > deadline:
                    print(f"profile: out of time, skipping {variant} {name} {n}", flush=True)
                    continue
                try:
                    profile_one(device, out, variant, name, n, results)
                except Exception as err:
                    print(f"profile {variant} {name} {n} FAILED: {err!r}", flush=True)


_NO_KERNEL = {"view", "reshape", "expand", "as_strided", "slice", "select", "unsqueeze",
              "squeeze", "t", "empty", "empty_strided", "_reshape_alias", "flatten", "detach",
              "alias", "lift_fresh", "_unsafe_view", "empty_like", "resolve_conj", "resolve_neg",
              "result_type", "unbind", "split", "chunk", "narrow", "permute", "transpose",
              "contiguous", "is_nonzero", "broadcast_tensors", "item", "_local_scalar_dense",
              "to", "_to_copy", "detach_", "expand_as", "view_as", "lift", "unflatten",
              "promote_types", "_has_compatible_shallow_copy_type"}  # fmt: skip


def count_step_ops(name: str, n: int = 2000) -> dict:
    """Leaf aten operations (a proxy for GPU kernels; views and allocations left out) of one
    eager fused step k >= 2 and of init + step 1 on the CPU, split into those inside what
    ``compile=True`` compiles (the tempered gradient at a step's start, each
    ``tempered_hmc_move``, ``tempered_reweight``) and those outside (launched one by one)."""
    import smcdiff.energy.tempered as tm
    import smcdiff.mcmc.base as mb
    from smcdiff.energy import tempered_fused as tf
    from smcdiff.energy.options import TemperedOptions

    label = "COMPILED_REGION"

    def labelled(fn):
        def inner(*a, **k):
            with torch.profiler.record_function(label):
                return fn(*a, **k)

        return inner

    saved = (tm.tempered_hmc_move, tm.tempered_reweight, mb.GradientKernel.init)
    tm.tempered_hmc_move, tm.tempered_reweight = labelled(saved[0]), labelled(saved[1])
    mb.GradientKernel.init = labelled(saved[2])
    try:
        _, sigma0, moves = PEER[name]
        target = make_target(name, torch.device("cpu"), "fused+grad")
        opts = TemperedOptions(kernel="hmc", n_moves=moves, step_size=0.2, adapt_gain=0.0,
                               kernel_options={"n_leapfrog": 10}, target_ess=0.5, compile=False)  # fmt: skip
        fk = tm.TemperedSMC(target, opts, reference_std=sigma0)
        smc = tf.SMC(
            fk, resampling="systematic", policy=smcdiff.resampling.policy_from_threshold(1.0)
        )
        gen = torch.Generator().manual_seed(0)
        _, _, s1, _, _ = tf.first_steps(smc, n, 1, gen)
        s2 = tf.flagged_step(smc, s1, gen)[0]
        res = {"target": name, "n_moves": moves}
        for part, fn in (("init+step1", lambda: tf.first_steps(smc, n, 1, gen)),
                         ("step", lambda: tf.flagged_step(smc, s2, gen))):  # fmt: skip
            acts = [torch.profiler.ProfilerActivity.CPU]
            with torch.profiler.profile(activities=acts) as prof:
                fn()
            inside = outside = 0
            for e in prof.events():
                if not _kernel_like(e):
                    continue
                if any(_kernel_like(c) for c in e.cpu_children):
                    continue  # not a leaf
                p = e.cpu_parent
                while p is not None and p.name != label:
                    p = p.cpu_parent
                inside, outside = (inside + 1, outside) if p is not None else (inside, outside + 1)
            res[f"{part} inside compiled"], res[f"{part} outside"] = inside, outside
        return res
    finally:
        tm.tempered_hmc_move, tm.tempered_reweight, mb.GradientKernel.init = saved


def _kernel_like(event) -> bool:
    return event.name.startswith("aten::") and event.name[6:] not in _NO_KERNEL


def n_lambdas(res) -> int:
    """Temperatures 0 < lambda_1 < ... < lambda_m = 1 of a run (the peer's count; our step
    count has one more: the last moves at 1)."""
    lam = res.trace["temperature"]
    lam = lam.reshape(lam.shape[0], -1)[:, 0]  # (K+1,) or (K+1, G): the first run
    return len(set(lam[lam > 0].tolist()))


# ----------------------------------------------------------------- report
def peer_row(results: dict, name: str, n: int) -> dict | None:
    for row in results.get("peer", {}).get("rows", []):
        if row["target"] == PEER[name][0] and row["n"] == n and row["inner"] == "hmc":
            return row
    return None


def table(results: dict) -> str:
    """docs/speed.md's tables from the results."""
    ours = [r for r in results["ours"] if "wall_ms" in r]
    best = {}
    for r in ours:
        key = (r["target"], r["n"])
        if r["variant"] != "engine" and (key not in best or r["wall_ms"] < best[key]["wall_ms"]):
            best[key] = r
    lines = [
        "| target | N | ours (variant) ms | BlackJAX ms | ratio | log Z err ours / peer | temperatures ours / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, n), r in sorted(best.items(), key=lambda kv: (list(PEER).index(kv[0][0]), kv[0][1])):
        p = peer_row(results, name, n)
        pw = f"{1e3 * p['wall_s']:.1f}" if p else "n/a"
        ratio = f"{r['wall_ms'] / (1e3 * p['wall_s']):.2f}x" if p else "n/a"
        perr = f"{p['log_z']:+.3f}" if p else "n/a"
        pt = p["n_temps"] if p else "n/a"
        lines.append(f"| {name} | {n:.0e} | {r['wall_ms']:.1f} ({r['variant']}) | {pw} | {ratio} | "
                     f"{r['log_z_err']:+.3f} / {perr} | {r['n_temps']} / {pt} |")  # fmt: skip
    lines += ["", "All variants, wall ms (median of 3 after a warm-up):", "",
              "| target | N | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]  # fmt: skip
    sizes = sorted({r["n"] for r in ours}) or list(SIZES)
    for name in PEER:
        for n in sizes:
            if not any((r["target"], r["n"]) == (name, n) for r in ours):
                continue
            cells = []
            for v in VARIANTS:
                r = next(
                    (r for r in ours if (r["target"], r["n"], r["variant"]) == (name, n, v)), None
                )
                cells.append(f"{r['wall_ms']:.1f}" if r else "-")
            lines.append(f"| {name} | {n:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + compile_table(ours)


def compile_table(ours: list[dict]) -> str:
    """Eager against compiled HMC moves (``sample(compile=True)``), same settings otherwise:
    wall ms, speed-up, mean |log Z error| over the timed runs, the warm-up (compilation)
    seconds and whether the moves really ran compiled; empty if no pair was run."""
    rows = {(r["target"], r["n"], r["variant"]): r for r in ours}
    lines = []
    for name, n, plain in sorted({k for k in rows}, key=lambda k: (list(PEER).index(k[0]), k[1])):
        for eager, comp in COMPILED_PAIRS:
            a, b = rows.get((name, n, eager)), rows.get((name, n, comp))
            if plain != eager or a is None or b is None:
                continue
            err_a, err_b = (r.get("log_z_abs_err_mean", abs(r["log_z_err"])) for r in (a, b))
            lines.append(
                f"| {name} | {n:.0e} | {eager} | {a['wall_ms']:.1f} | {b['wall_ms']:.1f} | "
                f"{a['wall_ms'] / b['wall_ms']:.2f}x | {err_a:.3f} / {err_b:.3f} | "
                f"{a['n_temps']} / {b['n_temps']} | {b.get('warmup_s', math.nan):.1f} | "
                f"{b.get('compile', '?')[:60]} |"
            )
    if not lines:
        return ""
    head = [
        "", "Compiled HMC moves (compile=True) against eager moves, wall ms (median of 3):", "",
        "| target | N | eager variant | eager ms | compiled ms | speed-up | mean abs log Z err "
        "eager / compiled | temperatures eager / compiled | compiled warm-up s | compile |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    return "\n".join(head + lines) + "\n"


def write(results: dict, out: Path) -> None:
    (out / "bench_blackjax.json").write_text(json.dumps(results, indent=1, default=str))
    text = table(results)
    g = results.get("gather")
    if isinstance(g, dict) and "triton_ms" in g:
        text += (f"\nGather N={g['n']:.0e}, d={g['d']} float32: Triton {g['triton_ms']:.2f} ms "
                 f"({g['triton_GBps']:.0f} GB/s), index_select {g['index_select_ms']:.2f} ms "
                 f"({g['index_select_GBps']:.0f} GB/s), device copy {g['device_copy_ms']:.2f} ms "
                 f"({g['device_copy_GBps']:.0f} GB/s).\n")  # fmt: skip
    if results.get("fk_step_ms"):
        text += (
            "\nFK step (8-component GMM score, d = 16), ms: "
            + ", ".join(
                f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}"
                for k, v in results["fk_step_ms"].items()
            )
            + "\n"
        )
    prof = results.get("profile") or []
    if prof:
        text += ("\nProfiled runs (profile.txt: the top kernels of each): GPU kernels and copies, "
                 "GPU-busy ms (merged intervals), span ms, wall ms under the profiler:\n\n"
                 "| target | N | variant | steps | kernels | GPU busy ms | GPU span ms | wall ms |\n"
                 "|---|---|---|---|---|---|---|---|\n")  # fmt: skip
        for r in prof:
            text += (f"| {r['target']} | {r['n']:.0e} | {r['variant']} | {r['n_steps']} | "
                     f"{r['kernels']} | {r['gpu_busy_ms']:.1f} | {r['gpu_span_ms']:.1f} | "
                     f"{r['wall_ms_profiled']:.1f} |\n")  # fmt: skip
    (out / "speed.md").write_text(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "results/bench_blackjax"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--fk-sizes", default="1e4,1e6,1e7,1e8")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts after this")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="N of our runs")
    p.add_argument("--targets", default=",".join(PEER), help="a subset of " + ",".join(PEER))
    p.add_argument("--skip-gather", action="store_true")
    p.add_argument("--profile-variant", default="fused",
                   help="the variants profiled (CUDA), comma-separated")  # fmt: skip
    p.add_argument("--profile-targets", default="",
                   help="the targets profiled at every N (default: those run)")  # fmt: skip
    p.add_argument("--reserve-s", type=float, default=None,
                   help="of the budget, kept for the FK steps and the profile "
                   "(default: min(90, budget / 3))")  # fmt: skip
    p.add_argument("--count-ops", action="store_true",
                   help="only print the eager aten ops per step on the CPU (count_step_ops)")  # fmt: skip
    args = p.parse_args(argv)
    if args.count_ops:
        rows = [count_step_ops(t) for t in args.targets.split(",") if t]
        for row in rows:
            print(json.dumps(row), flush=True)
        return {"count_ops": rows}
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    reserve = min(90.0, args.budget_s / 3) if args.reserve_s is None else args.reserve_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    results: dict = {"device": torch.cuda.get_device_name(device) if cuda else str(device),
                     "torch": torch.__version__, "ours": [], "peer": {}, "gather": {},
                     "fk_step_ms": {}}  # fmt: skip
    if cuda and not args.skip_gather:
        try:
            results["gather"] = bench_gather(device)
        except Exception as err:
            results["gather"] = {"error": repr(err)}
            print(f"gather FAILED: {err!r}", flush=True)
        write(results, out)
        torch.cuda.empty_cache()
    if not args.skip_peer:  # first: the comparison needs it
        results["peer"] = run_peer(out, 240.0)
        write(results, out)
    targets = [t for t in args.targets.split(",") if t]
    sizes = [int(float(v)) for v in args.sizes.split(",") if v]
    run_ours(device, args.variants.split(","), results, out, deadline - reserve, targets, sizes)
    fk_sizes = [int(float(v)) for v in args.fk_sizes.split(",") if v]
    results["fk_step_ms"] = bench_fk(device, fk_sizes, deadline - reserve / 6)
    write(results, out)
    if cuda:
        prof_targets = [t for t in args.profile_targets.split(",") if t] or targets
        profile_all(device, out, args.profile_variant.split(","), prof_targets, sizes, results,
                    deadline)  # fmt: skip
    results["total_s"] = time.perf_counter() - t0
    write(results, out)
    print(table(results), flush=True)
    return results


if __name__ == "__main__":
    main()
