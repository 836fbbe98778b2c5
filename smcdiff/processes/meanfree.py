r"""Noise on the mean-free subspace of a particle system, and DEM's geometric VE schedule.

Particles ``x`` ``(N, n, s)``: ``n`` particles in ``s`` dimensions. An energy invariant to
translations lives on the mean-free subspace :math:`\mathcal X = \{x : \sum_i x_i = 0\}` of
dimension :math:`k = (n - 1)s`, and so do the equivariant score networks trained on it
(:class:`smcdiff.nets.EGNN`). :class:`MeanFree` noises there: with :math:`P` the orthogonal
projection :math:`(Px)_i = x_i - \bar x`,

.. math::
    x_t = \alpha_t x_0 + \sigma_t P\varepsilon,\quad \varepsilon \sim \mathcal N(0, I_{ns}),

and :math:`P\varepsilon` is the standard Gaussian of :math:`\mathcal X` (the projection of an
isotropic Gaussian onto a subspace, in any orthonormal coordinates of it). Every transition is a
Gaussian of :math:`\mathcal X`, with density with respect to its :math:`k`-dimensional Lebesgue
measure (orthonormal coordinates :math:`z = Q^\top x`, :meth:`MeanFree.to_subspace`):

.. math::
    \log\mathcal N_{\mathcal X}(x;\, m,\, vI) = -\frac{\lVert P(x - m)\rVert^2}{2v}
        - \frac k2\log(2\pi v),

:math:`x_t \mid x_s \sim \mathcal N_{\mathcal X}(\alpha_{t|s}x_s, \sigma_{t|s}^2 I)` with the
base process's :math:`\alpha_{t|s}, \sigma_{t|s}^2` (:meth:`~NoiseProcess.transition`).

Training with :func:`smcdiff.train_score` needs nothing special: it noises with full-space
:math:`\varepsilon`, but a translation-invariant net sees only :math:`Px_t = \alpha_t x_0 +
\sigma_t P\varepsilon` (mean-free :math:`x_0`) and a mean-free output :math:`o` has
:math:`\lVert o - \varepsilon\rVert^2 = \lVert o - P\varepsilon\rVert^2 + \lVert(I-P)
\varepsilon\rVert^2`: the loss differs from the subspace loss by a term free of the weights,
so the gradients are the same.

:class:`GeometricVE` is DEM's schedule (Akhound-Sadegh et al. 2024): :math:`g(t) = \sigma_{min}
\sigma_d^t\sqrt{2\log\sigma_d}`, :math:`\sigma_d = \sigma_{max}/\sigma_{min}`, so
:math:`\sigma_t^2 = \int_0^t g^2 = \sigma_{min}^2(\sigma_d^{2t} - 1)` (zero at :math:`t = 0`,
unlike :class:`~smcdiff.processes.VE` whose :math:`\sigma_0 = \sigma_{min}`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_int, check_number
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.processes.schedules import NoiseProcess, Time

__all__ = [
    "GeometricVE",
    "MeanFree",
    "MeanFreeGaussian",
    "center",
    "helmert_basis",
    "subspace_corrector",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _t(t: Time) -> torch.Tensor:
    """A time as a tensor (the rule of :mod:`smcdiff.processes.schedules`: a floating tensor
    keeps its dtype, anything else becomes float64)."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t
    return torch.as_tensor(t, dtype=torch.float64)


def center(x: torch.Tensor) -> torch.Tensor:
    r"""The mean-free part :math:`Px`, ``(..., n, s) -> (..., n, s)``: the centre of mass
    (mean over the particle axis ``-2``) subtracted."""
    return x - x.mean(-2, keepdim=True)


def helmert_basis(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""``Q`` ``(n, n - 1)``: orthonormal columns orthogonal to :math:`\mathbf 1` (the Helmert
    basis, column ``j`` :math:`\propto (1, \dots, 1, -(j+1), 0, \dots)`), so
    :math:`QQ^\top = I - \mathbf 1\mathbf 1^\top/n`."""
    n = check_int("n", n, 2, where="helmert_basis")
    j = torch.arange(1, n, dtype=torch.float64)
    rows = torch.arange(n, dtype=torch.float64)[:, None]
    q = torch.where(rows < j, 1.0, torch.where(rows == j, -j, 0.0))
    q = q / torch.sqrt(j * (j + 1.0))
    return q.to(device=device, dtype=dtype)


class GeometricVE(NoiseProcess):
    r"""DEM's geometric variance-exploding schedule: :math:`\alpha_t = 1`,
    :math:`\sigma_t = \sigma_{min}\sqrt{\sigma_d^{2t} - 1}`, :math:`\sigma_d = \sigma_{max}/
    \sigma_{min}` (module docstring). :math:`\sigma_0 = 0`, so grids start at ``t_min = 1e-3``;
    :math:`\sigma_1 = \sqrt{\sigma_{max}^2 - \sigma_{min}^2}`. DEM's DW-4: ``(1e-5, 3)``,
    LJ-13: ``(0.01, 2)``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 2.0):
        where = "GeometricVE"
        check_number("sigma_min", sigma_min, minimum=0.0, strict_min=True, where=where)
        check_number("sigma_max", sigma_max, minimum=sigma_min, strict_min=True, where=where)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: Time) -> torch.Tensor:
        return self.sigma_min * torch.sqrt(torch.expm1(2.0 * self._log_ratio * _t(t)))

    def d_alpha(self, t: Time) -> torch.Tensor:
        return torch.zeros_like(_t(t))

    def d_sigma(self, t: Time) -> torch.Tensor:
        t = _t(t)
        var_dot = self.sigma_min**2 * 2.0 * self._log_ratio * torch.exp(2.0 * self._log_ratio * t)
        return var_dot / (2.0 * self.sigma(t))

    def diffusion_sq(self, t: Time) -> torch.Tensor:
        r""":math:`g_t^2 = \sigma_{min}^2\sigma_d^{2t}\, 2\log\sigma_d` (exact, no cancellation)."""
        lr = self._log_ratio
        return self.sigma_min**2 * torch.exp(2.0 * lr * _t(t)) * 2.0 * lr


class MeanFree(NoiseProcess):
    r"""``base`` (any :class:`NoiseProcess`: :class:`GeometricVE`, VE, VP) restricted to the
    mean-free subspace of ``n_particles`` particles in ``spatial_dim`` dimensions (module
    docstring). Its :math:`\alpha_t, \sigma_t` (and ``t_min``, ``t_max``, ``prior_std``) are the
    base's; what it adds is the geometry: :meth:`project`, :meth:`randn`, the subspace
    coordinates and the exact subspace densities.

    Particles are ``(N, n, s)`` (``event_shape``); the methods also take flat ``(N, n s)``
    rows and return the shape they were given.
    """

    def __init__(self, base: NoiseProcess, n_particles: int, spatial_dim: int):
        where = "MeanFree"
        if not isinstance(base, NoiseProcess) or isinstance(base, MeanFree):
            raise SMCDiffError(f"{where}: base must be a NoiseProcess (not MeanFree), got {base!r}")
        self.base = base
        self.n_particles = check_int("n_particles", n_particles, 2, where=where)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, 1, where=where)
        self.event_shape = (self.n_particles, self.spatial_dim)
        self.subspace_dim = (self.n_particles - 1) * self.spatial_dim
        self.t_min, self.t_max = base.t_min, base.t_max

    def alpha(self, t: Time) -> torch.Tensor:
        return self.base.alpha(t)

    def sigma(self, t: Time) -> torch.Tensor:
        return self.base.sigma(t)

    def d_alpha(self, t: Time) -> torch.Tensor:
        return self.base.d_alpha(t)

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self.base.d_sigma(t)

    def log_snr(self, t: Time) -> torch.Tensor:
        return self.base.log_snr(t)

    def diffusion_sq(self, t: Time) -> torch.Tensor:
        return self.base.diffusion_sq(t)

    # ----------------------------------------------------------------- geometry
    def _particles(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """``x`` as ``(N, n, s)``: particles as they are, flat rows ``(N, n s)`` reshaped."""
        n, s = self.event_shape
        if x.dim() >= 2 and tuple(x.shape[-2:]) == (n, s):
            return x
        if x.dim() >= 1 and x.shape[-1] == n * s:
            return x.reshape(*x.shape[:-1], n, s)
        raise SMCDiffError(
            f"MeanFree.{where}: x must be (N, {n}, {s}) or (N, {n * s}), got {tuple(x.shape)}"
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`Px` (the centre of mass removed), same shape as ``x``."""
        return center(self._particles(x, "project")).reshape(x.shape)

    def randn(
        self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=None
    ) -> torch.Tensor:
        r"""``n`` draws ``(n, n_particles, spatial_dim)`` of the standard Gaussian of the
        subspace, :math:`P\varepsilon`."""
        eps = torch.randn(n, *self.event_shape, generator=generator, device=device, dtype=dtype)
        return center(eps)

    def to_subspace(self, x: torch.Tensor) -> torch.Tensor:
        r"""Orthonormal coordinates :math:`z = Q^\top x` ``(N, k)`` (:func:`helmert_basis` per
        spatial dimension); for mean-free ``x``, :meth:`from_subspace` inverts it exactly."""
        pos = self._particles(x, "to_subspace")
        q = helmert_basis(self.n_particles, dtype=pos.dtype, device=pos.device)
        return torch.einsum("...is,ij->...js", pos, q).reshape(*pos.shape[:-2], -1)

    def from_subspace(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`x = Qz`, ``(N, k) -> (N, n, s)`` (mean-free)."""
        n, s = self.event_shape
        q = helmert_basis(n, dtype=z.dtype, device=z.device)
        return torch.einsum("...js,ij->...is", z.reshape(*z.shape[:-1], n - 1, s), q)

    # ----------------------------------------------------------------- densities
    def log_normal(
        self, x: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor | float
    ) -> torch.Tensor:
        r""":math:`\log\mathcal N_{\mathcal X}(x; m, vI)` ``(N,)`` (module docstring): ``x``,
        ``mean`` ``(N, n, s)`` (or flat, or 0), ``var`` a number or ``(N,)``."""
        pos = self._particles(x, "log_normal")
        diff = center(
            pos - (self._particles(mean, "log_normal") if torch.is_tensor(mean) else mean)
        )
        var = torch.as_tensor(var, dtype=pos.dtype, device=pos.device)
        sq = diff.square().sum((-2, -1))
        return -0.5 * sq / var - 0.5 * self.subspace_dim * (_LOG_2PI + torch.log(var))

    def transition_log_prob(
        self, x_t: torch.Tensor, x_s: torch.Tensor, s: Time, t: Time
    ) -> torch.Tensor:
        r""":math:`\log p(x_t \mid x_s)` ``(N,)`` on the subspace, ``s < t`` (times numbers or
        ``(N,)``): :math:`\mathcal N_{\mathcal X}(\alpha_{t|s}x_s, \sigma_{t|s}^2 I)`."""
        a, v = self.base.transition(s, t)
        a = a.to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1))) if a.dim() else float(a)
        return self.log_normal(x_t, a * x_s, v.to(x_t.dtype) if v.dim() else float(v))

    def sample_transition(
        self, x_s: torch.Tensor, s: Time, t: Time, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""One draw of :math:`x_t \mid x_s`, ``s < t``, same shape as ``x_s`` (mean-free
        noise; the mean keeps ``x_s``'s centre of mass scaled by :math:`\alpha_{t|s}`)."""
        pos = self._particles(x_s, "sample_transition")
        a, v = self.base.transition(s, t)
        shape = (-1, 1, 1) if a.dim() else ()
        a = a.to(pos.dtype).reshape(shape)
        sd = v.to(pos.dtype).sqrt().reshape(shape)
        eps = self.randn(pos.shape[0], generator, device=pos.device, dtype=pos.dtype)
        return (a * pos + sd * eps).reshape(x_s.shape)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\mathcal N_{\mathcal X}(x; 0, \mathrm{prior\_std}^2 I)` ``(N,)``."""
        return self.log_normal(x, 0.0, self.prior_std**2)

    def __repr__(self) -> str:
        return f"MeanFree({self.base!r}, n_particles={self.n_particles}, spatial_dim={self.spatial_dim})"


class MeanFreeGaussian:
    r"""The closed-form diffused law of a mean-free Gaussian: a
    :class:`~smcdiff.scores.base.DensityScoreModel` for tests and examples on particles.

    :math:`x_0 \sim \mathcal N_{\mathcal X}(\mu, c^2 I)` (``mean`` :math:`\mu` ``(n, s)``,
    projected to the subspace; ``std`` :math:`c`), noised by ``process`` (a :class:`MeanFree`):
    :math:`p_t = \mathcal N_{\mathcal X}(\alpha_t\mu, v_t I)`, :math:`v_t = \alpha_t^2c^2 +
    \sigma_t^2`, score :math:`-P(x - \alpha_t\mu)/v_t` (mean-free), ``log_density`` on the
    subspace's Lebesgue measure. Time ``t``: ``(N,)`` per row or a number.
    """

    def __init__(self, mean: torch.Tensor, std: float, process: MeanFree):
        if not isinstance(process, MeanFree):
            raise SMCDiffError(f"MeanFreeGaussian: process must be a MeanFree, got {process!r}")
        self.process = process
        self.event_shape = process.event_shape
        self.dim = math.prod(self.event_shape)
        self.mean = center(torch.as_tensor(mean).reshape(self.event_shape))
        self.std = check_number("std", std, minimum=0.0, strict_min=True, where="MeanFreeGaussian")

    def _moments(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t mu, v_t)`` broadcastable against ``x`` ``(N, n, s)``."""
        tt = _t(t).to(device=x.device)
        a = self.process.alpha(tt).to(x.dtype)
        var = a * a * self.std**2 + self.process.sigma(tt).to(x.dtype) ** 2
        shape = (-1, 1, 1) if tt.dim() else ()
        mean = a.reshape(shape) * self.mean.to(x.device, x.dtype)
        return mean, var.reshape(shape)

    def score(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """``(N, n, s) -> (N, n, s)``, mean-free."""
        mean, var = self._moments(x, t)
        return -center(x - mean) / var

    def log_density(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """``(N, n, s) -> (N,)``."""
        mean, var = self._moments(x, t)
        return self.process.log_normal(x, mean.expand_as(x), var.reshape(-1))

    def score_and_log_density(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(x, t), self.log_density(x, t)

    def sample(
        self, n: int, t: Time | None = None, generator: torch.Generator | None = None, *, dtype=None
    ) -> torch.Tensor:
        r"""``n`` exact draws ``(n, n_particles, s)``: of the data :math:`x_0 \sim
        \mathcal N_{\mathcal X}(\mu, c^2 I)` (``t=None``) or of :math:`p_t`."""
        dtype = dtype or self.mean.dtype
        eps = self.process.randn(n, generator, device=self.mean.device, dtype=dtype)
        if t is None:
            return self.mean.to(dtype) + self.std * eps
        mean, var = self._moments(eps, t)
        return mean + var.sqrt() * eps

    def __repr__(self) -> str:
        return f"MeanFreeGaussian(event_shape={self.event_shape}, std={self.std})"


def subspace_corrector(
    process: MeanFree,
    kernel: str | Callable,
    log_target: Callable[[int, torch.Tensor], torch.Tensor],
    n_moves: int = 1,
    step_size: float = 0.1,
    **options: Any,
) -> Callable:
    r""":func:`smcdiff.mcmc.mcmc_corrector` run in the orthonormal coordinates of ``process``'s
    mean-free subspace: ``corrector(k, state, generator)`` maps ``state["x"]`` ``(N, n, s)``
    (or flat) to :math:`z = Q^\top x` ``(N, (n-1)s)`` (:meth:`MeanFree.to_subspace`), moves
    :math:`z` with ``kernel`` invariant for :math:`\exp(\text{log\_target}(k, Qz))`, and
    returns :math:`Qz` plus the particles' unchanged centre of mass.

    A kernel in the full space :math:`\mathbb R^{ns}` would see a target that is flat (or, for
    pCNL's Gaussian reference, of the wrong dimension) along the centre of mass; in :math:`z`
    every kernel (MALA, pCNL with ``prior_var`` the subspace reference variance, HMC) is exact
    for the density on the subspace's Lebesgue measure (:meth:`MeanFree.log_normal`'s measure).
    ``n_moves``, ``step_size`` and ``options``: those of ``mcmc_corrector``; the returned
    function keeps its ``state_dict`` / ``load_state_dict``."""
    if not isinstance(process, MeanFree):
        raise SMCDiffError(f"subspace_corrector: process must be a MeanFree, got {process!r}")

    def log_target_z(k: int, z: torch.Tensor) -> torch.Tensor:
        return log_target(k, process.from_subspace(z))

    inner = mcmc_corrector(kernel, log_target_z, n_moves, step_size, **options)

    def corrector(k: int, state: dict, generator: torch.Generator) -> tuple[dict, dict]:
        x = state["x"]
        pos = process._particles(x, "subspace_corrector")
        com = pos.mean(-2, keepdim=True)
        moved, info = inner(k, {**state, "x": process.to_subspace(pos)}, generator)
        new = process.from_subspace(moved["x"]).to(pos.dtype) + com
        return {**moved, "x": new.reshape(x.shape)}, info

    corrector.state_dict = inner.state_dict  # type: ignore[attr-defined]
    corrector.load_state_dict = inner.load_state_dict  # type: ignore[attr-defined]
    return corrector
