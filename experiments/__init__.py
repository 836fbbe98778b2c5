"""Experiments that reproduce smcdiff's tables and figures (installed as ``smcdiff_experiments``).

Each module exposes ``run(out_dir, device="cpu", quick=False) -> list[dict]`` and a one-line
``DESCRIPTION``; ``smcdiff run NAME`` calls it. ``EXPERIMENTS`` maps CLI names to modules.
"""

EXPERIMENTS = {
    "gmm2d": "smcdiff_experiments.gmm2d",
    "energy": "smcdiff_experiments.energy_benchmarks",
    "steering": "smcdiff_experiments.steering_benchmarks",
}
DEFAULT = "gmm2d"
