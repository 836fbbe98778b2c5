r"""A trained network (any ``nn.Module`` or callable) as a :class:`~smcdiff.scores.base.ScoreModel`.

:class:`NetworkScore` calls ``net(x, net_time, **cond)`` with particles ``x`` ``(N, *event_shape)``
and converts its output to the score :math:`s_t(x) = \nabla_x\log p_t(x)` through
:mod:`smcdiff.processes.parameterization`; with :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`:

* ``"eps"``: :math:`\hat\varepsilon`, :math:`s = -\hat\varepsilon/\sigma_t`;
* ``"x0"``: :math:`\hat x_0`, :math:`s = (\alpha_t\hat x_0 - x)/\sigma_t^2`;
* ``"v"``: :math:`\hat v = \alpha_t\hat\varepsilon - \sigma_t\hat x_0`;
* ``"score"``: the score itself;
* ``"velocity"``: the flow-matching velocity :math:`\hat u = \dot\alpha_t\hat x_0 +
  \dot\sigma_t\hat\varepsilon` (the probability-flow ODE's drift; a flow model under :class:`Flow`).

The time the net sees (``time_input``) is our :math:`t \in [0, 1]` (``"t"``), :math:`\sigma_t`
(``"sigma"``), :math:`\lambda_t = \log(\alpha_t^2/\sigma_t^2)` (``"log_snr"``), the integer
training timestep of a discrete schedule (``"index"``: the process must follow
:class:`DiscreteTimeProcess`), or any callable ``(N,) -> (N,)``. A net trained on the
VE-equivalent noise level :math:`\sigma_t/\alpha_t` (EDM, k-diffusion) takes
``time_input=lambda t: torch.exp(-0.5 * process.log_snr(t))``.

No density: a network gives scores only, so a path correction (which needs
:math:`\log p_t`) is off and FK / TDS weights are exact only as the step count grows.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from smcdiff.checks import check_choice, check_int, check_options, check_shape
from smcdiff.errors import SMCDiffError
from smcdiff.processes.parameterization import KINDS, convert, to_score
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.base import model_time

__all__ = [
    "COMPILE_MODES",
    "PREDICTIONS",
    "TIME_INPUTS",
    "CompiledNet",
    "DiscreteTimeProcess",
    "NFECounter",
    "NetworkScore",
]

PREDICTIONS = KINDS  # ("score", "eps", "x0", "v", "velocity")
TIME_INPUTS = ("t", "sigma", "log_snr", "index")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_KEYS = ("mode", "backend", "dynamic", "fullgraph", "options")
WHERE = "NetworkScore"
_MODE_LAYERS = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
)


@runtime_checkable
class DiscreteTimeProcess(Protocol):
    r"""What ``time_input="index"`` asks of a process: a :class:`NoiseProcess` whose network was
    trained on integer timesteps (a DDPM ``alphas_cumprod`` schedule).

    ``timestep(t)`` maps times ``t`` ``(N,)`` in [0, 1] (floating point, on the device of the
    particles) to the timesteps the network was trained on, ``(N,)`` on the same device: an integer
    tensor (or a floating one for a net trained on fractional timesteps). The process's
    :math:`\alpha_t, \sigma_t` at those ``t`` must be the schedule's at those timesteps (samplers
    then walk grids of such times), otherwise the conversion of the net's output to a score uses
    other coefficients than the net was trained with.
    """

    def timestep(self, t: torch.Tensor) -> torch.Tensor: ...


@dataclass
class NFECounter:
    """Network-evaluation counts, shared by the :meth:`NetworkScore.with_cond` copies of one
    adapter. ``evals``: function evaluations as papers count them (one per batch of particles and
    conditioning: a CFG step costs 2 even when batched into one call); ``calls``: forward calls of
    the net (chunks of ``max_batch`` rows count one each); ``rows``: samples passed through it."""

    evals: int = 0
    calls: int = 0
    rows: int = 0

    def reset(self) -> None:
        """Set every count to zero."""
        self.evals = self.calls = self.rows = 0


def compile_options(compile: Any) -> dict[str, Any] | None:
    """The ``compile`` argument of :class:`NetworkScore` as ``torch.compile`` keyword arguments:
    ``False`` / ``None``: ``None`` (eager); ``True``: ``{"mode": "default"}``; a mode name (one of
    :data:`COMPILE_MODES`): ``{"mode": name}``; a mapping: ``torch.compile``'s own keywords
    (``mode``, ``backend``, ``dynamic``, ``fullgraph``, ``options``)."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {"mode": "default"}
    if isinstance(compile, str):
        return {"mode": check_choice("compile", compile, COMPILE_MODES, where=WHERE)}
    if isinstance(compile, Mapping):
        check_options(compile, COMPILE_KEYS, where=f"{WHERE}(compile=...)")
        if compile.get("mode") is not None:
            check_choice("compile mode", compile["mode"], COMPILE_MODES, where=WHERE)
        return dict(compile)
    raise SMCDiffError(
        f"{WHERE}: compile must be a bool, one of {COMPILE_MODES} or a dict of torch.compile "
        f"keywords, got {type(compile).__name__} {compile!r}"
    )


class CompiledNet:
    """``torch.compile`` of a net, built lazily at the first call and shared by the
    :meth:`NetworkScore.with_cond` copies of one adapter.

    A failure (no C compiler, an op the compiler cannot trace, a backend error) is not fatal: the
    call is repeated eagerly; if that works, a ``RuntimeWarning`` names the compiler's error and
    every later call runs eagerly (:attr:`error` keeps the message); if the eager call fails too,
    its error is raised (the net itself is at fault). :attr:`first_call_s`: wall seconds of the
    first compiled call (tracing and code generation; not synchronised with the device)."""

    def __init__(self, net: Callable[..., Any], options: Mapping[str, Any]):
        self.net = net
        self.options = dict(options)
        mode = self.options.get("mode") or "default"
        # modes that replay CUDA graphs overwrite their outputs at the next replay
        self.cudagraphs = mode in ("reduce-overhead", "max-autotune")
        self.fn: Callable[..., Any] | None = None
        self.error: str | None = None
        self.first_call_s: float | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> Any:
        if self.error is not None:
            return self.net(x, t, **cond)
        first = self.fn is None
        t0 = time.perf_counter()
        try:
            if first:
                self.fn = torch.compile(self.net, **self.options)
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.fn(x, t, **cond)  # type: ignore[misc]
        except Exception as err:  # any compiler failure falls back to eager
            out = self.net(x, t, **cond)  # the net's own error, if it has one, is raised here
            msg = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            self.error = f"{type(err).__name__}: {msg}"[:400]
            warnings.warn(
                f"{WHERE}: torch.compile of the net failed ({self.error}); running it eagerly "
                "from now on (compile=False hides this)",
                RuntimeWarning,
                stacklevel=4,
            )
            return out
        if first:
            self.first_call_s = time.perf_counter() - t0
        return out

    @property
    def active(self) -> bool:
        """Compiled calls are in use (no failure so far)."""
        return self.error is None

    def info(self) -> dict[str, Any]:
        """``{"options", "compiled", "first_call_s", "error"}`` for a results file."""
        return {
            "options": {k: repr(v) if callable(v) else v for k, v in self.options.items()},
            "compiled": self.fn is not None and self.error is None,
            "first_call_s": self.first_call_s,
            "error": self.error,
        }


def _net_tensor(net: Any) -> torch.Tensor | None:
    """The first floating-point parameter (or buffer) of an ``nn.Module``, else ``None``."""
    if not isinstance(net, torch.nn.Module):
        return None
    for p in net.parameters():
        if p.is_floating_point():
            return p
    for b in net.buffers():
        if b.is_floating_point():
            return b
    return None


def _per_row(value: Any, n: int) -> bool:
    """A conditioning value split with the particles: a tensor with ``n`` rows."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def _expand_rows(value: Any, n: int) -> torch.Tensor | None:
    """A tensor conditioning value as ``(n, ...)`` rows, or ``None`` for a non-tensor. Batch-first
    convention: a tensor with ``n`` rows is per-row; one with 1 row is broadcast over the rows;
    any other (a 0-d label, a ``(d,)`` vector, an ``(L, D)`` context) is one sample's value,
    repeated on a new leading row dimension."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.dim() > 0 and value.shape[0] in (1, n):
        return value.expand(n, *value.shape[1:])
    return value.unsqueeze(0).expand(n, *value.shape)


class NetworkScore:
    r"""A network as a score model (a :class:`~smcdiff.scores.base.ScoreModel`; no density).

    Args:
        net: an ``nn.Module`` or any callable, called as ``net(x, net_time, **cond)`` with ``x``
            ``(N, *event_shape)`` and ``net_time`` ``(N,)`` (see ``time_input``); returns the
            prediction ``(N, *event_shape)`` (after ``postprocess``).
        process: the :class:`NoiseProcess` the net was trained under.
        prediction: what the net predicts, one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``,
            ``"velocity"`` (module docstring).
        time_input: ``"t"``, ``"sigma"``, ``"log_snr"``, ``"index"`` (a
            :class:`DiscreteTimeProcess`) or a callable mapping our times ``(N,)`` to the net's.
        max_batch: evaluate at most this many rows per call (``None``: all at once). Tensor
            conditioning values with ``N`` rows are split with ``x``; the others go whole to each
            call.
        event_shape: the shape of one sample, e.g. ``(C, H, W)``; default ``net.event_shape``.
        autocast: a dtype such as ``torch.bfloat16`` to run the net under ``torch.autocast``
            (off by default); the score is returned in the dtype of ``x`` either way.
        postprocess: applied to what the net returns before the conversion (e.g.
            ``lambda out: out.sample`` for a diffusers model, ``lambda o: o[:, :C]`` for a
            learned-variance output of 2C channels).
        counter: an :class:`NFECounter` to count into (default: a new one).
        batch_cond: let :func:`~smcdiff.cfg` and other combinations of this net under several
            conditionings evaluate them in one call (:meth:`batched_scores`).
        compile: run the net through ``torch.compile`` (off by default): ``True`` (mode
            ``"default"``), a mode (``"reduce-overhead"``: CUDA graphs; ``"max-autotune"``; ...;
            :data:`COMPILE_MODES`) or a dict of ``torch.compile`` keywords (e.g.
            ``{"backend": "aot_eager"}``, ``{"dynamic": True}``). Compiled lazily at the first
            call; if compilation fails, a warning names the error and the net runs eagerly
            (:class:`CompiledNet`). Shapes: with ``max_batch`` a ragged last chunk is padded to
            ``max_batch`` rows (copies of its last row, dropped from the output), so every chunk
            has one shape and nothing recompiles; without it each new particle count triggers one
            recompilation, after which ``torch.compile`` marks the batch dimension dynamic
            (its default ``dynamic=None``). Grad mode (guided proposals) compiles a second graph.
            Outputs of CUDA-graph modes are cloned (the next replay overwrites them).
        **cond: conditioning keyword arguments passed on to every call.

    Gradients: the net runs under ``torch.no_grad()`` unless grad mode is on and ``x`` requires
    grad (a guided or twisted proposal differentiating through :math:`\hat x_0(x)`), so sampling
    keeps no graph; :meth:`predict` with ``keep_graph=True`` keeps one for training. Dtype: ``x``
    is cast to the dtype of the net's parameters for the call, and outputs come back in the dtype
    of ``x``. The net's train/eval mode is left alone: put a net with dropout or batch norm in
    ``eval()`` mode before sampling (a warning says so at construction).
    """

    scalar_time = False

    def __init__(
        self,
        net: Callable[..., Any],
        process: NoiseProcess,
        prediction: str = "eps",
        *,
        time_input: str | Callable[[torch.Tensor], torch.Tensor] = "t",
        max_batch: int | None = None,
        event_shape: Sequence[int] | int | None = None,
        autocast: torch.dtype | None = None,
        postprocess: Callable[[Any], torch.Tensor] | None = None,
        counter: NFECounter | None = None,
        batch_cond: bool = True,
        compile: bool | str | Mapping[str, Any] = False,
        **cond: Any,
    ):
        if not callable(net):
            raise SMCDiffError(f"{WHERE}: net must be an nn.Module or a callable, got {type(net)}")
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(f"{WHERE}: process must be a NoiseProcess, got {type(process)}")
        self.net = net
        self.process = process
        self.prediction = check_choice("prediction", prediction, PREDICTIONS, where=WHERE)
        self.time_input = self._check_time_input(time_input, process)
        self.max_batch = check_int("max_batch", max_batch, 1, where=WHERE, allow_none=True)
        self.event_shape: tuple[int, ...] = self._event_shape(net, event_shape)
        self.dim = math.prod(self.event_shape)
        if autocast is not None and not isinstance(autocast, torch.dtype):
            raise SMCDiffError(f"{WHERE}: autocast must be a torch.dtype or None, got {autocast!r}")
        self.autocast = autocast
        self.postprocess = postprocess
        self.counter = NFECounter() if counter is None else counter
        self.batch_cond = bool(batch_cond)
        self.cond: dict[str, Any] = dict(cond)
        self.compiled_net: CompiledNet | None = None
        self.compile(compile)
        _warn_training_mode(net)

    @staticmethod
    def _check_time_input(time_input: Any, process: NoiseProcess) -> Any:
        if callable(time_input):
            return time_input
        check_choice("time_input", time_input, TIME_INPUTS, where=WHERE)
        if time_input == "index" and not isinstance(process, DiscreteTimeProcess):
            raise SMCDiffError(
                f"{WHERE}: time_input='index' needs a discrete process with "
                f".timestep(t) -> (N,) training timesteps (see DiscreteTimeProcess); "
                f"{type(process).__name__} has none"
            )
        return time_input

    @staticmethod
    def _event_shape(net: Any, event_shape: Any) -> tuple[int, ...]:
        shape = getattr(net, "event_shape", None) if event_shape is None else event_shape
        if shape is None:
            raise SMCDiffError(
                f"{WHERE}: pass event_shape (the shape of one sample, e.g. (d,) or (C, H, W)); "
                f"{type(net).__name__} declares no .event_shape"
            )
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        for s in shape:
            check_int("event_shape entry", s, 1, where=WHERE)
        return tuple(int(s) for s in shape)

    # ------------------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the net's parameters (``None`` for a callable without parameters)."""
        p = _net_tensor(self.net)
        return None if p is None else p.dtype

    @property
    def device(self) -> torch.device | None:
        """The device of the net's parameters (``None`` for a callable without parameters)."""
        p = _net_tensor(self.net)
        return None if p is None else p.device

    @property
    def nfe(self) -> int:
        """Network function evaluations so far (``counter.evals``; reset with
        :meth:`reset_nfe`)."""
        return self.counter.evals

    def reset_nfe(self) -> None:
        """Zero the counts of :attr:`counter`."""
        self.counter.reset()

    def with_cond(self, **cond: Any) -> NetworkScore:
        """A copy on the same net, options and :attr:`counter`, with conditioning
        ``{**self.cond, **cond}`` (for CFG: ``cfg(s.with_cond(y=c), s.with_cond(y=null), w)``)."""
        return NetworkScore(
            self.net,
            self.process,
            self.prediction,
            time_input=self.time_input,
            max_batch=self.max_batch,
            event_shape=self.event_shape,
            autocast=self.autocast,
            postprocess=self.postprocess,
            counter=self.counter,
            batch_cond=self.batch_cond,
            **{**self.cond, **cond},
        )._share_compiled(self.compiled_net)

    def _share_compiled(self, compiled: CompiledNet | None) -> NetworkScore:
        self.compiled_net = compiled
        return self

    def compile(self, compile: bool | str | Mapping[str, Any] = True) -> NetworkScore:
        """Turn ``torch.compile`` of the net on (``compile`` as for the constructor) or off
        (``False``), in place; returns ``self``, e.g. ``score = train_score(...).compile()``.
        Copies made earlier by :meth:`with_cond` keep their setting."""
        options = compile_options(compile)
        self.compiled_net = None if options is None else CompiledNet(self.net, options)
        return self

    @property
    def compile_info(self) -> dict[str, Any] | None:
        """``None`` when not compiled, else :meth:`CompiledNet.info` (options, whether compiled
        calls are in use, the first call's seconds, the error that made it fall back)."""
        return None if self.compiled_net is None else self.compiled_net.info()

    # ------------------------------------------------------------------------- evaluation
    def net_time(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Our times ``t`` ``(N,)`` as the net takes them (``time_input``): mapped from ``t`` in
        at least float32 (a bfloat16 ``t`` cannot tell timestep 617 from 618), then a floating
        result is cast to ``dtype`` (default: that of ``t``); an integer result is kept."""
        work = t.to(torch.promote_types(t.dtype, torch.float32))
        if self.time_input == "t":
            out = work
        elif self.time_input == "sigma":
            out = self.process.sigma(work)
        elif self.time_input == "log_snr":
            out = self.process.log_snr(work)
        elif self.time_input == "index":
            out = self.process.timestep(work)  # type: ignore[attr-defined]
        else:
            out = self.time_input(work)
        return out.to(dtype or t.dtype) if out.is_floating_point() else out

    def predict(
        self, x: torch.Tensor, t: float | torch.Tensor, *, keep_graph: bool | None = None
    ) -> torch.Tensor:
        """The net's prediction (parameterisation :attr:`prediction`) at ``(x, t)``:
        ``(N, *event_shape)`` in the dtype of ``x``; ``t`` a float or ``(N,)`` tensor.

        ``keep_graph``: ``None`` keeps an autograd graph only when grad mode is on and ``x``
        requires grad; ``True`` also keeps one for the net's parameters (training)."""
        self._check_x(x, f"{WHERE}.predict")
        tt = model_time(self, t, x)
        return self._run(x, tt, self.cond, 1, keep_graph)

    def predict_as(self, kind: str, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The prediction converted to parameterisation ``kind`` (e.g. ``"x0"``)."""
        check_choice("kind", kind, PREDICTIONS, where=f"{WHERE}.predict_as")
        tt = model_time(self, t, x)
        return convert(self.prediction, kind, self.predict(x, tt), x, tt, self.process)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`s_t(x)` from the net's prediction: ``(N, *event_shape)`` -> same shape and
        dtype; ``t`` a ``(N,)`` tensor (or a float). One NFE."""
        self._check_x(x, f"{WHERE}.score")
        tt = model_time(self, t, x)
        out = self._run(x, tt, self.cond, 1, None)
        return to_score(self.prediction, out, x, tt, self.process)

    def _check_x(self, x: torch.Tensor, where: str) -> None:
        check_shape("x", x, (None, *self.event_shape), where=where)
        if not x.is_floating_point():
            raise SMCDiffError(f"{where}: x must be floating point, got {x.dtype}")

    def _run(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Mapping[str, Any],
        n_cond: int,
        keep_graph: bool | None,
    ) -> torch.Tensor:
        """Call the net on ``x`` ``(M, *event)`` at times ``t`` ``(M,)`` in chunks; count
        ``n_cond`` evaluations. Returns ``(M, *event)`` in the dtype of ``x``."""
        want = x.requires_grad if keep_graph is None else bool(keep_graph)
        grad = contextlib.nullcontext() if torch.is_grad_enabled() and want else torch.no_grad()
        in_dtype = self.dtype or x.dtype
        xin, tin = x.to(in_dtype), self.net_time(t, in_dtype)
        amp = (
            torch.autocast(x.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        pad = self.compiled_net is not None and self.compiled_net.active
        with grad, amp:
            outs = [self._call(*args) for args in _chunks(xin, tin, cond, self.max_batch, pad)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        self.counter.evals += n_cond
        self.counter.calls += len(outs)
        self.counter.rows += x.shape[0]
        return out.to(x.dtype)

    def _call(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any], n_rows: int
    ) -> torch.Tensor:
        """The net on one chunk; the first ``n_rows`` output rows (the rest is padding)."""
        compiled = self.compiled_net
        out = (self.net if compiled is None else compiled)(x, t, **cond)
        if self.postprocess is not None:
            out = self.postprocess(out)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SMCDiffError(
                f"{WHERE}: the net returned {got} for x of shape {tuple(x.shape)}; it must return "
                "one tensor shaped like x (pass postprocess= to pick it, e.g. "
                "lambda out: out.sample, or lambda o: o[:, :C] for a learned variance)"
            )
        if compiled is not None and compiled.cudagraphs and compiled.active:
            out = out.clone()  # a CUDA-graph replay overwrites its output buffers
        return out if n_rows == x.shape[0] else out[:n_rows]

    # ------------------------------------------------------------------------- batched CFG
    @staticmethod
    def batched_scores(
        models: Sequence[Any], x: torch.Tensor, t: float | torch.Tensor
    ) -> torch.Tensor | None:
        r"""Scores of several :class:`NetworkScore` s of one net that differ only in their
        conditioning, from one call on the ``K * N`` stacked rows: ``(K, N, *event_shape)``.

        A conditioning value shared by the models (the same object, or equal non-tensors) is
        passed as each single call gets it. Values that differ must be tensors; they are stacked
        batch-first (a tensor with ``N`` rows is per-row, one with 1 row is broadcast, any other
        is one sample's value given a leading row dimension), so the net must accept per-row
        conditioning; build the adapters with ``batch_cond=False`` if it does not. ``None`` when
        they cannot be batched (another class, net or option, different conditioning keys, a
        non-tensor value that differs, shapes that do not stack, ``batch_cond=False``); the
        caller then evaluates them one by one.
        :class:`~smcdiff.scores.combine.GeometricScore` (hence :func:`~smcdiff.cfg`) uses it.
        """
        first = models[0] if models else None
        if len(models) < 2 or not all(_batchable(first, m) for m in models):
            return None
        n = x.shape[0]
        cond = _stack_cond([m.cond for m in models], n)
        if cond is None:
            return None
        first._check_x(x, f"{WHERE}.batched_scores")
        k = len(models)
        tt = model_time(first, t, x)
        xs, ts = x.repeat(k, *([1] * (x.dim() - 1))), tt.repeat(k)
        out = first._run(xs, ts, cond, k, None)
        return to_score(first.prediction, out, xs, ts, first.process).reshape(k, *x.shape)

    def __repr__(self) -> str:
        ti = self.time_input if isinstance(self.time_input, str) else "<callable>"
        keys = ", ".join(sorted(self.cond))
        return (
            f"NetworkScore({type(self.net).__name__}, {self.process!r}, "
            f"prediction={self.prediction!r}, time_input={ti!r}, event_shape={self.event_shape}"
            + (f", cond=[{keys}]" if keys else "")
            + (f", compile={self.compiled_net.options}" if self.compiled_net else "")
            + ")"
        )


def _chunks(
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Mapping[str, Any],
    max_batch: int | None,
    pad: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any], int]]:
    """``(x, t, cond, n_rows)`` in slices of at most ``max_batch`` rows (per-row conditioning
    sliced). ``pad``: a ragged last slice (of several) is padded to ``max_batch`` rows with
    copies of its last row (a compiled net then sees one shape); ``n_rows``: the real rows."""
    n = x.shape[0]
    step = n if max_batch is None or max_batch >= n else max_batch
    for i in range(0, n, step):
        sl = slice(i, i + step)
        parts = [x[sl], t[sl], {k: v[sl] if _per_row(v, n) else v for k, v in cond.items()}]
        rows = parts[0].shape[0]
        if pad and rows < step:
            parts = [_pad_rows(parts[0], step), _pad_rows(parts[1], step),
                     {k: _pad_rows(v, step) if _per_row(v, n) else v
                      for k, v in parts[2].items()}]  # fmt: skip
        yield parts[0], parts[1], parts[2], rows


def _pad_rows(v: torch.Tensor, size: int) -> torch.Tensor:
    """``v`` ``(m, ...)`` with its last row repeated up to ``size`` rows (differentiable)."""
    return torch.cat([v, v[-1:].expand(size - v.shape[0], *v.shape[1:])])


def _batchable(first: Any, m: Any) -> bool:
    """``m`` and ``first`` are NetworkScores of one net with the same options."""
    return (
        isinstance(m, NetworkScore)
        and isinstance(first, NetworkScore)
        and m.net is first.net
        and m.process is first.process
        and m.prediction == first.prediction
        and m.time_input == first.time_input
        and m.max_batch == first.max_batch
        and m.autocast == first.autocast
        and m.postprocess is first.postprocess
        and m.counter is first.counter
        and m.compiled_net is first.compiled_net
        and m.batch_cond
        and m.event_shape == first.event_shape
        and set(m.cond) == set(first.cond)
    )


def _stack_cond(conds: Sequence[Mapping[str, Any]], n: int) -> dict[str, Any] | None:
    """One conditioning for the stacked ``K * n`` rows, or ``None`` if it cannot be built."""
    out: dict[str, Any] = {}
    for key in conds[0]:
        values = [c[key] for c in conds]
        if all(v is values[0] for v in values) or _equal_plain(values):
            # shared: passed as each single call gets it (per-row tensors repeated per model)
            v = values[0]
            out[key] = torch.cat([v] * len(values)) if _per_row(v, n) else v
            continue
        expanded = [_expand_rows(v, n) for v in values]
        if any(e is None for e in expanded):
            return None
        try:
            out[key] = torch.cat(expanded)  # type: ignore[arg-type]
        except RuntimeError:  # trailing shapes or dtypes that do not stack
            return None
    return out


def _equal_plain(values: Sequence[Any]) -> bool:
    """Equal non-tensor values (ints, strings, None), shared by every stacked row."""
    if any(isinstance(v, torch.Tensor) for v in values):
        return False
    try:
        return all(bool(v == values[0]) for v in values)
    except Exception:  # objects whose == is not a truth value
        return False


def _warn_training_mode(net: Any) -> None:
    if isinstance(net, torch.nn.Module) and net.training:
        layers = {type(m).__name__ for m in net.modules() if isinstance(m, _MODE_LAYERS)}
        if layers:
            import warnings

            warnings.warn(
                f"{WHERE}: the net is in training mode and has {', '.join(sorted(layers))}: "
                "call net.eval() before sampling (dropout / batch statistics change its output)",
                UserWarning,
                stacklevel=3,
            )
