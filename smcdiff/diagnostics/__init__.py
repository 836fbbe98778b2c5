r"""Diagnostics: ArviZ export, PSIS Pareto-k, plots and sample-based distances.

- :func:`to_inference_data` — an :class:`~smcdiff.result.SMCResult` as an ArviZ object
  (``posterior`` = equal-weight resample; raw weighted particles and the per-step trace in the
  ``smc_particles`` and ``smc_trace`` groups);
- :func:`pareto_k` — PSIS :math:`\hat k` of the final weights (> 0.7: unreliable);
- :func:`degeneracy_report` (``result.diagnose()``) — minimum ESS, distinct ancestors, per-step
  Pareto k, lineage ESS, and a readable verdict (:mod:`smcdiff.diagnostics.degeneracy`);
- :func:`genealogy_errors` — standard errors of weighted means from the run's genealogy
  (Chan & Lai), and the lineage ESS (:mod:`smcdiff.diagnostics.genealogy`);
- :func:`plot_ess`, :func:`plot_ancestors`, :func:`plot_log_weights`, :func:`plot_particles` —
  matplotlib figures;
- :func:`energy_distance`, :func:`sliced_wasserstein`, :func:`gaussian_mmd` — distances between a
  weighted particle set and reference samples; :func:`weighted_moments` — weighted mean and
  covariance.
"""

from smcdiff.diagnostics.arviz import to_inference_data
from smcdiff.diagnostics.degeneracy import DegeneracyReport, degeneracy_report
from smcdiff.diagnostics.genealogy import GenealogyErrors, genealogy_errors
from smcdiff.diagnostics.metrics import (
    energy_distance,
    gaussian_mmd,
    sliced_wasserstein,
    weighted_moments,
)
from smcdiff.diagnostics.pareto import pareto_k
from smcdiff.diagnostics.plots import plot_ancestors, plot_ess, plot_log_weights, plot_particles

__all__ = [
    "DegeneracyReport",
    "GenealogyErrors",
    "degeneracy_report",
    "energy_distance",
    "gaussian_mmd",
    "genealogy_errors",
    "pareto_k",
    "plot_ancestors",
    "plot_ess",
    "plot_log_weights",
    "plot_particles",
    "sliced_wasserstein",
    "to_inference_data",
    "weighted_moments",
]
