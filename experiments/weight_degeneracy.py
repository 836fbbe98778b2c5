"""Figures and numbers of docs/weight-degeneracy.md: a collapsed FK run against a healthy one.

Collapsed: the issue's example, a 2-D mixture prior tilted by ``r(x) = x·(0, 1.5) − |x|²/2`` at
``beta = 100`` (``method="fk"``, N = 1000, four seeds); healthy: the README example
(``r(x) = −x_1²``, ``beta = 2``, N = 4096). Writes ``docs/figures/degeneracy_ess.png`` and
``docs/figures/degeneracy_ancestors.png`` and prints one line per run
(``python -m experiments.weight_degeneracy [out_dir]``; ~30 s on 2 CPU cores).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

import smcdiff
from smcdiff.diagnostics import plot_ancestors, plot_ess

PRIOR = smcdiff.GaussianMixture(
    weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 0.0]], covs=[[0.5, 0.5], [0.5, 0.5]]
)
B, Q = torch.tensor([0.0, 1.5]), torch.eye(2)


def collapsed(seed: int) -> smcdiff.SMCResult:
    model = smcdiff.exact_score(PRIOR, smcdiff.VP())
    return smcdiff.steer(model, reward=lambda x: x @ B - (x**2).sum(-1) / 2, beta=100.0,
                         method="fk", n_particles=1000, seed=seed, progress=False,
                         tilt_schedule="snr")  # fmt: skip


def healthy(seed: int) -> smcdiff.SMCResult:
    model = smcdiff.exact_score(PRIOR, smcdiff.VP())
    return smcdiff.steer(model, reward=lambda x: -x[:, 1] ** 2, beta=2.0, method="fk",
                         n_particles=4096, n_steps=100, seed=seed, progress=False,
                         tilt_schedule="snr")  # fmt: skip


def line(name: str, res: smcdiff.SMCResult, exact: float) -> str:
    d = res.diagnose()
    return (
        f"{name:12s} log_z {float(res.log_z):7.2f} (exact {exact:6.2f})  final ESS/N "
        f"{float(d.final_ess[0]) / res.n_particles:.2f}  min ESS {float(d.min_ess[0]):7.1f} at "
        f"step {int(d.min_ess_step[0]):3d}  ancestors {int(d.distinct_ancestors[0]):4d}  "
        f"final k {res.pareto_k():.2f}  max step k {float(d.max_pareto_k[0]):.2f}  "
        f"{'WARNS' if not d.ok else 'ok'}"
    )


def main(out_dir: str = "docs/figures") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exact_bad = float(PRIOR.tilt(B, Q, beta=100.0)[1])
    exact_good = float(PRIOR.tilt(None, torch.diag(torch.tensor([0.0, 2.0])), beta=2.0)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", smcdiff.DegeneracyWarning)
        bad = [collapsed(seed) for seed in range(4)]
    good = healthy(0)
    for seed, res in enumerate(bad):
        print(line(f"beta=100 s{seed}", res, exact_bad))
    print(line("beta=2 (README)", good, exact_good))
    pairs = [("beta=100, N=1000", bad[0]), ("beta=2, N=4096", good)]
    plot_ess(pairs).savefig(out / "degeneracy_ess.png", dpi=120)
    plot_ancestors(pairs).savefig(out / "degeneracy_ancestors.png", dpi=120)
    print(bad[0].diagnose())


if __name__ == "__main__":
    main(*sys.argv[1:])
