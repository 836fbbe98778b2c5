"""Experiments that reproduce smcdiff's tables and figures (installed as ``smcdiff_experiments``).

Each module exposes a one-line ``DESCRIPTION``,
``run(out_dir, device="cpu", quick=False, progress=True) -> list[dict]`` (writes its results into
``out_dir``) and ``format_table(rows) -> str`` (the table printed at the end).
``smcdiff run NAME`` calls them; ``EXPERIMENTS`` maps CLI names to modules.
"""

EXPERIMENTS = {
    "gmm2d": "smcdiff_experiments.gmm2d",
    "energy": "smcdiff_experiments.energy_benchmarks",
    "steering": "smcdiff_experiments.steering_benchmarks",
    "gmm_inverse": "smcdiff_experiments.gmm_inverse",
    "digits": "smcdiff_experiments.digits",
    "molecules": "smcdiff_experiments.molecules",
    "alanine": "smcdiff_experiments.alanine",
}
DEFAULT = "gmm2d"
