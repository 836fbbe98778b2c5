r"""A diffusers model and scheduler as a score model: :func:`from_diffusers`.

A DDPM-family scheduler (anything with ``alphas_cumprod``: DDPM, DDIM, PNDM, DPM-Solver, ...)
becomes a :class:`~smcdiff.processes.discrete.DiscreteVP` whose :math:`\bar\alpha_i` is
``scheduler.alphas_cumprod`` exactly, at times :math:`t_i = (i+1)/T`; the network is called on
the integer timesteps :math:`i`, and :func:`smcdiff.steer` walks the scheduler's own timesteps
(its ``timestep_spacing`` and ``steps_offset`` respected; ``grid="scheduler"``, the default for
these models). ``prediction_type`` ``epsilon`` / ``sample`` / ``v_prediction`` is the network's
:math:`\hat\varepsilon`, :math:`\hat x_0` or :math:`\hat v = \sqrt{\bar\alpha}\,\hat\varepsilon -
\sqrt{1-\bar\alpha}\,\hat x_0`. The reverse kernels (:mod:`smcdiff.samplers.kernels`) on this
process are diffusers' own steps: ``sampler="ancestral"`` has the mean and variance of
``DDPMScheduler.step`` (``variance_type="fixed_small"``), ``sampler="ode"`` is
``DDIMScheduler.step`` with :math:`\eta = 0` and ``sampler="ddim"`` with ``eta`` its
:math:`\eta`-step.

A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``) becomes a
:class:`~smcdiff.processes.discrete.ScheduledFlow` (:math:`x_t = (1-t)x_0 + t\varepsilon`, the
scheduler's shifted sigmas as :math:`t`), the network's output is the velocity
:math:`\varepsilon - x_0` at timestep :math:`tT`, and steering uses the stochastic ancestral
kernel of that interpolant (the Euler step of the scheduler is ``sampler="ode"``).

What is not taken over, on purpose:

* **Clipping and thresholding** of :math:`\hat x_0` (``clip_sample=True``, the DDPM default, and
  ``thresholding=True``) are refused unless ``allow_clipping=True``. Clamping :math:`\hat x_0`
  makes the implied score :math:`(\alpha_t\,\mathrm{clip}(\hat x_0) - x)/\sigma_t^2` a
  different vector field from the model's: it is not the gradient of any log-density, its
  gradient in :math:`x` vanishes wherever a pixel is clipped (so guided / twisted proposals lose
  their signal there), and the target that FK weights correct toward is the tilted law of the
  clipped sampler, not of the model. With ``allow_clipping=True`` the score is that of the
  clipped :math:`\hat x_0` (as diffusers does: our ancestral step then equals
  ``DDPMScheduler.step`` with clipping; for DDIM, with ``use_clipped_model_output=True``).
* A **learned variance** (``variance_type="learned"`` / ``"learned_range"``, networks with
  2C output channels): the first C channels are the prediction; the variance channels are
  dropped, and the kernels use their own (``fixed_small``) variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.discrete import DiscreteVP, ScheduledFlow
from smcdiff.processes.parameterization import convert
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.network import NetworkScore

__all__ = [
    "PREDICTION_TYPES",
    "DiffusersNet",
    "SchedulerTimesteps",
    "from_diffusers",
    "scheduler_process",
]

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
LEARNED_VARIANCE = ("learned", "learned_range")
WHERE = "from_diffusers"


def _config(scheduler: Any) -> dict[str, Any]:
    config = getattr(scheduler, "config", None)
    if config is None or not callable(getattr(scheduler, "set_timesteps", None)):
        raise SMCDiffError(
            f"{WHERE}: scheduler must be a diffusers scheduler (with .config and "
            f".set_timesteps), got {type(scheduler).__name__}"
        )
    return dict(config)


def _is_flow(scheduler: Any, config: dict[str, Any]) -> bool:
    return not hasattr(scheduler, "alphas_cumprod") and "shift" in config


class SchedulerTimesteps:
    """``n ->`` what a fresh copy of ``scheduler`` sets for ``n`` inference steps
    (``set_timesteps(n, **kwargs)``): its integer ``timesteps`` (``kind="timesteps"``, for a
    :class:`DiscreteVP`'s ``spacing``) or its ``sigmas`` (``kind="sigmas"``, for a
    :class:`ScheduledFlow`). A class rather than a closure, so the process pickles (checkpoints)."""

    def __init__(self, scheduler: Any, kind: str, kwargs: dict[str, Any] | None = None):
        self.scheduler, self.kind, self.kwargs = scheduler, kind, dict(kwargs or {})

    def __call__(self, n: int) -> list:
        s = type(self.scheduler).from_config(self.scheduler.config)  # set_timesteps mutates
        s.set_timesteps(n, **self.kwargs)
        if self.kind == "sigmas":
            return s.sigmas.double().tolist()
        ts = torch.as_tensor(s.timesteps).double()
        if not bool((ts == ts.round()).all()):
            raise SMCDiffError(
                f"{WHERE}: {type(s).__name__} makes fractional timesteps; build a "
                "DDPMScheduler or DDIMScheduler from its config (DDIMScheduler.from_config("
                "scheduler.config)) for the integer timesteps the network was trained on"
            )
        return ts.long().tolist()


def scheduler_process(
    scheduler: Any, set_timesteps_kwargs: dict[str, Any] | None = None
) -> NoiseProcess:
    """The process of a diffusers ``scheduler`` (module docstring): a :class:`DiscreteVP` on its
    ``alphas_cumprod`` whose inference timesteps are the scheduler's ``set_timesteps(n)``, or a
    :class:`ScheduledFlow` on its flow-matching sigmas. ``set_timesteps_kwargs`` go to every
    ``set_timesteps`` call (e.g. ``{"mu": 0.8}`` for dynamic shifting)."""
    config = _config(scheduler)
    if _is_flow(scheduler, config):
        if config.get("invert_sigmas", False):
            raise SMCDiffError(f"{WHERE}: invert_sigmas=True (Mochi) is not supported")
        sigmas = SchedulerTimesteps(scheduler, "sigmas", set_timesteps_kwargs)
        return ScheduledFlow(sigmas, int(config["num_train_timesteps"]))
    if not hasattr(scheduler, "alphas_cumprod"):
        raise SMCDiffError(
            f"{WHERE}: {type(scheduler).__name__} is neither a DDPM-family scheduler (with "
            "alphas_cumprod) nor a flow-matching one (FlowMatchEulerDiscreteScheduler)"
        )
    timesteps = SchedulerTimesteps(scheduler, "timesteps", set_timesteps_kwargs)
    return DiscreteVP(scheduler.alphas_cumprod, spacing=timesteps)


def _check_clipping(config: dict[str, Any], allow: bool) -> tuple[float | None, tuple | None]:
    """``(clip range or None, (ratio, max) thresholding or None)``; refused unless ``allow``."""
    clip = bool(config.get("clip_sample", False))
    threshold = bool(config.get("thresholding", False))
    if (clip or threshold) and not allow:
        what = "thresholding=True" if threshold else "clip_sample=True"
        raise SMCDiffError(
            f"{WHERE}: the scheduler has {what}: it clamps the predicted x0 at every step, which "
            "makes the score (alpha_t clip(x0_hat) - x)/sigma_t^2 a different vector field from "
            "the model's (no log-density, zero gradient wherever a pixel is clipped), so FK / TDS "
            "weights would correct toward the clipped sampler's law, not the model's. Build the "
            "scheduler without it (type(s).from_config(s.config, clip_sample=False, "
            "thresholding=False)), or pass allow_clipping=True to clamp x0 as diffusers does "
            "and accept that"
        )
    if threshold:
        return None, (float(config["dynamic_thresholding_ratio"]),
                      float(config["sample_max_value"]))  # fmt: skip
    if clip:
        return float(config.get("clip_sample_range", 1.0)), None
    return None, None


def threshold_x0(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    r"""Imagen's dynamic thresholding (diffusers' ``thresholding=True``): per sample,
    :math:`s = \mathrm{clamp}(\mathrm{quantile}_{ratio}|\hat x_0|, 1, \text{max})`, then
    :math:`\mathrm{clamp}(\hat x_0, -s, s)/s`; ``(N, *event) -> (N, *event)``."""
    flat = x0.flatten(1)
    s = torch.quantile(flat.abs().float(), ratio, dim=1).clamp(1.0, max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class DiffusersNet(torch.nn.Module):
    r"""A diffusers model as ``net(x, timestep, **cond) -> prediction`` for
    :class:`~smcdiff.NetworkScore`: calls ``model(x, timestep=timestep, **cond)``, takes
    ``.sample`` (or the first element of a tuple), keeps the first C channels of a
    learned-variance output of 2C channels, and with ``clip`` / ``threshold`` returns the clamped
    :math:`\hat x_0` instead of the raw prediction (module docstring).

    Args:
        model: the diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, a transformer).
        process: the scheduler's process (for the coefficients of the clamped :math:`\hat x_0`).
        prediction: the network's parameterisation (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``).
        learned_variance: the scheduler's ``variance_type`` is learned (2C outputs allowed).
        clip: clamp :math:`\hat x_0` to ``[-clip, clip]``; ``threshold``: ``(ratio, max)``.
    """

    def __init__(
        self,
        model: Any,
        process: NoiseProcess,
        prediction: str,
        *,
        learned_variance: bool = False,
        clip: float | None = None,
        threshold: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.model = model
        self.process = process
        self.prediction = prediction
        self.learned_variance = learned_variance
        self.clip, self.threshold = clip, threshold
        self.training = bool(getattr(model, "training", False))  # the model's mode, not recursed

    @property
    def clamps(self) -> bool:
        """Whether the net returns a clamped :math:`\\hat x_0` (prediction ``"x0"``)."""
        return self.clip is not None or self.threshold is not None

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, **cond: Any) -> torch.Tensor:
        out = self.model(x, timestep=timestep, **cond)
        out = out.sample if hasattr(out, "sample") else out
        out = out[0] if isinstance(out, tuple) else out
        c = x.shape[1]
        if out.shape[1] == 2 * c and out.shape[2:] == x.shape[2:]:
            if not self.learned_variance:
                raise SMCDiffError(
                    f"{WHERE}: the network returns {2 * c} channels for {c}-channel samples but "
                    "the scheduler's variance_type is not 'learned' / 'learned_range'"
                )
            out = out[:, :c]  # the learned variance channels are not used
        if not self.clamps:
            return out
        t = self.process.time_of(timestep).to(x.dtype)  # type: ignore[attr-defined]
        x0 = convert(self.prediction, "x0", out, x, t, self.process)
        if self.threshold is not None:
            return threshold_x0(x0, *self.threshold)
        return x0.clamp(-self.clip, self.clip)  # type: ignore[arg-type]


def _event_shape(model: Any, event_shape: Sequence[int] | None) -> tuple[int, ...]:
    if event_shape is not None:
        return tuple(int(s) for s in event_shape)
    config = getattr(model, "config", None)
    channels = getattr(config, "in_channels", None)
    size = getattr(config, "sample_size", None)
    if channels is None or size is None:
        raise SMCDiffError(
            f"{WHERE}: pass event_shape=(C, H, W); {type(model).__name__}'s config has no "
            "in_channels / sample_size"
        )
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), *(int(s) for s in hw))


def from_diffusers(
    unet: Any,
    scheduler: Any,
    *,
    allow_clipping: bool = False,
    event_shape: Sequence[int] | None = None,
    time_input: str | Callable[[torch.Tensor], torch.Tensor] = "index",
    set_timesteps_kwargs: dict[str, Any] | None = None,
    max_batch: int | None = None,
    autocast: torch.dtype | None = None,
    compile: Any = False,
    **cond: Any,
) -> NetworkScore:
    r"""A diffusers network and its scheduler as a :class:`~smcdiff.NetworkScore` (module
    docstring): ``unet(x, timestep=..., **cond)`` on particles ``(N, *event_shape)``, on the
    scheduler's process (:func:`scheduler_process`).

    Args:
        unet: ``UNet2DModel``, ``UNet2DConditionModel`` or any diffusers-style model returning
            an output with ``.sample``; put it in ``eval()`` mode and on its device first.
        scheduler: the scheduler it was trained with (DDPM family or flow matching).
        allow_clipping: accept ``clip_sample=True`` / ``thresholding=True`` and clamp
            :math:`\hat x_0` as diffusers does (refused by default: it breaks the densities and
            weights; module docstring).
        event_shape: the shape of one sample; default ``(in_channels, sample_size,
            sample_size)`` from the model's config.
        time_input: what the network is given as its timestep; default ``"index"``: the
            process's ``timestep(t)`` (integer :math:`i` for DDPM-family schedulers,
            :math:`tT` for flow matching). A callable ``t -> timestep`` for other conventions
            (e.g. ``lambda t: t`` for a flow model that takes :math:`t` in [0, 1]).
        set_timesteps_kwargs: passed to the scheduler's ``set_timesteps`` (e.g. ``mu``).
        max_batch, autocast, compile: as for :class:`~smcdiff.NetworkScore`.
        **cond: conditioning passed to every call (``class_labels=...``,
            ``encoder_hidden_states=...``); tensors with one row per particle are split with
            the particles.

    Returns a :class:`~smcdiff.NetworkScore` whose ``net`` is a :class:`DiffusersNet` and whose
    ``process`` makes the scheduler's grids. No density: FK / TDS weights are exact only as the
    step count grows (no path correction).
    """
    config = _config(scheduler)
    process = scheduler_process(scheduler, set_timesteps_kwargs)
    if isinstance(process, ScheduledFlow):
        prediction, clip, threshold = "velocity", None, None
    else:
        kind = config.get("prediction_type", "epsilon")
        if kind not in PREDICTION_TYPES:
            raise SMCDiffError(
                f"{WHERE}: prediction_type {kind!r} is not supported; expected one of "
                f"{tuple(PREDICTION_TYPES)}"
            )
        prediction = PREDICTION_TYPES[kind]
        clip, threshold = _check_clipping(config, bool(allow_clipping))
    learned = config.get("variance_type") in LEARNED_VARIANCE
    net = DiffusersNet(unet, process, prediction, learned_variance=learned, clip=clip,
                       threshold=threshold)  # fmt: skip
    return NetworkScore(
        net,
        process,
        "x0" if net.clamps else prediction,
        time_input=time_input,
        max_batch=max_batch,
        event_shape=_event_shape(unet, event_shape),
        autocast=autocast,
        compile=compile,
        **cond,
    )
