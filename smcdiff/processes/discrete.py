r"""Schedules of trained networks as noise processes: a discrete VP chain (DDPM's
:math:`\bar\alpha_i`, diffusers' ``alphas_cumprod``) and a flow-matching schedule, each with the
time grids of its scheduler.

**Discrete VP** (:class:`DiscreteVP`). Timestep :math:`i \in \{0, \dots, T-1\}` has
:math:`\bar\alpha_i` (decreasing); it sits at time :math:`t_i = (i + 1)/T`, so :math:`t = 1` is
the last timestep and :math:`t = 0` is clean data (:math:`\bar\alpha = 1`, diffusers'
"timestep −1", the target of its last step). On the grid,

.. math:: \alpha_{t_i}^2 = \bar\alpha_i, \qquad \sigma_{t_i}^2 = 1 - \bar\alpha_i

exactly (the table is copied to float64, which holds every float32 value exactly). Between grid
points :math:`\log\bar\alpha` is linear in :math:`t`: on :math:`(t_{i-1}, t_i]`,
:math:`\bar\alpha(t) = \bar\alpha_i (\bar\alpha_{i-1}/\bar\alpha_i)^{T(t_i - t)}`, the
continuous VP process whose rate :math:`\beta(t) = -T\log(1-\beta_i)` is constant within each
step (:math:`1 - \beta_i = \bar\alpha_i/\bar\alpha_{i-1}`). Its drift and diffusion are then
piecewise constant, and the forward transition between two grid points is exactly the chain's
:math:`q(x_i \mid x_j)`. The log-SNR is not interpolated directly because it is infinite at
:math:`t = 0`; it is monotone all the same, so log-SNR grids exist.

**Time grids.** ``time_grid(process, n, kind)`` asks the process
(:meth:`DiscreteVP.time_grid`): ``kind="scheduler"`` (the default of :func:`smcdiff.steer` for
these processes) gives the scheduler's own integer timesteps; the continuous kinds
(``"uniform"``, ``"log_snr"``, ``"edm"``) are snapped to integer timesteps, so a network is only
ever asked about timesteps it was trained on.

**Flow matching** (:class:`ScheduledFlow`): the linear interpolant :math:`\alpha_t = 1 - t`,
:math:`\sigma_t = t` of :class:`~smcdiff.processes.Flow` (diffusers' flow-matching ``sigmas`` are
this :math:`t`), with the scheduler's sigma grid and its timestep map :math:`t \mapsto tT`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from smcdiff.checks import check_choice, check_int
from smcdiff.errors import SMCDiffError
from smcdiff.processes.grids import time_grid
from smcdiff.processes.schedules import Flow, NoiseProcess, Time

__all__ = ["SPACINGS", "DiscreteVP", "ScheduledFlow", "spacing_timesteps"]

SPACINGS = ("leading", "trailing", "linspace")
SNAP = 1e-3  # times within SNAP timesteps of a grid point are that grid point (float32 rounding)
ZERO_SNR_ALPHA_BAR = 2.0**-24  # diffusers' stand-in for a zero terminal alpha_bar
F64 = torch.float64

Spacing = str | Callable[[int], Sequence[int]]


def spacing_timesteps(spacing: str, n: int, n_train: int, steps_offset: int = 0) -> list[int]:
    """The decreasing integer timesteps of ``n`` inference steps over ``n_train`` training
    timesteps, as diffusers' DDPM/DDIM ``set_timesteps`` makes them (Lin et al. 2024, table 2):

    * ``"leading"``: :math:`i\\lfloor T/n\\rfloor + \\text{offset}`, :math:`i = n-1, \\dots, 0`;
    * ``"trailing"``: :math:`\\mathrm{round}(T - i T/n) - 1`, :math:`i = 0, \\dots, n-1`;
    * ``"linspace"``: :math:`\\mathrm{round}` of ``n`` equal steps from :math:`T - 1` to 0.
    """
    where = "spacing_timesteps"
    check_choice("spacing", spacing, SPACINGS, where=where)
    n = check_int("n", n, 1, maximum=n_train, where=where)
    if spacing == "leading":
        ratio = n_train // n
        return [i * ratio + steps_offset for i in range(n - 1, -1, -1)]
    if spacing == "trailing":
        ratio = n_train / n
        return [round(n_train - i * ratio) - 1 for i in range(n)]
    return torch.linspace(0, n_train - 1, n, dtype=F64).round().flip(0).long().tolist()


class DiscreteVP(NoiseProcess):
    r"""A discrete VP chain :math:`\bar\alpha_0 > \dots > \bar\alpha_{T-1}` as a noise process
    (module docstring): exact at the times :math:`t_i = (i+1)/T`, log-linear in
    :math:`\bar\alpha` between them.

    Args:
        alphas_cumprod: the ``(T,)`` table :math:`\bar\alpha_i` (e.g. a diffusers scheduler's
            ``alphas_cumprod``), strictly decreasing in (0, 1). A zero last entry (zero
            terminal SNR) is replaced by :math:`2^{-24}`, as diffusers' Euler schedulers do (the
            reverse kernels divide by :math:`\alpha_t`).
        spacing: how ``n`` inference timesteps are chosen: ``"leading"``, ``"trailing"``,
            ``"linspace"`` (:func:`spacing_timesteps`) or a callable ``n -> decreasing
            timesteps`` (:func:`smcdiff.from_diffusers` passes the scheduler's own
            ``set_timesteps``).
        steps_offset: added to ``"leading"`` timesteps (diffusers' ``steps_offset``).

    ``t_min`` is timestep 0 (:math:`t = 1/T`), ``t_max = 1`` the last timestep. Methods take
    ``t`` as a float or a tensor and return the dtype of a floating tensor ``t`` (else float64).
    """

    default_grid = "scheduler"

    def __init__(self, alphas_cumprod: Any, *, spacing: Spacing = "leading", steps_offset: int = 0):
        where = "DiscreteVP"
        table = torch.as_tensor(alphas_cumprod).detach().to("cpu", F64).clone()
        if table.ndim != 1 or table.numel() < 2:
            raise SMCDiffError(f"{where}: alphas_cumprod must be 1-D with >= 2 entries, got "
                               f"shape {tuple(table.shape)}")  # fmt: skip
        if float(table[-1]) == 0.0:
            table[-1] = ZERO_SNR_ALPHA_BAR
        ok = torch.isfinite(table).all() and (table > 0).all() and (table < 1).all()
        if not bool(ok) or not bool((table[1:] < table[:-1]).all()):
            raise SMCDiffError(
                f"{where}: alphas_cumprod must be finite, in (0, 1) and strictly decreasing "
                "(alpha_bar_i = prod_{j<=i} (1 - beta_j) with 0 < beta_j < 1)"
            )
        if not callable(spacing):
            check_choice("spacing", spacing, SPACINGS, where=where)
        self.spacing = spacing
        self.steps_offset = check_int("steps_offset", steps_offset, 0, where=where)
        self.n_timesteps = int(table.numel())
        self.t_min = 1.0 / self.n_timesteps
        self.t_max = 1.0
        ext = torch.cat([torch.ones(1, dtype=F64), table])  # ext[k] = alpha_bar at t = k/T
        self._ext = {torch.device("cpu"): ext}
        rate = self.n_timesteps * torch.log(ext[1:] / ext[:-1])  # d log alpha_bar/dt, segment k
        self._rate = {torch.device("cpu"): torch.cat([rate[:1], rate])}

    @classmethod
    def from_betas(cls, betas: Any, **kwargs: Any) -> DiscreteVP:
        r""":math:`\bar\alpha_i = \prod_{j \le i}(1 - \beta_j)`, accumulated in float64."""
        betas = torch.as_tensor(betas).detach().to("cpu", F64)
        return cls(torch.cumprod(1.0 - betas, 0), **kwargs)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        r"""The ``(T,)`` float64 table :math:`\bar\alpha_i` (a copy)."""
        return self._ext[torch.device("cpu")][1:].clone()

    def __repr__(self) -> str:
        spacing = self.spacing if isinstance(self.spacing, str) else "<scheduler>"
        return f"DiscreteVP(T={self.n_timesteps}, spacing={spacing!r})"

    # ------------------------------------------------------------------ time <-> timestep
    def time_of(self, timestep: Any) -> torch.Tensor:
        """The float64 time :math:`(i + 1)/T` of integer timestep(s) ``i`` (−1: clean data)."""
        return (torch.as_tensor(timestep, dtype=F64) + 1.0) / self.n_timesteps

    def timestep(self, t: Time) -> torch.Tensor:
        """The integer timestep(s) :math:`\\mathrm{round}(tT) - 1` (int64, on the device of ``t``)
        a network trained on this chain takes at time ``t``. Exact on the grid points; an off-grid
        ``t`` goes to the nearest timestep (while ``alpha``/``sigma`` interpolate: every grid
        this process makes is on the timesteps). ``t = 0`` (clean data) is timestep −1, where no
        network is defined."""
        return (torch.round(torch.as_tensor(t).to(F64) * self.n_timesteps) - 1).long()

    # ------------------------------------------------------------------ the schedule
    def _table(self, store: dict, device: torch.device) -> torch.Tensor:
        if device not in store:
            store[device] = store[torch.device("cpu")].to(device)
        return store[device]

    def _locate(self, t: Time) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
        """``(k, frac, device, out dtype)``: t is in segment ``((k-1)/T, k/T]`` at fraction frac."""
        floating = isinstance(t, torch.Tensor) and t.is_floating_point()
        dtype = t.dtype if floating else F64
        u = torch.as_tensor(t).to(F64) * self.n_timesteps
        r = torch.round(u)
        u = torch.where((u - r).abs() <= SNAP, r, u).clamp(0.0, float(self.n_timesteps))
        k = torch.ceil(u).clamp_min(1.0)
        return k.long(), u - (k - 1.0), u.device, dtype

    def _alpha_bar64(self, t: Time) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        """``(alpha_bar, d log alpha_bar / dt, out dtype)`` in float64 (left derivative)."""
        k, frac, device, dtype = self._locate(t)
        ext = self._table(self._ext, device)
        lo, hi = ext[k - 1], ext[k]
        inside = hi * (lo / hi) ** (1.0 - frac)  # == hi exactly at frac == 1 (a grid point)
        ab = torch.where(frac == 0.0, lo, inside)
        return ab, self._table(self._rate, device)[k], dtype

    def alpha_bar(self, t: Time) -> torch.Tensor:
        r""":math:`\bar\alpha(t) = \alpha_t^2`: the table at grid points, log-linear between."""
        ab, _, dtype = self._alpha_bar64(t)
        return ab.to(dtype)

    def alpha(self, t: Time) -> torch.Tensor:
        ab, _, dtype = self._alpha_bar64(t)
        return ab.sqrt().to(dtype)

    def sigma(self, t: Time) -> torch.Tensor:
        ab, _, dtype = self._alpha_bar64(t)
        return (1.0 - ab).sqrt().to(dtype)

    def d_alpha(self, t: Time) -> torch.Tensor:
        """Left derivative at grid points (the rate of the step that ends there)."""
        ab, rate, dtype = self._alpha_bar64(t)
        return (0.5 * ab.sqrt() * rate).to(dtype)

    def d_sigma(self, t: Time) -> torch.Tensor:
        """Left derivative at grid points; infinite at ``t = 0``."""
        ab, rate, dtype = self._alpha_bar64(t)
        return (-0.5 * ab * rate / (1.0 - ab).sqrt()).to(dtype)

    def log_snr(self, t: Time) -> torch.Tensor:
        ab, _, dtype = self._alpha_bar64(t)
        return (torch.log(ab) - torch.log1p(-ab)).to(dtype)

    # ------------------------------------------------------------------ grids
    def inference_timesteps(self, n: int) -> list[int]:
        """The ``spacing``'s decreasing integer timesteps for ``n`` inference steps."""
        if callable(self.spacing):
            return [int(i) for i in self.spacing(n)]
        return spacing_timesteps(self.spacing, n, self.n_timesteps, self.steps_offset)

    def scheduler_timesteps(self, n_steps: int) -> list[int]:
        r"""``n_steps + 1`` decreasing timesteps ending at timestep 0: the spacing's timesteps
        for ``n_steps + 1`` inference steps when they end at 0 (``"leading"`` and
        ``"linspace"``), else those for ``n_steps`` followed by 0 (``"trailing"``, or a
        ``steps_offset``).

        A diffusers loop of ``n`` steps ends with a deterministic jump from its last timestep to
        the clean-sample estimate :math:`\hat x_0` (timestep −1); here the last step lands on
        timestep 0 instead (noise std :math:`\sqrt{1-\bar\alpha_0}`, 0.01 for the default
        linear betas), since a weighted sampler needs a stochastic last step and the score of
        clean data is not defined. :func:`~smcdiff.processes.tweedie_x0` of the final particles
        is that jump.
        """
        steps = self.inference_timesteps(n_steps + 1)
        if steps[-1] != 0:
            steps = [*self.inference_timesteps(n_steps), 0]
        ts = torch.tensor(steps)
        if not (bool((ts[1:] < ts[:-1]).all()) and 0 <= steps[-1] and steps[0] < self.n_timesteps):
            raise SMCDiffError(
                f"DiscreteVP: the scheduler's timesteps for n_steps={n_steps} are not distinct "
                f"decreasing timesteps in [0, {self.n_timesteps - 1}]: {steps}"
            )
        return steps

    def time_grid(
        self,
        n_steps: int,
        kind: str = "scheduler",
        *,
        t_min: float | None = None,
        t_max: float | None = None,
        rho: float = 7.0,
    ) -> torch.Tensor:
        """Decreasing float64 grid of ``n_steps + 1`` times on integer timesteps (what
        :func:`smcdiff.time_grid` returns for this process). ``"scheduler"``:
        :meth:`scheduler_timesteps` (no ``t_min`` / ``t_max``). ``"uniform"``, ``"log_snr"``,
        ``"edm"``: that grid of the interpolated process, snapped to the nearest timesteps;
        where it is finer than one timestep (log-SNR grids near data), consecutive timesteps."""
        if kind == "scheduler":
            if t_min is not None or t_max is not None:
                raise SMCDiffError(
                    "time_grid: grid='scheduler' is the scheduler's own timesteps; it takes no "
                    "t_min / t_max (use grid='uniform', 'log_snr' or 'edm' for a sub-range)"
                )
            return self.time_of(self.scheduler_timesteps(n_steps))
        ts = time_grid(_Continuous(self), n_steps, kind, t_min=t_min, t_max=t_max, rho=rho)
        return self.time_of(_snap_distinct(self.timestep(ts).tolist(), self.n_timesteps))


class _Continuous(NoiseProcess):
    """The interpolated schedule of a :class:`DiscreteVP` without its own grids (for the
    continuous grid constructions of :func:`~smcdiff.processes.time_grid`)."""

    def __init__(self, discrete: DiscreteVP):
        self.p = discrete
        self.t_min, self.t_max = discrete.t_min, discrete.t_max

    def alpha(self, t: Time) -> torch.Tensor:
        return self.p.alpha(t)

    def sigma(self, t: Time) -> torch.Tensor:
        return self.p.sigma(t)

    def d_alpha(self, t: Time) -> torch.Tensor:
        return self.p.d_alpha(t)

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self.p.d_sigma(t)

    def log_snr(self, t: Time) -> torch.Tensor:
        return self.p.log_snr(t)


def _snap_distinct(steps: list[int], n_train: int) -> list[int]:
    """Decreasing integer timesteps made strictly decreasing from the bottom up."""
    out = list(steps)
    for k in range(len(out) - 2, -1, -1):
        out[k] = max(out[k], out[k + 1] + 1)
    if out[0] > max(steps[0], 0) or out[0] >= n_train:
        raise SMCDiffError(
            f"time_grid: {len(steps) - 1} steps need more distinct timesteps than the range "
            f"[{steps[-1]}, {steps[0]}] of {n_train} training timesteps holds; use fewer steps"
        )
    return out


class ScheduledFlow(Flow):
    r"""The flow-matching interpolant :math:`x_t = (1 - t)x_0 + t\varepsilon` of
    :class:`~smcdiff.processes.Flow` with a scheduler's sigma grid: diffusers'
    ``FlowMatchEulerDiscreteScheduler`` sigmas *are* :math:`t` (after its shift), and its
    networks take the timestep :math:`tT` (:meth:`timestep`).

    Args:
        sigmas: ``n -> `` the scheduler's ``n + 1`` decreasing sigmas for ``n`` inference steps
            (ending with the terminal 0), e.g. from ``set_timesteps(n)``.
        n_train_timesteps: :math:`T`, the scale of the network's timestep.
    """

    default_grid = "scheduler"

    def __init__(self, sigmas: Callable[[int], Sequence[float]], n_train_timesteps: int = 1000):
        self.sigmas = sigmas
        self.n_timesteps = check_int("n_train_timesteps", n_train_timesteps, 1,
                                     where="ScheduledFlow")  # fmt: skip

    def __repr__(self) -> str:
        return f"ScheduledFlow(T={self.n_timesteps})"

    def timestep(self, t: Time) -> torch.Tensor:
        """The network's timestep :math:`tT` (float, dtype of a floating ``t``)."""
        t = torch.as_tensor(t)
        return (t if t.is_floating_point() else t.to(F64)) * self.n_timesteps

    def time_grid(
        self,
        n_steps: int,
        kind: str = "scheduler",
        *,
        t_min: float | None = None,
        t_max: float | None = None,
        rho: float = 7.0,
    ) -> torch.Tensor:
        """``"scheduler"``: the scheduler's sigmas for ``n_steps + 1`` inference steps without
        the terminal 0 (so the grid ends at its smallest positive sigma, the last timestep a
        network sees), the first capped at ``t_max`` = 0.999 (at :math:`t = 1`,
        :math:`\\alpha_t = 0` and the kernels would divide by it; the reference Gaussian stands
        for :math:`p_{0.999}`). Other kinds: :func:`smcdiff.time_grid` of :class:`Flow`."""
        if kind != "scheduler":
            return time_grid(Flow(), n_steps, kind, t_min=t_min, t_max=t_max, rho=rho)
        if t_min is not None or t_max is not None:
            raise SMCDiffError("time_grid: grid='scheduler' takes no t_min / t_max")
        sig = torch.as_tensor(list(self.sigmas(n_steps + 1)), dtype=F64)[: n_steps + 1]
        sig[0] = min(float(sig[0]), self.t_max)
        if sig.numel() != n_steps + 1 or not bool((sig[1:] < sig[:-1]).all()) or sig[-1] <= 0:
            raise SMCDiffError(
                f"ScheduledFlow: the scheduler's sigmas for n_steps={n_steps} are not "
                f"{n_steps + 1} decreasing positive times: {sig.tolist()}"
            )
        return sig
