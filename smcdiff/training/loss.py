r"""Denoising score matching: time sampling, loss weightings, regression targets.

For data :math:`x_0`, a time :math:`t`, noise :math:`\varepsilon \sim \mathcal N(0, I)` and
:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, a net of parameterisation ``prediction``
regresses its target (``"eps"``: :math:`\varepsilon`; ``"x0"``: :math:`x_0`; ``"v"``:
:math:`\alpha_t\varepsilon - \sigma_t x_0`; ``"score"`` and ``"energy"`` (through
:math:`-\nabla_x E`): :math:`-\varepsilon/\sigma_t`; ``"velocity"``:
:math:`\dot\alpha_t x_0 + \dot\sigma_t\varepsilon`). At fixed :math:`x_t` every error is a
multiple of the error in :math:`\varepsilon`: output error :math:`= c_t\,(\hat\varepsilon -
\varepsilon)` with :math:`c_t` = 1, :math:`\sigma_t/\alpha_t`, :math:`(\alpha_t^2+\sigma_t^2)/
\alpha_t`, :math:`1/\sigma_t` and :math:`\dot\sigma_t - \dot\alpha_t\sigma_t/\alpha_t`. So a
weighting is one function :math:`w(t)` on the :math:`\varepsilon`-error (Kingma & Gao 2023), and
the per-sample loss is

.. math:: \ell = \frac{w(t)}{c_t^2}\;\frac1D\,\lVert \text{output} - \text{target}\rVert^2

(:math:`D` the event size: a mean over event dimensions). Weightings (:data:`WEIGHTINGS`), as
:math:`w(t)` on :math:`\lVert\hat\varepsilon-\varepsilon\rVert^2`:

* ``"natural"``: :math:`c_t^2`, the MSE of the net's own output;
* ``"eps"``: 1 — DDPM's simple loss, score matching with :math:`\lambda(t) = \sigma_t^2`
  (Song et al. 2021), the SNR-weighted :math:`x_0` MSE;
* ``"x0"``: :math:`1/\mathrm{snr}_t`, the :math:`x_0` MSE;
* ``"v"``: :math:`(\alpha_t^2+\sigma_t^2)^2/\alpha_t^2`, the v MSE;
* ``"min_snr"``: :math:`\min(\mathrm{snr}_t, \gamma)/\mathrm{snr}_t`, min-SNR-:math:`\gamma`
  (Hang et al. 2023);
* ``"likelihood"``: :math:`g_t^2/\sigma_t^2 = -\dot\lambda_t`, score matching with
  :math:`\lambda(t) = g_t^2`, the likelihood weighting (Song et al. 2021);

with :math:`\mathrm{snr}_t = \alpha_t^2/\sigma_t^2` and :math:`\lambda_t` the log-SNR; ``"auto"`` is
``"natural"`` for eps / x0 / v / velocity nets and ``"eps"`` for score and energy nets (whose
unweighted score MSE grows like :math:`1/\sigma_t^2`). A callable ``w(t)`` ``(B,) -> (B,)`` is
also accepted. Times (:data:`TIME_SAMPLINGS`): ``"uniform"`` in :math:`[t_{min}, t_{max}]`, or
``"log_snr"``: uniform in :math:`\lambda \in [\lambda_{t_{max}}, \lambda_{t_{min}}]` (then mapped
back to :math:`t`; it spends as many samples per unit of log-SNR at every noise level).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.errors import SMCDiffError
from smcdiff.processes.parameterization import coefficients
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "PREDICTIONS",
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "eps_weight",
    "output_scale",
    "regression_target",
    "resolve_weighting",
    "sample_times",
]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity", "energy")
TIME_SAMPLINGS = ("uniform", "log_snr")
WEIGHTINGS = ("auto", "natural", "eps", "x0", "v", "min_snr", "likelihood")

Weighting = str | Callable[[torch.Tensor], torch.Tensor]


def resolve_weighting(weighting: Weighting, prediction: str) -> Weighting:
    """``"auto"`` as ``"natural"`` or ``"eps"`` for ``prediction`` (module docstring)."""
    if weighting == "auto":
        return "eps" if prediction in ("score", "energy") else "natural"
    return weighting


def sample_times(
    process: NoiseProcess,
    n: int,
    kind: str,
    t_min: float,
    t_max: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """``n`` training times ``(n,)`` float64 in ``[t_min, t_max]``, uniform in t or in log-SNR."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if kind == "uniform":
        return t_min + (t_max - t_min) * u
    lo, hi = process.log_snr(t_max), process.log_snr(t_min)  # log-SNR decreases in t
    lam = lo.to(device) + (hi - lo).to(device) * u
    return process.t_from_log_snr(lam).clamp(t_min, t_max)


def regression_target(
    prediction: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, process: NoiseProcess
) -> torch.Tensor:
    """What a ``prediction`` net regresses at :math:`x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon`
    (``x0``, ``eps`` ``(B, *event)``, ``t`` ``(B,)``); same shape as ``x0``."""
    a, s, da, ds = coefficients(process, t, x0)  # (B, 1, ..., 1) in the dtype of x0
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    if prediction in ("score", "energy"):
        return -eps / s
    if prediction == "velocity":
        return da * x0 + ds * eps
    raise SMCDiffError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def output_scale(prediction: str, t: torch.Tensor, process: NoiseProcess) -> torch.Tensor:
    r""":math:`c_t` ``(B,)`` float64: the net's output error per unit of
    :math:`\varepsilon`-error at fixed :math:`x_t` (module docstring)."""
    t = t.double()
    a, s = process.alpha(t), process.sigma(t)
    if prediction == "eps":
        return torch.ones_like(t)
    if prediction == "x0":
        return s / a
    if prediction == "v":
        return (a * a + s * s) / a
    if prediction in ("score", "energy"):
        return 1.0 / s
    if prediction == "velocity":
        return process.d_sigma(t) - process.d_alpha(t) * s / a
    raise SMCDiffError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def eps_weight(
    weighting: Weighting, prediction: str, t: torch.Tensor, process: NoiseProcess, gamma: float
) -> torch.Tensor:
    r""":math:`w(t)` ``(B,)`` float64 on the :math:`\varepsilon`-error (module docstring)."""
    t = t.double()
    if callable(weighting):
        w = torch.as_tensor(weighting(t), dtype=torch.float64, device=t.device)
        if w.shape != t.shape:
            raise SMCDiffError(
                f"train_score: weighting(t) returned shape {tuple(w.shape)} for t of shape "
                f"{tuple(t.shape)}; it must return one weight per time"
            )
        return w
    if weighting == "natural":
        return output_scale(prediction, t, process) ** 2
    if weighting == "eps":
        return torch.ones_like(t)
    snr = torch.exp(process.log_snr(t))
    if weighting == "x0":
        return 1.0 / snr
    if weighting == "v":
        return output_scale("v", t, process) ** 2
    if weighting == "min_snr":
        return torch.clamp(snr, max=gamma) / snr
    if weighting == "likelihood":
        return process.diffusion_sq(t) / process.sigma(t) ** 2
    raise SMCDiffError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
