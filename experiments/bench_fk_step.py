"""Benchmark (not a test): time one FK-steering step and resampling alone, on a GPU if present.

One FK step = exact 8-component GMM score (and log-density, for path correction) in d = 16, a
reward on Tweedie's x0, potentials and weights, ESS, systematic resampling and the gather of the
particle state. Its time is (T(K2 steps) - T(K1 steps)) / (K2 - K1), so set-up and the final
trace copy cancel. Per size and path-correction setting a row holds (ms per step):

* ``ms``: eager steps (``run_smc``); ``busy_ms`` / ``kernels``: the GPU-busy time (the union of
  the kernels' intervals, from the profiler) and the kernels per step;
* ``ex_score_ms`` (``ex_score_busy_ms``): the same step with the score replaced by a lookup
  (``TableScore``): the step *excluding the score*; ``score_ms``: the score alone;
* ``graphed_ms``, ``graphed_ex_score_ms`` (``--graphed-max``): the steps replayed from CUDA
  graphs (``smcdiff.diffusion_fk.graphed``), reported only when every step replayed; else
  ``graphed_error`` holds the capture's warning;
* ``peak_GB``: the peak device memory of the row; an out-of-memory error is recorded.

Resampling alone: systematic ancestors from float64 log-weights plus the gather of (N, d)
float32 particles, beside a naive float32 torch version and a device copy of the same bytes
(the memory-bandwidth floor).

    python -m smcdiff_experiments.bench_fk_step [--device cuda] [--out results/bench.json]
        [--sizes 1e4,1e6,1e7,1e8] [--graphed-max 1e7] [--budget-s 110] [--fk-only]

The JSON (``--out``) is rewritten after every FK row; ``--budget-s``: no new row past it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
import warnings

import torch

import smcdiff
from smcdiff.diffusion_fk import TiltTerm, build_diffusion_fk
from smcdiff.diffusion_fk import graphed as graphed_mod
from smcdiff.diffusion_fk.graphed import run_graphed
from smcdiff.distributions.gaussian_mixture_fused import KERNEL, fused_available
from smcdiff.engine import run_smc
from smcdiff.processes.grids import time_grid
from smcdiff.resampling import gather_rows, policy_from_threshold, systematic


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    """Median wall time in seconds of ``fn()`` (device-synchronised), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_problem(device, d: int = 16, k: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=gen)
    a = torch.randn(k, d, d, generator=gen) / d**0.5
    covs = a @ a.transpose(1, 2) + 0.5 * torch.eye(d)
    prior = smcdiff.GaussianMixture(torch.rand(k, generator=gen) + 0.5, means, covs).to(device)
    target = means[0].to(device)

    def reward(x):
        return -0.5 * ((x - target) ** 2).sum(-1)

    return smcdiff.exact_score(prior, smcdiff.VP()), reward


class TableScore:
    """``model`` with its score replaced by a lookup (for the step time *excluding the score*):
    ``score(x, t)`` returns one ``(n, d)`` table (the exact score of ``n`` draws of
    :math:`p_{0.5}`), ``score_and_log_density`` the table and the draws' log-density, whatever
    ``x`` and ``t``. The particles then move with wrong scores: a timing device, not a sampler."""

    scalar_time = True

    def __init__(self, model, n: int, device):
        self.process, self.dim, self.event_shape = model.process, model.dim, model.event_shape
        gen = torch.Generator(device=device).manual_seed(1)
        x = model.sample_marginal(n, 0.5, gen)
        self.table, self.logp = model.score_and_log_density(x, 0.5)

    def score(self, x, t):
        return self.table

    def log_density(self, x, t):
        return self.logp

    def score_and_log_density(self, x, t):
        return self.table, self.logp


def _runner(n: int, device, path_correction: bool, graphed: bool, score: str, seen: dict):
    """``run(k)`` -> a function running k FK steps (a model built once per k; with ``graphed``
    its steps replay from graphs under their own key, recorded in ``seen["keys"]``)."""
    model, reward = make_problem(device)
    if score == "table":
        model = TableScore(model, n, device)
    sampler = "ancestral_upper" if path_correction else "ancestral"

    def run(k):
        times = time_grid(model.process, k, "log_snr").tolist()
        fk = build_diffusion_fk(model, times, tilt=(TiltTerm("reward", reward),),
                                path_correction=path_correction, sampler=sampler,
                                tilt_schedule="snr", device=device)  # fmt: skip
        policy, key = policy_from_threshold(0.5), ("bench_fk_step", id(fk), n)
        seen.setdefault("models", []).append(fk)  # alive while its graphs are cached
        if graphed:
            seen.setdefault("keys", []).append((key, fk.n_steps))
            return lambda: run_graphed(fk, n, policy=policy, progress=False,
                                       generator=torch.Generator(device=device).manual_seed(0),
                                       graph_key=key)  # fmt: skip
        return lambda: run_smc(fk, n, policy=policy, progress=False,
                               generator=torch.Generator(device=device).manual_seed(0))  # fmt: skip

    return run


def gpu_busy(prof) -> tuple[int, float, float]:
    """``(kernels, busy ms, span ms)`` of a profile: the number of GPU activities (kernels and
    copies), the time the GPU ran any of them (their intervals merged) and first start to last
    end. ``span - busy``: time the GPU sat idle (waiting for the host)."""
    iv = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA)  # fmt: skip
    total, cur = 0.0, None
    for a, b in iv:
        if cur is None or a > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    total += 0.0 if cur is None else cur[1] - cur[0]
    span = iv[-1][1] - iv[0][0] if iv else 0.0
    return len(iv), total / 1e3, span / 1e3


def _profiled(fn) -> tuple[int, float]:
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        torch.cuda.synchronize()
    return gpu_busy(prof)[:2]


def fk_step_time(
    n: int, device, path_correction: bool, k1=10, k2=30, repeats=3, graphed: bool = False,
    score: str = "exact", details: dict | None = None,
) -> float:  # fmt: skip
    """Seconds per FK step of the engine with steer()'s defaults (log-SNR grid, snr tilt,
    ancestral_upper under path correction, resampling at ESS < N/2): the difference of runs of
    k2 and k1 steps, so set-up and the front door's end-of-run diagnostics do not count.
    ``graphed``: the steps replayed from CUDA graphs (:mod:`smcdiff.diffusion_fk.graphed`,
    captured in the warm-up run; eager on the CPU). ``score="table"``: the exact score replaced
    by a lookup (:class:`TableScore`). ``details`` (a dict) receives ``replayed`` (every step
    of both runs came from a graph), ``capture_warning`` (the capture's warning, if any) and,
    on CUDA and eager, ``busy_ms`` / ``kernels`` per step (profiled runs, same difference of k2
    and k1; a graph replays the same kernels)."""
    seen: dict = {}
    run = _runner(n, device, path_correction, graphed, score, seen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", graphed_mod.GraphCaptureWarning)
        f1, f2 = run(k1), run(k2)
        t1, t2 = _timed(f1, device, repeats), _timed(f2, device, repeats)
        if details is not None and device.type == "cuda" and not graphed:  # same GPU work
            (c1, b1), (c2, b2) = _profiled(f1), _profiled(f2)
            details["busy_ms"] = (b2 - b1) / (k2 - k1)
            details["kernels"] = (c2 - c1) / (k2 - k1)
    if details is not None:
        details["warnings"] = sorted({str(w.message)[:300] for w in caught})[:4]
        capture = [str(w.message) for w in caught if w.category is graphed_mod.GraphCaptureWarning]
        details["capture_warning"] = capture[0][:400] if capture else None
        keys = seen.get("keys", [])
        details["replayed"] = (
            bool(keys)
            and not capture
            and all(graphed_mod.cached_steps(key) == k for key, k in keys)
        )
    for key, _ in seen.get("keys", []):
        graphed_mod.release(key)
    return (t2 - t1) / (k2 - k1)


def fk_step_point(
    n: int, device, path_correction: bool = False, graphed: bool = False, **steps
) -> dict:
    """:func:`fk_step_time` in ms (``steps``: its ``k1``, ``k2``, ``repeats``) with the peak
    device memory (GB) of the measurement, the GPU-busy ms and kernels per step (CUDA), the
    same step with the score replaced by a lookup (``ex_score_ms``, ``ex_score_busy_ms``), and
    with ``graphed`` the steps replayed from CUDA graphs: ``graphed_ms`` (and
    ``graphed_ex_score_ms``) only when every step replayed, else ``graphed_error`` with the
    capture's warning. An out-of-memory error is recorded, not raised."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row: dict = {}
    try:
        for score, suffix in (("exact", ""), ("table", "ex_score_")):
            for g in (False, True) if graphed else (False,):
                info: dict = {}
                ms = 1e3 * fk_step_time(n, device, path_correction, graphed=g, score=score,
                                        details=info, **steps)  # fmt: skip
                name = ("graphed_" if g else "") + suffix
                if g and not info["replayed"]:
                    row[name + "error"] = info["capture_warning"] or "steps did not replay"
                    continue
                row[name + "ms"] = ms
                if info["warnings"]:
                    row[name + "warnings"] = info["warnings"]
                for extra in ("busy_ms", "kernels"):
                    if extra in info:
                        row[name + extra] = info[extra]
    except torch.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0][:200]}"
    if cuda:
        row["score_path"] = "fused Triton kernel" if fused_available() else "eager (row chunks)"
        row["peak_GB"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.empty_cache()
    return row


def score_ms(n: int, device, path_correction: bool, repeats: int = 10) -> float:
    """The exact mixture score (with the log-density under path correction) alone at N = n,
    t = 0.5, ms (a marginal precomputed, as in a step)."""
    model, _ = make_problem(device)
    model.precompute([0.5])
    x = model.sample_marginal(n, 0.5, torch.Generator(device=device).manual_seed(0))
    fn = model.score_and_log_density if path_correction else model.score
    return 1e3 * _timed(lambda: fn(x, 0.5), device, repeats)


def score_variant_ms(n: int, device, path_correction: bool) -> dict[str, float]:
    """``score_ms`` of each fused kernel variant (``score_<variant>_<precision or tile>_<block>_
    <warps>w_ms``), on CUDA with Triton only; the module's default restored after."""
    if device.type != "cuda" or not fused_available():
        return {}
    saved, out = dict(KERNEL), {}
    configs = [("dot", "tf32x3", 64, 2), ("dot", "tf32x3", 128, 4), ("dot", "ieee", 256, 2),
               ("precision", 2048, 0, 4), ("precision", 4096, 0, 4)]  # fmt: skip
    try:
        for variant, how, block, warps in configs:
            KERNEL.update(variant=variant, block=block, warps=warps)
            KERNEL.update({"dot_precision" if variant == "dot" else "tile": how})
            ms = score_ms(n, device, path_correction, 3)
            ok = fused_available()  # a variant whose launch failed timed the eager path
            name = f"score_{variant}_{how}_{block}_{warps}w_ms"
            out[name] = ms if ok else "failed: eager path"
    finally:
        KERNEL.update(saved)
    return out


def resampling_times(n: int, d: int, device, repeats=20) -> dict[str, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=gen)
    log_w = torch.randn(n, device=device, dtype=torch.float64, generator=gen)
    lw32 = log_w.float()

    def ours():
        return x[systematic(log_w, generator=gen)]

    def naive():
        w = torch.softmax(lw32, 0)
        c = torch.cumsum(w, 0)
        u = (torch.rand((), device=device, generator=gen) + torch.arange(n, device=device)) / n
        return x[torch.searchsorted(c, u).clamp_max(n - 1)]

    from smcdiff.resampling.schemes import normalized_cdf
    from smcdiff.weights import normalize

    return {
        "stage_softmax_f64": _timed(lambda: normalize(log_w), device, repeats),
        "stage_cdf_f64": _timed(lambda: normalized_cdf(normalize(log_w)), device, repeats),
        "stage_ancestors": _timed(lambda: systematic(log_w, generator=gen), device, repeats),
        "stage_gather": _timed(lambda: x[torch.arange(n, device=device)], device, repeats),
        "ours_systematic_gather": _timed(ours, device, repeats),
        "naive_float32": _timed(naive, device, repeats),
        "device_copy_same_bytes": _timed(lambda: x.clone(), device, repeats),
    }


def gather_variants(n: int, d: int, device, repeats=20) -> dict[str, float]:
    """Ways to gather rows ``x[idx]`` of an ``(n, d)`` float32 tensor with sorted indices."""
    x = torch.randn(n, d, device=device)
    idx = torch.sort(torch.randint(0, n, (n,), device=device)).values
    wide = x.view(torch.float64) if d % 2 == 0 else x
    return {
        "gather_rows": _timed(lambda: gather_rows(x, idx), device, repeats),
        "index_select": _timed(lambda: x.index_select(0, idx), device, repeats),
        "gather_expand": _timed(lambda: x.gather(0, idx[:, None].expand(n, d)), device, repeats),
        "embedding": _timed(lambda: torch.nn.functional.embedding(idx, x), device, repeats),
        "index_select_f64_view": _timed(lambda: wide.index_select(0, idx), device, repeats),
        "index_select_int32_idx": _timed(lambda: x.index_select(0, idx.int()), device, repeats),
    }


def syncs_inside_steps(device) -> int:
    """Host-device syncs during the steps of one run (finiteness checks off until the end)."""
    if device.type != "cuda":
        return 0
    model, reward = make_problem(device)
    times = smcdiff.time_grid(model.process, 20, "log_snr").tolist()
    fk = build_diffusion_fk(
        model, times, tilt=[TiltTerm("reward", reward)], path_correction=True, device=device
    )
    gen = torch.Generator(device=device).manual_seed(0)
    steps_done = []

    def tick(k, info=None):
        steps_done.append(k)
        if k == 1:
            torch.cuda.set_sync_debug_mode("warn")  # count from step 2 on (step 1 warms up)
        if k == len(times) - 2:
            torch.cuda.set_sync_debug_mode("default")  # the final check and trace copy sync

    stacks: list[str] = []

    def record(message, *args, **kwargs):
        stack = traceback.format_stack(limit=8)
        if "synchroniz" in str(message) and not any("set_sync_debug_mode" in f for f in stack):
            stacks.append("".join(stack[:-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        run_smc(
            fk,
            4096,
            policy=policy_from_threshold(0.5),
            generator=gen,
            check_every=10**9,
            progress=tick,
        )
    torch.cuda.set_sync_debug_mode("default")
    for st in stacks:
        print("sync inside a step at:\n" + st)
    return len(stacks)


def _save(res: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=2)


def fk_rows(res: dict, sizes, device, args, deadline: float) -> None:
    """The FK-step rows into ``res`` (saved after each), skipped past the deadline."""
    for n in sizes:
        for pc in (False, True):
            key = f"N={n:.0e} path_correction={pc}"
            if time.perf_counter() > deadline:
                res["fk_step"][key] = {"error": "skipped (time budget)"}
                print(f"FK step  {key}  skipped (time budget)", flush=True)
                continue
            few = {"k1": 2, "k2": 5, "repeats": 1} if n > 10**7 else {"repeats": 2}
            few = {"k1": 4, "k2": 12, "repeats": 1} if 10**6 < n <= 10**7 else few
            row = fk_step_point(n, device, pc, n <= args.graphed_max, **few)
            if "error" not in row:
                row["score_ms"] = score_ms(n, device, pc, repeats=3 if n > 10**6 else 10)
                row.update(score_variant_ms(n, device, pc))
            res["fk_step"][key] = row
            res["fk_step_ms"][key] = row.get("ms", row.get("error"))
            if "graphed_ms" in row:
                res["fk_step_ms"][key + " graphed"] = row["graphed_ms"]
            res["fk_step_peak_GB"][key] = row.get("peak_GB")
            print(f"FK step  N={n:>11,}  path_correction={pc!s:<5}  {row}", flush=True)
            _save(res, args.out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="1e4,1e6,1e7")
    p.add_argument("--out", default=None)
    p.add_argument("--profile", action="store_true", help="top kernels of 5 FK steps at max N")
    p.add_argument("--graphed-max", type=float, default=1e7,
                   help="also time CUDA-graphed steps up to this N (0: never)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="no new FK row, nor the parts after them, past this many seconds")  # fmt: skip
    p.add_argument("--fk-only", action="store_true", help="FK-step rows only")
    args = p.parse_args(argv)
    deadline = time.perf_counter() + args.budget_s
    device = torch.device(args.device)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res: dict = {"device": name, "torch": torch.__version__, "fk_step": {}, "fk_step_ms": {},
                 "resampling_ms": {}, "fk_step_peak_GB": {}}  # fmt: skip
    fk_rows(res, sizes, device, args, deadline)
    if args.fk_only or time.perf_counter() > deadline:
        return res
    sizes = [n for n in sizes if n <= 10**7] or [10**7]  # resampling, gathers: up to 1e7
    n_res = max(sizes)
    for name_, s in resampling_times(n_res, 32, device).items():
        res["resampling_ms"][name_] = 1e3 * s
        print(f"resample N={n_res:,} d=32  {name_:<24} {1e3 * s:8.3f} ms", flush=True)
    if args.profile and device.type == "cuda":
        model, reward = make_problem(device)
        kw = dict(reward=reward, n_particles=max(sizes), n_steps=5, seed=0, device=device)
        smcdiff.steer(model, **kw)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            smcdiff.steer(model, **kw)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    for name_, s in gather_variants(max(sizes), 16, device).items():
        res["resampling_ms"][f"gather_d16_{name_}"] = 1e3 * s
        print(f"gather   N={max(sizes):,} d=16  {name_:<24} {1e3 * s:8.3f} ms", flush=True)
    res["syncs_inside_steps"] = syncs_inside_steps(device)
    print(f"host-device syncs inside 17 FK steps (cuda only): {res['syncs_inside_steps']}")
    _save(res, args.out)
    return res


if __name__ == "__main__":
    main()
