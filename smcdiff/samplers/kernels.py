r"""Reverse-time Gaussian kernels: every step is :math:`x_s = c_x x_t + c_s\, s_t(x_t) + \sqrt{v}\, z`.

From time ``t`` to ``s < t`` (grid runs noise -> data), with :math:`a = \alpha_t/\alpha_s`,
:math:`v_{t|s} = \sigma_t^2 - a^2\sigma_s^2` (the forward transition of :class:`NoiseProcess`):

* ``"em"``: Euler–Maruyama on the reverse SDE :math:`dx = [f_t x - g_t^2 s_t(x)]dt + g_t d\bar W`,
  :math:`h = t - s`: :math:`c_x = 1 - h f_t`, :math:`c_s = h g_t^2`, :math:`v = h g_t^2`.
* ``"ddim"`` with :math:`\eta \in [0, 1]` (Song et al., 2021):
  :math:`x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\varepsilon + c z`,
  :math:`c^2 = \eta^2 \sigma_s^2 v_{t|s} / \sigma_t^2`, with :math:`\hat x_0, \hat\varepsilon` from the score.
  :math:`\eta = 1` is the **ancestral** step :math:`q(x_s \mid x_t, \hat x_0)`, the exact Gaussian posterior
  of the forward process given Tweedie's :math:`\hat x_0`, which for the VP SDE is also the
  first-order exponential integrator of the reverse SDE with the noise prediction held fixed
  (DPM-Solver-SDE-1 = DDPM). Its mean simplifies to :math:`(x_t + v_{t|s} s_t(x_t))/a`.
  :math:`\eta = 0` is the deterministic probability-flow (DDIM) step.

``"ancestral"`` is ``"ddim"`` with :math:`\eta = 1`; ``"ode"`` is ``"ddim"`` with :math:`\eta = 0`.

* ``"ancestral_upper"``: the same (exact) conditional mean :math:`\mathbb E[x_s \mid x_t] = (x_t +
  v_{t|s} s_t(x_t))/a` with the variance :math:`v_{t|s}/a^2`, the reverse variance under a flat
  prior (Ho et al.'s :math:`\sigma^2 = \beta` choice, generalised). It bounds the Gaussian reverse
  variance from above, where the ancestral :math:`v_{t|s}\sigma_s^2/\sigma_t^2` bounds it from
  below; as a proposal with path correction it keeps importance weights light-tailed.
Coefficients are Python floats computed once per step in float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from smcdiff.processes.meanfree import MeanFree
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "SAMPLERS",
    "ReverseStep",
    "gaussian_log_prob",
    "noise_log_prob",
    "reverse_step",
    "shifted_proposal_log_ratio",
    "standard_noise",
    "support_dim",
]

SAMPLERS = ("ancestral", "ancestral_upper", "ode", "ddim", "em")


@dataclass(frozen=True)
class ReverseStep:
    """One reverse step ``t -> s``: ``x_s = cx * x_t + cs * score(x_t, t) + sqrt(var) * z``."""

    t: float
    s: float
    cx: float
    cs: float
    var: float

    def mean(self, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        if isinstance(self.cs, (int, float)):  # two passes over (N, d), not three
            return torch.add(self.cx * x, score, alpha=self.cs)
        return self.cx * x + self.cs * score

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


def reverse_step(
    process: NoiseProcess, t: float, s: float, kind: str = "ancestral", eta: float = 1.0
) -> ReverseStep:
    """Coefficients of the reverse kernel from ``t`` to ``s < t``; see the module docstring."""
    if not s < t:
        raise ValueError(f"reverse_step: need s < t, got t={t}, s={s}")
    if kind == "em":
        h = t - s
        g2 = float(process.diffusion_sq(t))
        return ReverseStep(t, s, 1.0 - h * float(process.drift(t)), h * g2, h * g2)
    if kind == "ancestral_upper":
        a = float(process.alpha(t)) / float(process.alpha(s))
        v_ts = float(process.sigma(t)) ** 2 - a * a * float(process.sigma(s)) ** 2
        return ReverseStep(t, s, 1.0 / a, v_ts / a, v_ts / (a * a))
    if kind in ("ancestral", "ode", "ddim"):
        eta = {"ancestral": 1.0, "ode": 0.0}.get(kind, eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"reverse_step: ddim eta must be in [0, 1], got {eta}")
        a_t, a_s = float(process.alpha(t)), float(process.alpha(s))
        sg_t, sg_s = float(process.sigma(t)), float(process.sigma(s))
        a = a_t / a_s
        v_ts = sg_t**2 - a * a * sg_s**2
        c2 = eta * eta * sg_s**2 * v_ts / sg_t**2
        k = math.sqrt(max(sg_s**2 - c2, 0.0))
        # mean = a_s * x0_hat + k * eps_hat,  x0_hat = (x + sg_t^2 s)/a_t,  eps_hat = -sg_t s
        return ReverseStep(t, s, a_s / a_t, a_s * sg_t**2 / a_t - k * sg_t, c2)
    raise ValueError(f"unknown sampler {kind!r}; expected one of {SAMPLERS}")


def support_dim(process: NoiseProcess | None, event_shape: Sequence[int]) -> int:
    r"""Dimension :math:`d` of the space particles ``(N, *event_shape)`` live in: the event
    size, or :math:`(n-1)s` for a :class:`~smcdiff.processes.MeanFree` process (its
    centre-of-mass-free subspace)."""
    if isinstance(process, MeanFree):
        return process.subspace_dim
    return math.prod(event_shape)


def standard_noise(
    process: NoiseProcess | None,
    n: int,
    event_shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    device=None,
    dtype=None,
) -> torch.Tensor:
    r"""``n`` draws ``(n, *event_shape)`` of the standard Gaussian of the particles' space:
    :math:`\varepsilon \sim \mathcal N(0, I)`, or :math:`P\varepsilon` (the subspace's, see
    :meth:`~smcdiff.processes.MeanFree.randn`) for a :class:`~smcdiff.processes.MeanFree`
    process."""
    if isinstance(process, MeanFree):
        return process.randn(n, generator, device=device, dtype=dtype)
    return torch.randn(n, *event_shape, generator=generator, device=device, dtype=dtype)


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, var: float, process: NoiseProcess | None = None
) -> torch.Tensor:
    r""":math:`\log\mathcal N(x; \mu, v I)` summed over every event dim, in float64;
    ``(N, *event_shape) -> (N,)``. With a :class:`~smcdiff.processes.MeanFree` ``process``, the
    density of its subspace, :math:`\log\mathcal N_{\mathcal X}` of dimension :math:`(n-1)s`
    (:meth:`~smcdiff.processes.MeanFree.log_normal`)."""
    if isinstance(process, MeanFree):
        return process.log_normal(x.double(), mean.double(), var)
    r = (x - mean).double().flatten(1)
    d = r.shape[1]
    return -0.5 * (r * r).sum(-1) / var - 0.5 * d * math.log(2.0 * math.pi * var)


def noise_log_prob(
    z: torch.Tensor, var: float, process: NoiseProcess | None = None
) -> torch.Tensor:
    r""":math:`\log\mathcal N(x; \mu, v I)` at :math:`x = \mu + \sqrt v z`, written in terms of
    the standard normal draw ``z`` (no large terms cancel): :math:`-\|z\|^2/2 - (d/2)\log(2\pi v)`,
    summed over every event dim, float64; ``(N, *event_shape) -> (N,)``. :math:`d` is
    :func:`support_dim` (``z`` drawn by :func:`standard_noise`: on the subspace of a
    :class:`~smcdiff.processes.MeanFree` process)."""
    d = support_dim(process, z.shape[1:])
    z = z.double().flatten(1)
    return -0.5 * (z**2).sum(-1) - 0.5 * d * math.log(2 * math.pi * var)


def shifted_proposal_log_ratio(z: torch.Tensor, shift: torch.Tensor, var: float) -> torch.Tensor:
    r""":math:`\log p(x)/q(x)` for :math:`p = \mathcal N(\mu, vI)`, :math:`q = \mathcal N(\mu+\delta, vI)`,
    at :math:`x = \mu + \delta + \sqrt v z`; equals :math:`-(2\sqrt v\, z\cdot\delta + \|\delta\|^2)/(2v)`.

    Written in terms of ``z`` and ``delta`` so no large terms cancel; sums over every event dim.
    ``(N, *event_shape) -> (N,)`` float64.
    """
    z, shift = z.double().flatten(1), shift.double().flatten(1)
    return -(2.0 * math.sqrt(var) * (z * shift).sum(-1) + (shift * shift).sum(-1)) / (2.0 * var)
