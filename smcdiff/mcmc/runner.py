"""Run N batched chains with warm-up adaptation, and collect the draws (``ChainResult``)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.checks import check_int, check_shape
from smcdiff.engine.progress import Progress
from smcdiff.errors import NonFiniteError, SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import Kernel, LogProb, MCMCState, MoveInfo, finite_rows, nan_to_neg_inf
from smcdiff.mcmc.registry import (
    KERNELS,
    check_kernel_options,
    get_kernel,
    kernel_name,
    resolve_target_accept,
)
from smcdiff.seeding import seeded_generator

__all__ = [
    "KERNELS",
    "ChainMonitor",
    "ChainResult",
    "DivergenceWarning",
    "LiveChains",
    "get_kernel",
    "resolve_target_accept",
    "run_chain",
]

NAN_QUANTITIES = ("target log_prob", "target gradient")
"""The quantities a chain's NaN checks name (``MoveInfo.nan_log_prob``, ``.nan_grad``)."""


class DivergenceWarning(RuntimeWarning):
    """An unadjusted kernel (ULA, underdamped Langevin) stepped to where the target or its
    gradient is not finite, so chains were held back: the step size is too large for the target
    (or the chain stepped out of the support). Their draws are not samples of the target."""


class ChainMonitor:
    """Device-side record of a run's bad steps, read back only by :meth:`raise_if_nan` and
    :meth:`warn_if_diverged` (no host-device sync per step).

    Per quantity of :data:`NAN_QUANTITIES`: the first step ``t`` (1-based over warm-up and kept
    steps, 0: none) at which some chain evaluated the target to NaN, and how many chains did;
    per chain: whether an unadjusted kernel held it back (``diverged``), and the first such step.
    """

    def __init__(
        self,
        n_chains: int,
        device: torch.device,
        kernel: str,
        n_warmup: int,
        check_every: int | None = None,
    ):
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.every = check_every or (1 if device.type == "cpu" else 32)
        self.first = {q: zero for q in NAN_QUANTITIES}
        self.count = {q: zero for q in NAN_QUANTITIES}
        self.diverged = torch.zeros(n_chains, dtype=torch.bool, device=device)
        self.first_diverged = zero
        self.kernel, self.n_warmup, self.n_chains = kernel, n_warmup, n_chains

    def record(self, t: int, info: MoveInfo) -> None:
        """Fold step ``t``'s :class:`~smcdiff.mcmc.MoveInfo` in (device ops only)."""
        masks = (getattr(info, "nan_log_prob", None), getattr(info, "nan_grad", None))
        for q, mask in zip(NAN_QUANTITIES, masks, strict=True):
            if mask is not None:
                c = mask.sum()
                new = (self.first[q] == 0) & (c > 0)
                self.first[q] = torch.where(new, t, self.first[q])
                self.count[q] = torch.where(new, c, self.count[q])
        div = getattr(info, "diverged", None)
        if div is not None:
            new = (self.first_diverged == 0) & div.any()
            self.first_diverged = torch.where(new, t, self.first_diverged)
            self.diverged = self.diverged | div

    def check(self, t: int) -> None:
        """:meth:`raise_if_nan` every ``check_every`` steps (default: every step on CPU, every 32
        steps elsewhere; each a sync)."""
        if t % self.every == 0:
            self.raise_if_nan()

    def raise_if_nan(self, where: str = "run_chain") -> None:
        """Raise a :class:`~smcdiff.errors.NonFiniteError` naming the quantity and the first
        step if any chain evaluated the target to NaN (one host-device sync)."""
        table = torch.stack([torch.stack([self.first[q], self.count[q]]) for q in NAN_QUANTITIES])
        table = table.cpu()
        for (first, count), q in zip(table.tolist(), NAN_QUANTITIES, strict=True):
            if first:
                phase = " (warm-up)" if first <= self.n_warmup else ""
                fix = (
                    "; if the target is NaN outside its support, pass nan_as_neg_inf=True"
                    if q == "target log_prob"
                    else ""
                )
                raise NonFiniteError(
                    f"{where}: {q} is NaN (or +inf) at a finite point for {count} of "
                    f"{self.n_chains} chains at step {first}{phase} of the {self.kernel} "
                    f"chains{fix}",
                    quantity=q,
                    step=first,
                )

    def warn_if_diverged(self, step_size: torch.Tensor, where: str = "run_chain") -> int:
        """Warn (:class:`DivergenceWarning`) if an unadjusted kernel held chains back; returns
        the number of such chains."""
        n = int(self.diverged.sum())
        if n:
            warnings.warn(
                f"{where}: {self.kernel} diverged: {n} of {self.n_chains} chains stepped to where "
                f"the target log-density or its gradient is not finite (first at step "
                f"{int(self.first_diverged)}) and were held back, so their draws are not samples "
                f"of the target; lower step_size (max now {float(step_size.max()):.3g})",
                DivergenceWarning,
                stacklevel=3,
            )
        return n


@dataclass
class ChainResult:
    """Draws of N chains after warm-up, keeping every ``thin``-th step.

    ``samples`` ``(n_kept, N, *event_shape)``; ``log_prob`` and ``accept_prob`` ``(n_kept, N)`` at
    the kept steps; ``accept_rate`` ``(N,)``: mean acceptance probability over all post-warm-up
    steps; ``step_size`` ``(N,)``: the (frozen) step size used after warm-up; ``n_nonfinite``:
    rejected non-finite proposals over the whole run.
    """

    samples: torch.Tensor
    log_prob: torch.Tensor
    accept_prob: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    n_nonfinite: int
    kernel: str
    n_diverged: int = 0
    stopped_at: int | None = None
    """``None`` for a finished run. For the ``err.partial`` of a run stopped by an exception or
    ``KeyboardInterrupt`` (a :class:`~smcdiff.errors.NonFiniteError`, the user's target
    failing, Ctrl-C): the last step completed, counted over warm-up and kept steps; its
    ``samples`` are the draws kept so far, or the chains' current states (one draw) if the run
    stopped before keeping any, and its ``accept_rate`` is over the kept steps done (NaN if
    none)."""

    def to_arviz(self) -> Any:
        """ArviZ ``InferenceData``; chains are the particles: posterior ``x``
        ``(chain, draw, *event_shape)``; sample_stats ``lp``, ``acceptance_rate`` and
        ``step_size``, each ``(chain, draw)``. ArviZ's "more chains than draws" warning is
        silenced: many chains is the point here."""
        import arviz as az

        def arr(t: torch.Tensor) -> Any:
            return t.detach().cpu().numpy()

        n_kept = self.samples.shape[0]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="More chains")
            return az.from_dict(
                posterior={"x": arr(self.samples.transpose(0, 1))},
                sample_stats={
                    "lp": arr(self.log_prob.T),
                    "acceptance_rate": arr(self.accept_prob.T),
                    "step_size": arr(self.step_size.unsqueeze(1).expand(-1, n_kept)),
                },
                attrs={"kernel": self.kernel},
            )


def run_chain(
    kernel: str | Callable[..., Kernel],
    log_prob: LogProb,
    x0: torch.Tensor,
    n_steps: int,
    *,
    step_size: float | torch.Tensor = 0.1,
    target_accept: float | None = None,
    n_warmup: int | None = None,
    thin: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    progress: bool | Callable[[int, Any], None] | None = None,
    nan_as_neg_inf: bool = False,
    check_every: int | None = None,
    **kernel_kwargs: Any,
) -> ChainResult:
    """Run ``N = x0.shape[0]`` chains: ``n_warmup`` warm-up steps, then ``n_steps`` kept steps.

    ``x0``: ``(N, *event_shape)`` (``(N, d)`` for vectors), ``log_prob``: ``x -> (N,)``.
    ``kernel``: a name in :data:`KERNELS` or a factory ``(log_prob, **kernel_kwargs) -> Kernel``;
    ``kernel_kwargs`` are checked against the options the kernel takes.
    ``step_size``: float or ``(N,)``, the initial step size. ``target_accept``: acceptance rate
    the warm-up adapts toward, per chain (Robbins–Monro, :mod:`smcdiff.mcmc.adapt`); ``None``
    takes the kernel's default (MALA and pCNL 0.574, HMC 0.65, ULA and underdamped: no adaptation).
    ``n_warmup``: default ``n_steps // 2`` when adapting, else 0 (``0`` switches adaptation off).
    Randomness: ``generator``, or a fresh one seeded with ``seed``. ``progress``: ``None`` (a bar
    over the ``n_warmup + n_steps`` steps when standard error is a terminal), ``True``/``False``,
    or a callable ``progress(step, info)`` with the kernel's :class:`~smcdiff.mcmc.MoveInfo`.

    A target log-density that is NaN (or +inf), or a gradient that is NaN where it is finite, at
    a point a chain proposes raises a :class:`~smcdiff.errors.NonFiniteError` naming the
    quantity and the first step (checked on the device, read back every ``check_every`` steps:
    default every step on CPU and every 32 steps elsewhere, and at the end); ``nan_as_neg_inf=True`` treats NaN log-densities as ``-inf`` (zero
    density: proposals there are rejected). Unadjusted kernels that step to where the target is
    not finite issue a :class:`DivergenceWarning` and count the chains in ``n_diverged``.
    Any exception or ``KeyboardInterrupt`` during the steps is re-raised with ``err.partial``,
    the :class:`ChainResult` of the chains so far (see ``ChainResult.stopped_at``).
    """
    where = "run_chain"
    check_shape("x0", x0, (None, None, *([None] * (x0.dim() - 2))), where=where)
    if x0.shape[0] < 1 or x0[0].numel() < 1:
        raise SMCDiffError(
            f"{where}: x0 has shape {tuple(x0.shape)}; need (N >= 1 chains, *event_shape) with a "
            "non-empty event"
        )
    n_steps = check_int("n_steps", n_steps, where=where)
    if n_steps < 1:  # worded as the kernels word their counts ("an int >= 1")
        raise SMCDiffError(f"{where}: n_steps must be an int >= 1, got {n_steps}")
    thin = check_int("thin", thin, 1, where=where)
    if thin > n_steps:
        raise SMCDiffError(f"{where}: thin={thin} > n_steps={n_steps} would keep no draws")
    factory = get_kernel(kernel)
    check_kernel_options(kernel, kernel_kwargs, where=where)
    target = resolve_target_accept(factory, target_accept)
    if n_warmup is None:
        n_warmup = n_steps // 2 if target is not None else 0
    n_warmup = check_int("n_warmup", n_warmup, 0, where=where)
    h = _initial_step_size(step_size, x0)
    if generator is None:
        seed = check_int("seed", seed, 0, where=where, allow_none=True)
        generator = seeded_generator(seed, x0.device)
    elif seed is not None:
        raise SMCDiffError(f"{where}: pass generator or seed, not both")

    if not isinstance(nan_as_neg_inf, bool):
        raise SMCDiffError(f"{where}: nan_as_neg_inf must be True or False")
    k = factory(nan_to_neg_inf(log_prob) if nan_as_neg_inf else log_prob, **kernel_kwargs)
    live = LiveChains(_start(k, x0, generator), h, kernel_name(kernel))
    tick = Progress(progress, n_warmup + n_steps, desc=live.kernel)
    check_every = check_int("check_every", check_every, 1, where=where, allow_none=True)
    watch = ChainMonitor(x0.shape[0], x0.device, live.kernel, n_warmup, check_every)
    try:
        _warmup(k, live, n_warmup, target, generator, tick, watch)
        _draw(k, live, n_steps, thin, generator, tick, n_warmup, watch)
        watch.raise_if_nan()
    except BaseException as err:  # keep the chains so far: err.partial
        if getattr(err, "partial", None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                err.partial = live.result(n_diverged=0, stopped=True)
        raise
    finally:
        tick.close()
    return live.result(n_diverged=watch.warn_if_diverged(live.h))


def _start(k: Kernel, x0: torch.Tensor, generator: torch.Generator) -> MCMCState:
    """The kernel's state at ``x0``; an error if any chain starts where the target is not finite."""
    where, n_chains = "run_chain", x0.shape[0]
    state = k.init(x0, generator)
    check_shape("log_prob(x0)", state.log_prob, (n_chains,), where=where)
    bad = ~finite_rows(state.log_prob, state.grad)
    n_bad = int(bad.sum())
    if n_bad:
        first = int(bad.nonzero()[0, 0])
        raise SMCDiffError(
            f"{where}: log_prob or its gradient is not finite at x0 for {n_bad} of {n_chains} "
            f"chains (first: chain {first}); start every chain where the target is positive"
        )
    return state


class LiveChains:
    """The chains of a run as it goes: the current ``state``, the step sizes ``h`` ``(N,)``, the
    last step completed ``t`` (over warm-up and kept steps), the kept draws, the sum of the
    acceptance probabilities over the ``n_kept_steps`` post-warm-up steps done and the count of
    non-finite proposals (device tensors: no sync). :meth:`result` makes the
    :class:`ChainResult`, of a finished run or of one stopped mid-way (``err.partial``)."""

    def __init__(self, state: MCMCState, h: torch.Tensor, kernel: str):
        self.state, self.h, self.kernel, self.t, self.n_kept_steps = state, h, kernel, 0, 0
        self.kept: dict[str, list[torch.Tensor]] = {"x": [], "lp": [], "acc": []}
        self.acc_sum = torch.zeros(state.x.shape[0], dtype=state.x.dtype, device=state.x.device)
        self.n_nonfinite = torch.zeros((), dtype=torch.long, device=state.x.device)

    def advance(self, t: int, state: MCMCState, info: MoveInfo) -> None:
        """Step ``t`` done: its state and its count of non-finite proposals."""
        self.t, self.state = t, state
        self.n_nonfinite = self.n_nonfinite + info.n_nonfinite

    def result(self, n_diverged: int, stopped: bool = False) -> ChainResult:
        kept = self.kept
        if not kept["x"]:  # stopped before the first kept draw: the current states
            nan = torch.full_like(self.state.log_prob, math.nan)
            kept = {"x": [self.state.x], "lp": [self.state.log_prob], "acc": [nan]}
        out = {name: torch.stack(v) for name, v in kept.items()}
        rate = self.acc_sum / self.n_kept_steps if self.n_kept_steps else self.acc_sum * math.nan
        return ChainResult(
            samples=out["x"],
            log_prob=out["lp"],
            accept_prob=out["acc"],
            accept_rate=rate,
            step_size=self.h,
            n_nonfinite=int(self.n_nonfinite),
            kernel=self.kernel,
            n_diverged=n_diverged,
            stopped_at=self.t if stopped else None,
        )


def _warmup(
    k: Kernel,
    live: LiveChains,
    n_warmup: int,
    target: float | None,
    generator: torch.Generator,
    tick: Progress,
    watch: ChainMonitor,
) -> None:
    """``n_warmup`` steps adapting each chain's step size ``live.h`` toward ``target`` (if not
    ``None``) by Robbins–Monro with gains :func:`~smcdiff.mcmc.rm_gain`; the step sizes are then
    frozen."""
    log_h = live.h.log()
    for t in range(1, n_warmup + 1):
        state, info = k.step(live.state, live.h, generator)
        watch.record(t, info)
        if target is not None:
            log_h = robbins_monro(log_h, info.accept_prob, target, rm_gain(t))
            live.h = log_h.exp()
        watch.check(t)
        live.advance(t, state, info)
        tick(t, info)


def _draw(
    k: Kernel,
    live: LiveChains,
    n_steps: int,
    thin: int,
    generator: torch.Generator,
    tick: Progress,
    offset: int,
    watch: ChainMonitor,
) -> None:
    """``n_steps`` steps at the frozen step size ``live.h``, keeping every ``thin``-th state in
    ``live.kept`` (``x``, ``lp``, ``acc``) and summing the acceptance probabilities."""
    for i in range(1, n_steps + 1):
        state, info = k.step(live.state, live.h, generator)
        watch.record(offset + i, info)
        watch.check(offset + i)
        live.advance(offset + i, state, info)
        live.acc_sum = live.acc_sum + info.accept_prob
        live.n_kept_steps = i
        if i % thin == 0:
            live.kept["x"].append(state.x)
            live.kept["lp"].append(state.log_prob)
            live.kept["acc"].append(info.accept_prob)
        tick(offset + i, info)


def _initial_step_size(step_size: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Validated ``(N,)`` step sizes in ``x0``'s dtype and device."""
    n = x0.shape[0]
    if isinstance(step_size, bool):
        raise SMCDiffError(f"run_chain: step_size must be a number or a tensor, got {step_size!r}")
    h = torch.as_tensor(step_size, dtype=x0.dtype, device=x0.device)
    if h.dim() == 0:
        h = h.expand(n)
    check_shape("step_size", h, (n,), where="run_chain")
    if not bool((torch.isfinite(h) & (h > 0)).all()):
        raise SMCDiffError(f"run_chain: step_size must be finite and > 0, got {step_size}")
    return h.clone()
