r"""MCMC transitions compiled into a few fused kernels by ``torch.compile``, with eager fallback.

Run eagerly, one HMC transition with L leapfrog steps launches a few dozen elementwise kernels
per step (the target's gradient, the momentum and position updates, the finiteness checks)
and as many again for the accept step: at N = 10⁴ those launches, each 1–4 µs of work, set
the wall time even inside a CUDA graph. :func:`compile_transition` compiles a whole transition
(:func:`~smcdiff.mcmc.hmc.hmc_transition`: all L steps unrolled, and the Metropolis step) with
``torch.compile(fullgraph=True)``; inductor fuses it into a handful of kernels
(Triton on CUDA, C++ on the CPU), which :mod:`smcdiff.energy.tempered_fused` then captures in
its CUDA graph. Tempered SMC compiles, per step, the tempered gradient at the start of the
moves, each move with its step-size adaptation
(:func:`~smcdiff.energy.tempered.tempered_hmc_move`) and the reweighting with the temperature
search (:func:`~smcdiff.energy.tempered.tempered_reweight`): about 150–170 eager operations
per step remain outside compiled code (from about 550–630; CPU profiler counts of the
BlackJAX-benchmark targets).

The random numbers are drawn outside the compiled function, by the caller, from the run's
generator (:meth:`HMC.draws <smcdiff.mcmc.hmc.HMC.draws>`): compiled and eager transitions see
the same numbers, and their results agree to floating-point rounding (not bit for bit: fused
kernels sum in another order). The function is compiled on its first call, with the number of
chains N a symbolic size (the caller marks its per-chain arguments: one compilation serves
every N; other sizes, e.g. the event shape, are specialised). A function that cannot be
compiled (a host sync such as ``.tolist()``, a data-dependent shape, an op inductor lacks) is
reported, not hidden: :class:`CompiledFunction` warns once with the reason
(:class:`CompileFallbackWarning`) and runs eagerly from then on, on the same random numbers.

Gradients inside the compiled function come from the target's analytic
``grad_log_prob`` when it has one, else from :func:`func_value_and_grad` (``torch.func``; the
eager path's ``torch.autograd.grad`` cannot be traced into one graph).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "CompileFallbackWarning",
    "CompiledFunction",
    "compile_transition",
    "func_value_and_grad",
]

BACKEND = "inductor"
"""The ``torch.compile`` backend of new :class:`CompiledFunction` objects (the CPU tests use
``"aot_eager"``: the same traced graph without code generation, which takes minutes on a busy
CPU)."""

RECOMPILE_LIMIT = 64
"""Compiled versions kept per function (one per input shape and closure); torch's default of 8
per code object would silently turn a long benchmark eager."""


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` of an MCMC transition failed; it runs eagerly (the message says why)."""


class CompiledFunction:
    """``fn`` through ``torch.compile(fullgraph=True)``, or eagerly once that
    failed. ``fallback``: called with the same arguments after a failure (default ``fn``);
    ``where`` and ``what``: name the caller and the function in the warning; ``dynamic``: the
    ``batch`` arguments' dimension ``batch_dim`` (default the first) a symbolic size (one
    compilation for every N), else static shapes (one compilation per N, kernels specialised
    to it). ``status``: ``"compiled"`` after a compiled
    call, ``"eager (<reason>)"`` after a failure, ``"not called"`` before the first call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        where: str,
        fallback: Callable[..., Any] | None = None,
        dynamic: bool = True,
        what: str = "the MCMC transition",
        batch_dim: int = 0,
    ):
        self.fn, self.where, self.dynamic, self.what = fn, where, dynamic, what
        self.batch_dim = batch_dim
        self.fallback = fn if fallback is None else fallback
        self.compiled: Callable[..., Any] | None = torch.compile(
            fn, fullgraph=True, dynamic=None if dynamic else False, backend=BACKEND
        )
        self.status = "not called"

    def __call__(
        self,
        *args: Any,
        eager: Callable[..., Any] | None = None,
        batch: Sequence[torch.Tensor] = (),
    ) -> Any:
        """``fn(*args)`` compiled, or after a failure ``eager(*args)`` (default: the
        ``fallback``). ``batch``: the arguments whose first dimension is the number of chains,
        compiled as a symbolic size (one compilation serves every N)."""
        if self.compiled is not None:
            try:
                for t in batch if self.dynamic else ():
                    if t.shape[self.batch_dim] > 1:  # sizes 0 and 1 are always specialised
                        torch._dynamo.mark_dynamic(t, self.batch_dim)
                config = torch._dynamo.config  # imported by torch.compile in __init__
                name = (
                    "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
                )
                with config.patch(**{name: RECOMPILE_LIMIT}):  # renamed in torch 2.7
                    out = self.compiled(*args)
            except Exception as err:  # reported below; the eager call re-raises a real error
                self.fail(err)
            else:
                self.status = "compiled"
                return out
        return (self.fallback if eager is None else eager)(*args)

    def fail(self, err: BaseException) -> None:
        """Switch to eager calls and warn once with the reason ``err``."""
        reason = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err) else ''}"
        )
        self.compiled, self.status = None, f"eager ({reason})"
        warnings.warn(
            f"{self.where}: torch.compile of {self.what} failed ({reason}); running it "
            "eagerly on the same random numbers (compile=False skips the attempt)",
            CompileFallbackWarning,
            stacklevel=4,
        )


def func_value_and_grad(
    log_prob: Callable[..., torch.Tensor],
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``pair(y, *params) -> (log_prob(y, *params) (N,), its gradient in y)`` by
    :func:`torch.func.grad_and_value` of the row sum (rows are independent), which
    ``torch.compile`` traces into one graph (``torch.autograd.grad`` breaks it)."""

    def total(y: torch.Tensor, *params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lp = log_prob(y, *params)
        return lp.sum(), lp

    grad_and_value = torch.func.grad_and_value(total, has_aux=True)

    def pair(y: torch.Tensor, *params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        grad, (_, lp) = grad_and_value(y, *params)
        return lp, grad

    return pair


def compile_transition(
    transition: Callable[..., Any],
    pair: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    where: str,
    fallback: Callable[..., Any] | None = None,
    dynamic: bool = True,
    **static: Any,
) -> CompiledFunction:
    """A :class:`CompiledFunction` of ``move(state, *randoms_and_params, params)``:
    ``transition(pair_y, state, *randoms_and_params, **static)`` with ``pair_y(y) =
    pair(y, *params)``; ``params`` a tuple of tensors (e.g. temperatures, reference mean and
    scale) passed at each call, so one compiled function serves every step of a run and every
    run with these ``static`` settings (e.g. ``n_leapfrog``). ``fallback``: the eager move (same
    arguments) after a failure; ``dynamic``: as in :class:`CompiledFunction`."""

    def move(state: Any, *args: Any) -> Any:
        *rest, params = args
        return transition(lambda y: pair(y, *params), state, *rest, **static)

    return CompiledFunction(move, where, fallback, dynamic)
