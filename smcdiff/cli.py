"""Command line: ``smcdiff run [EXPERIMENT]``, ``smcdiff list``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from smcdiff_experiments import DEFAULT, EXPERIMENTS

    parser = argparse.ArgumentParser(prog="smcdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run an experiment (default: %(default)s)")
    run_p.add_argument("experiment", nargs="?", default=DEFAULT, choices=sorted(EXPERIMENTS))
    run_p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    run_p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    run_p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    run_p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sub.add_parser("list", help="list experiments")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, mod in sorted(EXPERIMENTS.items()):
            print(f"{name:<12} {importlib.import_module(mod).DESCRIPTION}")
        return 0
    mod = importlib.import_module(EXPERIMENTS[args.experiment])
    t0 = time.perf_counter()
    rows = mod.run(args.out, device=args.device, quick=args.quick, progress=not args.no_progress)
    print(mod.format_table(rows))
    print(
        f"\nwrote {args.out}/results.json, figures/ and arviz/ in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
