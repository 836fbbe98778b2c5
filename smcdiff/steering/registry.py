r"""The registry of :func:`~smcdiff.steer` methods: a name -> (config class, builder).

A method is a frozen dataclass of its own options (its *config*) and a *builder*
``builder(common, config) -> MethodPlan`` that turns the options shared by every method
(:class:`CommonConfig`: the model, the tilt, the particle count, the grid, resampling, seed,
device, ...) and its config into a Feynman–Kac model for :func:`smcdiff.run_smc`. ``steer()``
looks the name up, refuses any option the config does not declare (naming it, the method and the
method's valid options), runs the plan and wraps it in an :class:`~smcdiff.SMCResult`.

Adding a method is one module (config + builder) plus one line::

    register_method("my-method", MyConfig, build_my_method)

(or ``@register_method("my-method", MyConfig)`` on the builder); see ``docs/adding-a-method.md``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from smcdiff.checks import (
    check_choice,
    check_int,
    check_n_particles,
    check_number,
    check_options,
    check_progress,
)
from smcdiff.diffusion_fk import TiltTerm
from smcdiff.errors import SMCDiffError
from smcdiff.processes.grids import GRIDS, time_grid
from smcdiff.resampling import get_scheme
from smcdiff.resampling.policies import Never, ResamplingPolicy, policy_from_threshold
from smcdiff.scores.base import ScoreModel

__all__ = [
    "DEFAULT_ESS_THRESHOLD",
    "CommonConfig",
    "MethodPlan",
    "MethodSpec",
    "common_options",
    "get_method",
    "register_method",
    "registered_methods",
    "unregister_method",
]

DEFAULT_ESS_THRESHOLD = 0.5
WHERE = "steer"


@dataclass(frozen=True)
class CommonConfig:
    r"""Options every :func:`~smcdiff.steer` method takes, checked and resolved once.

    ``reward`` / ``log_likelihood``: callables ``x0 (N, *event_shape) -> (N,)``; the tilt is
    :math:`\phi = \beta r + \log p(y\mid x)` (``beta=None`` means 1). ``n_steps`` steps on the
    ``grid`` (see :func:`smcdiff.time_grid`; ``None``: the process's ``default_grid``, else
    ``"log_snr"``) from ``t_max`` to ``t_min``. Resampling: the
    ``resampling`` scheme (``None``: ``"systematic"``), decided by ``policy`` (a
    :class:`~smcdiff.resampling.policies.ResamplingPolicy`) or by ``ess_threshold`` (resample
    when ESS < ``ess_threshold * N``; ``None``: 0.5), never both. ``device`` and ``dtype`` are
    resolved from the model when ``None`` (``device`` becomes a ``torch.device``, ``dtype`` a
    ``torch.dtype``); ``method`` is the registered name being run (set by ``steer``).
    """

    model: ScoreModel
    method: str = "fk"
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None
    log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None
    beta: float | None = None
    n_particles: int = 1000
    n_steps: int = 100
    grid: str | None = None
    t_min: float | None = None
    t_max: float | None = None
    resampling: str | Callable | None = None
    ess_threshold: float | None = None
    policy: ResamplingPolicy | None = None
    seed: int | None = None
    device: str | torch.device | None = None
    dtype: torch.dtype | None = None
    n_runs: int | None = None
    check_every: int | None = None
    progress: bool | Callable | None = None

    def __post_init__(self) -> None:
        self._check_tilt()
        self._check_run()
        self._resolve_device()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalise a checked value of a frozen config

    def _check_tilt(self) -> None:
        for name in ("reward", "log_likelihood"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise SMCDiffError(
                    f"{WHERE}: {name} must be a callable x0 (N, *event_shape) -> (N,)"
                )
        self._set("beta", check_number("beta", self.beta, where=WHERE, allow_none=True))

    def _check_run(self) -> None:
        self._set("n_particles", check_n_particles(self.n_particles))
        self._set("n_steps", check_int("n_steps", self.n_steps, 1, where=WHERE))
        process = getattr(self.model, "process", None)  # None: the process's default grid
        self._set("grid", self.grid or getattr(process, "default_grid", "log_snr"))
        check_choice("grid", self.grid, GRIDS, where=WHERE)
        for name in ("t_min", "t_max"):
            t = getattr(self, name)
            self._set(name, check_number(name, t, minimum=0.0, maximum=1.0, where=WHERE,
                                         allow_none=True))  # fmt: skip
        if self.resampling is not None:
            get_scheme(self.resampling)  # fail early on an unknown scheme name
        threshold = check_number(
            "ess_threshold", self.ess_threshold, minimum=0.0, maximum=1.0, where=WHERE,
            allow_none=True,
        )  # fmt: skip
        self._set("ess_threshold", threshold)
        if self.policy is not None:
            if threshold is not None:
                raise SMCDiffError(
                    f"{WHERE}: give either policy= or ess_threshold=, not both (the policy "
                    "decides when to resample; ESSBelow(fraction) is the threshold rule)"
                )
            if not callable(self.policy):
                raise SMCDiffError(
                    f"{WHERE}: policy must be a ResamplingPolicy (policy(log_w, step, t) -> mask), "
                    f"got {type(self.policy).__name__}"
                )
        self._set("seed", check_int("seed", self.seed, 0, where=WHERE, allow_none=True))
        self._set("n_runs", check_int("n_runs", self.n_runs, 1, where=WHERE, allow_none=True))
        every = check_int("check_every", self.check_every, 1, where=WHERE, allow_none=True)
        self._set("check_every", every)
        check_progress(self.progress, where=WHERE)

    def _resolve_device(self) -> None:
        if not isinstance(self.model, ScoreModel):
            raise SMCDiffError(
                f"{WHERE}: model must have .process, .dim and .score(x, t) (see smcdiff.ScoreModel)"
            )
        model_device = getattr(self.model, "device", None)
        device = torch.device(self.device if self.device is not None else (model_device or "cpu"))
        if model_device is not None and torch.device(model_device).type != device.type:
            raise SMCDiffError(
                f"{WHERE}: the model lives on {model_device} but device={str(device)!r}; "
                "move the model (e.g. exact_score(dist.to(device), process)) or pass its device"
            )
        dtype = self.dtype or getattr(self.model, "dtype", None) or torch.float32
        if not isinstance(dtype, torch.dtype):
            raise SMCDiffError(f"{WHERE}: dtype must be a torch.dtype, got {dtype!r}")
        self._set("device", device)
        self._set("dtype", dtype)

    # ---------------------------------------------------------------- helpers for builders
    @property
    def where(self) -> str:
        """``"steer(method='...')"``, the prefix of a builder's error messages."""
        return f"{WHERE}(method={self.method!r})"

    def tilt_terms(self) -> list[TiltTerm]:
        r"""The tilt :math:`\phi` as terms: ``beta * reward`` and ``log_likelihood`` (given ones)."""
        terms = []
        if self.reward is not None:
            terms.append(TiltTerm("reward", self.reward, 1.0 if self.beta is None else self.beta))
        if self.log_likelihood is not None:
            terms.append(TiltTerm("log_likelihood", self.log_likelihood, 1.0))
        return terms

    def times(self, process: Any = None) -> list[float]:
        """The decreasing time grid ``t_max = t_0 > ... > t_K = t_min`` (``K = n_steps``) of
        ``process`` (default: the model's)."""
        process = self.model.process if process is None else process
        grid = time_grid(process, self.n_steps, self.grid, t_min=self.t_min, t_max=self.t_max)
        return grid.tolist()

    def resampling_policy(self, weighted: bool) -> ResamplingPolicy:
        """``policy``, else the ``ess_threshold`` rule; :class:`Never` for unweighted methods."""
        if not weighted:
            return Never()
        if self.policy is not None:
            return self.policy
        threshold = DEFAULT_ESS_THRESHOLD if self.ess_threshold is None else self.ess_threshold
        return policy_from_threshold(threshold)

    @property
    def resampling_scheme(self) -> str | Callable:
        return "systematic" if self.resampling is None else self.resampling


@dataclass(frozen=True)
class MethodPlan:
    """What a builder returns: a Feynman–Kac ``model`` for :func:`smcdiff.run_smc`, the
    ``settings`` to report in ``SMCResult.info`` (resolved values of the method's options), and
    optional MCMC ``corrector`` (after every step) and ``init_corrector`` (after step 0)."""

    model: Any
    settings: dict[str, Any] = field(default_factory=dict)
    corrector: Callable | None = None
    init_corrector: Callable | None = None


Builder = Callable[[CommonConfig, Any], MethodPlan]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``name``, its frozen ``config_cls`` (every field is an option of
    ``steer(method=name, ...)``), its ``builder`` and whether its particles carry importance
    ``weighted`` (unweighted methods never resample, refuse ``resampling`` / ``ess_threshold``
    / ``policy`` and report ``log_z = NaN``)."""

    name: str
    config_cls: type
    builder: Builder
    weighted: bool = True

    @property
    def options(self) -> tuple[str, ...]:
        """The option names this method takes besides the common ones."""
        return tuple(f.name for f in fields(self.config_cls))

    def make_config(self, options: dict[str, Any]) -> Any:
        """The method's config from ``options``; an option it does not take is an error that
        names the option, the method, the method's valid options and where the option belongs."""
        where = f"{WHERE}(method={self.name!r})"
        unknown = [k for k in options if k not in self.options]
        if unknown:
            try:
                check_options(options, self.options, where=where)
            except SMCDiffError as err:
                raise SMCDiffError(f"{err}{_where_options_belong(unknown)}") from None
        return self.config_cls(**options)

    def check_common(self, common: CommonConfig) -> None:
        """Refuse resampling options for a method without weights."""
        if self.weighted:
            return
        given = [
            n for n in ("resampling", "ess_threshold", "policy") if getattr(common, n) is not None
        ]
        if given:
            raise SMCDiffError(
                f"{WHERE}(method={self.name!r}) has no weights and never resamples: it does not "
                f"take {', '.join(map(repr, given))}"
            )


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type,
    builder: Builder | None = None,
    *,
    weighted: bool = True,
    replace_existing: bool = False,
) -> Any:
    """Register ``steer(method=name)``: ``config_cls`` a frozen dataclass whose fields (all with
    defaults) are the method's options, ``builder(common, config) -> MethodPlan``. Without
    ``builder``, returns a decorator for it. A taken name is an error unless
    ``replace_existing``."""
    if builder is None:

        def decorate(fn: Builder) -> Builder:
            register_method(name, config_cls, fn, weighted=weighted,
                            replace_existing=replace_existing)  # fmt: skip
            return fn

        return decorate
    if not isinstance(name, str) or not name:
        raise SMCDiffError(f"register_method: name must be a non-empty str, got {name!r}")
    if name in _REGISTRY and not replace_existing:
        raise SMCDiffError(
            f"register_method: method {name!r} is already registered (replace_existing=True "
            "replaces it)"
        )
    params = getattr(config_cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise SMCDiffError(f"register_method: {config_cls!r} must be a frozen dataclass")
    clash = {f.name for f in fields(config_cls)} & set(common_options())
    if clash:
        raise SMCDiffError(
            f"register_method: {name!r} redefines common options {sorted(clash)}; read them "
            "from the CommonConfig the builder receives"
        )
    if not callable(builder):
        raise SMCDiffError(f"register_method: builder must be callable, got {builder!r}")
    _REGISTRY[name] = MethodSpec(name, config_cls, builder, bool(weighted))
    return builder


def unregister_method(name: str) -> None:
    """Remove a registered method (e.g. one a test registered)."""
    get_method(name)
    del _REGISTRY[name]


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; an unknown name is an error listing the registered ones."""
    check_choice("method", name, registered_methods(), where=WHERE)
    return _REGISTRY[name]


def registered_methods() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def common_options() -> tuple[str, ...]:
    """The option names every method takes (the fields of :class:`CommonConfig`)."""
    return tuple(f.name for f in fields(CommonConfig))


def _where_options_belong(unknown: Iterable[str]) -> str:
    """Hints for options the chosen method does not take: which methods do, or a close name."""
    known = set(common_options()) | {o for spec in _REGISTRY.values() for o in spec.options}
    hints = []
    for name in unknown:
        owners = [m for m, spec in _REGISTRY.items() if name in spec.options]
        if owners:
            hints.append(f"{name!r} is an option of method {', '.join(map(repr, owners))}")
        else:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            if close:
                hints.append(f"{name!r}: did you mean {close[0]!r}?")
    return "; " + "; ".join(hints) if hints else ""
