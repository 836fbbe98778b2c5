r"""One FKC evaluation: everything the weights and the control need at particles ``x`` and time t.

:class:`PointEvaluator` calls each component :math:`q_i` once (its score :math:`s_i`, and
:math:`\log q_i` when asked), the reward :math:`r` with :math:`\nabla r` and, when needed, the
divergences :math:`\Delta r` and :math:`\nabla\cdot s_i` (by the model's
:class:`~smcdiff.steering.fkc.divergence.DivergenceEstimator`, probes shared at the point). It
returns an :class:`FKCPoint` (detached tensors) with the finiteness masks and the NFE / backward
pass counts. Particles have shape ``(N, *event_shape)``; per-row scalars are float64 ``(N,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff.checks import check_device, check_shape, nonfinite_rows
from smcdiff.errors import SMCDiffError
from smcdiff.scores.base import model_time
from smcdiff.scores.combine import GeometricScore
from smcdiff.steering.fkc.divergence import DivergenceEstimator

__all__ = ["FKCPoint", "PointEvaluator"]

Reward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FKCPoint:
    r"""Values at particles ``x`` ``(N, *E)`` at one time (all detached).

    ``scores``: component scores :math:`s_i` (dtype of ``x``); ``weights``: the :math:`w_i`;
    ``score``: :math:`S = \sum_i w_i s_i + \beta\nabla r`, float64; ``score_divs``:
    :math:`\nabla\cdot s_i` (float64 ``(N,)``, empty unless asked for); ``log_q``:
    :math:`\log q_i` (float64 ``(N,)``, empty unless asked for); ``reward``, ``reward_grad``,
    ``reward_lap``: :math:`r` (float64), :math:`\nabla r` (dtype of ``x``), :math:`\Delta r`
    (float64; ``None`` when not computed); ``beta``: :math:`\beta_t`."""

    x: torch.Tensor
    beta: float
    weights: tuple[float, ...]
    scores: list[torch.Tensor]
    score: torch.Tensor
    score_divs: list[torch.Tensor]
    log_q: list[torch.Tensor]
    reward: torch.Tensor | None = None
    reward_grad: torch.Tensor | None = None
    reward_lap: torch.Tensor | None = None


class PointEvaluator:
    r"""Evaluates a :class:`GeometricScore` target and a reward at particles.

    ``score_div`` / ``reward_div``: always compute :math:`\nabla\cdot s_i` / :math:`\Delta r`
    (the control basis needs them); ``log_density``: always return :math:`\log q_i` (ECG
    potentials). :math:`\Delta r` is also computed wherever :math:`\beta_t \ne 0` (the weights
    need it). ``name``: how messages and finiteness checks name the reward (``"reward"``, or
    ``"log_likelihood"`` when the user's likelihood is run as the reward); a non-finite
    :math:`\nabla r` where :math:`r` is finite is named ``"<name> gradient"``."""

    def __init__(
        self, target: GeometricScore, reward: Reward | None, estimator: DivergenceEstimator,
        event_shape: tuple[int, ...], *, score_div: bool, reward_div: bool, log_density: bool,
        name: str = "reward",
    ):  # fmt: skip
        self.target, self.reward, self.estimator, self.name = target, reward, estimator, name
        self.event_shape, self.size = event_shape, math.prod(event_shape)
        self.score_div, self.reward_div, self.log_density = score_div, reward_div, log_density

    def __call__(
        self, x: torch.Tensor, t: float, beta: float, generator: torch.Generator, where: str,
        want_logq: bool = False,
    ) -> tuple[FKCPoint, dict[str, torch.Tensor], int, int]:  # fmt: skip
        """``(point, checks, nfe, n_grad)`` at ``x`` ``(N, *E)``, time ``t``, :math:`\\beta_t`."""
        has_r = self.reward is not None
        need_lap = has_r and (beta != 0.0 or self.reward_div)
        want_logq = want_logq or self.log_density
        grad_on = has_r or self.score_div
        probes = self.estimator.probes(x, generator) if need_lap or self.score_div else None
        passes = self.estimator.passes(self.size)
        checks: dict[str, torch.Tensor] = {"particles": nonfinite_rows(x)}
        r = grad_r = lap = None
        with torch.enable_grad() if grad_on else torch.no_grad():
            xr = x.detach().requires_grad_(grad_on)
            comps, logq = self._component_scores(xr, t, want_logq, where)
            sdiv = [self.estimator(s, xr, probes) for s in comps] if self.score_div else []
            if has_r:
                r, grad_r, lap = self._reward_terms(xr, need_lap, probes, where)
        n_grad = passes * len(sdiv) + (1 + (passes if need_lap else 0) if has_r else 0)
        comps = [s.detach().to(x.dtype) for s in comps]  # a float64 model: float32 particles stay
        s64 = sum(wi * s for wi, s in zip(self.target.weights, comps, strict=True)).double()
        checks["score"] = torch.stack([nonfinite_rows(s) for s in comps]).any(0)
        if has_r:
            r, grad_r = r.detach().double(), grad_r.detach()
            checks[self.name] = ~torch.isfinite(r)
            checks[f"{self.name} gradient"] = nonfinite_rows(grad_r)
            s64 = s64 + beta * grad_r.double()
        lap = lap.detach() if lap is not None else None
        sdiv = [v.detach() for v in sdiv]
        divs = ([lap] if lap is not None else []) + sdiv
        if divs:
            checks["divergence"] = ~torch.isfinite(torch.stack(divs)).all(0)
        point = FKCPoint(x, beta, self.target.weights, comps, s64, sdiv, logq, r, grad_r, lap)
        return point, checks, len(comps), n_grad

    def _component_scores(
        self, xr: torch.Tensor, t: float, want_logq: bool, where: str
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Scores (with graphs) and detached float64 log densities of every component."""
        n = xr.shape[0]
        comps, logq = [], []
        for i, m in enumerate(self.target.models):
            tm = model_time(m, t, xr)
            if want_logq:
                s, lq = m.score_and_log_density(xr, tm)
                check_shape(f"log_density of component {i}", lq, (n,), where=where)
                logq.append(lq.detach().double())
            else:
                s = m.score(xr, tm)
            check_shape(f"score of component {i}", s, (n, *self.event_shape), where=where)
            check_device(f"score of component {i}", s, xr.device, where=where)
            comps.append(s)
        return comps, logq

    def _reward_terms(
        self, xr: torch.Tensor, need_lap: bool, probes: torch.Tensor | None, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        r""":math:`r`, :math:`\nabla r` (with a graph when :math:`\Delta r` is needed) and
        :math:`\Delta r` (or ``None``)."""
        r = self.reward(xr)
        check_shape(self.name, r, (xr.shape[0],), where=where)
        check_device(self.name, r, xr.device, where=where)
        grad_r = None
        if r.requires_grad:
            (grad_r,) = torch.autograd.grad(r.sum(), xr, create_graph=need_lap, allow_unused=True)
        if grad_r is None:
            raise SMCDiffError(
                f"{where}: {self.name} is not differentiable in x (its output has no autograd "
                "graph back to the particles: a constant, an indicator such as (x > 0), or a "
                "computation outside torch); FKC applies its gradient and Laplacian at x_t, so "
                f"it needs a differentiable {self.name} (method='fk' takes any)"
            )
        lap = self.estimator(grad_r, xr, probes) if need_lap else None
        return r, grad_r, lap
