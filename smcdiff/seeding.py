"""Seeds and generators: the one place where a seed becomes a ``torch.Generator``.

Same seed + device ⇒ same numbers. A run's generator is made by :func:`make_generator`; a
component that needs its own stream (an inner estimator, a captured CUDA graph) takes one draw
from the run's generator with :func:`child_generator`, so it is reproducible from the run's seed.
"""

from __future__ import annotations

from typing import Any

import torch

from smcdiff.checks import check_int

__all__ = ["child_generator", "make_generator", "seeded_generator"]

_SEED_BOUND = 2**62


def make_generator(
    seed: Any, device: str | torch.device | None = None
) -> tuple[torch.Generator, int]:
    """``(generator, seed)`` on ``device``; ``seed=None`` draws a fresh seed (returned, so a run can
    report and repeat it). NumPy integers are accepted."""
    seed = check_int("seed", seed, 0, allow_none=True)
    if seed is None:
        seed = int(torch.randint(0, _SEED_BOUND, (1,)).item())
    return seeded_generator(seed, device), seed


def seeded_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (``None``: seeded from the OS)."""
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def child_generator(
    parent: torch.Generator, device: str | torch.device | None = None
) -> torch.Generator:
    """A new generator on ``device`` seeded by one draw from ``parent`` (advances ``parent``)."""
    dev = torch.device(device) if device is not None else parent.device
    seed = torch.randint(0, _SEED_BOUND, (1,), generator=parent, device=parent.device)
    return seeded_generator(int(seed), dev)
