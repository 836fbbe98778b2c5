r"""Weight degeneracy: numbers that a healthy final ESS cannot hide, and a report a person can read.

A run can end with a healthy-looking final ESS after its weights collapsed mid-run: once the ESS
has fallen to ~2, every later particle descends from ~2 particles and resampling restores equal
weights without restoring the lost information. Three per-step numbers see this (all computed
once, at the end, from what the front doors' collectors kept on the device; see
:func:`smcdiff.engine.collectors.degeneracy_collectors`):

- the **minimum ESS over the run** (from the trace), flagged below
  :data:`MIN_ESS_FRACTION` of N (and below :data:`MIN_ESS_FLOOR`, so small runs are not flagged
  for an ESS of a few particles that is in proportion);
- the **distinct step-0 ancestors** of the final particles (:class:`~smcdiff.engine.collectors.
  Genealogy`), flagged below :data:`MIN_DISTINCT_FRACTION` of N (at least :data:`MIN_DISTINCT_FLOOR`):
  resampling makes lineages coalesce (Jacob, Murray & Rubenthaler 2015, "Path storage in the
  particle filter"); a handful of lineages left means independent runs would disagree;
- **PSIS Pareto** :math:`\hat k` of every step's weights :math:`W_{k-1}^i G_k^i` (the importance
  weights of that step's log-Z increment; :class:`~smcdiff.engine.collectors.WeightTails` keeps
  their largest values, all PSIS uses), flagged above :data:`PARETO_K_MAX` = 0.7, the threshold
  of Vehtari, Simpson, Gelman, Yao & Gabry (2024, JMLR 25, "Pareto smoothed importance
  sampling"); steps with fewer than 25 particles have no :math:`\hat k` and are not flagged;
- the **lineage ESS** (:mod:`smcdiff.diagnostics.genealogy`): how many independent draws the
  final particles are worth once shared ancestry is counted (Chan & Lai 2013), flagged below
  :data:`LINEAGE_ESS_FRACTION` of N (and below :data:`LINEAGE_ESS_MAX`). It catches runs whose
  weights never collapsed but whose intermediate targets culled lineages the final target needed
  (a twist that is wrong mid-path: the final ESS and the minimum ESS stay high, the masses of
  the modes come out wrong).

The thresholds are conservative on purpose: a flagged run is degenerate beyond doubt (ESS of a
few particles, one or two lineages, infinite-variance weights), so a warning is never noise.
:func:`degeneracy_report` returns a :class:`DegeneracyReport`; ``print(report)`` says what
collapsed, where, and what to try; :meth:`DegeneracyReport.warn` raises a
:class:`~smcdiff.errors.DegeneracyWarning` naming the step and the numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from smcdiff.errors import DegeneracyWarning

if TYPE_CHECKING:
    from smcdiff.result import SMCResult

__all__ = [
    "LINEAGE_ESS_FRACTION",
    "LINEAGE_ESS_MAX",
    "MIN_DISTINCT_FLOOR",
    "MIN_DISTINCT_FRACTION",
    "MIN_DISTINCT_FRACTION_NO_MOVES",
    "MIN_ESS_FLOOR",
    "MIN_ESS_FRACTION",
    "PARETO_K_ESS_FRACTION",
    "PARETO_K_MAX",
    "DegeneracyReport",
    "degeneracy_report",
    "step_pareto_k",
]

MIN_ESS_FRACTION = 0.01
"""Flag a run whose ESS fell below this fraction of N at some step."""
MIN_ESS_FLOOR = 2.0
"""... and below this many particles (the threshold is ``max(MIN_ESS_FLOOR, fraction * N)``)."""
MIN_DISTINCT_FRACTION = 0.002
"""Flag a run whose final particles descend from fewer than this fraction of the N initial ones."""
MIN_DISTINCT_FLOOR = 5
"""... and from fewer than this many (the threshold is ``max(floor, fraction * N)``)."""
MIN_DISTINCT_FRACTION_NO_MOVES = 0.05
"""... or below this fraction of N in a run that says it made no MCMC moves after its start
(``result.info["mcmc_moves"] is False``, set by :func:`smcdiff.steer`): there every final particle's
whole path, and the log Z built along it, comes from these few initial draws. Calibration (N = 1000,
seeds 0-3): ``beta = 10`` on the mixture, FK 1.3-2.6 % (log Z up to 0.46 off) and FKC 0.9-3.4 %
(up to 1.3 off); right runs (README tilt, linear-Gaussian likelihood, constraints, FK / FKC) keep
13-49 %. Tempered SMC, whose moves decorrelate coalesced copies, keeps the lenient fraction."""
PARETO_K_MAX = 0.7
"""Flag a step whose weights have PSIS :math:`\\hat k` above this (Vehtari et al. 2024) ..."""
PARETO_K_ESS_FRACTION = 0.15
"""... and whose ESS is below this fraction of N: there a heavy tail means the ESS overstates how
many particles count. (0.15, not 0.1: FKC at ``beta = 10``, N = 1024, seeds 0 and 1 are 1.57 and
0.79 off with k = 0.89 at an ESS of 13 % of N; the healthy calibration runs of
:data:`LINEAGE_ESS_MAX` give the same verdicts at 0.1 and 0.15. A large :math:`\\hat k` at a step with a high ESS, as when a twist weights
the particles of different modes unequally, is reported by :meth:`DegeneracyReport.__str__` but
not flagged: with ~3 sqrt(N) tail values per step and ~100 steps, single-step estimates of 0.7-1.8
occur in runs whose estimates are exact within their error bars.)"""

LINEAGE_ESS_FRACTION = 0.1
"""Flag a run whose lineage ESS is below this fraction of N ..."""
LINEAGE_ESS_MAX = 500.0
"""... and below this many draws (standard errors of weighted means above ~0.045 posterior sd; a
run of 10^6 particles worth 5 10^4 independent draws is precise, whatever the fraction; an
``x > 0`` run of N = 10^4, right within 0.01, had 966). Calibration (N = 1024 and 4096, seeds 0-7, FK and TDS, 2-D
mixture prior): the ring likelihood, whose mode masses come out 0.04-0.4 off, gives 0.9-8.1 %;
linear-Gaussian, half-plane and x > 0 runs give 13-67 % (one x > 0 run at 5.3 % had a log Z
error of 0.10)."""

_MAX_WARNED = 6  # problems listed in a warning (many runs: the rest are in the report)

_ADVICE = (
    "for fk / tds, adaptive tilting (tilt_schedule='adaptive': tilt strengths chosen so that no "
    "step collapses, with MALA moves; needs a prior with log_density); "
    "for a likelihood or reward whose tilt of x0_hat misleads mid-path (coalesced lineages), "
    "potential='max' or 'sum'; more particles (n_particles); resampling earlier (a higher ess_threshold); more steps "
    "(n_steps) or a gentler tilt schedule (tilt_schedule='snr', a smaller beta first); a proposal "
    "that sees the tilt (proposal='guided', method='tds') or MCMC moves (init='mala', "
    "sample(method='tempered') with more n_moves); several independent runs (n_runs) to compare "
    "their log_z"
)


@dataclass
class DegeneracyReport:
    r"""Per-step degeneracy diagnostics of a run (``R`` runs: one column each).

    ``per_step``: numpy arrays ``(K+1, R)``: ``"ess"``, ``"distinct_ancestors"`` (if the run
    kept its genealogy), ``"pareto_k"`` (if it kept its weight tails; NaN where undefined) and
    ``"t"`` ``(K+1,)`` when the model has times. ``min_ess``, ``min_ess_step``, ``final_ess``,
    ``distinct_ancestors`` (final), ``max_pareto_k``, ``max_pareto_k_step``, ``lineage_ess``
    (:mod:`smcdiff.diagnostics.genealogy`): ``(R,)`` arrays (NaN / -1 where not
    available; the lineage ESS is NaN where too few lineages are left for it to mean anything,
    which the distinct-ancestor flag reports). ``problems``: one sentence per flagged quantity and run;
    ``ok`` is ``not problems``. ``str(report)`` is the readable report.
    """

    n_particles: int
    per_step: dict[str, np.ndarray]
    min_ess: np.ndarray
    min_ess_step: np.ndarray
    final_ess: np.ndarray
    distinct_ancestors: np.ndarray
    max_pareto_k: np.ndarray
    max_pareto_k_step: np.ndarray
    lineage_ess: np.ndarray | None = None
    moves: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def warn(self, stacklevel: int = 2) -> None:
        """Issue one :class:`~smcdiff.errors.DegeneracyWarning` listing the problems (none if ok)."""
        if self.problems:
            shown = self.problems[:_MAX_WARNED]
            more = len(self.problems) - len(shown)
            msg = "the estimates are unreliable (weight degeneracy): " + "; ".join(shown)
            msg += f" (and {more} more)" if more else ""
            warnings.warn(msg + ". See result.diagnose().", DegeneracyWarning, stacklevel + 1)

    def __str__(self) -> str:
        N, R = self.n_particles, self.min_ess.shape[0]
        lines = [f"Weight degeneracy report ({R} run{'s' if R > 1 else ''} of N={N} particles)"]
        for r in range(R):
            pre = f"  run {r}: " if R > 1 else "  "
            lines.append(
                f"{pre}ESS: final {self.final_ess[r]:.1f}, minimum {self.min_ess[r]:.1f} "
                f"({100 * self.min_ess[r] / N:.2g}% of N) at {self._where(self.min_ess_step[r])}"
            )
            if not math.isnan(self.distinct_ancestors[r]):
                lines.append(
                    f"{pre}distinct initial ancestors of the final particles: "
                    f"{int(self.distinct_ancestors[r])} of {N}"
                )
            lines += self._lineage_lines(r, pre)
            if self.max_pareto_k_step[r] >= 0:
                lines.append(
                    f"{pre}largest per-step Pareto k: {self.max_pareto_k[r]:.2f} at "
                    f"{self._where(self.max_pareto_k_step[r])}"
                )
        lines.append(
            f"  thresholds: minimum ESS < max({MIN_ESS_FLOOR:g}, {MIN_ESS_FRACTION:g} N), "
            f"distinct ancestors < max({MIN_DISTINCT_FLOOR}, {self._distinct_fraction():g} N), "
            f"Pareto k > {PARETO_K_MAX} (Vehtari et al. 2024) at a step with ESS < "
            f"{PARETO_K_ESS_FRACTION:g} N, lineage ESS < min({LINEAGE_ESS_FRACTION:g} N, "
            f"{LINEAGE_ESS_MAX:g})"
        )
        if self.ok:
            lines.append("  verdict: no sign of weight degeneracy.")
            return "\n".join(lines)
        lines.append("  verdict: DEGENERATE, log_z and weighted estimates are unreliable:")
        lines += [f"    - {p}" for p in self.problems]
        lines.append(
            "  what collapsed: at the step named above a few particles carried all the weight "
            "(or, for coalesced lineages, the intermediate targets culled lineages the final "
            "target needed); every later particle descends from the survivors, so a healthy "
            "final ESS is no evidence."
        )
        lines.append(f"  what to try: {_ADVICE}.")
        return "\n".join(lines)

    def _distinct_fraction(self) -> float:
        return MIN_DISTINCT_FRACTION if self.moves else MIN_DISTINCT_FRACTION_NO_MOVES

    def _lineage_lines(self, r: int, pre: str) -> list[str]:
        """The lineage ESS of run ``r`` (where known)."""
        out, N = [], self.n_particles
        le = np.nan if self.lineage_ess is None else self.lineage_ess[r]
        if not math.isnan(le):
            out.append(
                f"{pre}lineage ESS (independent draws the final particles are worth): "
                f"{le:.0f} ({100 * le / N:.2g}% of N)"
            )
        return out

    def _repr_pretty_(self, p, cycle) -> None:  # IPython / Jupyter display
        p.text(str(self))

    def _where(self, step: int) -> str:
        t = self.per_step.get("t")
        if t is None or step < 0:
            return f"step {step}"
        return f"step {step} (t={float(t[step]):.3g})"


def step_pareto_k(tails: dict, where: np.ndarray | None = None) -> np.ndarray:
    r"""PSIS :math:`\hat k` of every step's weights from a
    :class:`~smcdiff.engine.collectors.WeightTails` record -> ``(K+1, G)`` float64, NaN where
    undefined (fewer than 25 particles, or fewer than the tail size with non-zero weight) and
    where the bool mask ``where`` ``(K+1, G)`` (default: everywhere) is false.

    The fit reads only the kept largest log-weights (:func:`~smcdiff.diagnostics.pareto.
    tail_pareto_k`, all PSIS uses, so :math:`\hat k` is exact): :math:`O(\sqrt N)` values per
    step, whatever N.
    """
    from smcdiff.diagnostics.pareto import tail_pareto_k

    top, N = tails["top"], int(tails["n_particles"])
    K1, G, m = top.shape
    rows = top.reshape(K1 * G, m)
    k = np.full(K1 * G, np.nan)
    ok = torch.isfinite(rows).all(-1).numpy() if N >= 25 else np.zeros(K1 * G, dtype=bool)
    if where is not None:
        ok &= np.asarray(where, dtype=bool).reshape(K1 * G)
    idx = np.flatnonzero(ok)
    if idx.size:
        k[idx] = tail_pareto_k(rows[torch.as_tensor(idx)], N)
    return k.reshape(K1, G)


def _columns(a: torch.Tensor | None, R: int) -> np.ndarray | None:
    """A per-step record as ``(K+1, R)`` float64 numpy (a single run's ``(K+1,)`` gets R=1)."""
    if a is None:
        return None
    a = torch.as_tensor(a).double().cpu().numpy()
    return a.reshape(a.shape[0], R)


def degeneracy_report(result: SMCResult, full: bool = True) -> DegeneracyReport:
    """The :class:`DegeneracyReport` of ``result`` (its trace and its ``collected`` records).

    ``full=False`` (what the front doors use for their warning) computes Pareto k only at the
    steps where it can be flagged, those with an ESS below :data:`PARETO_K_ESS_FRACTION` of N:
    the same verdict, and a healthy run costs no PSIS fit (NaN elsewhere in ``per_step``)."""
    N = result.n_particles
    R = result.log_weights.shape[0] if result.log_weights.dim() == 2 else 1
    ess = _columns(result.ess, R)
    per_step = {"ess": ess}
    if "t" in result.trace:
        per_step["t"] = result.trace["t"].double().numpy()
    gen = result.collected.get("genealogy")
    K1 = ess.shape[0]  # an error's partial result: collectors may hold steps past the trace
    if gen is not None:
        per_step["distinct_ancestors"] = _columns(gen["distinct"][:K1], R)
    tails = result.collected.get("weight_tails")
    if tails is not None:
        tails = {**tails, "top": tails["top"][:K1]}
        where = None if full else ess < PARETO_K_ESS_FRACTION * N
        per_step["pareto_k"] = step_pareto_k(tails, where).reshape(-1, R)
    report = _summarise(N, per_step)
    report.moves = result.info.get("mcmc_moves", True) is not False
    _add_lineage(report, result)
    report.problems = _problems(report, R)
    return report


def _add_lineage(report: DegeneracyReport, result: SMCResult) -> None:
    """Fill ``lineage_ess`` from the run's Eve indices (NaN without them)."""
    from smcdiff.diagnostics.genealogy import genealogy_errors

    R, N = report.min_ess.shape[0], report.n_particles
    report.lineage_ess = np.full(R, np.nan)
    err = None if "failed" in result.info else genealogy_errors(result)  # a partial: no Eves
    if err is None or err.lineage_ess.shape[0] != R:
        return
    few = err.n_eves < max(MIN_DISTINCT_FLOOR, MIN_DISTINCT_FRACTION * N)
    report.lineage_ess = np.where(few, np.nan, err.lineage_ess)


def _summarise(N: int, per_step: dict[str, np.ndarray]) -> DegeneracyReport:
    """The run summaries of ``per_step``."""
    ess = per_step["ess"]
    R = ess.shape[1]
    safe = np.where(np.isnan(ess), np.inf, ess)
    dist = per_step.get("distinct_ancestors")
    k = per_step.get("pareto_k")
    k_step, k_max = np.full(R, -1), np.full(R, np.nan)
    if k is not None:
        kk = np.where(np.isnan(k), -np.inf, k)
        some = ~np.isnan(k).all(axis=0)
        k_step[some], k_max[some] = kk.argmax(0)[some], kk.max(0)[some]
    return DegeneracyReport(
        n_particles=N, per_step=per_step, min_ess=safe.min(0), min_ess_step=safe.argmin(0),
        final_ess=ess[-1], distinct_ancestors=dist[-1] if dist is not None else np.full(R, np.nan),
        max_pareto_k=k_max, max_pareto_k_step=k_step,
    )  # fmt: skip


def _problems(rep: DegeneracyReport, R: int) -> list[str]:
    """One sentence per threshold crossed, naming the run, the step and the numbers."""
    N, out = rep.n_particles, []
    ess_min = max(MIN_ESS_FLOOR, MIN_ESS_FRACTION * N)
    dist_min = max(MIN_DISTINCT_FLOOR, rep._distinct_fraction() * N)
    for r in range(R):
        run = f"run {r}: " if R > 1 else ""
        if rep.min_ess[r] < ess_min:
            out.append(
                f"{run}the ESS fell to {rep.min_ess[r]:.1f} of N={N} at "
                f"{rep._where(int(rep.min_ess_step[r]))} (threshold {ess_min:g}; final ESS "
                f"{rep.final_ess[r]:.1f})"
            )
        d = rep.distinct_ancestors[r]
        if not math.isnan(d) and d < dist_min and N > dist_min:
            out.append(
                f"{run}the final particles descend from {int(d)} of the {N} initial particles "
                f"(threshold {dist_min:g})"
            )
        k = rep.per_step.get("pareto_k")
        if k is not None:
            out += _pareto_problem(rep, k[:, r], rep.per_step["ess"][:, r], run)
        out += _lineage_problem(rep, r, run)
    return out


def _lineage_problem(rep: DegeneracyReport, r: int, run: str) -> list[str]:
    """The lineage-ESS sentence of run ``r``, or nothing."""
    N, le = rep.n_particles, rep.lineage_ess[r] if rep.lineage_ess is not None else np.nan
    limit = min(LINEAGE_ESS_FRACTION * N, LINEAGE_ESS_MAX)
    if np.isnan(le) or le >= limit:
        return []
    return [
        f"{run}lineages coalesced: the final particles are worth about {le:.0f} independent "
        f"draws ({100 * le / N:.2g}% of N, threshold {limit:g}; genealogy-based lineage ESS), "
        f"so weighted means have standard errors of at least {1 / math.sqrt(le):.2g} posterior "
        "sd"
    ]


def _pareto_problem(rep: DegeneracyReport, k: np.ndarray, ess: np.ndarray, run: str) -> list[str]:
    """The steps whose :math:`\\hat k` exceeds :data:`PARETO_K_MAX` while their ESS is below
    :data:`PARETO_K_ESS_FRACTION` of N: one sentence naming the worst, or nothing."""
    N = rep.n_particles
    bad = (np.nan_to_num(k, nan=-np.inf) > PARETO_K_MAX) & (ess < PARETO_K_ESS_FRACTION * N)
    if not bad.any():
        return []
    worst = int(np.where(bad, k, -np.inf).argmax())
    return [
        f"{run}the weights' Pareto k reached {k[worst]:.2f} at {rep._where(worst)}, where the ESS "
        f"was {ess[worst]:.1f} ({int(bad.sum())} steps with k > {PARETO_K_MAX} and ESS < "
        f"{PARETO_K_ESS_FRACTION:g} N)"
    ]
