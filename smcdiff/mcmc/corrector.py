"""An MCMC kernel as an SMC corrector (the engine's :data:`~smcdiff.engine.Corrector`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.engine.model import ParticleState
from smcdiff.mcmc.adapt import robbins_monro
from smcdiff.mcmc.base import Kernel
from smcdiff.mcmc.registry import check_kernel_options, get_kernel, resolve_target_accept

__all__ = ["mcmc_corrector"]


def mcmc_corrector(
    kernel: str | Callable[..., Kernel],
    log_target: Callable[[int, torch.Tensor], torch.Tensor],
    n_moves: int = 1,
    step_size: float = 0.1,
    target_accept: float | None = None,
    *,
    adapt: bool = True,
    gain: float = 0.5,
    **kernel_kwargs: Any,
) -> Callable[[int, ParticleState, torch.Generator], tuple[ParticleState, dict]]:
    r"""``corrector(k, state, generator) -> (state, info)`` applying ``n_moves`` steps of
    ``kernel`` (name or factory, see :data:`~smcdiff.mcmc.KERNELS`; ``kernel_kwargs`` checked
    against the options it takes) to ``state["x"]`` ``(G*N, *event_shape)``, invariant for
    :math:`\pi_k \propto \exp(\text{log\_target}(k, x))`.

    One step size :math:`h` is shared by all particles (resampling reshuffles them, so a
    per-particle value would not follow its chain). It lives in the closure as a device tensor
    and, when ``adapt`` and the kernel has a target acceptance (``target_accept`` or the kernel's
    default), is updated after every move by Robbins–Monro,
    :math:`\log h \leftarrow \log h + \eta(\bar\alpha - \alpha^*)` with :math:`\bar\alpha` the
    mean acceptance probability over particles and :math:`\eta` = ``gain``. No host sync.

    Returns ``{**state, "x": new_x}``: other entries of the state are passed through unchanged,
    so a model whose state caches functions of ``x`` (scores, rewards) must recompute them at
    its next step. ``info``: ``"accept"`` (mean acceptance probability over particles and
    moves) and ``"step_size"`` (after this call's adaptation), scalar tensors. Each call starts
    the kernel afresh from ``x`` (a kinetic kernel redraws its velocity); the adapted step size
    carries over between calls, and between runs if the corrector is reused.
    """
    where = "mcmc_corrector"
    factory = get_kernel(kernel)
    check_kernel_options(kernel, kernel_kwargs, where=where)
    n_moves = check_int("n_moves", n_moves, 1, where=where)
    step_size = check_number("step_size", step_size, minimum=0.0, strict_min=True, where=where)
    target = resolve_target_accept(factory, target_accept)
    adapting = adapt and target is not None
    box: dict[str, Any] = {"k": 0}
    kern = factory(lambda y: log_target(box["k"], y), **kernel_kwargs)  # validated once, here

    def corrector(
        k: int, state: ParticleState, generator: torch.Generator
    ) -> tuple[ParticleState, dict]:
        x = state["x"]
        if "log_h" not in box:
            box["log_h"] = torch.tensor(math.log(step_size), dtype=x.dtype, device=x.device)
        box["k"] = k
        s = kern.init(x, generator)
        accept = []
        for _ in range(n_moves):
            s, info = kern.step(s, box["log_h"].exp(), generator)
            a = info.accept_prob.mean()
            if adapting:
                box["log_h"] = robbins_monro(box["log_h"], a, target, gain)
            accept.append(a)
        return {**state, "x": s.x}, {
            "accept": torch.stack(accept).mean(),
            "step_size": box["log_h"].exp(),
        }

    return corrector
