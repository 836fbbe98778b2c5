r"""``train_score``: denoising score matching for a network, with EMA, progress and checkpoints.

Each iteration draws a minibatch :math:`x_0`, times :math:`t`
(:func:`~smcdiff.training.loss.sample_times`), noise :math:`\varepsilon`, forms :math:`x_t =
\alpha_t x_0 + \sigma_t\varepsilon` and takes one AdamW step on the weighted regression loss of
:mod:`smcdiff.training.loss`; then the EMA of the weights is updated. Everything random comes from
one generator seeded by ``seed``, so a run on tensor data is reproducible and resumes exactly from a
checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from smcdiff.checks import check_choice, check_int, check_number
from smcdiff.engine.progress import Progress
from smcdiff.errors import CheckpointError, SMCDiffError
from smcdiff.processes.parameterization import coefficients
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.energy_network import EnergyNetwork
from smcdiff.scores.network import TIME_INPUTS, NetworkScore
from smcdiff.seeding import make_generator
from smcdiff.training.checkpoint import read_checkpoint, save_score
from smcdiff.training.data import Batches
from smcdiff.training.ema import EMA
from smcdiff.training.loss import (
    PREDICTIONS,
    TIME_SAMPLINGS,
    WEIGHTINGS,
    eps_weight,
    output_scale,
    regression_target,
    resolve_weighting,
    sample_times,
)

__all__ = ["LR_SCHEDULES", "TrainSettings", "Trainer", "TrainingLog", "train_score"]

WHERE = "train_score"
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    """The options of :func:`train_score` (checked at construction; see its docstring)."""

    prediction: str = "eps"
    n_iters: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    time_input: str | Callable = "t"
    time_sampling: str = "uniform"
    t_min: float | None = None
    t_max: float | None = None
    weighting: str | Callable = "auto"
    min_snr_gamma: float = 5.0
    ema_decay: float | None = 0.999
    grad_clip: float | None = None
    weight_decay: float = 0.0
    warmup: int = 0
    lr_schedule: str = "constant"
    label_dropout: float = 0.0
    null_label: int | None = None
    label_key: str = "y"

    def __post_init__(self) -> None:
        check_choice("prediction", self.prediction, PREDICTIONS, where=WHERE)
        check_int("n_iters", self.n_iters, 1, where=WHERE)
        check_int("batch_size", self.batch_size, 1, where=WHERE)
        check_number("lr", self.lr, minimum=0.0, strict_min=True, where=WHERE)
        if not callable(self.time_input):
            check_choice("time_input", self.time_input, TIME_INPUTS, where=WHERE)
        check_choice("time_sampling", self.time_sampling, TIME_SAMPLINGS, where=WHERE)
        if not callable(self.weighting):
            check_choice("weighting", self.weighting, WEIGHTINGS, where=WHERE)
        check_number("min_snr_gamma", self.min_snr_gamma, minimum=0.0, strict_min=True, where=WHERE)
        check_number("ema_decay", self.ema_decay, minimum=0.0, maximum=1.0, strict_max=True,
                     where=WHERE, allow_none=True)  # fmt: skip
        check_number("grad_clip", self.grad_clip, minimum=0.0, strict_min=True, where=WHERE,
                     allow_none=True)  # fmt: skip
        check_number("weight_decay", self.weight_decay, minimum=0.0, where=WHERE)
        check_int("warmup", self.warmup, 0, where=WHERE)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES, where=WHERE)
        check_number("label_dropout", self.label_dropout, minimum=0.0, maximum=1.0, where=WHERE)
        check_int("null_label", self.null_label, where=WHERE, allow_none=True)
        if not isinstance(self.label_key, str) or not self.label_key.isidentifier():
            raise SMCDiffError(f"{WHERE}: label_key must be a keyword name, got {self.label_key!r}")

    def record(self) -> dict[str, Any]:
        """The settings as plain values (callables by name), for checkpoints and logs."""
        out = asdict(self)
        for key in ("time_input", "weighting"):
            if callable(out[key]):
                out[key] = f"<callable {getattr(out[key], '__name__', 'object')}>"
        return out


@dataclass
class TrainingLog:
    """What a :func:`train_score` run did: ``losses`` ``(n_iters,)`` (the minibatch loss of every
    iteration, CPU float64), ``grad_norms`` ``(n_iters,)`` (the gradient norm before clipping;
    only with ``grad_clip``) and ``n_clipped`` (iterations whose norm exceeded ``grad_clip``),
    ``seed``, ``settings`` (:meth:`TrainSettings.record`), ``resumed_from`` (the iteration a
    resumed run started at, else 0) and ``wall_time`` in seconds."""

    losses: torch.Tensor
    grad_norms: torch.Tensor | None
    n_clipped: int
    seed: int
    settings: dict[str, Any]
    resumed_from: int
    wall_time: float


def _device(device: Any, net: torch.nn.Module, data: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in net.parameters():
        return p.device
    return data.device if isinstance(data, torch.Tensor) else torch.device("cpu")


class Trainer:
    """The state of one training run (net, optimiser, schedule, EMA, generator, step) and its
    iteration (:meth:`train_step`). :func:`train_score` drives it; use it directly for a custom
    loop (``trainer.train_step()`` returns the minibatch loss as a 0-d tensor)."""

    def __init__(
        self,
        net: torch.nn.Module,
        data: torch.Tensor | Iterable[Any],
        process: NoiseProcess,
        settings: TrainSettings,
        *,
        seed: int | None = None,
        device: Any = None,
        labels: torch.Tensor | bool | None = None,
    ):
        if not isinstance(net, torch.nn.Module):
            raise SMCDiffError(f"{WHERE}: net must be an nn.Module, got {type(net).__name__}")
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(f"{WHERE}: process must be a NoiseProcess, got {type(process)}")
        self.s, self.process, self.net = settings, process, net
        self.device = _device(device, net, data)
        net.to(self.device)
        dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
        self.generator, self.seed = make_generator(seed, self.device)
        self.batches = Batches(
            data, settings.batch_size, self.generator, self.device, dtype, labels
        )
        self.null_label = self._null_label(net)
        self.t_min, self.t_max = self._time_range()
        self.weighting = resolve_weighting(settings.weighting, settings.prediction)
        self.model = self._wrap(net)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, foreach=True,
                                           weight_decay=settings.weight_decay)  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema = EMA(net, settings.ema_decay) if settings.ema_decay else None
        self.step, self.resumed_from = 0, 0
        n = settings.n_iters
        self.losses = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.grad_norms = torch.zeros(n, dtype=torch.float64, device=self.device)

    def _time_range(self) -> tuple[float, float]:
        s, p = self.s, self.process
        lo = p.t_min if s.t_min is None else check_number("t_min", s.t_min, where=WHERE)
        hi = p.t_max if s.t_max is None else check_number("t_max", s.t_max, where=WHERE)
        if not 0.0 <= lo < hi <= 1.0:
            raise SMCDiffError(f"{WHERE}: need 0 <= t_min < t_max <= 1, got {lo}, {hi}")
        if s.time_input == "index" and not hasattr(p, "time_of"):
            raise SMCDiffError(
                f"{WHERE}: time_input='index' needs a discrete process with n_timesteps and "
                f"time_of(i) (e.g. DiscreteVP); {type(p).__name__} has none"
            )
        if s.time_input == "index" and s.time_sampling != "uniform":
            raise SMCDiffError(f"{WHERE}: time_input='index' samples integer timesteps "
                               "uniformly; time_sampling must be 'uniform'")  # fmt: skip
        return lo, hi

    def _null_label(self, net: torch.nn.Module) -> int | None:
        """The label of "no class" that ``label_dropout`` puts in (default: an
        :mod:`smcdiff.nets` net's ``n_classes``, its unconditional row)."""
        s = self.s
        if self.batches.labels is None:
            if s.label_dropout > 0 or s.null_label is not None:
                raise SMCDiffError(f"{WHERE}: label_dropout / null_label need labels=")
            return None
        if s.null_label is not None or s.label_dropout == 0:
            return s.null_label
        n_classes = (getattr(net, "config", None) or {}).get("n_classes")
        if n_classes is None:
            raise SMCDiffError(
                f"{WHERE}: label_dropout needs null_label= (the label your net reads as "
                "'no class', for classifier-free guidance)"
            )
        return int(n_classes)

    def _wrap(self, net: torch.nn.Module) -> NetworkScore | EnergyNetwork:
        """The score model around ``net`` (built in eval mode: no training-mode warning)."""
        mode = net.training
        net.eval()
        shape, ti = self.batches.event_shape, self.s.time_input
        if self.s.prediction == "energy":
            model = EnergyNetwork(net, self.process, time_input=ti, event_shape=shape)
        else:
            model = NetworkScore(net, self.process, self.s.prediction, time_input=ti,
                                 event_shape=shape)  # fmt: skip
        net.train(mode)
        return model

    def _lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.s.warmup) if self.s.warmup else 1.0
        if self.s.lr_schedule == "cosine":
            return (
                warm * 0.5 * (1.0 + math.cos(math.pi * min(step, self.s.n_iters) / self.s.n_iters))
            )
        return warm

    def sample_times(self, n: int) -> torch.Tensor:
        """``n`` training times ``(n,)`` float64 (integer timesteps' times for ``"index"``)."""
        if self.s.time_input == "index":
            lo = int(self.process.timestep(self.t_min))  # type: ignore[attr-defined]
            hi = int(self.process.timestep(self.t_max))  # type: ignore[attr-defined]
            i = torch.randint(max(lo, 0), hi + 1, (n,), generator=self.generator,
                              device=self.device)  # fmt: skip
            return self.process.time_of(i).to(self.device)  # type: ignore[attr-defined]
        return sample_times(self.process, n, self.s.time_sampling, self.t_min, self.t_max,
                            self.generator, self.device)  # fmt: skip

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted denoising loss of a batch ``x0`` ``(B, *event_shape)`` with its
        ``labels`` ``(B,)`` (passed to the net as ``label_key``; each one replaced by
        ``null_label`` with probability ``label_dropout``), a 0-d tensor."""
        s = self.s
        t = self.sample_times(x0.shape[0])
        eps = torch.randn(x0.shape, generator=self.generator, device=x0.device, dtype=x0.dtype)
        a, sig, _, _ = coefficients(self.process, t, x0)
        xt = a * x0 + sig * eps
        if labels is not None:
            if s.label_dropout > 0:
                u = torch.rand(labels.shape, generator=self.generator, device=labels.device)
                labels = torch.where(u < s.label_dropout, self.null_label, labels)
            self.model.cond[s.label_key] = labels  # this batch's conditioning
        try:
            if s.prediction == "energy":
                out = -self.model.energy_and_grad(xt, t, keep_graph=True)[1]  # the score
            else:
                out = self.model.predict(xt, t, keep_graph=True)
        finally:
            self.model.cond.pop(s.label_key, None)
        target = regression_target(s.prediction, x0, eps, t, self.process)
        per = (out - target).square().flatten(1).mean(1)
        if self.weighting == "natural":
            return per.mean()
        w = eps_weight(self.weighting, s.prediction, t, self.process, s.min_snr_gamma)
        w = w / output_scale(s.prediction, t, self.process) ** 2
        return (per * w.to(per.dtype)).mean()

    def train_step(self) -> torch.Tensor:
        """One optimiser step (and EMA update); the minibatch loss, a detached 0-d tensor."""
        if not self.net.training:
            self.net.train()
        loss = self.loss(*self.batches.next())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.s.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.s.grad_clip)
            self.grad_norms[self.step] = norm.detach()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.net)
        self.losses[self.step] = loss.detach()
        self.step += 1
        self.model.counter.reset()  # training calls are not sampling NFEs
        return loss.detach()

    # ------------------------------------------------------------------ checkpoints and results
    def score_model(self) -> NetworkScore | EnergyNetwork:
        """The score model of the EMA weights (of the raw weights without EMA), in eval mode."""
        net = self.ema.average if self.ema is not None else self.net
        net.eval()
        return self._wrap(net)

    def state(self) -> dict[str, Any]:
        """The resumable state (plain values and tensors)."""
        return {
            "step": self.step, "seed": self.seed, "settings": self.s.record(),
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "generator": self.generator.get_state(), "losses": self.losses[: self.step].cpu(),
            "grad_norms": self.grad_norms[: self.step].cpu(),
        }  # fmt: skip

    def load_state(self, state: dict[str, Any], path: str) -> None:
        """Resume from :meth:`state` (settings other than ``n_iters`` must match)."""
        mine = {k: v for k, v in self.s.record().items() if k != "n_iters"}
        theirs = {k: v for k, v in state["settings"].items() if k != "n_iters"}
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise CheckpointError(f"{WHERE}: resume={path} was trained with other settings: {diff}")
        if state["step"] > self.s.n_iters:
            raise CheckpointError(f"{WHERE}: resume={path} is at iteration {state['step']} > "
                                  f"n_iters={self.s.n_iters}")  # fmt: skip
        if (state["ema"] is None) != (self.ema is None):
            raise CheckpointError(f"{WHERE}: resume={path}: ema_decay on in one run only")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.seed = int(state["seed"])
        self.step = self.resumed_from = int(state["step"])
        self.losses[: self.step] = state["losses"].to(self.device)
        self.grad_norms[: self.step] = state["grad_norms"].to(self.device)

    def log(self, wall_time: float) -> TrainingLog:
        clip = self.s.grad_clip
        norms = self.grad_norms.cpu() if clip is not None else None
        n_clipped = int((norms > clip).sum()) if norms is not None else 0
        return TrainingLog(self.losses.cpu(), norms, n_clipped, self.seed, self.s.record(),
                           self.resumed_from, wall_time)  # fmt: skip


def train_score(
    net: torch.nn.Module,
    data: torch.Tensor | Iterable[Any],
    process: NoiseProcess,
    prediction: str = "eps",
    *,
    n_iters: int = 10_000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int | None = None,
    device: str | torch.device | None = None,
    time_input: str | Callable[[torch.Tensor], torch.Tensor] = "t",
    time_sampling: str = "uniform",
    t_min: float | None = None,
    t_max: float | None = None,
    weighting: str | Callable[[torch.Tensor], torch.Tensor] = "auto",
    min_snr_gamma: float = 5.0,
    ema_decay: float | None = 0.999,
    grad_clip: float | None = None,
    weight_decay: float = 0.0,
    warmup: int = 0,
    lr_schedule: str = "constant",
    labels: torch.Tensor | bool | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
    label_key: str = "y",
    checkpoint: str | None = None,
    checkpoint_every: int | None = None,
    resume: str | None = None,
    progress: bool | Callable[[int, dict], None] | None = None,
) -> NetworkScore | EnergyNetwork:
    r"""Train ``net`` by denoising score matching under ``process``; returns its score model.

    Args:
        net: an ``nn.Module`` called ``net(x_t, net_time)`` (e.g. :class:`smcdiff.nets.MLP`,
            :class:`smcdiff.nets.UNet`); trained in place (its raw weights), in its own dtype.
        data: a floating tensor ``(N, *event_shape)`` (i.i.d. minibatches drawn with
            replacement) or an iterable of batches such as a ``DataLoader`` (cycled; a batch may
            be ``(x, label)``).
        process: the :class:`~smcdiff.NoiseProcess` to noise the data with.
        prediction: what the net learns: ``"eps"``, ``"x0"``, ``"v"``, ``"score"``,
            ``"velocity"`` or ``"energy"`` (a scalar output; the loss is on :math:`-\nabla_x E`,
            which needs second derivatives; returns an :class:`~smcdiff.EnergyNetwork`).
        n_iters, batch_size, lr: optimiser steps (AdamW), minibatch size, learning rate;
            ``weight_decay`` (AdamW's), ``warmup`` (linear warm-up iterations) and
            ``lr_schedule`` (``"constant"`` or ``"cosine"`` decay to 0 at ``n_iters``).
        seed: seeds the one generator of batches, times and noise (``None``: drawn, reported in
            ``training.seed``). Same seed, device and data: the same weights.
        device: where to train (default: the net's device); the net is moved there.
        time_input: what time the net sees, as for :class:`~smcdiff.NetworkScore`; ``"index"``
            trains on the integer timesteps of a discrete process.
        time_sampling: ``"uniform"`` in t or ``"log_snr"`` (uniform in log-SNR) over
            ``[t_min, t_max]`` (default: the process's).
        weighting: ``"auto"``, ``"natural"``, ``"eps"``, ``"x0"``, ``"v"``, ``"min_snr"`` (with
            ``min_snr_gamma``), ``"likelihood"`` or a callable ``w(t)`` on the
            :math:`\varepsilon`-error (table in :mod:`smcdiff.training.loss`).
        ema_decay: EMA of the weights (``None`` or 0: none); the returned model uses the EMA
            weights.
        grad_clip: clip the gradient norm to this value (``None``: no clipping, never silent:
            the norms and the clipped count are in ``training``).
        labels: class-conditional training: an integer tensor ``(N,)`` (one class per row of a
            tensor ``data``) or ``True`` (the second entry of each batch of an iterable); the net
            is called ``net(x_t, net_time, **{label_key: labels})``. ``label_dropout``: the
            fraction of labels replaced by ``null_label`` (default: the ``n_classes`` of an
            :mod:`smcdiff.nets` net, its "no label" row), so one net also learns the
            unconditional score, as classifier-free guidance needs
            (``smcdiff.cfg(score.with_cond(y=c), score.with_cond(y=null), w)``).
        checkpoint, checkpoint_every: write ``checkpoint`` (a :func:`~smcdiff.save_score` file
            with the resumable state) every ``checkpoint_every`` iterations and at the end.
        resume: continue from such a file (same settings; ``n_iters`` may be larger); on tensor
            data the result equals an uninterrupted run's.
        progress: ``None`` (a tqdm bar when stderr is a terminal, with the loss every 50
            iterations: one host sync each), ``True`` / ``False``, or a callable
            ``progress(k, {"loss": loss})`` after every iteration.

    Returns:
        A :class:`~smcdiff.NetworkScore` (or :class:`~smcdiff.EnergyNetwork`) on the EMA copy of
        the net, in eval mode, with ``time_input`` set; its ``training`` attribute is the
        :class:`TrainingLog`.
    """
    settings = TrainSettings(
        prediction, n_iters, batch_size, lr, time_input, time_sampling, t_min, t_max, weighting,
        min_snr_gamma, ema_decay, grad_clip, weight_decay, warmup, lr_schedule, label_dropout,
        null_label, label_key,
    )  # fmt: skip
    every = check_int("checkpoint_every", checkpoint_every, 1, where=WHERE, allow_none=True)
    if every is not None and checkpoint is None:
        raise SMCDiffError(f"{WHERE}: checkpoint_every needs checkpoint= (a file path)")
    trainer = Trainer(net, data, process, settings, seed=seed, device=device, labels=labels)
    if resume is not None:
        entry = read_checkpoint(resume, map_location=trainer.device)
        if entry.get("training") is None:
            raise CheckpointError(f"{WHERE}: resume={resume} holds no training state")
        trainer.load_state(entry["training"], str(resume))
    start = time.perf_counter()
    bar = Progress(progress, total=n_iters, unit="it", desc="train")
    bar.advance_to(trainer.step)
    while trainer.step < n_iters:
        loss = trainer.train_step()
        bar(trainer.step, {"loss": loss})
        if bar.bar is not None and trainer.step % 50 == 0:
            bar.bar.set_postfix(loss=f"{float(loss):.4g}")
        if every is not None and trainer.step % every == 0 and trainer.step < n_iters:
            save_score(trainer.score_model(), checkpoint, training=trainer.state())
    bar.close()
    score = trainer.score_model()
    if checkpoint is not None:
        save_score(score, checkpoint, training=trainer.state())
    score.training = trainer.log(time.perf_counter() - start)
    return score
