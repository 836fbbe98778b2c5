"""SMCResult: what every front-door sampler returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from smcdiff.checks import check_int
from smcdiff.engine.result import SMCRun
from smcdiff.resampling import get_scheme
from smcdiff.weights import ess as ess_fn

if TYPE_CHECKING:
    from smcdiff.diagnostics.degeneracy import DegeneracyReport

__all__ = ["SMCResult"]


@dataclass
class SMCResult:
    r"""Weighted particles and the run's record.

    Shapes (single run): ``particles`` ``(N, *event_shape)``; ``log_weights`` ``(N,)`` normalised, float64;
    ``log_z`` scalar float64: the estimate of :math:`\log \mathbb E_{p}[e^{\phi}]` (log normaliser of the
    tilt relative to the prior, or the evidence :math:`\log p(y)`). With ``n_runs = R`` independent
    runs every quantity gets a leading ``R`` (``particles`` ``(R, N, d)``, ``log_z`` ``(R,)``).
    ``trace``: per step k = 0..K, CPU tensors (``t``, ``ess``, ``log_z_increment``, ``resampled``,
    ``nfe``, ``n_grad``, corrector info). ``info``: settings, seed, counts, wall time.
    """

    particles: torch.Tensor
    log_weights: torch.Tensor
    log_z: torch.Tensor
    trace: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    collected: dict[str, Any] = field(default_factory=dict)
    """Records of the run's collectors by name (see :mod:`smcdiff.engine.collectors`)."""
    target: Any = field(default=None, repr=False, compare=False)
    """The target the particles were drawn for (set by :func:`smcdiff.sample`); a target with
    ``posterior_dataset`` (e.g. :func:`smcdiff.from_pyro`) names the ArviZ posterior by its sites."""

    @classmethod
    def from_run(
        cls, run: SMCRun, *, grouped: bool, info: dict[str, Any], has_log_z: bool = True
    ) -> SMCResult:
        """Wrap an engine run (``grouped``: keep the leading run dimension). ``has_log_z=False``
        for methods without importance weights: their ``log_z`` is NaN (no estimate), the
        convention of every front door."""
        x = run.state["x"]
        x = x.reshape(run.n_groups, run.n_particles, *x.shape[1:])
        lw, lz, trace = run.log_weights, run.log_z, dict(run.trace)
        if not has_log_z:
            lz = torch.full_like(lz, math.nan)
        if not grouped:
            x, lw, lz = x[0], lw[0], lz[0]
            trace = {
                k: (v[:, 0] if v.dim() == 2 and k not in ("t",) else v) for k, v in trace.items()
            }
        return cls(x, lw, lz, trace, info, collected=run.collected)

    @staticmethod
    def wrap_partial(
        err: BaseException, *, grouped: bool, info: dict[str, Any], has_log_z: bool = True
    ) -> None:
        """Replace an engine error's ``partial`` (an :class:`SMCRun` up to the last good step:
        a :class:`~smcdiff.errors.NonFiniteError`, or any exception or ``KeyboardInterrupt``
        raised inside :func:`~smcdiff.run_smc`'s loop) by its :class:`SMCResult`, in place, so
        that ``err.partial.ess``, ``.resample()``, ``.to_arviz()`` and ``.diagnose()`` work; the
        front doors call this and re-raise ``err``. Anything else is left as it is."""
        if isinstance(getattr(err, "partial", None), SMCRun):
            failed = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            info = {**info, "completed_steps": err.partial.completed_steps, "failed": failed}
            err.partial = SMCResult.from_run(
                err.partial, grouped=grouped, info=info, has_log_z=has_log_z
            )

    @property
    def completed_steps(self) -> int:
        """The last step the run completed (K for a finished run; fewer for an error's
        ``partial``)."""
        return int(self.ess.shape[0]) - 1

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights, same shape as ``log_weights``."""
        return self.log_weights.exp()

    @property
    def ess(self) -> torch.Tensor:
        """ESS after reweighting at every step, ``(K+1,)`` (or ``(K+1, R)``); a result built
        without a trace has one step, its final ESS."""
        if "ess" not in self.trace:
            return self.final_ess.unsqueeze(0).cpu()
        return self.trace["ess"]

    @property
    def final_ess(self) -> torch.Tensor:
        return ess_fn(self.log_weights)

    @property
    def min_ess(self) -> torch.Tensor:
        """The smallest ESS over the run's steps, a 0-d tensor (or ``(R,)``): where a run
        collapsed, the final ESS can look healthy while this does not (see :meth:`diagnose`)."""
        return self.ess.nan_to_num(nan=math.inf).min(0).values

    def diagnose(self, full: bool = True) -> DegeneracyReport:
        """The run's weight-degeneracy report
        (:class:`~smcdiff.diagnostics.degeneracy.DegeneracyReport`): minimum ESS, distinct
        ancestors, per-step Pareto k; ``print(result.diagnose())`` says what collapsed, where,
        and what to try; ``.ok`` is ``False`` when a front door would warn. ``full=False``:
        Pareto k only where it can be flagged (the front doors' cheap check, same verdict)."""
        from smcdiff.diagnostics.degeneracy import degeneracy_report

        return degeneracy_report(self, full=full)

    @property
    def n_particles(self) -> int:
        return self.log_weights.shape[-1]

    def resample(
        self, n: int | None = None, seed: int | None = None, scheme: str = "systematic"
    ) -> torch.Tensor:
        """Equal-weight particles ``(n, d)`` (or ``(R, n, d)``) drawn from the weighted set."""
        n = self.n_particles if n is None else n
        seed = check_int("seed", seed, 0, where="SMCResult.resample", allow_none=True)
        gen = torch.Generator(device=self.log_weights.device)
        gen.manual_seed(seed) if seed is not None else gen.seed()
        anc = get_scheme(scheme)(self.log_weights, n, generator=gen)
        if self.log_weights.dim() == 1:
            return self.particles[anc]
        return torch.stack([p[a] for p, a in zip(self.particles, anc, strict=False)])

    def gather(self, dst: int = 0) -> SMCResult | None:
        """A distributed run's particles and log-weights from every rank, on rank ``dst``
        (``None`` on the others; every rank must call it); any other result: itself. See
        :func:`smcdiff.distributed.gather_result`."""
        from smcdiff.distributed.gather import gather_result

        return gather_result(self, dst)

    def pareto_k(self) -> float | torch.Tensor:
        """PSIS Pareto-k of the final weights (k > 0.7: the weights are unreliable)."""
        from smcdiff.diagnostics.pareto import pareto_k

        return pareto_k(self.log_weights)

    def to_arviz(self, seed: int | None = 0, n_draws: int | None = None):
        """ArviZ ``InferenceData``; see :func:`smcdiff.diagnostics.arviz.to_inference_data`.
        The ``posterior`` holds ``n_draws`` equal-weight draws per run (default: the minimum ESS
        of the run, so ArviZ's ESS cannot exceed it); ``smc_diagnostics`` the per-step
        degeneracy diagnostics. For a Pyro target the ``posterior`` group holds the model's
        constrained sites."""
        from smcdiff.diagnostics.arviz import honest_draws, to_inference_data

        n_draws = honest_draws(self) if n_draws is None else n_draws
        post = None
        if callable(getattr(self.target, "posterior_dataset", None)):
            post = self.target.posterior_dataset(
                self.particles, self.log_weights, n_draws=n_draws, seed=seed or 0
            )
        return to_inference_data(self, seed=seed, posterior=post, n_draws=n_draws)

    def __repr__(self) -> str:
        lz = self.log_z
        lz_s = f"{float(lz):.4f}" if lz.dim() == 0 else f"{lz.tolist()}"
        return (
            f"SMCResult(method={self.info.get('method')!r}, particles={tuple(self.particles.shape)}, "
            f"log_z={lz_s}, final_ess={self.final_ess.mean().item():.1f}, "
            f"min_ess={self._min_ess()}, {self._cost()})"
        )

    def _min_ess(self) -> str:
        """The minimum ESS and its step (the smallest over the runs of a grouped result)."""
        ess = self.ess.nan_to_num(nan=math.inf).reshape(self.ess.shape[0], -1)
        step = int(ess.min(1).values.argmin())
        return f"{float(ess.min()):.1f} (step {step})"

    def _cost(self) -> str:
        """Network evaluations (steering) or target evaluations (energy targets)."""
        if "n_target_evals" in self.info:
            return f"target_evals={self.info['n_target_evals']}"
        return f"nfe={self.info.get('nfe')}"
