r"""The settings of :func:`smcdiff.sample`: one frozen dataclass of options per method, and the
settings every method shares (:class:`RunSettings`).

Options are checked when the dataclass is built (:mod:`smcdiff.checks`: NumPy numbers accepted,
bools refused where a number is expected), so a bad value fails before any work, with its name.
Kernel options (``n_leapfrog`` for HMC, ``friction``, ``prior_var``, ``inv_mass``) are checked
against the options the chosen kernel takes (:func:`smcdiff.mcmc.check_kernel_options`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.energy.time_grid_adaptive import AdaptiveGrid
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import Kernel
from smcdiff.mcmc.registry import check_kernel_options, get_kernel
from smcdiff.processes.grids import GRIDS
from smcdiff.scores.montecarlo import ESTIMATORS
from smcdiff.target import Target

__all__ = ["DiffusionOptions", "MCMCOptions", "RunSettings", "TemperedOptions"]

SCORES = ("rdmc", "refined", "follmer")
"""Score estimators of ``sample(method="diffusion", score=...)``."""


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own fields


def _kernel_options(obj: Any, where: str) -> None:
    """Check ``obj.kernel`` and ``obj.kernel_options``; store the options read-only."""
    get_kernel(obj.kernel)
    check_kernel_options(obj.kernel, obj.kernel_options, where=where)
    _set(obj, "kernel_options", MappingProxyType(dict(obj.kernel_options)))


def _positive(name: str, value: Any, where: str, allow_none: bool = True) -> float | None:
    return check_number(
        name, value, minimum=0.0, strict_min=True, where=where, allow_none=allow_none
    )


def _probability(name: str, value: Any, where: str, allow_none: bool = False) -> float | None:
    """A number in the open interval (0, 1)."""
    return check_number(
        name, value, minimum=0.0, maximum=1.0, strict_min=True, strict_max=True, where=where,
        allow_none=allow_none,
    )  # fmt: skip


def _flag(obj: Any, names: tuple[str, ...], where: str) -> None:
    """Options that must be ``True`` or ``False``."""
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise SMCDiffError(f"{where}: {name} must be True or False, got {getattr(obj, name)!r}")


def _schedule(schedule: Sequence[float], where: str) -> tuple[float, ...]:
    """A fixed temperature schedule: numbers in (0, 1], non-decreasing, ending at 1."""
    try:
        lams = tuple(
            check_number("schedule", v, minimum=0.0, maximum=1.0, strict_min=True, where=where)
            for v in schedule
        )
    except TypeError as err:
        raise SMCDiffError(f"{where}: schedule must be a sequence of numbers") from err
    ok = len(lams) >= 1 and lams[-1] == 1.0 and all(a <= b for a, b in itertools.pairwise(lams))
    if not ok:
        raise SMCDiffError(
            f"{where}: schedule must be non-decreasing temperatures in (0, 1] ending at 1, got "
            f"{list(lams)[:5]}{' ...' if len(lams) > 5 else ''}"
        )
    return lams


@dataclass(frozen=True)
class TemperedOptions:
    r"""Options of ``sample(method="tempered")`` (:class:`~smcdiff.energy.tempered.TemperedSMC`).

    ``kernel``: an MCMC kernel name in :data:`smcdiff.mcmc.KERNELS` or a factory, run
    ``n_moves`` times per temperature; ``target_ess``: the conditional-ESS fraction
    :math:`\rho^\star \in (0, 1)` that sets each temperature increment; ``step_size``: the
    kernel's initial step (``None``: a fraction of the reference scale shrinking with the
    dimension), adapted toward ``target_accept`` (``None``: the kernel's default) by Robbins–Monro
    with gain ``adapt_gain``; ``max_steps``: a cap on the number of temperatures (a run that
    reaches it below temperature 1 raises
    :class:`~smcdiff.energy.tempered.TemperingIncompleteError`); ``cuda_graph``:
    capture each step's moves as one CUDA graph (``None``: on for CUDA devices);
    ``kernel_options``: the kernel's own options (e.g. ``{"n_leapfrog": 10}``);
    ``nan_as_neg_inf``: treat a NaN target log-density as ``-inf`` (zero density) instead of
    raising a :class:`~smcdiff.errors.NonFiniteError`; ``schedule``: fixed temperatures
    :math:`0 < \lambda_1 \le \dots \le \lambda_K = 1` instead of adaptive ones (``max_steps``
    is then not used; step sizes still adapt unless ``adapt_gain=0``); ``unbiased``: run twice,
    an adaptive pilot and then a run on its temperatures and step sizes, whose :math:`\hat Z`
    is unbiased (the adaptive run's is a little biased at small N); ``fused``: run each whole
    SMC step (resampling, moves, temperature search, reweighting) as one replayed CUDA graph,
    the host reading a step's end flags after queueing the next ``fused_chunk`` steps (1: the
    GPU never waits for the host and no step after the end runs) (``None``: on for CUDA with an
    adaptive schedule; :mod:`smcdiff.energy.tempered_fused`); ``compile``: HMC moves as one
    ``torch.compile``-d transition each (a few fused kernels instead of dozens per leapfrog
    step; :mod:`smcdiff.mcmc.compiled`) and the temperature search as one compiled function,
    ``True``, ``False``, ``"auto"`` (the default: on CUDA devices, with the HMC kernel) or
    ``"static"`` (as ``True``, with static shapes: compiled once per number of particles,
    kernels specialised to it, instead of once for every N);
    a function that cannot be compiled runs eagerly with a warning.
    """

    kernel: str | Callable[..., Kernel] = "hmc"
    n_moves: int = 5
    target_ess: float = 0.5
    step_size: float | None = None
    target_accept: float | None = None
    max_steps: int = 1000
    adapt_gain: float = 0.5
    cuda_graph: bool | None = None
    kernel_options: Mapping[str, Any] = field(default_factory=dict)
    nan_as_neg_inf: bool = False
    schedule: Sequence[float] | None = None
    unbiased: bool = False
    fused: bool | None = None
    fused_chunk: int = 1
    compile: bool | str = "auto"

    def __post_init__(self) -> None:
        where = "tempered SMC"
        if not (isinstance(self.compile, bool) or self.compile in ("auto", "static")):
            msg = f"compile must be True, False, 'auto' or 'static', got {self.compile!r}"
            raise SMCDiffError(f"{where}: {msg}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise SMCDiffError(f"{where}: fused must be True, False or None")
        _set(self, "fused_chunk", check_int("fused_chunk", self.fused_chunk, 1, where=where))
        _flag(self, ("nan_as_neg_inf", "unbiased"), where)
        if self.schedule is not None:
            _set(self, "schedule", _schedule(self.schedule, where))
            if self.unbiased:
                raise SMCDiffError(f"{where}: pass schedule or unbiased=True, not both")
        _set(self, "n_moves", check_int("n_moves", self.n_moves, 1, where=where))
        _set(self, "target_ess", _probability("target_ess", self.target_ess, where))
        _set(self, "step_size", _positive("step_size", self.step_size, where))
        _set(self, "target_accept", _probability("target_accept", self.target_accept, where, True))
        _set(self, "max_steps", check_int("max_steps", self.max_steps, 1, where=where))
        gain = check_number("adapt_gain", self.adapt_gain, minimum=0.0, where=where)
        _set(self, "adapt_gain", gain)
        if self.cuda_graph is not None and not isinstance(self.cuda_graph, bool):
            raise SMCDiffError(f"{where}: cuda_graph must be True, False or None")
        _kernel_options(self, where)


@dataclass(frozen=True)
class DiffusionOptions:
    r"""Options of ``sample(method="diffusion" | "rdmc" | "ensemble")``
    (:mod:`smcdiff.energy.diffusion`).

    ``n_steps``: steps of the reverse VP diffusion on a ``grid`` (a name in
    :data:`smcdiff.processes.grids.GRIDS`) from ``t_max`` to ``t_min`` (``None``: the process's
    ends); ``n_mc``: inner Monte Carlo samples per particle and step; ``estimator``: ``"tweedie"``
    (gradient-free) or ``"grad"``; ``antithetic``: antithetic inner samples; ``chunk_size``: rows
    per chunk of the inner estimates (``None``: automatic); ``final_moves``: MCMC moves invariant
    for the target after the last step (``None``: 10 for ``"diffusion"``, 0 for the unweighted
    baselines) with ``final_kernel`` from initial step ``final_step_size`` (``None``:
    :math:`0.1\,d^{-1/3}`); ``score``: ``"rdmc"`` (rdMC importance sampling) or ``"follmer"``
    (Föllmer drift) or ``"refined"`` (importance sampling from a mixture placed by ``n_chains``
    inner chains per point and step that climb ``n_ascent`` gradient steps to the posterior's
    modes, then ``n_chain_steps`` MALA steps (0: Laplace components at the modes),
    :class:`~smcdiff.scores.refined.RDMCRefinedScore`; ``n_mc`` is then its importance draws),
    for ``"diffusion"`` only (the baselines fix it).

    ``grid="adaptive"`` (``"diffusion"`` only): each next time chosen from the particles so that
    the conditional ESS of the step's incremental weights is ``target_ess`` times N
    (:mod:`smcdiff.energy.time_grid_adaptive`): steps in log-SNR between the span over
    ``n_steps`` (then a cap on the number of steps) and ``max_step`` times the span,
    ``search_iters`` halvings, candidates scored on the ``search_fraction`` of the particles; each
    candidate costs one estimator pass (counted in ``n_target_evals``); ``cess_relative``: the
    target is ``target_ess`` times the CESS of the smallest step (the estimator's noise floor).
    """

    n_steps: int = 100
    n_mc: int = 64
    estimator: str = "tweedie"
    antithetic: bool = True
    grid: str = "log_snr"
    t_min: float | None = None
    t_max: float | None = None
    final_moves: int | None = None
    final_kernel: str | Callable[..., Kernel] = "mala"
    final_step_size: float | None = None
    chunk_size: int | None = None
    score: str = "rdmc"
    n_chains: int = 16
    n_chain_steps: int = 0
    n_ascent: int = 30
    target_ess: float = 0.5
    max_step: float = 0.25
    search_iters: int = 4
    search_fraction: float = 1.0
    cess_relative: bool = False

    def __post_init__(self) -> None:
        where = "sample(diffusion)"
        self.adaptive_grid()  # checks its options
        _set(self, "n_chains", check_int("n_chains", self.n_chains, 1, where=where))
        _set(self, "n_chain_steps", check_int("n_chain_steps", self.n_chain_steps, 0, where=where))
        _set(self, "n_ascent", check_int("n_ascent", self.n_ascent, 0, where=where))
        _set(self, "n_steps", check_int("n_steps", self.n_steps, 1, where=where))
        _set(self, "n_mc", check_int("n_mc", self.n_mc, 1, where=where))
        check_choice("estimator", self.estimator, ESTIMATORS, where=where)
        _flag(self, ("antithetic",), where)
        check_choice("grid", self.grid, (*GRIDS, "adaptive"), where=where)
        for name in ("t_min", "t_max"):
            t = check_number(name, getattr(self, name), minimum=0.0, maximum=1.0, where=where,
                             allow_none=True)  # fmt: skip
            _set(self, name, t)
        moves = check_int("final_moves", self.final_moves, 0, where=where, allow_none=True)
        _set(self, "final_moves", moves)
        get_kernel(self.final_kernel)
        _set(self, "final_step_size", _positive("final_step_size", self.final_step_size, where))
        chunk = check_int("chunk_size", self.chunk_size, 1, where=where, allow_none=True)
        _set(self, "chunk_size", chunk)
        check_choice("score", self.score, SCORES, where=where)

    def adaptive_grid(self) -> AdaptiveGrid:
        """The options of ``grid="adaptive"`` as an
        :class:`~smcdiff.energy.time_grid_adaptive.AdaptiveGrid` (checked there)."""
        return AdaptiveGrid(self.target_ess, self.max_step, self.search_iters,
                            self.search_fraction, self.cess_relative)  # fmt: skip


@dataclass(frozen=True)
class MCMCOptions:
    r"""Options of ``sample(method="mala" | "hmc" | "ula" | "underdamped" | "pcnl")``: N
    independent chains from the reference (:func:`smcdiff.mcmc.run_chain`).

    ``kernel``: set by the method name; ``n_steps``: kept steps after ``n_warmup`` warm-up steps
    (``None``: ``n_steps // 2`` for adapted kernels, else 0); ``step_size``: the initial step
    (``None``: :math:`0.1\,\sigma_{0,\min}^2` from the reference scale), adapted during warm-up
    toward ``target_accept`` (``None``: the kernel's default); ``kernel_options``: the kernel's own
    options (e.g. ``{"n_leapfrog": 10}``); ``nan_as_neg_inf``: treat a NaN target log-density
    as ``-inf`` instead of raising (:func:`~smcdiff.mcmc.run_chain`). Only the chains' last
    states are returned, so there is no thinning option.
    """

    kernel: str | Callable[..., Kernel] = "mala"
    n_steps: int = 1000
    n_warmup: int | None = None
    step_size: float | None = None
    target_accept: float | None = None
    kernel_options: Mapping[str, Any] = field(default_factory=dict)
    nan_as_neg_inf: bool = False

    def __post_init__(self) -> None:
        where = "sample(mcmc)"
        _flag(self, ("nan_as_neg_inf",), where)
        _set(self, "n_steps", check_int("n_steps", self.n_steps, 1, where=where))
        _set(self, "n_warmup", check_int("n_warmup", self.n_warmup, 0, where=where,
                                         allow_none=True))  # fmt: skip
        _set(self, "step_size", _positive("step_size", self.step_size, where))
        _set(self, "target_accept", _probability("target_accept", self.target_accept, where, True))
        _kernel_options(self, where)


@dataclass(frozen=True)
class RunSettings:
    r"""What every method of :func:`smcdiff.sample` shares, checked and resolved by it.

    ``n_groups`` independent systems of ``n_particles`` (``grouped``: keep the run dimension in
    the result); ``generator`` on ``device``; particles in ``dtype``; the reference
    :math:`\mathcal N(\mu, \sigma_0^2 I)` from ``reference_mean`` (``None``: 0) and
    ``reference_std``; ``resampling`` scheme, ``ess_threshold`` (resample when the ESS falls below
    it times N), ``check_every`` and ``progress`` as in :func:`smcdiff.run_smc`; ``checkpoint``
    (a :class:`~smcdiff.engine.checkpoint.Checkpointer` or ``None``) and ``start`` (a loaded
    :class:`~smcdiff.engine.checkpoint.Checkpoint` to continue, or ``None``) for the engine run.
    """

    target: Target
    n_particles: int
    n_groups: int
    grouped: bool
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    reference_std: float | torch.Tensor
    reference_mean: torch.Tensor | None
    resampling: str | Callable
    ess_threshold: float
    check_every: int | None
    progress: bool | Callable | None
    checkpoint: Any = None
    start: Any = None
