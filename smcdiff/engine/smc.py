r"""The one SMC engine: a step API over an explicit state, and :func:`run_smc`, a short loop over it.

Per step k = 1..K, for each of G independent groups of N particles (:meth:`SMC.step`):

1. decide (a device mask, no sync) whether to resample, from the current weights;
2. resample where the mask is set (weights reset to uniform), else keep the ancestry;
3. move and reweight: :math:`\log w_k^i = \log W_{k-1}^i + \log G_k^i` with :math:`W` normalised;
4. :math:`\log\hat Z \mathrel{+}= \log\sum_i W_{k-1}^i G_k^i` — right whether or not step 2 resampled,
   because :math:`W_{k-1}` is the normalised weight *after* that choice (uniform if it resampled);
5. optionally apply an MCMC corrector that leaves the current target invariant.

Log-weights and log Z are kept in float64. A user-written loop looks like :func:`run_smc`::

    smc = SMC(model, policy=ESSBelow(0.5))
    state, info = smc.init(n_particles, generator)
    for k in range(1, model.n_steps + 1):
        state, info = smc.step(state, generator)
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from smcdiff.checks import check_int, check_n_particles, check_progress, nan_or_posinf
from smcdiff.engine.checkpoint import (
    Checkpoint,
    Checkpointer,
    RunParts,
    Snapshot,
    as_checkpointer,
    check_stateful,
    describe_setting,
)
from smcdiff.engine.collectors import Collector, Trace
from smcdiff.engine.guard import (
    LOG_POTENTIAL,
    WEIGHTS_DEGENERATE,
    FiniteGuard,
    check_step_output,
    step_where,
)
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.progress import Progress
from smcdiff.engine.resampler import Resampler, as_resampler
from smcdiff.engine.result import SMCRun
from smcdiff.engine.state import SMCState, StepInfo
from smcdiff.errors import SMCDiffError
from smcdiff.resampling.policies import Always, ResamplingPolicy
from smcdiff.weights import ess as ess_fn
from smcdiff.weights import log_normalize

__all__ = ["SMC", "Corrector", "RunLoop", "run_smc"]

Corrector = Callable[[int, ParticleState, torch.Generator], tuple[ParticleState, dict]]
"""``corrector(k, state, generator) -> (state, info)``: an MCMC move invariant for the step-k
target, applied after reweighting. ``info`` maps names (e.g. ``"accept"``) to scalar tensors that
go into the trace."""


class SMC:
    r"""The step API (BlackJAX-style ``init`` / ``step`` over an explicit :class:`SMCState`).

    ``model``: a :class:`~smcdiff.engine.model.FeynmanKacModel`; ``resampling``: a scheme name, a
    scheme callable or a :class:`~smcdiff.engine.resampler.Resampler`; ``policy(log_w (G,N), k, t)
    -> (G,)`` bool decides when to resample (default: always); ``corrector``: MCMC moves after each
    step's reweighting; ``init_corrector``: MCMC moves invariant for the step-0 target
    :math:`M_0 G_0`, applied after step 0's reweighting and a resampling decision by ``policy``.
    ``where``: how argument errors name the caller. Every step checks what the model returned
    (a :class:`StepOutput` whose state has ``"x"`` and whose ``log_potential`` is ``(G*N,)`` on
    the particles' device; types and shapes, no sync) and names the step if it is wrong.
    """

    def __init__(
        self,
        model: FeynmanKacModel,
        *,
        resampling: str | Callable | Resampler = "systematic",
        policy: ResamplingPolicy | None = None,
        corrector: Corrector | None = None,
        init_corrector: Corrector | None = None,
        where: str = "SMC",
    ):
        if not isinstance(model, FeynmanKacModel):
            raise SMCDiffError(
                f"the engine runs subclasses of smcdiff.FeynmanKacModel, got {type(model).__name__}"
            )
        n_steps = getattr(model, "n_steps", None)
        check_int("n_steps", n_steps, 0, where=f"{where}: model {type(model).__name__}")
        _check_callables(where, policy=policy, corrector=corrector, init_corrector=init_corrector)
        times = model.times
        if times is not None and len(times) != model.n_steps + 1:
            raise SMCDiffError(
                f"model.times has {len(times)} entries, expected n_steps+1={model.n_steps + 1}"
            )
        self.model, self.resampler = model, as_resampler(resampling)
        self.policy = policy if policy is not None else Always()
        self.corrector, self.init_corrector = corrector, init_corrector

    def time(self, k: int) -> float | None:
        return None if self.model.times is None else float(self.model.times[k])

    def where(self, k: int) -> str:
        """How messages name step ``k``: the model's ``step_label(k)`` and its time."""
        return step_where(self.model.step_label, k, self.time(k))

    def init(
        self, n_particles: int, generator: torch.Generator, n_groups: int = 1
    ) -> tuple[SMCState, StepInfo]:
        """Step 0: draw ``n_groups * n_particles`` particles from :math:`M_0` and weight them by
        :math:`G_0`; the MCMC start (``init_corrector``) runs here."""
        G, N = n_groups, n_particles
        out = self.model.init(G * N, generator)
        check_step_output(out, G * N, "init", self.where(0))
        log_g = out.log_potential.reshape(G, N).double()
        inc = torch.logsumexp(log_g, dim=-1) - math.log(N)
        log_w = log_normalize(log_g)
        ess = ess_fn(log_w)
        state = SMCState(out.state, log_w, inc, 0, G, N)
        device = log_g.device
        mask = torch.zeros(G, dtype=torch.bool, device=device)
        ancestors = torch.arange(N, device=device).expand(G, N)
        nfe, extra = out.nfe, dict(out.info)
        if self.init_corrector is not None:
            mask = self.policy(log_w, 0, self.time(0))
            particles, log_w, ancestors = self.resampler(state.particles, log_w, mask, generator)
            particles, more = self._correct(self.init_corrector, 0, particles, generator)
            nfe += more.pop("_nfe")
            extra = {**more, **extra}
            state = state._replace(particles=particles, log_weights=log_w)
        invalid = _invalid(out, log_g, log_g)
        info = StepInfo(0, ess, inc, mask, ancestors, nfe, out.n_grad, extra, invalid, self.time(0))
        return state, info

    def step(self, state: SMCState, generator: torch.Generator) -> tuple[SMCState, StepInfo]:
        """Step ``state.step + 1``: resampling decision, resampling, move and reweighting, corrector."""
        k, G, N = state.step + 1, state.n_groups, state.n_particles
        mask = self.policy(state.log_weights, k, self.time(k - 1))  # (G,) bool on device
        particles, log_w, ancestors = self.resampler(
            state.particles, state.log_weights, mask, generator
        )
        out = self.model.step(k, particles, generator, log_w)
        check_step_output(out, G * N, "step", self.where(k))
        log_g = out.log_potential.reshape(G, N).double()
        log_w = log_w + log_g
        inc = torch.logsumexp(log_w, dim=-1)
        invalid = _invalid(out, log_g, log_w)
        log_w = log_w - inc.unsqueeze(-1)  # log_normalize(log_w), its logsumexp once
        particles, nfe, extra = out.state, out.nfe, dict(out.info)
        if self.corrector is not None:
            particles, more = self._correct(self.corrector, k, particles, generator)
            nfe += more.pop("_nfe")
            extra.update(more)
        new = SMCState(particles, log_w, state.log_z + inc, k, G, N)
        ess = ess_fn(log_w)
        info = StepInfo(k, ess, inc, mask, ancestors, nfe, out.n_grad, extra, invalid, self.time(k))
        return new, info

    def _correct(
        self, corrector: Corrector, k: int, particles: ParticleState, generator: torch.Generator
    ) -> tuple[ParticleState, dict]:
        """Corrector moves, then the model's ``refresh`` of what the state caches about ``x``."""
        particles, info = corrector(k, particles, generator)
        particles, extra_nfe = self.model.refresh(k, particles)
        return particles, {**info, "_nfe": extra_nfe}


_POLICY_FORM = "ResamplingPolicy (policy(log_w, step, t) -> (G,) bool mask)"


def _check_callables(where: str, **parts: Any) -> None:
    """Refuse a policy or corrector that is neither ``None`` nor callable, naming it."""
    for name, part in parts.items():
        if part is not None and not callable(part):
            form = _POLICY_FORM if name == "policy" else "corrector(k, state, generator)"
            raise SMCDiffError(
                f"{where}: {name} must be None or a callable {form}, got {type(part).__name__} "
                f"{part!r}"
            )


def _invalid(out: StepOutput, log_g: torch.Tensor, log_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Counts of invalid particles per quantity (the model's checks, then the engine's)."""
    counts = {name: mask.sum() for name, mask in out.checks.items()}
    counts[LOG_POTENTIAL] = nan_or_posinf(log_g).sum()
    counts[WEIGHTS_DEGENERATE] = (log_w == float("-inf")).all(dim=-1).sum()
    return counts


def run_smc(
    model: FeynmanKacModel,
    n_particles: int,
    *,
    n_groups: int = 1,
    resampling: str | Callable | Resampler = "systematic",
    policy: ResamplingPolicy | None = None,
    corrector: Corrector | None = None,
    init_corrector: Corrector | None = None,
    generator: torch.Generator | None = None,
    check_every: int | None = None,
    progress: bool | Callable[[int, StepInfo], None] | None = None,
    collectors: Sequence[Collector] = (),
    checkpoint: str | os.PathLike | Checkpointer | None = None,
    checkpoint_every: int | None = None,
    start: Checkpoint | None = None,
    stateful: Mapping[str, Any] | None = None,
) -> SMCRun:
    r"""Run ``model`` with ``n_groups`` independent systems of ``n_particles`` particles.

    See :class:`SMC` for ``resampling``, ``policy``, ``corrector`` and ``init_corrector``.
    ``check_every``: steps between finiteness checks (each one host-device sync); default 1 on
    CPU and 32 elsewhere; a final check always runs. ``progress``: ``None`` (a bar when attached
    to a terminal), ``True``/``False``, or a callable ``progress(k, info)`` after every step.
    ``collectors``: :class:`~smcdiff.engine.collectors.Collector` objects; their records land in
    ``SMCRun.collected`` by name.

    The trace (:class:`~smcdiff.engine.collectors.Trace`) holds, per step k = 0..K: ``t`` (if the
    model has times); ``ess`` ``(K+1, G)`` after reweighting; ``log_z_increment`` ``(K+1, G)``;
    ``resampled`` ``(K+1, G)`` (decided at the start of step k); ``nfe`` and ``n_grad``
    ``(K+1,)``; and any model or corrector info (NaN at steps without it). A model whose
    ``done(k, state)`` returns a tensor may stop early: then K is the last step run.

    Checkpoints (:mod:`smcdiff.engine.checkpoint`): ``checkpoint`` (a path or a
    :class:`~smcdiff.engine.checkpoint.Checkpointer`) writes the run's whole state at step 0,
    every ``checkpoint_every`` steps, at the end, and on an exception or ``KeyboardInterrupt``;
    ``start=load_checkpoint(path)`` continues such a run (same model, options and collectors,
    rebuilt by the caller; the generator's state comes from the checkpoint), bitwise equal to
    the uninterrupted run on the same device type. On any exception or ``KeyboardInterrupt``
    inside the loop the run re-raises it with ``err.partial``: an :class:`SMCRun` up to the
    last step checked finite (``None`` if step 0 failed; step 0 is always checked), and with
    checkpoints ``err.checkpoint``: the path written.
    ``stateful``: other objects whose state belongs to the run (name -> object with
    ``state_dict()`` / ``load_state_dict(state)``, e.g. an inner estimator with its own
    generator); checkpointed and restored with the model's.
    """
    check_n_particles(n_particles)
    n_groups = check_int("n_groups", n_groups, 1, where="run_smc")
    smc = SMC(model, resampling=resampling, policy=policy, corrector=corrector,
              init_corrector=init_corrector, where="run_smc")  # fmt: skip
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise SMCDiffError(f"run_smc: generator must be a torch.Generator or None, got "
                           f"{type(generator).__name__} {generator!r}")  # fmt: skip
    check_progress(progress, where="run_smc")
    given = collectors if isinstance(collectors, Iterable) else [collectors]
    bad = [c for c in given if not isinstance(c, Collector)]
    if bad:
        raise SMCDiffError(f"run_smc: collectors must be smcdiff.engine.Collector objects, got "
                           f"{type(bad[0]).__name__} {bad[0]!r}")  # fmt: skip
    saver = as_checkpointer(checkpoint, checkpoint_every, where="run_smc")
    if start is not None and not isinstance(start, Checkpoint):
        raise SMCDiffError(f"run_smc: start must be a Checkpoint (load_checkpoint(path)), got "
                           f"{type(start).__name__}")  # fmt: skip
    loop = RunLoop(smc, generator, collectors, saver, check_every, progress, stateful)
    if start is None:
        state = loop.begin(n_particles, n_groups)
    else:
        state = loop.restore(start, n_particles, n_groups)
    return loop.run(state, finished=start is not None and start.finished)


class RunLoop:
    """The loop of :func:`run_smc` over :meth:`SMC.step`: records every step, checks
    finiteness every ``check_every`` steps, keeps a :class:`~smcdiff.engine.checkpoint.Snapshot`
    of the last step checked finite, writes checkpoints; on an exception or a
    ``KeyboardInterrupt``, attaches the partial run (and writes a last checkpoint)."""

    def __init__(
        self,
        smc: SMC,
        generator: torch.Generator,
        collectors: Sequence[Collector],
        saver: Checkpointer | None,
        check_every: int | None,
        progress: bool | Callable[[int, StepInfo], None] | None,
        stateful: Mapping[str, Any] | None = None,
    ):
        self.smc, self.generator, self.saver, self.progress = smc, generator, saver, progress
        self.check_every = check_int("check_every", check_every, 1, where="run_smc",
                                     allow_none=True)  # fmt: skip
        self.trace, self.collectors = Trace(), list(collectors)
        correctors = {"corrector": smc.corrector, "init_corrector": smc.init_corrector}
        settings = {n: describe_setting(getattr(smc, n)) for n in ("resampler", "policy")}
        self.parts = RunParts(
            smc.model, [self.trace, *self.collectors],
            {n: c for n, c in correctors.items() if c is not None},
            check_stateful(stateful), settings,
        )  # fmt: skip
        self.good: Snapshot | None = None
        self.guard: FiniteGuard | None = None

    def begin(self, n_particles: int, n_groups: int) -> SMCState:
        """Step 0 (:meth:`SMC.init`), recorded."""
        state, info = self.smc.init(n_particles, self.generator, n_groups)
        self._setup(state)
        self.record(state, info)
        return state

    def restore(self, start: Checkpoint, n_particles: int, n_groups: int) -> SMCState:
        """The state of ``start``, with the generator, collectors, model and correctors."""
        state = self.parts.restore(start, self.generator, n_particles, n_groups)
        self._setup(state)
        self.good = self.parts.snapshot(state, self.generator, start.finished)
        return state

    def _setup(self, state: SMCState) -> None:
        device = state.log_weights.device
        self.check_every = self.check_every or (1 if device.type == "cpu" else 32)
        model = self.smc.model
        self.guard = FiniteGuard(
            state.n_groups * state.n_particles, model.n_steps, model.step_label
        )
        if self.saver is not None:
            self.saver.bind(self.parts.meta(state, self.generator))

    def record(self, state: SMCState, info: StepInfo) -> None:
        self.guard.record(info.step, info.invalid, info.t)
        for c in self.parts.collectors:
            c.collect(state, info)

    def run(self, state: SMCState, finished: bool = False) -> SMCRun:
        """The remaining steps (none if ``finished``); the run's :class:`SMCRun`."""
        tick = Progress(self.progress, self.smc.model.n_steps)
        tick.advance_to(state.step)
        try:
            if self.good is None:  # a fresh run: step 0, checked (one sync) before it is kept
                self.guard.raise_if_bad()
                self.good = self.parts.snapshot(state, self.generator)
                if self.saver is not None:
                    self.saver.write(self.good)
            if not finished:
                state = self._steps(state, tick)
        except BaseException as err:
            self._fail(err)
            raise
        finally:
            tick.close()
        return SMCRun.build(state, self.trace.result(), self.collectors)

    def _steps(self, state: SMCState, tick: Progress) -> SMCState:
        model, K = self.smc.model, self.smc.model.n_steps
        for k in range(state.step + 1, K + 1):
            state, info = self.smc.step(state, self.generator)
            self.record(state, info)
            stop = model.done(k, state.particles) if k < K else None
            finished = k == K or (stop is not None and bool(stop))
            save = self.saver is not None and (finished or self.saver.due(k))
            if save or finished or k % self.check_every == 0:
                self.guard.raise_if_bad()
                self.good = self.parts.snapshot(state, self.generator, finished)
                if save:
                    self.saver.write(self.good)
            tick(k, info)
            if finished:
                break
        return state

    def _fail(self, err: BaseException) -> None:
        """Attach ``err.partial`` (the run up to the last step checked finite, unless the
        error carries one) and, with checkpoints, write that step: ``err.checkpoint``."""
        good = self.good
        if good is None:
            return
        if self.saver is not None:
            try:
                self.saver.write(good)
                _attach(err, "checkpoint", self.saver.path)
            except Exception as write_err:  # keep the original error; say the write failed
                warnings.warn(f"run_smc: the last checkpoint was not written: {write_err}",
                              stacklevel=3)  # fmt: skip
                _attach(err, "checkpoint", None)
        if getattr(err, "partial", None) is None:
            self.parts.load_collectors(good)
            _attach(err, "partial", SMCRun.build(good.state, self.trace.result(), self.collectors))


def _attach(err: BaseException, name: str, value: object) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(err, name, value)
