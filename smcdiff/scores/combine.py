r"""Geometric combinations of diffusion models: annealing, products of experts, CFG mixtures.

A :class:`GeometricScore` stands for the family of unnormalised densities

.. math::
    \rho_t(x) = \prod_i q_{i,t}(x)^{w_i}, \qquad
    S_t(x) = \nabla\log\rho_t(x) = \sum_i w_i\, s_{i,t}(x),

where :math:`q_{i,t}` are the noised marginals of component models that share one noise process.
:math:`\rho_t` is *not* the marginal of any diffusion (that is why plain reverse-SDE sampling with
:math:`S_t` is biased); :class:`smcdiff.steering.fkc.FKCModel` corrects for it with Feynman–Kac
weights and needs the components, so a combination keeps them (nested combinations are flattened,
a model repeated by identity is evaluated once with the summed weight).

Plain constructors:

* :func:`anneal` ``(model, gamma)``: :math:`q^\gamma`;
* :func:`product` ``(*models)``: :math:`\prod_i q_i`;
* :func:`cfg` ``(cond, uncond, w)``: :math:`q_c^{w}\, q_u^{1-w}` (classifier-free guidance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.base import ScoreModel, event_shape_of, has_log_density, model_time

__all__ = ["GeometricDensityScore", "GeometricScore", "anneal", "cfg", "product"]


def _same_process(a: NoiseProcess, b: NoiseProcess) -> bool:
    return a is b or (type(a) is type(b) and vars(a) == vars(b))


class GeometricScore:
    r""":math:`\rho_t = \prod_i q_{i,t}^{w_i}` with score :math:`S = \sum_i w_i s_i` (a
    :class:`~smcdiff.scores.base.ScoreModel`).

    Args:
        models: component score models, all with the same ``process`` (same type and
            parameters) and event shape. A component that is itself a :class:`GeometricScore` is
            expanded into its components (weights multiplied).
        weights: one finite real per model; negative weights are allowed (CFG with ``w > 1``) but
            the total :math:`W = \sum_i w_i` must be positive.

    ``score(x, t)``: ``(N, *event_shape)`` -> same shape; ``component_scores(x, t)``:
    ``(K, N, *event_shape)``, one NFE per component. Time: ``scalar_time`` is true (a float ``t``)
    only if every component declares it; otherwise ``t`` is a ``(N,)`` tensor and each component
    gets it in its own form through :func:`~smcdiff.scores.base.model_time`. When every component has ``log_density``, the object is a
    :class:`GeometricDensityScore` and also offers :math:`\log\rho_t = \sum_i w_i\log q_{i,t}` —
    *unnormalised*: :math:`\int\rho_t \ne 1` in general.
    """

    def __new__(cls, models: Sequence[ScoreModel], weights: Sequence[float]):
        try:
            dense = all(has_log_density(m) for m in _leaves(models, weights)[0])
        except (TypeError, ValueError):  # bad arguments: __init__ says what is wrong
            dense = False
        return super().__new__(GeometricDensityScore if cls is GeometricScore and dense else cls)

    def __init__(self, models: Sequence[ScoreModel], weights: Sequence[float]):
        where = "GeometricScore"
        models, weights = list(models), [float(w) for w in weights]
        if not models:
            raise SMCDiffError(f"{where}: needs at least one model")
        if len(models) != len(weights):
            raise SMCDiffError(
                f"{where}: got {len(models)} models but {len(weights)} weights (one per model)"
            )
        if not all(math.isfinite(w) for w in weights):
            raise SMCDiffError(f"{where}: weights must be finite, got {weights}")
        for i, m in enumerate(models):
            if not isinstance(m, ScoreModel):
                raise SMCDiffError(
                    f"{where}: model {i} ({type(m).__name__}) is not a ScoreModel "
                    "(needs .process, .dim and .score(x, t))"
                )
        leaves, leaf_w = _leaves(models, weights)
        if not leaves:
            raise SMCDiffError(f"{where}: every weight is zero ({weights})")
        first = leaves[0]
        for i, m in enumerate(leaves[1:], start=1):
            if not _same_process(m.process, first.process):
                raise SMCDiffError(
                    f"{where}: component {i} uses process {m.process!r} but component 0 uses "
                    f"{first.process!r}; a geometric combination needs one noise process"
                )
            if event_shape_of(m) != event_shape_of(first):
                raise SMCDiffError(
                    f"{where}: component {i} has event shape (dims) {event_shape_of(m)} but "
                    f"component 0 has {event_shape_of(first)}"
                )
        total = sum(leaf_w)
        if not total > 0:
            raise SMCDiffError(
                f"{where}: the total weight sum(w_i) = {total} must be positive "
                f"(weights {leaf_w}); otherwise prod q_i^w_i is not normalisable"
            )
        self.models: tuple[ScoreModel, ...] = tuple(leaves)
        self.weights: tuple[float, ...] = tuple(leaf_w)
        self.total_weight = total
        self.process: NoiseProcess = first.process
        self.dim = int(first.dim)
        self.event_shape: tuple[int, ...] = event_shape_of(first)
        # one common float time only if every component takes one; otherwise (N,) tensors
        self.scalar_time = all(getattr(m, "scalar_time", False) for m in leaves)

    @property
    def n_components(self) -> int:
        return len(self.models)

    def component_scores(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Scores :math:`s_{i,t}(x)` of every component, stacked ``(K, N, *event_shape)``
        (components whose class offers ``batched_scores``, e.g. one net under two conditionings,
        are evaluated in one call when it accepts them)."""
        batched = getattr(type(self.models[0]), "batched_scores", None)
        stacked = batched(self.models, x, t) if batched is not None else None
        if stacked is not None:
            return stacked
        return torch.stack([m.score(x, model_time(m, t, x)) for m in self.models])

    def combine(self, comps: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_i w_i\, c_i` over the leading axis of ``comps`` ``(K, ...)``."""
        w = torch.tensor(self.weights, dtype=comps.dtype, device=comps.device)
        return torch.tensordot(w, comps, dims=1)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`S_t(x) = \sum_i w_i s_{i,t}(x)`, ``(N, *event_shape)`` -> same shape."""
        return self.combine(self.component_scores(x, t))

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{w:g}*{type(m).__name__}" for m, w in zip(self.models, self.weights, strict=True)
        )
        return f"{type(self).__name__}({parts})"


class GeometricDensityScore(GeometricScore):
    r"""A :class:`GeometricScore` whose components all know :math:`\log q_{i,t}`."""

    def component_log_densities(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log q_{i,t}(x)` (normalised) of every component, ``(K, N)``."""
        return torch.stack([m.log_density(x, model_time(m, t, x)) for m in self.models])

    def component_scores_and_log_densities(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(component_scores, component_log_densities)``: ``(K, N, *event_shape)``, ``(K, N)``;
        one NFE per component."""
        pairs = [m.score_and_log_density(x, model_time(m, t, x)) for m in self.models]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log\rho_t(x) = \sum_i w_i \log q_{i,t}(x)`, ``(N,)`` — unnormalised."""
        return self.combine(self.component_log_densities(x, t))

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score, log_density)`` from one evaluation of each component."""
        comps, logq = self.component_scores_and_log_densities(x, t)
        return self.combine(comps), self.combine(logq)


def _leaves(
    models: Sequence[ScoreModel], weights: Sequence[float]
) -> tuple[list[ScoreModel], list[float]]:
    """Flatten nested combinations; merge components that are the same object; drop zero
    weights (``cfg(c, u, 1.0)`` evaluates ``c`` only)."""
    out_m: list[ScoreModel] = []
    out_w: list[float] = []
    for m, w in zip(models, weights, strict=False):
        sub = (
            list(zip(m.models, (w * v for v in m.weights), strict=True))
            if isinstance(m, GeometricScore)
            else [(m, float(w))]
        )
        for leaf, lw in sub:
            for j, seen in enumerate(out_m):
                if seen is leaf:
                    out_w[j] += lw
                    break
            else:
                out_m.append(leaf)
                out_w.append(lw)
    kept = [(m, w) for m, w in zip(out_m, out_w, strict=True) if w != 0.0]
    return [m for m, _ in kept], [w for _, w in kept]


def anneal(model: ScoreModel, gamma: float) -> GeometricScore:
    r"""The annealed family :math:`q_t^\gamma` (``gamma > 0``; > 1 sharpens, < 1 flattens)."""
    if not (math.isfinite(float(gamma)) and float(gamma) > 0):
        raise SMCDiffError(f"anneal: gamma must be a positive finite number, got {gamma!r}")
    return GeometricScore([model], [float(gamma)])


def product(*models: ScoreModel) -> GeometricScore:
    r"""The product of experts :math:`\prod_i q_{i,t}` (two or more models)."""
    if len(models) < 2:
        raise SMCDiffError(f"product: needs at least two models, got {len(models)}")
    return GeometricScore(models, [1.0] * len(models))


def cfg(cond: ScoreModel, uncond: ScoreModel, w: float) -> GeometricScore:
    r"""Classifier-free guidance :math:`q_c^{w}\,q_u^{1-w}`: score :math:`w s_c + (1-w) s_u`
    (``w = 1``: the conditional model; ``w > 1``: guidance beyond it)."""
    if not math.isfinite(float(w)):
        raise SMCDiffError(f"cfg: w must be finite, got {w!r}")
    return GeometricScore([cond, uncond], [float(w), 1.0 - float(w)])
