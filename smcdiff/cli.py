"""Command line: ``smcdiff run [EXPERIMENT]`` and ``smcdiff list``."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

DESCRIPTION = (
    "Run the experiments that reproduce smcdiff's tables and figures. "
    "'smcdiff list' names them; 'smcdiff run --help' shows the options."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``smcdiff`` argument parser (plain-text help, every default shown)."""
    from smcdiff_experiments import DEFAULT, EXPERIMENTS

    parser = argparse.ArgumentParser(prog="smcdiff", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_p = sub.add_parser(
        "run",
        help=f"run an experiment (default: {DEFAULT})",
        description="Run an experiment: print its table and write its results (JSON, "
        "tables, figures) into the output folder. One run over several processes or GPUs "
        "(steer/sample with distributed=True) is launched by torchrun, one process per GPU: "
        "'NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=8 your_script.py'; its benchmark: "
        "'torchrun --nproc_per_node=1 -m smcdiff_experiments.bench_distributed --backend nccl' "
        "(docs/distributed.md).",
    )
    run_p.add_argument(
        "experiment",
        nargs="?",
        default=DEFAULT,
        choices=sorted(EXPERIMENTS),
        help="which experiment (default: %(default)s)",
    )
    run_p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    run_p.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)"
    )
    run_p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    run_p.add_argument(
        "--n-particles", type=int, default=None, help="particles per run (experiments that take it)"
    )
    run_p.add_argument(
        "--time-budget", dest="time_budget_s", type=float, default=None, metavar="SECONDS",
        help="seconds: skip runs that would not fit, listed as skipped (experiments that take it)",
    )  # fmt: skip
    run_p.add_argument(
        "--profile",
        default=None,
        help="size profile, e.g. quick, cpu, cuda (experiments that take it)",
    )
    run_p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile the learned networks (optional mode; experiments that take it)",
    )
    run_p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="hide the progress output (default: shown when stderr is a terminal)",
    )
    sub.add_parser("list", help="list the experiments", description="List the experiments.")
    return parser


def resolve_progress(progress: bool | None) -> bool:
    """``None`` (auto): progress output only when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return progress


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smcdiff`` command; returns the exit status."""
    from smcdiff_experiments import EXPERIMENTS

    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, mod in sorted(EXPERIMENTS.items()):
            print(f"{name:<12} {importlib.import_module(mod).DESCRIPTION}")
        return 0
    mod = importlib.import_module(EXPERIMENTS[args.experiment])
    t0, started = time.perf_counter(), time.time()
    progress = resolve_progress(args.progress)
    given = (("n_particles", args.n_particles), ("compile", args.compile),
             ("time_budget_s", args.time_budget_s), ("profile", args.profile))  # fmt: skip
    extra = {k: v for k, v in given if v is not None}
    takes = inspect.signature(mod.run).parameters
    refused = [k for k in extra if k not in takes]
    if refused:
        flags = ", ".join("--" + k.replace("_", "-").removesuffix("-s") for k in refused)
        build_parser().error(f"experiment {args.experiment} does not take {flags}")
    rows = mod.run(args.out, device=args.device, quick=args.quick, progress=progress, **extra)
    print(mod.format_table(rows))
    written = ", ".join(written_since(args.out, started)) or "nothing"
    print(f"\nwrote {written} into {args.out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def written_since(folder: str | Path, since: float) -> list[str]:
    """Entries of ``folder`` (files, or folders holding a file) modified at or after ``since``."""
    since -= 1.0  # coarse file-system timestamps

    def fresh(p: Path) -> bool:
        if p.is_dir():
            return any(f.is_file() and f.stat().st_mtime >= since for f in p.rglob("*"))
        return p.stat().st_mtime >= since

    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if fresh(p))


if __name__ == "__main__":
    sys.exit(main())
