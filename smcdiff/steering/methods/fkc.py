r"""Feynman–Kac correctors (``"fkc"``) and DriftLite (``"driftlite-vcg"``, ``"driftlite-ecg"``).

Targets :math:`\prod_i p_i^{w_i}\,e^{\beta_t r}` — ``anneal=gamma`` (:math:`p^\gamma`), a model
built by :func:`smcdiff.product` or :func:`smcdiff.cfg`, and/or a differentiable reward applied
at :math:`x_t` — with the continuous-time FKC weights of :class:`~smcdiff.steering.fkc.FKCModel`
(see docs/fkc-driftlite.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.errors import SMCDiffError
from smcdiff.scores.combine import GeometricScore
from smcdiff.scores.combine import anneal as anneal_model
from smcdiff.steering.fkc import (
    BASES,
    BETA_SCHEDULES,
    DIVERGENCES,
    INTEGRATORS,
    NOISES,
    STEP_CONTROLS,
    BasisField,
    BetaSchedule,
    FKCModel,
)
from smcdiff.steering.registry import CommonConfig, MethodPlan

__all__ = ["DriftLiteConfig", "FKCConfig", "build_fkc"]

WHERE = "steer"


@dataclass(frozen=True)
class FKCConfig:
    r"""Feynman–Kac correctors (Skreta et al. 2025) for :math:`\prod_i p_i^{w_i}\,e^{\beta_t r}`.

    ``anneal``: :math:`\gamma > 0`, target :math:`p^\gamma`. The reward (``reward`` with
    ``beta``, or ``log_likelihood`` alone: one differentiable function) is applied at
    :math:`x_t` with the schedule ``beta_schedule``: ``"linear"`` (default), ``"snr"``,
    ``"constant"`` or a callable :math:`t \mapsto \beta_t` (then leave ``beta`` unset),
    reaching ``beta`` at ``t_min``, or a :class:`~smcdiff.steering.fkc.BetaSchedule` object.
    The SDE drift uses the target score; ``noise`` (``"target"``, ``"tempered"`` or
    :math:`\kappa \ge 0` with :math:`h^2 = \kappa g^2`; default 2.0) sets the drift/weight
    split, and each step is weighted by the continuous-time FKC potential (trapezoid rule). With
    ``"target"`` (:math:`\kappa = 1`) a sharpening target (a concave reward, ``anneal`` > 1, a
    product) leaves the particles about half as spread as :math:`\rho_t` and the weights with
    infinite variance (docs/fkc-driftlite.md, "Noise choice"); :math:`\kappa = 2` keeps them
    finite. ``divergence`` (``"auto" | "exact" | "hutchinson"``, with ``n_probes``
    Rademacher probes, default 1) for the Laplacian of the reward. ``integrator``: the move,
    ``"exp-fit"`` (default: exponential integrator with the linear part of the drift fitted to
    the weighted particles), ``"exp"`` (fixed linear part) or ``"em"``. ``step_control``
    (``"auto"``, default, or ``"off"``), ``tol`` (default 0.005) and ``max_substeps`` (default 64):
    each grid step is split into sub-steps while the estimated log Z error of a sub-step exceeds
    ``tol`` (:mod:`smcdiff.steering.fkc.stepping`; a
    :class:`~smcdiff.errors.DiscretisationWarning` when ``max_substeps`` do not suffice).
    ``max_move`` (default 10; ``None``: no taming): a particle's explicit displacement in one
    sub-step is tamed to at most this many noise scales :math:`g_t\sqrt{\delta d}`
    (:func:`smcdiff.steering.fkc.integrator.tame`); a run where more than 0.1 % of the
    particles needed it at some step warns (:class:`~smcdiff.errors.StiffDriftWarning`).
    """

    anneal: float | None = None
    beta_schedule: str | BetaSchedule | Callable[[float], float] = "linear"
    noise: str | float = 2.0
    divergence: str = "auto"
    n_probes: int | None = None
    integrator: str = "exp-fit"
    step_control: str = "auto"
    tol: float | None = None
    max_substeps: int | None = None
    max_move: float | None = 10.0

    def __post_init__(self) -> None:
        anneal = check_number("anneal", self.anneal, minimum=0.0, strict_min=True, where=WHERE,
                              allow_none=True)  # fmt: skip
        object.__setattr__(self, "anneal", anneal)
        if isinstance(self.beta_schedule, str):  # objects and callables: FKCModel checks them
            check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES, where=WHERE)
        if isinstance(self.noise, str):
            check_choice("noise", self.noise, NOISES, where=WHERE)
        else:
            kappa = check_number("noise", self.noise, minimum=0.0, where=WHERE)
            object.__setattr__(self, "noise", kappa)
        check_choice("divergence", self.divergence, DIVERGENCES, where=WHERE)
        probes = check_int("n_probes", self.n_probes, 1, where=WHERE, allow_none=True)
        if probes is not None and self.divergence == "exact":
            raise SMCDiffError(f"{WHERE}: n_probes is for divergence='hutchinson' (or 'auto')")
        object.__setattr__(self, "n_probes", probes)
        check_choice("integrator", self.integrator, INTEGRATORS, where=WHERE)
        check_choice("step_control", self.step_control, STEP_CONTROLS, where=WHERE)
        tol = check_number("tol", self.tol, minimum=0.0, strict_min=True, where=WHERE,
                           allow_none=True)  # fmt: skip
        object.__setattr__(self, "tol", tol)
        subs = check_int("max_substeps", self.max_substeps, 1, where=WHERE, allow_none=True)
        object.__setattr__(self, "max_substeps", subs)
        move = check_number("max_move", self.max_move, minimum=0.0, strict_min=True, where=WHERE,
                            allow_none=True)  # fmt: skip
        object.__setattr__(self, "max_move", move)
        if self.step_control == "off" and (tol is not None or subs is not None):
            raise SMCDiffError(f"{WHERE}: tol / max_substeps are for step_control='auto'")


@dataclass(frozen=True)
class DriftLiteConfig(FKCConfig):
    r"""FKC plus DriftLite's control drift over ``basis`` (names from
    :data:`smcdiff.steering.fkc.BASES`; default: the target score and the reward gradient),
    refitted every step from the weighted particles to minimise the variance (``"vcg"``) or the
    energy (``"ecg"``) of the weights; ``ess_threshold=0`` gives the variants without
    resampling. Plus the options of :class:`FKCConfig`, with ``noise="target"`` by default (the
    control keeps the weights light-tailed).
    """

    noise: str | float = "target"
    basis: Sequence[str | BasisField] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.basis is not None:
            basis = (self.basis,) if isinstance(self.basis, str) else tuple(self.basis)
            for name in basis:  # names here; BasisField objects are checked by FKCModel
                if isinstance(name, str):
                    check_choice("basis entry", name, BASES, where=WHERE)
            object.__setattr__(self, "basis", basis)


def build_fkc(common: CommonConfig, config: FKCConfig, control: str | None = None) -> MethodPlan:
    """The :class:`FKCModel` plan; ``control`` ``None`` (FKC), ``"vcg"`` or ``"ecg"``."""
    reward, beta, name = common.reward, common.beta, "reward"
    if common.log_likelihood is not None:
        if reward is not None:
            raise SMCDiffError(
                f"{common.where} takes one differentiable reward; fold the likelihood into it "
                "(reward = lambda x: r(x) + log_lik(x) / beta)"
            )
        reward, beta = common.log_likelihood, None  # beta 1 (None leaves a callable schedule)
        name = "log_likelihood"
    model = common.model
    if config.anneal is not None:
        model = anneal_model(model, config.anneal)
    if reward is None and not isinstance(model, GeometricScore):
        raise SMCDiffError(
            f"{common.where}: method={common.method!r} needs anneal=, a product/cfg model or a "
            "reward"
        )
    fk = FKCModel(
        model, common.times(model.process), reward=reward, reward_name=name,
        beta=beta if reward is not None else None,
        beta_schedule=config.beta_schedule, noise=config.noise, divergence=config.divergence,
        n_probes=1 if config.n_probes is None else config.n_probes, control=control,
        basis=getattr(config, "basis", None), integrator=config.integrator,
        step_control=config.step_control, tol=config.tol,
        max_substeps=config.max_substeps, max_move=config.max_move, device=common.device, dtype=common.dtype,
    )  # fmt: skip
    named = isinstance(config.beta_schedule, str)
    settings = {
        "anneal": config.anneal,
        "beta": (1.0 if beta is None else beta) if reward is not None and named else None,
        "beta_schedule": config.beta_schedule if named else "custom",
        "noise": config.noise,
        "integrator": config.integrator,
        "step_control": fk.step_control.mode,
        "tol": fk.step_control.tol if fk.step_control.on else None,
        "max_substeps": fk.step_control.max_substeps if fk.step_control.on else None,
        "max_move": config.max_move,
    }
    return MethodPlan(fk, settings)
