"""An MCMC kernel as an SMC corrector (the engine's :data:`~smcdiff.engine.Corrector`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.engine.model import ParticleState
from smcdiff.errors import NonFiniteError, SMCDiffError
from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import Kernel, MoveInfo
from smcdiff.mcmc.registry import (
    check_kernel_options,
    get_kernel,
    kernel_name,
    resolve_target_accept,
)

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
    per_particle: bool = False,
    **kernel_kwargs: Any,
) -> Callable[[int, ParticleState, torch.Generator], tuple[ParticleState, dict]]:
    r"""``corrector(k, state, generator) -> (state, info)`` applying ``n_moves`` steps of
    ``kernel`` (name or factory, see :data:`~smcdiff.mcmc.KERNELS`; ``kernel_kwargs`` checked
    against the options it takes) to ``state["x"]`` ``(G*N, *event_shape)``, invariant for
    :math:`\pi_k \propto \exp(\text{log\_target}(k, x))`.

    **Shared step size** (default). One step size :math:`h` for all particles lives in the
    closure as a device tensor and, when ``adapt`` and the kernel has a target acceptance
    (``target_accept`` or the kernel's default), is updated after every move by Robbins–Monro,
    :math:`\log h \leftarrow \log h + \eta(\bar\alpha - \alpha^*)` with :math:`\bar\alpha` the
    mean acceptance probability over particles and :math:`\eta` = ``gain``, on the device.
    Particles that cannot accept at any reasonable :math:`h` (overlapping atoms, far tails)
    pull :math:`\bar\alpha` down, and with it every particle's step size.

    **Per-particle step sizes** (``per_particle=True``, with ``adapt``). Each call starts every
    particle at the population's step size :math:`h` and adapts each on its own acceptance,
    :math:`\log h_i \leftarrow \log h_i + \eta_t(\alpha_{i,t} - \alpha^*)`, with the
    decaying gain :math:`\eta_t = \text{gain}\cdot t^{-0.6}` (:func:`~smcdiff.mcmc.adapt.rm_gain`;
    :math:`t` = the move within the call). At the end of the call the population's :math:`h`
    becomes the median of the :math:`h_i` (robust to a few stuck particles). The step size
    of a move is fixed before the move, so every move is exactly :math:`\pi_k`-invariant
    given it. But :math:`h_i` depends on particle :math:`i`'s own past, so it is correlated
    with its position: the chain is adaptive MCMC, exact as the gain vanishes (hence the
    decay). Measured on :math:`N(0, I_3)`, 200 000 exact starting draws, 50 moves from
    :math:`h = 0.1`, gain 0.5: the variance is 1.0011 (SE 0.0018) and
    :math:`E x^4` 3.019 (SE 0.013); with gain 1.0, 0.9952 and 2.973 (2.6 and 2.2 SE low);
    with a constant gain of 0.5 instead, 0.980 (11 SE low). Resampling reshuffles particles between calls, so per-particle values do not carry
    over; only the population's :math:`h` does.

    Returns ``{**state, "x": new_x}``: other entries of the state are passed through unchanged,
    so a model whose state caches functions of ``x`` (scores, rewards) must recompute them at
    its next step. ``info``: ``"accept"`` (mean acceptance probability over particles and
    moves) and ``"step_size"`` (the population's, after this call's adaptation), scalar tensors;
    with ``per_particle`` also ``"step_size_min"`` / ``"step_size_max"`` over particles. Each call starts
    the kernel afresh from ``x`` (a kinetic kernel redraws its velocity); the adapted step size
    carries over between calls, and between runs if the corrector is reused. The returned
    function has ``state_dict()`` / ``load_state_dict(state)`` (the adapted :math:`\log h`), so
    checkpoints (:mod:`smcdiff.engine.checkpoint`) carry it.

    A NaN (or +inf) target log-density, or a NaN gradient where it is finite, at a point a move
    proposes is a bug of the target, not a rejection: the call raises a
    :class:`~smcdiff.errors.NonFiniteError` naming the quantity and the SMC step ``k``. Checking
    it costs one host-device sync per call (the engine has no finiteness channel for correctors).
    """
    where = "mcmc_corrector"
    factory = get_kernel(kernel)
    check_kernel_options(kernel, kernel_kwargs, where=where)
    if not callable(log_target):
        raise SMCDiffError(f"{where}: log_target must be callable (k, x) -> (N,)")
    for name, flag in (("adapt", adapt), ("per_particle", per_particle)):
        if not isinstance(flag, bool):
            raise SMCDiffError(f"{where}: {name} must be True or False, got {flag!r}")
    n_moves = check_int("n_moves", n_moves, 1, where=where)
    step_size = check_number("step_size", step_size, minimum=0.0, strict_min=True, where=where)
    gain = check_number("gain", gain, minimum=0.0, where=where)
    target = resolve_target_accept(factory, target_accept)
    adapting = adapt and target is not None
    own = adapting and per_particle
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
        if own:  # (N,) per-particle log step sizes, from the population's
            log_h = box["log_h"].expand(x.shape[0]).clone()
        accept = []
        bad = torch.zeros(2, x.shape[0], dtype=torch.bool, device=x.device)
        for t in range(1, n_moves + 1):  # each move's step size is fixed before the move
            s, info = kern.step(s, (log_h if own else box["log_h"]).exp(), generator)
            a = info.accept_prob.mean()
            if own:
                log_h = robbins_monro(log_h, info.accept_prob, target, rm_gain(t, gain))
            elif adapting:
                box["log_h"] = robbins_monro(box["log_h"], a, target, gain)
            accept.append(a)
            bad = _fold_nan(bad, info)
        _raise_if_nan(bad, k, kernel_name(kernel))
        out = {"accept": torch.stack(accept).mean()}
        if own:
            box["log_h"] = log_h.median()
            out.update(step_size_min=log_h.min().exp(), step_size_max=log_h.max().exp())
        return {**state, "x": s.x}, {**out, "step_size": box["log_h"].exp()}

    def load_state_dict(state: dict) -> None:
        if state.get("log_h") is not None:
            box["log_h"] = state["log_h"]

    corrector.state_dict = lambda: {"log_h": box.get("log_h")}  # type: ignore[attr-defined]
    corrector.load_state_dict = load_state_dict  # type: ignore[attr-defined]
    return corrector


NAN_QUANTITIES = ("target log_prob in MCMC corrector", "target gradient in MCMC corrector")
"""The quantities a corrector's :class:`~smcdiff.errors.NonFiniteError` names."""


def _fold_nan(bad: torch.Tensor, info: MoveInfo) -> torch.Tensor:
    """``bad`` ``(2, N)`` bool (particles whose moves met a NaN log-density / a NaN gradient so
    far) updated with one move's flags (a kernel that does not report one leaves it)."""
    masks = (info.nan_log_prob, info.nan_grad)
    return torch.stack([b if m is None else b | m for b, m in zip(bad, masks, strict=True)])


def _raise_if_nan(bad: torch.Tensor, k: int, kernel: str) -> None:
    """Raise for the first quantity with a flagged particle (one host-device sync)."""
    counts = bad.sum(-1).tolist()
    for q, count in zip(NAN_QUANTITIES, counts, strict=True):
        if count:
            raise NonFiniteError(
                f"mcmc_corrector: {q.split(' in ')[0]} is NaN (or +inf) at a finite point for "
                f"{count} of {bad.shape[1]} particles in the {kernel} moves at SMC step {k}: fix "
                "the target, or make it -inf (zero density) where it is undefined",
                quantity=q,
                step=k,
            )
