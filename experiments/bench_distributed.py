"""Benchmark (not a test): strong and weak scaling of one distributed FK-steering run, the
bytes each rank sends per step, and a model of the step time on 8 and 64 GPUs.

The workload is ``bench_fk_step``'s: FK steering of an exact 8-component GMM prior in d = 16 with
a reward on Tweedie's x0, run by ``steer(..., distributed=True)`` with resampling at *every* step
(``ess_threshold=1``, the most communication). The step time is the median gap between consecutive
steps inside a run (CUDA events on the GPU, no added sync), on rank 0 (the ranks wait for each
other at every step), beside the same ``steer`` call's step in one process on the same device
(rank 0); ``call_ms_per_step`` = (T(k2 steps) - T(k1 steps)) / (k2 - k1) of whole calls also
counts per-call costs that grow with the steps (the end-of-run diagnostics).

CPU, here (forks gloo groups of 1, 2 and 4 processes)::

    python -m smcdiff_experiments.bench_distributed --out results/distributed

GPU, one process per GPU (NCCL; world size 1 on one GPU measures the single-GPU step the scaling
model starts from)::

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=1 -m smcdiff_experiments.bench_distributed \\
        --backend nccl --sizes 1e4,1e6,1e7 --out $OUT

Each prints a markdown table and the modelled 8- and 64-GPU steps (docs/distributed.md; with
NCCL from the step times measured here, the bytes per particle from ``--bytes-from``), and
writes ``bench_distributed_<backend>.json`` and ``.md``; ``--model FILE`` prints the model from
such a JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from smcdiff_experiments.bench_fk_step import make_problem

import smcdiff

ASSUMED = {  # used by the model unless measured; docs/distributed.md states them as assumptions
    "nvlink_GBps": 450.0,  # H200 NVLink, per direction per GPU
    "ib_GBps": 50.0,  # inter-node InfiniBand per GPU (400 Gb/s)
    "latency_nvlink_us": 15.0,  # one small NCCL collective inside a node
    "latency_ib_us": 40.0,  # one small NCCL collective across nodes
}
H200_STEP_MS = {1e4: 2.1, 1e6: 5.2, 1e7: 46.4}  # measured FK step, one H200 (docs/results.md)


class StepClock:
    """``progress(k, info)`` hook that stamps every step: a CUDA event on the current stream
    (no host sync, so the timed path keeps its own syncs) or ``perf_counter`` on the CPU.
    ``median_ms()``: the median gap between consecutive steps' stamps, the step time without
    any per-call cost (set-up, the final gather, diagnostics)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stamps: list = []

    def __call__(self, k: int, info=None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            self.stamps.append(time.perf_counter())

    def median_ms(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            gaps = [a.elapsed_time(b) for a, b in itertools.pairwise(self.stamps)]
        else:
            gaps = [1e3 * (b - a) for a, b in itertools.pairwise(self.stamps)]
        return statistics.median(gaps) if gaps else float("nan")


def timed_steps(
    run, device: torch.device, k1: int, k2: int, repeats: int, barrier: bool = True
) -> dict:
    """``run(k, progress)`` timed two ways: ``step_ms``, the median gap between consecutive
    steps inside the k2-step calls (:class:`StepClock`): the step itself; ``call_ms_per_step``
    = (T(k2) - T(k1)) / (k2 - k1) (medians of ``repeats`` whole calls): the step plus every
    per-call cost that grows with the number of steps — ``steer``'s end-of-run
    ``diagnose()`` fits PSIS on the host at each step whose ESS is below 0.15 N, which costs
    O(N log N) per such step (about 1 s at N = 1e7) and made this number 17x the step."""

    def timed(k: int, clock=False):
        if barrier:  # every rank starts the timed call together
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = run(k, clock)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, res

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degeneracy warnings of a benchmark workload
        run(k1, False)  # warm-up
        t1 = statistics.median(timed(k1)[0] for _ in range(repeats))
        clocks = [StepClock(device) for _ in range(repeats)]
        runs = [timed(k2, clock) for clock in clocks]
    t2 = statistics.median(t for t, _ in runs)
    return {"step_ms": statistics.median(c.median_ms() for c in clocks),
            "call_ms_per_step": 1e3 * (t2 - t1) / (k2 - k1),
            "result": runs[-1][1]}  # fmt: skip


def step_point(n_total: int, device: torch.device, k1: int, k2: int, repeats: int) -> dict:
    """Milliseconds per distributed FK step, the same call's one-process step on the same
    device (``one_process_*``; rank 0 alone runs it, the other ranks wait), and the bytes
    this rank sent per step."""
    model, reward = make_problem(device)

    def steer(distributed: bool):
        def run(k: int, progress):
            return smcdiff.steer(model, method="fk", reward=reward, n_particles=n_total,
                                 n_steps=k, ess_threshold=1.0, seed=0, device=device,
                                 distributed=distributed, progress=progress)  # fmt: skip

        return run

    got = timed_steps(steer(True), device, k1, k2, repeats)
    sent = got.pop("result").trace["comm_bytes"][1:].double()  # steps 1..k2
    one = {"step_ms": float("nan"), "call_ms_per_step": float("nan")}
    if dist.get_rank() == 0:  # the same problem in one process, on the same device
        one = timed_steps(steer(False), device, k1, k2, repeats, barrier=False)
    dist.barrier()
    per_rank = torch.tensor([float(sent.mean()), float(sent.max())], dtype=torch.float64,
                            device=device)  # NCCL gathers device tensors  # fmt: skip
    table = [torch.zeros_like(per_rank) for _ in range(dist.get_world_size())]
    dist.all_gather(table, per_rank)
    table = torch.stack([t.cpu() for t in table])
    return {
        "n_total": n_total,
        "world_size": dist.get_world_size(),
        **got,
        "one_process_step_ms": one["step_ms"],
        "one_process_call_ms_per_step": one["call_ms_per_step"],
        "bytes_per_step_mean": float(table[:, 0].mean()),
        "bytes_per_step_max_rank": float(table[:, 0].max()),
        "bytes_one_step_max": float(table[:, 1].max()),
    }


def profile_paths(n_total: int, device: torch.device, k: int, out: str | None) -> None:
    """Rank 0: the top operators (self device time on CUDA, self CPU time otherwise) of one
    ``k``-step call of each path, distributed and one-process, printed (and written to
    ``out/profile_<path>.txt``) — where the distributed step's extra time goes."""
    from torch.profiler import ProfilerActivity, profile

    model, reward = make_problem(device)
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    for distributed in (True, False):
        if dist.get_rank() != 0 and not distributed:
            continue

        def run(distributed=distributed):
            return smcdiff.steer(model, method="fk", reward=reward, n_particles=n_total,
                                 n_steps=k, ess_threshold=1.0, seed=0, device=device,
                                 distributed=distributed, progress=False)  # fmt: skip

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()  # warm-up
            with profile(activities=acts) as prof:
                run()
                if cuda:
                    torch.cuda.synchronize(device)
        if dist.get_rank() != 0:
            continue
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=25)
        name = "distributed" if distributed else "one_process"
        print(f"profile, {name}, N={n_total}, {k} steps:\n{table}", flush=True)
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, f"profile_{name}.txt"), "w") as f:
                f.write(table + "\n")
    dist.barrier()


def _worker(rank, world, port, out, points, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    rows = [step_point(n, torch.device("cpu"), args.k1, args.k2, args.repeats) for n in points]
    if rank == 0:
        with open(os.path.join(out, "rows.json"), "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def cpu_scaling(args) -> list[dict]:
    """Strong (N fixed) and weak (N / R fixed) scaling over forked gloo groups."""
    rows = []
    for world in args.worlds:
        points = {"strong": args.strong_n, "weak": args.weak_n * world}
        with tempfile.TemporaryDirectory() as out, socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            mp.start_processes(_worker, args=(world, port, out, list(points.values()), args),
                               nprocs=world, start_method="fork")  # fmt: skip
            with open(os.path.join(out, "rows.json")) as f:
                got = json.load(f)
        for kind, row in zip(points, got, strict=True):
            rows.append({"scaling": kind, **row})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def torchrun_points(args) -> list[dict]:
    """Under torchrun: every rank measures the sizes; rank 0 keeps the rows."""
    backend = args.backend
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
    device = device or torch.device("cpu")
    rows = [
        {"scaling": "size", **step_point(int(float(n)), device, args.k1, args.k2, args.repeats)}
        for n in args.sizes.split(",")
    ]
    if backend == "nccl":
        rows = [{**r, "gpu": torch.cuda.get_device_name(device)} for r in rows]
    if args.profile:
        profile_paths(max(r["n_total"] for r in rows), device, args.profile, args.out)
    rank = dist.get_rank()
    dist.destroy_process_group()
    return rows if rank == 0 else []


def row_bytes() -> int:
    """Bytes one particle of the workload's FK state takes in the redistribution (its state
    entries plus the copy count and global index)."""
    from smcdiff.distributed.comm import RowLayout
    from smcdiff.steering.registry import CommonConfig, get_method

    device = torch.device("cpu")
    model, reward = make_problem(device)
    spec = get_method("fk")
    common = CommonConfig(model=model, reward=reward, n_particles=4, n_steps=2, device=device)
    plan = spec.builder(common, spec.make_config({}))
    state = plan.model.init(4, torch.Generator(device=device).manual_seed(0)).state
    return RowLayout(state).width + 16


def modelled(rows: list[dict], step_ms: dict[float, float], row: int) -> list[dict]:
    r"""Weak scaling to R GPUs, n particles each: :math:`T_R = t_1(n) + 4L_R + B_R/\beta_R`.

    ``t_1``: the single-GPU step (``step_ms``); 4 small collectives per resampling step
    (normalisation, rank sums, counts, rows) of latency :math:`L_R`; :math:`B_R` the busiest
    rank's bytes: *typical* = the measured bytes per local particle per step (largest over the
    CPU runs) times n, *worst* = every local particle sent once, :math:`n \cdot` ``row``
    (all weight on one rank); :math:`\beta_R`: NVLink within a node (R <= 8), InfiniBand
    across nodes."""
    per_particle = max(r["bytes_per_step_max_rank"] * r["world_size"] / r["n_total"]
                       for r in rows if r["world_size"] > 1)  # fmt: skip
    out = []
    for n, t1 in sorted(step_ms.items()):
        for R in (8, 64):
            inter = R > 8
            bw = 1e9 * ASSUMED["ib_GBps" if inter else "nvlink_GBps"]
            lat = 1e-6 * ASSUMED["latency_ib_us" if inter else "latency_nvlink_us"]
            typical = 1e3 * (4 * lat + per_particle * n / bw)
            worst = 1e3 * (4 * lat + row * n / bw)
            out.append({
                "gpus": R, "n_per_gpu": n, "N": n * R, "t1_ms": t1,
                "typical_ms": t1 + typical, "worst_ms": t1 + worst,
                "efficiency_typical": t1 / (t1 + typical), "efficiency_worst": t1 / (t1 + worst),
                "bytes_per_particle_typical": per_particle, "row_bytes": row,
            })  # fmt: skip
    return out


def markdown(rows: list[dict], model: list[dict]) -> str:
    """The measured rows (the step of the distributed run and of the same call in one process,
    their ratio, and both per step of whole calls) and the modelled GPUs."""
    lines = ["| scaling | ranks | N | step (ms) | one process (ms) | ratio | per step of a call: "
             "distributed, one process (ms) | bytes/step (mean rank) | bytes/step (busiest) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    nan = float("nan")
    for r in rows:
        one = r.get("one_process_step_ms", nan)
        lines.append(f"| {r['scaling']} | {r['world_size']} | {r['n_total']} | "
                     f"{r['step_ms']:.2f} | {one:.2f} | {r['step_ms'] / one:.2f} | "
                     f"{r.get('call_ms_per_step', nan):.2f}, "
                     f"{r.get('one_process_call_ms_per_step', nan):.2f} | "
                     f"{r['bytes_per_step_mean']:.0f} | "
                     f"{r['bytes_per_step_max_rank']:.0f} |")  # fmt: skip
    if model:
        lines += ["", "| GPUs | n per GPU | N | t1 (ms) | modelled step, typical (eff.) | "
                  "worst (eff.) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for m in model:
            lines.append(f"| {m['gpus']} | {m['n_per_gpu']:.0e} | {m['N']:.1e} | "
                         f"{m['t1_ms']:.1f} | {m['typical_ms']:.2f} ({m['efficiency_typical']:.0%})"
                         f" | {m['worst_ms']:.2f} ({m['efficiency_worst']:.0%}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    p.add_argument("--worlds", default="1,2,4", help="CPU: process counts")
    p.add_argument("--strong-n", type=int, default=16384, help="CPU strong scaling: N")
    p.add_argument("--weak-n", type=int, default=4096, help="CPU weak scaling: N per rank")
    p.add_argument("--sizes", default="1e4,1e5", help="torchrun: global N to time")
    p.add_argument("--k1", type=int, default=5)
    p.add_argument("--k2", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", type=int, default=0,
                   help="torchrun: profile this many steps of both paths at the largest N")  # fmt: skip
    p.add_argument("--out", default=None, help="directory for the JSON and markdown")
    p.add_argument("--model", default=None, help="a CPU JSON: print the GPU model from it")
    p.add_argument("--bytes-from", default="docs/data/bench_distributed_cpu.json",
                   help="multi-rank rows whose bytes per particle the model uses when this run "
                   "has one rank")  # fmt: skip
    args = p.parse_args()
    args.worlds = [int(w) for w in args.worlds.split(",")]
    if args.model:
        with open(args.model) as f:
            rows = json.load(f)["rows"]
    elif "RANK" in os.environ:  # under torchrun
        rows = torchrun_points(args)
        if not rows:
            return
    else:
        rows = cpu_scaling(args)
    row = row_bytes()
    step_ms = H200_STEP_MS  # measured on an H200 (docs/results.md) unless measured here on a GPU
    if args.backend == "nccl":
        step_ms = {r["n_total"]: r["step_ms"] for r in rows}
    ref = rows  # the bytes per particle the model scales: from multi-rank rows
    if not any(r["world_size"] > 1 for r in rows) and os.path.exists(args.bytes_from):
        with open(args.bytes_from) as f:
            ref = json.load(f)["rows"]
    model = modelled(ref, step_ms, row) if any(r["world_size"] > 1 for r in ref) else []
    text = markdown(rows, model)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = f"bench_distributed_{args.backend}"
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump({"rows": rows, "model": model, "assumed": ASSUMED,
                       "h200_step_ms": H200_STEP_MS, "row_bytes": row}, f, indent=1)  # fmt: skip
        with open(os.path.join(args.out, name + ".md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
