"""The kernel registry: names -> kernel factories, their options and default target acceptance."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from smcdiff.checks import check_number, check_options
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.base import Kernel
from smcdiff.mcmc.hmc import HMC
from smcdiff.mcmc.langevin import MALA, ULA, UnderdampedLangevin
from smcdiff.mcmc.pcnl import PCNL

__all__ = [
    "KERNELS",
    "check_kernel_options",
    "get_kernel",
    "kernel_name",
    "kernel_parameters",
    "resolve_target_accept",
]

KERNELS: dict[str, Callable[..., Kernel]] = {
    "ula": ULA,
    "mala": MALA,
    "hmc": HMC,
    "underdamped": UnderdampedLangevin,
    "pcnl": PCNL,
}
"""Kernel name -> factory ``(log_prob, **kernel_options) -> Kernel``."""


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


def kernel_name(kernel: str | Callable[..., Kernel]) -> str:
    """A kernel's registry name, or its factory's ``__name__``."""
    return kernel if isinstance(kernel, str) else getattr(kernel, "__name__", repr(kernel))


def kernel_parameters(factory: Callable[..., Kernel]) -> tuple[str, ...] | None:
    """The options a kernel factory takes after ``log_prob`` (e.g. ``("n_leapfrog", "inv_mass")``
    for HMC), or ``None`` if it takes ``**kwargs`` (any name) or has no inspectable signature."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params[1:] if p.kind in named)


def check_kernel_options(
    kernel: str | Callable[..., Kernel], options: Mapping[str, Any], *, where: str
) -> None:
    """Refuse options the kernel does not take, naming them and listing the valid ones
    (instead of a ``TypeError`` from the factory's ``__init__``)."""
    valid = kernel_parameters(get_kernel(kernel))
    if valid is not None:
        check_options(options, valid, where=f"{where} (kernel {kernel_name(kernel)!r})")


def resolve_target_accept(
    factory: Callable[..., Kernel], target_accept: float | None
) -> float | None:
    """``target_accept`` if given (checked in (0, 1)), else the kernel's default."""
    if target_accept is None:
        return getattr(factory, "default_target_accept", None)
    return check_number(
        "target_accept", target_accept, minimum=0.0, maximum=1.0, strict_min=True, strict_max=True
    )
