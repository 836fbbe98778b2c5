r"""``sample()``: the front door for energy-defined targets :math:`\pi(x) \propto e^{-U(x)}`.

A registry, :data:`SAMPLE_METHODS`, maps each method name to a :class:`SampleMethod`: the frozen
dataclass of its options (:mod:`smcdiff.energy.options`), the runner ``(settings, options) ->
SMCResult`` and the options the method fixes itself. A new method is one module and one line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from smcdiff.checks import check_int, check_n_particles, check_number, check_progress
from smcdiff.energy.chains import run_mcmc
from smcdiff.energy.diffusion import run_diffusion
from smcdiff.energy.options import DiffusionOptions, MCMCOptions, RunSettings, TemperedOptions
from smcdiff.energy.tempered import run_tempered
from smcdiff.engine.checkpoint import (
    Checkpoint,
    Checkpointer,
    RunCall,
    as_checkpointer,
    register_call,
)
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.registry import KERNELS, get_kernel, kernel_name, kernel_parameters
from smcdiff.resampling import get_scheme
from smcdiff.result import SMCResult
from smcdiff.seeding import make_generator
from smcdiff.target import Target

__all__ = [
    "CHECKPOINTED_METHODS",
    "SAMPLE_METHODS",
    "SampleMethod",
    "method_options",
    "sample",
    "sample_call",
]


@dataclass(frozen=True)
class SampleMethod:
    """One entry of :data:`SAMPLE_METHODS`: ``options`` (the frozen dataclass of the method's
    options), ``run(settings, options) -> SMCResult`` and ``fixed`` (options the method sets
    itself, e.g. the kernel of ``"mala"``; passing them is an error)."""

    options: type
    run: Callable[[RunSettings, Any], SMCResult]
    fixed: Mapping[str, Any] = field(default_factory=dict)


SAMPLE_METHODS: dict[str, SampleMethod] = {
    "tempered": SampleMethod(TemperedOptions, run_tempered),
    "diffusion": SampleMethod(DiffusionOptions, functools.partial(run_diffusion, weighted=True)),
    "rdmc": SampleMethod(
        DiffusionOptions, functools.partial(run_diffusion, weighted=False), {"score": "rdmc"}
    ),
    "ensemble": SampleMethod(
        DiffusionOptions, functools.partial(run_diffusion, weighted=False), {"score": "follmer"}
    ),
    **{name: SampleMethod(MCMCOptions, run_mcmc, {"kernel": name}) for name in KERNELS},
}
"""Method name -> :class:`SampleMethod`."""


def sample(
    target: Target,
    *,
    method: str = "tempered",
    n_particles: int = 1000,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    n_runs: int | None = None,
    reference_std: float | torch.Tensor | None = None,
    reference_mean: torch.Tensor | None = None,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 1.0,
    check_every: int | None = None,
    progress: bool | Callable | None = None,
    options: Any = None,
    checkpoint: str | os.PathLike | Checkpointer | None = None,
    checkpoint_every: int | None = None,
    distributed: bool = False,
    **kwargs: Any,
) -> SMCResult:
    r"""Weighted particles for :math:`\pi \propto e^{\text{target.log\_prob}}` and its log
    normaliser.

    ``target``: a :class:`~smcdiff.Target` (``dim``, optional ``event_shape``, batched
    ``log_prob`` ``(N, *event_shape) -> (N,)``). Every method starts from the reference
    :math:`\mathcal N(\mu, \sigma_0^2 I)` with :math:`\sigma_0` = ``reference_std`` (default:
    ``target.reference_std`` if the target has one, else 1; a float or a tensor of the event
    shape) and :math:`\mu` = ``reference_mean`` (default 0).

    Methods and their options (``options=`` the method's dataclass, and/or its fields as keyword
    arguments; an option the method does not take is an error naming it and listing the valid
    ones):

    * ``"tempered"``: adaptive tempered SMC (:class:`~smcdiff.energy.options.TemperedOptions`:
      ``kernel="hmc"``, ``n_moves=5``, ``target_ess=0.5``, ``step_size``, ``target_accept``,
      ``max_steps``, ``adapt_gain``, ``cuda_graph`` (default on CUDA: each step's MCMC moves run
      as one cached CUDA graph, 5-14x faster on an H100), kernel options such as
      ``n_leapfrog``; ``nan_as_neg_inf``, ``schedule``, ``unbiased``: the adaptive run's
      :math:`\hat Z` is slightly biased at small N, ``unbiased=True`` adds a second run on the
      first one's temperatures whose :math:`\hat Z` is unbiased); particles of any event shape;
      resampling when the ESS falls below ``ess_threshold * N`` (default 1: every step); a run
      that stops (``max_steps``) below temperature 1 raises;
    * ``"diffusion"``: SMC along a VP diffusion path in the coordinates scaled by the reference,
      proposals from estimated scores (``score="rdmc"``: rdMC importance sampling, or
      ``"follmer"``), path weights from the estimators' :math:`\hat p_t` that telescope to the
      target, so it is consistent with an unbiased :math:`\hat Z`
      (:class:`~smcdiff.energy.options.DiffusionOptions`: ``n_steps=100``, ``n_mc=64`` inner
      samples, ``final_moves=10`` MALA moves; see :mod:`smcdiff.energy.diffusion`);
    * ``"rdmc"``, ``"ensemble"``: the unweighted reverse SDE with the rdMC score or the Föllmer
      drift (biased baselines, ``log_z`` NaN; the same options but ``score``);
    * ``"mala"``, ``"hmc"``, ``"ula"``, ``"underdamped"``, ``"pcnl"``: MCMC only, N independent
      chains from the reference (:class:`~smcdiff.energy.options.MCMCOptions`: ``n_steps=1000``,
      ``n_warmup``, ``step_size``, ``target_accept``, kernel options); the particles are the
      chains' last states, equally weighted, ``log_z`` is NaN and the trace has one step (its
      ``ess`` is N; see :func:`~smcdiff.energy.chains.run_mcmc`).

    ``n_runs`` runs independent systems at once (results get a leading run dimension).
    ``seed``: an int (NumPy ints accepted) or ``None`` (a fresh seed, reported in ``info``).
    ``progress``: ``None`` (a bar when standard error is a terminal: the temperature from 0 to 1
    for ``"tempered"``, the steps otherwise), ``True``/``False``, or a callable
    ``progress(k, info)``. ``result.info`` holds the settings, ``n_target_evals``,
    ``n_grad_evals`` and ``wall_time_s``.

    Checkpoints (the SMC methods, :data:`CHECKPOINTED_METHODS`; docs/checkpoint.md):
    ``checkpoint`` (a path, or a
    :class:`~smcdiff.engine.checkpoint.Checkpointer` for a time-based cadence) writes the run's
    whole state atomically at step 0, every ``checkpoint_every`` steps, at the end and when the
    run stops on an exception or ``KeyboardInterrupt``, with this call's arguments (those that
    pickle); :func:`smcdiff.resume` continues it, bitwise equal to the uninterrupted run on the
    same device type. An exception or ``KeyboardInterrupt`` during an SMC run is re-raised with
    ``err.partial``, the run up to the last step checked finite, as an :class:`SMCResult` (and
    ``err.checkpoint``, the path written, when checkpointing); during an MCMC run, with the
    chains so far as an :class:`SMCResult` (:func:`~smcdiff.energy.chains.run_mcmc`).

    ``distributed=True`` (``"tempered"``; docs/distributed.md): one run over the ranks of an
    initialised ``torch.distributed`` group, ``n_particles`` split evenly, temperatures from the
    global conditional ESS, distributed systematic resampling; ``result.gather()``.
    """
    args = dict(
        target=target, method=method, n_particles=n_particles, seed=seed, device=device,
        dtype=dtype, n_runs=n_runs, reference_std=reference_std, reference_mean=reference_mean,
        resampling=resampling, ess_threshold=ess_threshold, options=options, **kwargs,
    )  # fmt: skip
    if distributed:
        args["distributed"] = True
    control = {"check_every": check_every, "progress": progress}
    return sample_call(args, control, as_checkpointer(checkpoint, checkpoint_every, "sample"))


CHECKPOINTED_METHODS = ("tempered", "diffusion", "rdmc", "ensemble")
"""The :func:`sample` methods that take ``checkpoint=`` (SMC runs of the engine)."""

_SETTINGS = ("n_particles", "seed", "device", "dtype", "n_runs", "reference_std",
             "reference_mean", "resampling", "ess_threshold")  # fmt: skip


def sample_call(
    args: dict[str, Any],
    control: dict[str, Any],
    saver: Checkpointer | None = None,
    start: Checkpoint | None = None,
) -> SMCResult:
    """:func:`sample` on its arguments ``args`` (all but the run controls ``check_every`` and
    ``progress``, in ``control``), writing checkpoints with ``saver`` (which then stores
    ``args``), continuing ``start`` if given."""
    method, target = args["method"], args["target"]
    if method not in SAMPLE_METHODS:
        raise SMCDiffError(
            f"sample: method must be one of {sorted(SAMPLE_METHODS)}, got {method!r}"
        )
    if not isinstance(target, Target):
        raise SMCDiffError(
            "sample: target must have .dim and .log_prob(x) "
            "(see smcdiff.Target / smcdiff.as_target)"
        )
    kwargs = {k: v for k, v in args.items()
              if k not in (*_SETTINGS, "target", "method", "options", "distributed")}  # fmt: skip
    opts = method_options(method, args["options"], **kwargs)
    if saver is not None:
        _check_checkpointable(method, opts)
        if args["seed"] is None:  # the resumed run must report this seed
            args = {**args, "seed": make_generator(None)[1]}
    settings, seed = _settings(target, **{k: args[k] for k in _SETTINGS}, **control,
                               checkpoint=saver, start=start)  # fmt: skip
    if saver is not None:
        saver.call = RunCall.capture("sample", args, saver.max_argument_bytes)
    t0 = time.perf_counter()
    try:
        result = _runner(method, opts, args.get("distributed", False))(settings, opts)
    except BaseException as err:  # its partial run (if any) becomes an SMCResult
        info = {"method": method, "seed": seed, "device": str(settings.device)}
        weighted = getattr(SAMPLE_METHODS[method].run, "keywords", {}).get("weighted", True)
        SMCResult.wrap_partial(err, grouped=settings.grouped, info=info, has_log_z=weighted)
        raise
    if settings.device.type == "cuda":
        torch.cuda.synchronize(settings.device)
    result.info = {
        "method": method,
        "seed": seed,
        "device": str(settings.device),
        "n_particles": settings.n_particles,
        **result.info,
        "wall_time_s": time.perf_counter() - t0,
    }
    if start is not None:
        result.info["resumed_from_step"] = start.step
    result.target = target
    result.diagnose(full=False).warn(stacklevel=3)
    return result


def _runner(method: str, options: Any, distributed: bool) -> Callable[[RunSettings, Any], Any]:
    if not distributed:
        return SAMPLE_METHODS[method].run
    from smcdiff.distributed.front import distributed_sample_runner

    return distributed_sample_runner(method, options)


def _check_checkpointable(method: str, options: Any) -> None:
    if method not in CHECKPOINTED_METHODS:
        raise SMCDiffError(
            f"sample(method={method!r}) does not take checkpoint=: checkpoints cover the SMC "
            f"methods {', '.join(map(repr, CHECKPOINTED_METHODS))}"
        )
    if getattr(options, "unbiased", False):
        raise SMCDiffError(
            "sample(method='tempered', unbiased=True) runs twice (a pilot, then a fixed "
            "schedule) and does not take checkpoint=; checkpoint the adaptive run, or pass "
            "schedule= (the pilot's temperatures) to checkpoint the second run"
        )


register_call("sample", sample_call)


def method_options(method: str, options: Any = None, **kwargs: Any) -> Any:
    """The options dataclass of ``method`` (see :data:`SAMPLE_METHODS`), from ``options`` (an
    instance of it, or ``None`` for the defaults) updated by ``kwargs``: its field names, and for
    kernel methods the kernel's own options (``n_leapfrog``, ...), which go to
    ``kernel_options``. Unknown names raise an :class:`SMCDiffError` listing the valid ones."""
    entry = SAMPLE_METHODS[method]
    cls, where = entry.options, f"sample(method={method!r})"
    if options is None:
        options = cls(**entry.fixed)
    elif not isinstance(options, cls):
        raise SMCDiffError(
            f"{where}: options must be a {cls.__name__}, got {type(options).__name__}"
        )
    for name, value in entry.fixed.items():
        if getattr(options, name) != value:
            raise SMCDiffError(
                f"{where}: {name} is set by the method to {value!r}, got {getattr(options, name)!r}"
            )
    names = _field_names(entry)
    given = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    kernel, kernel_params = None, None
    if "kernel_options" in names:
        kernel = given.get("kernel", options.kernel)
        kernel_params = kernel_parameters(get_kernel(kernel))
        moved = {k: rest.pop(k) for k in list(rest) if kernel_params is None or k in kernel_params}
        if moved:
            given["kernel_options"] = {
                **given.get("kernel_options", options.kernel_options),
                **moved,
            }
    if rest:
        raise SMCDiffError(_unknown_options(method, list(rest), names, kernel, kernel_params))
    return dataclasses.replace(options, **given) if given else options


def _unknown_options(
    method: str,
    unknown: list[str],
    names: set[str],
    kernel: Any,
    kernel_params: tuple[str, ...] | None,
) -> str:
    """The error message for options ``method`` does not take: each name (noting the methods
    that take it, or that the method sets it itself) and the valid names."""
    notes = []
    for name in unknown:
        if name in SAMPLE_METHODS[method].fixed:
            notes.append(f"{name!r} is set by method {method!r}")
            continue
        others = [m for m, e in SAMPLE_METHODS.items() if name in _field_names(e)]
        if others:
            notes.append(f"{name!r} is an option of method {', '.join(map(repr, others[:3]))}")
    valid = ", ".join(sorted(names - {"kernel_options"}))
    if kernel_params:
        valid += f"; options of kernel {kernel_name(kernel)!r}: {', '.join(kernel_params)}"
    why = f" ({'; '.join(notes)})" if notes else ""
    return (
        f"sample: unknown options for method {method!r}: {', '.join(map(repr, unknown))}{why}; "
        f"valid options: {valid}"
    )


def _field_names(entry: SampleMethod) -> set[str]:
    """The option names a method takes (its dataclass's fields but the fixed ones)."""
    return {f.name for f in dataclasses.fields(entry.options)} - set(entry.fixed)


def _settings(target: Target, **kw: Any) -> tuple[RunSettings, int]:
    """Check and resolve the settings every method shares; returns them and the run's seed."""
    n_particles = check_n_particles(kw["n_particles"])
    n_runs = check_int("n_runs", kw["n_runs"], 1, where="sample", allow_none=True)
    ess_threshold = check_number(
        "ess_threshold", kw["ess_threshold"], minimum=0.0, maximum=1.0, where="sample"
    )
    get_scheme(kw["resampling"])
    device = torch.device(kw["device"] if kw["device"] is not None else _target_device(target))
    dtype = kw["dtype"] or getattr(target, "dtype", None) or torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SMCDiffError(f"sample: dtype must be a torch.dtype of floating point (e.g. "
                           f"torch.float64), got {dtype!r}")  # fmt: skip
    check_int("check_every", kw["check_every"], 1, where="sample", allow_none=True)
    check_progress(kw["progress"], where="sample")
    reference_std = kw["reference_std"]
    if reference_std is None:
        reference_std = getattr(target, "reference_std", 1.0)
    generator, seed = make_generator(kw["seed"], device)
    settings = RunSettings(
        target=target, n_particles=n_particles, n_groups=n_runs or 1, grouped=n_runs is not None,
        generator=generator, device=device, dtype=dtype, reference_std=reference_std,
        reference_mean=kw["reference_mean"], resampling=kw["resampling"],
        ess_threshold=ess_threshold, check_every=kw["check_every"], progress=kw["progress"],
        checkpoint=kw.get("checkpoint"), start=kw.get("start"),
    )  # fmt: skip
    return settings, seed


def _target_device(target: Target) -> torch.device:
    dev = getattr(target, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")
