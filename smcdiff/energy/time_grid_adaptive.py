r"""Diffusion-path SMC on a time grid chosen as it runs, from the conditional ESS.

``sample(method="diffusion", grid="adaptive")`` (:mod:`smcdiff.energy.diffusion` for the path
weights). From :math:`t_k` the next time is :math:`t_{k+1} = t(\lambda_{t_k} + \delta)` with
:math:`\lambda_t = \log(\alpha_t^2/\sigma_t^2)` the log-SNR and :math:`\delta` the largest step in
:math:`[\delta_{min}, \delta_{max}]` whose incremental weights keep

.. math:: \frac{\mathrm{CESS}(\delta)}{N} = \frac{(\sum_i W_i G_i(\delta))^2}
    {\sum_i W_i G_i(\delta)^2} \ge \rho^\star

(Zhou, Johansen & Aston 2016; the same rule as tempering's temperatures, through
:func:`~smcdiff.weights.cess_fraction` and the bisection of
:func:`~smcdiff.weights.largest_keeping_cess` that adaptive tilting uses).
:math:`G_i(\delta)` is the path-corrected weight of the move to :math:`s = t_{k+1}`: the reverse
kernel's draw (one standard normal per particle, shared by every candidate) and a fresh
estimate :math:`\hat p_s` there. **Each candidate costs one estimator pass** over the particles
(or over the ``search_fraction`` of them), and every target evaluation it makes is counted in
``n_target_evals`` / ``n_grad_evals``.

The search: :math:`\delta_{max}` first (taken at once if it keeps the CESS), else ``iters``
halvings of :math:`[\log\delta_{min}, \log\delta_{max}]` (about ``iters + 1`` estimator passes a
step); :math:`\delta_{min}` when no candidate keeps it. :math:`\delta_{min}` is the log-SNR span
over ``max_steps`` (``n_steps``), so the run reaches :math:`t_{min}` in at most ``max_steps``
steps; :math:`\delta_{max}` is ``max_step`` times the span. The grid is shared by all groups
(the worst group's CESS decides), so groups of one run are not independent replicates: use
separate runs for that. With ``search_fraction = 1`` the chosen candidate's draws and estimates
are the step's; with less, candidates are scored on every :math:`1/f`-th particle and the
chosen time is then drawn afresh for all.

**The estimator's noise floor.** :math:`G_i` carries :math:`\hat p_s/\hat p_t`: two independent
estimates, so for a log-normal estimate of log-variance :math:`\sigma^2` the CESS cannot exceed
about :math:`e^{-2\sigma^2}` at any step size (measured on manywell32 with the refined
estimator at the smallest step of a 40-step grid: CESS/N 0.01-0.05 from t = 1 down to t = 0.2).
Below that floor the absolute rule returns :math:`\delta_{min}` at every step, which only adds
steps, and every step that resamples locks in fresh estimator noise. ``relative=True`` aims
instead at ``cess`` times the CESS of :math:`\delta_{min}` (one more candidate a step): the
path's own contribution to the weight variance is bounded and the noise-dominated stretches are
crossed in as few steps as that allows, when the floor is worth :data:`MIN_FLOOR_ROWS`
particles at least (the ratio of two CESS near 1/N is noise). What lowers the floor is a less
noisy estimator (more importance draws: docs/energy-results.md). The trace records per step
``t`` (the time reached), ``cess`` (the chosen step's CESS fraction) and ``passes`` (estimator
passes, in units of all particles).

**Exactness.** The time is a function of the current particles and, with ``search_fraction =
1``, of the draws it then weights, through a population average in which each particle counts
:math:`O(1/N)`: as for adaptive temperatures, the weighted particles are consistent and
:math:`\hat Z` has a bias of order :math:`1/N`; the random-weight argument of
:mod:`smcdiff.energy.diffusion` (estimates cancel along every path) is unchanged. One host sync
per candidate (its time is a Python float: the estimator and the reverse kernel take one time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.checks import check_int, check_number, nan_or_posinf, nonfinite_rows
from smcdiff.diffusion_fk.path import PathCorrection
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.samplers.kernels import reverse_step, standard_noise
from smcdiff.scores.base import ScoreModel, event_shape_of, model_time
from smcdiff.weights import cess_fraction, largest_keeping_cess

__all__ = ["AdaptiveGrid", "AdaptiveTimeFK"]

WHERE = "sample(diffusion, grid='adaptive')"
MIN_FLOOR_ROWS = 10
"""``relative``: a noise floor below this many effective particles (of a group's scoring rows)
is not measured well enough to scale the target by; the absolute ``cess`` is used then (on
manywell32 with N = 200 and a quarter of the particles scoring, a floor of 0.005-0.02 made every
candidate pass, and one jump from t = 1 to 0.72 cost log Z -918)."""


@dataclass(frozen=True)
class AdaptiveGrid:
    r"""Options of the adaptive grid (module docstring): ``cess`` the target fraction
    :math:`\rho^\star`; ``max_step`` the largest step as a fraction of the log-SNR span;
    ``iters`` halvings of the search; ``search_fraction`` of the particles that score the
    candidates; ``relative``: the target is ``cess`` times the CESS of the smallest step (the
    estimator's noise floor), not ``cess`` itself."""

    cess: float = 0.5
    max_step: float = 0.25
    iters: int = 4
    search_fraction: float = 1.0
    relative: bool = False

    def __post_init__(self) -> None:
        check_number("target_ess", self.cess, minimum=0.0, maximum=1.0, strict_min=True,
                     strict_max=True, where=WHERE)  # fmt: skip
        check_number("max_step", self.max_step, minimum=0.0, maximum=1.0, strict_min=True,
                     where=WHERE)  # fmt: skip
        check_int("search_iters", self.iters, 0, where=WHERE)
        check_number("search_fraction", self.search_fraction, minimum=0.0, maximum=1.0,
                     strict_min=True, where=WHERE)  # fmt: skip
        if not isinstance(self.relative, bool):
            raise SMCDiffError(f"{WHERE}: cess_relative must be True or False")


@dataclass
class _Move:
    """One candidate move: the new state, its log-weights ``(n,)`` and checks."""

    state: ParticleState
    log_g: torch.Tensor
    checks: dict[str, torch.Tensor]


class AdaptiveTimeFK(FeynmanKacModel):
    r"""Path-corrected diffusion SMC for an energy target on an adaptive time grid (module
    docstring). ``model``: a score model with ``score_and_log_density`` (a training-free
    estimator of :math:`Z p_t`); ``end_log_prob``: :math:`\log\tilde\pi` in the same
    coordinates; the grid runs from ``t_max`` to ``t_min`` in at most ``max_steps`` steps.
    ``grid`` holds the times reached (``t_max`` first); ``times`` is ``None`` (not known ahead)."""

    def __init__(
        self,
        model: ScoreModel,
        end_log_prob: Any,
        *,
        t_max: float,
        t_min: float,
        max_steps: int,
        options: AdaptiveGrid,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.model, self.process, self.opts = model, model.process, options
        self.path = PathCorrection(end_log_prob)
        self.n_steps, self.times = max_steps, None
        self.t_max, self.t_min = float(t_max), float(t_min)
        self.grid = [self.t_max]
        self.lam_hi, self.lam_lo = self._lam(self.t_max), self._lam(self.t_min)
        span = self.lam_lo - self.lam_hi
        self.d_min = span / max_steps
        self.d_max = max(self.d_min, options.max_step * span)
        self.device, self.dtype = torch.device(device), dtype
        self.event_shape = event_shape_of(model)
        self.ref_std = self.process.prior_std

    def _lam(self, t: float) -> float:
        """The log-SNR at ``t`` (float64)."""
        return float(self.process.log_snr(torch.tensor(t, dtype=torch.float64)))

    def _evaluate(self, x: torch.Tensor, t: float) -> tuple[ParticleState, dict]:
        """Score and :math:`\\log\\hat p_t` at ``x`` (one estimator pass), with checks."""
        with torch.no_grad():
            score, logp = self.model.score_and_log_density(x, model_time(self.model, t, x))
        score, logp = score.detach().to(x.dtype), logp.detach().double()
        checks = {"particles": nonfinite_rows(x), "score": nonfinite_rows(score),
                  "log_density": nan_or_posinf(logp)}  # fmt: skip
        return {"score": score, "logp": logp}, checks

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        """``n`` draws of :math:`\\mathcal N(0, \\sigma_{ref}^2 I)` weighted by
        :math:`\\hat p_{t_{max}}/\\mathcal N`."""
        self.grid = [self.t_max]
        x = self.ref_std * standard_noise(
            self.process, n, self.event_shape, generator, device=self.device, dtype=self.dtype
        )
        ev, checks = self._evaluate(x, self.t_max)
        log_g = self.path.start(x, ev["logp"], self.ref_std, self.process)
        info = {"t": torch.tensor(self.t_max)}
        return StepOutput({"x": x, **ev}, log_g, checks, nfe=1, info=info)

    def _time(self, u: float) -> float:
        """The time one step of log-SNR :math:`e^u` after the current one (``t_min`` exactly
        at the end)."""
        lam = self._lam(self.grid[-1]) + math.exp(u)
        if lam >= self.lam_lo - 1e-9 * (self.lam_lo - self.lam_hi):
            return self.t_min
        lam_t = torch.tensor(lam, dtype=torch.float64)
        t = float(self.process.t_from_log_snr(lam_t, iters=54))  # float64 resolution on [0, 1]
        return min(max(t, self.t_min), self.grid[-1])

    def _move(self, state: ParticleState, z: torch.Tensor, s: float, rows: Any) -> _Move:
        """The path-corrected move of ``state``'s ``rows`` from the current time to ``s``."""
        t = self.grid[-1]
        ker = reverse_step(self.process, t, s, "ancestral_upper")
        x, score, logp = state["x"][rows], state["score"][rows], state["logp"][rows]
        x_new = ker.mean(x, score) + ker.std * z[rows]
        ev, checks = self._evaluate(x_new, s)
        args = (self.process, ker, x, x_new, z[rows], ev["logp"], logp)
        if s <= self.t_min:  # p_{t_min} -> the exact end density
            log_g = self.path.finish(*args, checks, f"t_min={s:.4g}")
        else:
            log_g = self.path.step(*args)
        return _Move({"x": x_new, **ev}, log_g, checks)

    def step(
        self, k: int, state: ParticleState, generator: torch.Generator, log_weights: torch.Tensor
    ) -> StepOutput:
        """Choose the next time by the CESS search (module docstring) and move there."""
        G, N = log_weights.shape
        x = state["x"]
        z = standard_noise(self.process, x.shape[0], self.event_shape, generator,
                           device=x.device, dtype=x.dtype)  # fmt: skip
        stride = max(1, round(1.0 / self.opts.search_fraction))
        rows = slice(None) if stride == 1 else torch.arange(0, G * N, stride, device=x.device)
        lw = log_weights if stride == 1 else log_weights.reshape(-1)[rows].reshape(G, -1)
        lw = lw - torch.logsumexp(lw, -1, keepdim=True)
        tried: dict[float, tuple[torch.Tensor, _Move]] = {}

        def frac_of(u: torch.Tensor) -> torch.Tensor:  # (1,) log-step -> (1,) min CESS / N
            key = float(u[0])  # host sync: the candidate's time is a Python float
            if key not in tried:
                move = self._move(state, z, self._time(key), rows)
                frac = cess_fraction(lw, move.log_g.reshape(G, -1)).amin()
                tried[key] = (frac.reshape(1).cpu(), move)  # the search runs on the host
            return tried[key][0]

        u = self._search(frac_of, lw.shape[-1])
        n_tried = len(tried) * (1.0 if stride == 1 else 1.0 / stride)
        if stride == 1 and u in tried:
            frac, move = tried[u]
        else:
            move = self._move(state, z, self._time(u), slice(None))
            frac = cess_fraction(log_weights, move.log_g.reshape(G, N)).amin().reshape(1).cpu()
            n_tried += 1
        self.grid.append(self._time(u))
        info = {"t": torch.tensor(self.grid[-1]), "cess": frac[0], "passes": torch.tensor(n_tried)}
        return StepOutput(move.state, move.log_g, move.checks, nfe=math.ceil(n_tried), info=info)

    def _search(self, frac_of: Any, n_rows: int) -> float:
        r"""The log-step :math:`\log\delta` of this step: :math:`\delta_{max}` if it keeps the
        target, else the bisection; with ``relative``, the target is ``cess`` times the CESS
        of :math:`\delta_{min}` (one more candidate) when that CESS is worth at least
        :data:`MIN_FLOOR_ROWS` of the ``n_rows`` scoring particles (else ``cess`` itself)."""
        left = self.lam_lo - self._lam(self.grid[-1])
        hi = math.log(min(self.d_max, left))
        if left <= self.d_min * (1 + 1e-9):
            return hi
        lo = torch.tensor([math.log(self.d_min)], dtype=torch.float64)
        bound = torch.tensor([hi], dtype=torch.float64)  # float64: the same keys as the search's
        target = self.opts.cess
        if self.opts.relative:  # a floor under MIN_FLOOR_ROWS particles measures nothing
            floor = float(frac_of(lo)[0])
            target = target * floor if floor * n_rows >= MIN_FLOOR_ROWS else target
        u = largest_keeping_cess(frac_of, lo, bound, target, self.opts.iters, hi_first=True)
        return float(u[0])

    def done(self, k: int, state: ParticleState) -> torch.Tensor | None:
        """``True`` once the grid reached ``t_min`` (a host value: no device sync)."""
        return torch.tensor(self.grid[-1] <= self.t_min)

    def step_label(self, k: int) -> str:
        t = self.grid[k] if k < len(self.grid) else self.grid[-1]
        return f"adaptive step {k} (t={t:.4g})"

    def state_dict(self) -> dict[str, Any]:
        return {"grid": self.grid}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grid = list(state["grid"])
