"""Run N batched chains with warm-up adaptation, and collect the draws (``ChainResult``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.checks import check_int, check_shape
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import Kernel, LogProb, finite_rows
from smcdiff.mcmc.hmc import HMC
from smcdiff.mcmc.langevin import MALA, ULA, UnderdampedLangevin
from smcdiff.mcmc.pcnl import PCNL

__all__ = ["KERNELS", "ChainResult", "get_kernel", "run_chain"]

KERNELS: dict[str, Callable[..., Kernel]] = {
    "ula": ULA,
    "mala": MALA,
    "hmc": HMC,
    "underdamped": UnderdampedLangevin,
    "pcnl": PCNL,
}
"""Kernel name -> factory ``(log_prob, **kernel_kwargs) -> Kernel``."""


def get_kernel(kernel: str | Callable[..., Kernel]) -> Callable[..., Kernel]:
    """The factory for a kernel name (see :data:`KERNELS`), or ``kernel`` itself if callable."""
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise SMCDiffError(
                f"unknown MCMC kernel {kernel!r}; valid names: {', '.join(sorted(KERNELS))}"
            )
        return KERNELS[kernel]
    if not callable(kernel):
        raise SMCDiffError(f"kernel must be a name or a kernel class, got {type(kernel).__name__}")
    return kernel


def resolve_target_accept(
    factory: Callable[..., Kernel], target_accept: float | None
) -> float | None:
    """``target_accept`` if given (checked in (0, 1)), else the kernel's default."""
    if target_accept is None:
        return getattr(factory, "default_target_accept", None)
    if not 0.0 < target_accept < 1.0:
        raise SMCDiffError(f"target_accept must be in (0, 1), got {target_accept}")
    return float(target_accept)


@dataclass
class ChainResult:
    """Draws of N chains after warm-up, keeping every ``thin``-th step.

    ``samples`` ``(n_kept, N, d)``; ``log_prob`` and ``accept_prob`` ``(n_kept, N)`` at the kept
    steps; ``accept_rate`` ``(N,)``: mean acceptance probability over all post-warm-up steps;
    ``step_size`` ``(N,)``: the (frozen) step size used after warm-up; ``n_nonfinite``: rejected
    non-finite proposals over the whole run.
    """

    samples: torch.Tensor
    log_prob: torch.Tensor
    accept_prob: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    n_nonfinite: int
    kernel: str

    def to_arviz(self) -> Any:
        """ArviZ ``InferenceData``; chains are the particles: posterior ``x`` ``(chain, draw, d)``;
        sample_stats ``lp``, ``acceptance_rate`` and ``step_size``, each ``(chain, draw)``.
        ArviZ's "more chains than draws" warning is silenced: many chains is the point here."""
        import arviz as az

        def arr(t: torch.Tensor) -> Any:
            return t.detach().cpu().numpy()

        n_kept = self.samples.shape[0]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="More chains")
            return az.from_dict(
                posterior={"x": arr(self.samples.permute(1, 0, 2))},
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
    **kernel_kwargs: Any,
) -> ChainResult:
    """Run ``N = x0.shape[0]`` chains: ``n_warmup`` warm-up steps, then ``n_steps`` kept steps.

    ``kernel``: a name in :data:`KERNELS` or a factory ``(log_prob, **kernel_kwargs) -> Kernel``.
    ``step_size``: float or ``(N,)``, the initial step size. ``target_accept``: acceptance rate
    the warm-up adapts toward, per chain (Robbins–Monro, :mod:`smcdiff.mcmc.adapt`); ``None``
    takes the kernel's default (MALA and pCNL 0.574, HMC 0.65, ULA and underdamped: no adaptation).
    ``n_warmup``: default ``n_steps // 2`` when adapting, else 0 (``0`` switches adaptation off).
    Randomness: ``generator``, or a fresh one seeded with ``seed``.
    """
    where = "run_chain"
    check_shape("x0", x0, (None, None), where=where)
    n_chains = x0.shape[0]
    if n_chains < 1 or x0.shape[1] < 1:
        raise SMCDiffError(f"{where}: x0 has shape {tuple(x0.shape)}; need (N >= 1 chains, d >= 1)")
    check_int("n_steps", n_steps, 1)
    check_int("thin", thin, 1)
    if thin > n_steps:
        raise SMCDiffError(f"{where}: thin={thin} > n_steps={n_steps} would keep no draws")
    factory = get_kernel(kernel)
    target = resolve_target_accept(factory, target_accept)
    if n_warmup is None:
        n_warmup = n_steps // 2 if target is not None else 0
    check_int("n_warmup", n_warmup, 0)
    h = _initial_step_size(step_size, x0)
    if generator is None:
        generator = torch.Generator(device=x0.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    elif seed is not None:
        raise SMCDiffError(f"{where}: pass generator or seed, not both")

    k = factory(log_prob, **kernel_kwargs)
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

    n_nonfinite = torch.zeros((), dtype=torch.long, device=x0.device)
    adapting = target is not None
    log_h = h.log()
    for t in range(1, n_warmup + 1):
        state, info = k.step(state, h, generator)
        n_nonfinite = n_nonfinite + info.n_nonfinite
        if adapting:
            log_h = robbins_monro(log_h, info.accept_prob, target, rm_gain(t))
            h = log_h.exp()

    kept: dict[str, list[torch.Tensor]] = {"x": [], "lp": [], "acc": []}
    acc_sum = torch.zeros(n_chains, dtype=x0.dtype, device=x0.device)
    for i in range(1, n_steps + 1):
        state, info = k.step(state, h, generator)
        n_nonfinite = n_nonfinite + info.n_nonfinite
        acc_sum = acc_sum + info.accept_prob
        if i % thin == 0:
            kept["x"].append(state.x)
            kept["lp"].append(state.log_prob)
            kept["acc"].append(info.accept_prob)
    name = kernel if isinstance(kernel, str) else getattr(kernel, "__name__", repr(kernel))
    return ChainResult(
        samples=torch.stack(kept["x"]),
        log_prob=torch.stack(kept["lp"]),
        accept_prob=torch.stack(kept["acc"]),
        accept_rate=acc_sum / n_steps,
        step_size=h,
        n_nonfinite=int(n_nonfinite),
        kernel=name,
    )


def _initial_step_size(step_size: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Validated ``(N,)`` step sizes in ``x0``'s dtype and device."""
    n = x0.shape[0]
    h = torch.as_tensor(step_size, dtype=x0.dtype, device=x0.device)
    if h.dim() == 0:
        h = h.expand(n)
    check_shape("step_size", h, (n,), where="run_chain")
    if not bool((torch.isfinite(h) & (h > 0)).all()):
        raise SMCDiffError(f"run_chain: step_size must be finite and > 0, got {step_size}")
    return h.clone()
