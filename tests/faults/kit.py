"""What the fault corpus is made of: tiny systems, the front doors' method lists, and injectors
that make a user's function (score, reward, target, FK model) go wrong at a chosen step.

Every case in ``tests/faults`` is one pytest parameter whose id reads as a sentence,
``front-door/what-goes-wrong`` (``steer-fk/reward-returns-nan-at-step-3``). It expects either a
clear error (its type, and a message naming the quantity and where: the argument and the function,
or the step) or a correct result (against an exact value). A case that fails because the library
misbehaves is kept, marked ``xfail(strict=True)`` with what is wrong and whose file it is (see
:func:`owed`), so the fix flips it to a pass and the strict mark to a failure.

Step counting: every steering method evaluates the score and the reward once per step, step 0
(the start) included, so call ``k + 1`` of either happens at step ``k`` (checked by
``test_faults_nonfinite.py::test_calls_are_one_per_step``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import smcdiff
from smcdiff.energy.sample import SAMPLE_METHODS
from smcdiff.engine import FeynmanKacModel, StepOutput

STEER_METHODS = ("fk", "tds", "fkc", "driftlite-vcg", "guidance", "none")
TILTED = ("fk", "tds", "fkc", "driftlite-vcg", "guidance")  # methods that read the reward
WEIGHTED = ("fk", "tds", "fkc", "driftlite-vcg")  # methods with importance weights
GRADIENT = ("tds", "fkc", "driftlite-vcg", "guidance")  # methods that differentiate the reward
SAMPLE = tuple(SAMPLE_METHODS)
SMC_SAMPLE = ("tempered", "diffusion", "rdmc", "ensemble")
MCMC_SAMPLE = tuple(m for m in SAMPLE if m not in SMC_SAMPLE)

N, K = 32, 6  # particles and steps of the small steering runs
MODEL = smcdiff.exact_score(smcdiff.Gaussian(torch.zeros(2), torch.eye(2)), smcdiff.VP())
"""The prior of every steering case: N(0, I_2) under VP noise, exact scores."""

NAN, INF = math.nan, math.inf


def owed(owner: str, what: str) -> pytest.MarkDecorator:
    """A strict xfail: ``what`` is wrong in a file of ``owner``; the case passes once fixed."""
    return pytest.mark.xfail(strict=True, reason=f"[{owner}] {what}")


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """A finite, smooth, differentiable reward / log-density: ``-|x|^2 / 2`` per particle."""
    return -0.5 * x.flatten(1).square().sum(-1)


def steer_args(method: str, **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of a small, quiet steering run (N = 32 particles, K = 6 steps). FKC and
    DriftLite run without step control, so that call k + 1 of a score or reward is step k (with
    it, refined steps call them more often)."""
    fixed = {"step_control": "off"} if method in ("fkc", "driftlite-vcg", "driftlite-ecg") else {}
    return {"method": method, "reward": quadratic, "n_particles": N, "n_steps": K, "seed": 0,
            "progress": False, **fixed, **kwargs}  # fmt: skip


def sample_args(method: str, **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of a small, quiet ``sample()`` run of ``method``."""
    small = {"n_steps": 4, "n_mc": 8} if method in SMC_SAMPLE[1:] else {}
    if method in MCMC_SAMPLE:
        small = {"n_steps": 10}
    return {"method": method, "n_particles": 16, "seed": 0, "progress": False, **small, **kwargs}


GAUSSIAN = smcdiff.as_target(quadratic, 2, name="gaussian")
"""N(0, I_2) up to 2 pi: ``log Z = log(2 pi)``."""


# --------------------------------------------------------------------------- injectors
def from_call(k: int, fn: Callable, fault: Callable[[torch.Tensor], Any]) -> Callable:
    """``fn`` whose output goes through ``fault`` from its call ``k + 1`` on (call ``k + 1`` of a
    steering method's reward happens at step ``k``)."""
    calls = [0]

    def wrapped(x: torch.Tensor) -> Any:
        calls[0] += 1
        out = fn(x)
        return fault(out) if calls[0] > k else out

    wrapped.calls = calls  # type: ignore[attr-defined]
    return wrapped


def at_call(k: int, fn: Callable, fault: Callable[[torch.Tensor], Any]) -> Callable:
    """``fn`` whose output goes through ``fault`` at call ``k + 1`` only (step ``k``)."""
    calls = [0]

    def wrapped(x: torch.Tensor) -> Any:
        calls[0] += 1
        out = fn(x)
        return fault(out) if calls[0] == k + 1 else out

    return wrapped


def rows(value: float, n: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fault: the first ``n`` rows of the output set to ``value``."""

    def fault(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:n] = value
        return out

    return fault


def everywhere(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fault: every entry set to ``value`` (keeps the autograd graph: ``out * 0 + value``)."""
    return lambda out: out * 0.0 + value


def raising(exc: BaseException) -> Callable[[torch.Tensor], Any]:
    """A fault: raise ``exc`` (a user's function failing, or Ctrl-C arriving, mid-run)."""

    def fault(out: torch.Tensor) -> Any:
        raise exc

    return fault


class FaultyScore:
    """:data:`MODEL` seen through ``fault`` applied to its score (from call ``after + 1`` on;
    ``only``: at that call only). Scores only: no ``log_density``, so no path correction."""

    process, dim, scalar_time, device = MODEL.process, MODEL.dim, True, torch.device("cpu")

    def __init__(self, fault: Callable, after: int = 0, only: bool = False, **attrs: Any):
        self.fault, self.after, self.only, self.calls = fault, after, only, 0
        self.dtypes: set[torch.dtype] = set()
        self.__dict__.update(attrs)

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        self.dtypes.add(x.dtype)  # what the sampler handed in (the model computes in float32)
        s = MODEL.score(x.reshape(x.shape[0], -1).float(), t).reshape(x.shape)
        hit = self.calls == self.after + 1 if self.only else self.calls > self.after
        return self.fault(s) if hit else s


class StaticFK(FeynmanKacModel):
    r"""A user-written FK model with an exact answer: :math:`x \sim N(0, 1)` drawn once and never
    moved, :math:`\log G_k(x) = \log N(y_k; x, 1)`, so :math:`Z = p(y_0..y_K)` with the
    :math:`y_k` jointly Gaussian (:meth:`log_z`). ``faults``: step -> fault applied to
    :math:`\log G_k`; ``checks``: whether to report the particles' finiteness."""

    def __init__(self, n_steps: int = 4, faults: dict[int, Callable] | None = None):
        self.n_steps, self.faults = n_steps, faults or {}
        self.y = [0.3 * k - 0.2 for k in range(n_steps + 1)]

    def _log_g(self, x: torch.Tensor, k: int) -> Any:
        g = -0.5 * (x[:, 0].double() - self.y[k]) ** 2 - 0.5 * math.log(2 * math.pi)
        return self.faults[k](g) if k in self.faults else g

    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        x = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        return StepOutput({"x": x}, self._log_g(x, 0))

    def step(self, k, state, generator, log_weights) -> StepOutput:
        return StepOutput(dict(state), self._log_g(state["x"], k))

    def log_z(self) -> float:
        """:math:`\\log N(y; 0, I + 11^\\top)` of the K + 1 observations."""
        y = torch.tensor(self.y, dtype=torch.float64)
        cov = torch.eye(len(y), dtype=torch.float64) + 1.0
        dist = torch.distributions.MultivariateNormal(torch.zeros_like(y), cov)
        return float(dist.log_prob(y))


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
