r"""Noise processes :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`, :math:`t \in [0, 1]`, t = 0 data.

Each process gives :math:`\alpha_t, \sigma_t` and their time derivatives in closed form, from which
everything else follows:

* log-SNR :math:`\lambda_t = \log(\alpha_t^2 / \sigma_t^2)` (decreasing in t);
* forward transition :math:`x_t \mid x_s \sim \mathcal N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)`, with
  :math:`\alpha_{t|s} = \alpha_t / \alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2 \sigma_s^2`;
* SDE :math:`dx = f_t x\,dt + g_t\,dW`, :math:`f_t = \dot\alpha_t/\alpha_t`,
  :math:`g_t^2 = 2\sigma_t\dot\sigma_t - 2 f_t \sigma_t^2 = -\sigma_t^2 \dot\lambda_t`.

Methods take ``t`` as a float or a tensor and return a tensor of the same shape: in the dtype (and on
the device) of a floating-point tensor ``t`` (a float32 time gives float32 coefficients, as a training
loop or a network adapter needs), float64 for a Python number or an integer tensor.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = ["VE", "VP", "Flow", "NoiseProcess"]

Time = float | torch.Tensor


def _t(t: Time) -> torch.Tensor:
    """``t`` as a tensor: a floating tensor keeps its dtype, anything else becomes float64."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t
    return torch.as_tensor(t, dtype=torch.float64)


class NoiseProcess(ABC):
    """Base class. Subclasses define ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``.

    ``t_min`` / ``t_max`` are the default ends of a sampling grid (where the conversions between
    parameterisations stay finite); ``prior_std`` is the std of the reference Gaussian that
    samplers start from at ``t_max``, assuming data of unit scale.
    """

    t_min: float = 1e-3
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: Time) -> torch.Tensor: ...

    @abstractmethod
    def sigma(self, t: Time) -> torch.Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Time) -> torch.Tensor: ...

    @abstractmethod
    def d_sigma(self, t: Time) -> torch.Tensor: ...

    def log_snr(self, t: Time) -> torch.Tensor:
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def drift(self, t: Time) -> torch.Tensor:
        r""":math:`f_t = \dot\alpha_t / \alpha_t`."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_sq(self, t: Time) -> torch.Tensor:
        r""":math:`g_t^2 = 2\sigma_t\dot\sigma_t - 2 f_t \sigma_t^2`."""
        s = self.sigma(t)
        return 2.0 * s * self.d_sigma(t) - 2.0 * self.drift(t) * s * s

    def transition(self, s: Time, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Coefficients of :math:`x_t \mid x_s \sim \mathcal N(a\,x_s, v I)` for ``s < t``:
        returns ``(a, v)`` with :math:`a = \alpha_t/\alpha_s`, :math:`v = \sigma_t^2 - a^2\sigma_s^2`."""
        a = self.alpha(t) / self.alpha(s)
        v = self.sigma(t) ** 2 - a * a * self.sigma(s) ** 2
        return a, v

    @property
    def prior_std(self) -> float:
        """Std of the reference N(0, std² I) at ``t_max`` for unit-scale data."""
        a, s = float(self.alpha(self.t_max)), float(self.sigma(self.t_max))
        return math.sqrt(a * a + s * s)

    def t_from_log_snr(self, lam: torch.Tensor, iters: int = 100) -> torch.Tensor:
        """Invert the (decreasing) log-SNR by bisection on [0, 1], in float64 (returned in the
        dtype of a floating-point ``lam``, else float64)."""
        dtype = lam.dtype if isinstance(lam, torch.Tensor) and lam.is_floating_point() else None
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # mid is still too early (too little noise)
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(dtype or torch.float64)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class VP(NoiseProcess):
    r"""Variance-preserving process, :math:`\alpha_t^2 + \sigma_t^2 = 1`.

    ``schedule="linear"``: :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`,
    :math:`\log\alpha_t = -\tfrac14 t^2(\beta_{max}-\beta_{min}) - \tfrac12 t\beta_{min}` (DDPM / Song et al.).
    ``schedule="cosine"``: :math:`\alpha_t = \cos(\tfrac\pi2 \tfrac{t+s}{1+s}) / \cos(\tfrac\pi2 \tfrac{s}{1+s})`
    (Nichol & Dhariwal), whose :math:`\alpha_1 = 0`, so its default ``t_max`` stops at 0.995.
    """

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cosine_s: float = 0.008,
    ):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"VP schedule must be 'linear' or 'cosine', got {schedule!r}")
        self.schedule = schedule
        self.beta_min, self.beta_max, self.cosine_s = beta_min, beta_max, cosine_s
        self.t_max = 1.0 if schedule == "linear" else 0.995

    def _log_alpha(self, t: Time) -> torch.Tensor:
        t = _t(t)
        if self.schedule == "linear":
            return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.cosine_s
        return torch.log(torch.cos(0.5 * math.pi * (t + s) / (1 + s))) - math.log(
            math.cos(0.5 * math.pi * s / (1 + s))
        )

    def _d_log_alpha(self, t: Time) -> torch.Tensor:
        t = _t(t)
        if self.schedule == "linear":
            return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))
        s = self.cosine_s
        u = 0.5 * math.pi * (t + s) / (1 + s)
        return -torch.tan(u) * 0.5 * math.pi / (1 + s)

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: Time) -> torch.Tensor:
        # sqrt(1 - alpha^2) via expm1 keeps precision at small t
        return torch.sqrt((-torch.expm1(2.0 * self._log_alpha(t))).clamp_min(0.0))

    def d_alpha(self, t: Time) -> torch.Tensor:
        return self.alpha(t) * self._d_log_alpha(t)

    def d_sigma(self, t: Time) -> torch.Tensor:
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t: Time) -> torch.Tensor:
        la = self._log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))


class VE(NoiseProcess):
    r"""Variance-exploding process: :math:`\alpha_t = 1`, geometric
    :math:`\sigma_t = \sigma_{min}(\sigma_{max}/\sigma_{min})^t` (Song et al., 2021).

    :math:`\sigma_0 = \sigma_{min} > 0`, so grids may run to ``t_min = 0``.
    """

    t_min = 0.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: Time) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _t(t)

    def d_alpha(self, t: Time) -> torch.Tensor:
        return torch.zeros_like(_t(t))

    def d_sigma(self, t: Time) -> torch.Tensor:
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)


class Flow(NoiseProcess):
    r"""Linear interpolant (rectified flow / flow matching): :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t`.

    :math:`\alpha_1 = 0`, so the default grid runs over ``[1e-3, 1 - 1e-3]``.
    """

    t_max = 1.0 - 1e-3

    def alpha(self, t: Time) -> torch.Tensor:
        return 1.0 - _t(t)

    def sigma(self, t: Time) -> torch.Tensor:
        return _t(t).clone()

    def d_alpha(self, t: Time) -> torch.Tensor:
        return -torch.ones_like(_t(t))

    def d_sigma(self, t: Time) -> torch.Tensor:
        return torch.ones_like(_t(t))
