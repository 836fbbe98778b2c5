r"""Conversions between network parameterisations, all through :math:`(x_0, \varepsilon)`.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`:

* ``"score"``: :math:`s = \nabla\log p_t(x_t) = -\mathbb E[\varepsilon\mid x_t]/\sigma`;
* ``"eps"``: :math:`\hat\varepsilon = -\sigma s`;
* ``"x0"``: Tweedie, :math:`\hat x_0 = (x_t + \sigma^2 s)/\alpha`;
* ``"v"``: Salimans & Ho, :math:`v = \alpha\varepsilon - \sigma x_0`;
* ``"velocity"``: flow-matching velocity :math:`u = \dot\alpha x_0 + \dot\sigma\varepsilon`;
* ``"energy"`` is not a pointwise conversion (:math:`s = -\nabla E`) and lives with the score models.

All functions take ``x`` of shape ``(N, *event)`` and scalar coefficients.
"""

from __future__ import annotations

import torch

from smcdiff.processes.schedules import NoiseProcess, Time

__all__ = ["KINDS", "from_score", "to_score", "tweedie_x0"]

KINDS = ("score", "eps", "x0", "v", "velocity")


def tweedie_x0(x: torch.Tensor, score: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    r""":math:`\hat x_0 = (x_t + \sigma_t^2 s_t(x_t)) / \alpha_t = \mathbb E[x_0 \mid x_t]`."""
    return (x + (sigma * sigma) * score) / alpha


def _coeffs(process: NoiseProcess, t: Time) -> tuple[float, float, float, float]:
    return (
        float(process.alpha(t)),
        float(process.sigma(t)),
        float(process.d_alpha(t)),
        float(process.d_sigma(t)),
    )


def to_score(
    kind: str, output: torch.Tensor, x: torch.Tensor, t: Time, process: NoiseProcess
) -> torch.Tensor:
    """Convert a model ``output`` of parameterisation ``kind`` at ``(x, t)`` to the score."""
    a, s, da, ds = _coeffs(process, t)
    if kind == "score":
        return output
    if kind == "eps":
        return -output / s
    if kind == "x0":
        return (a * output - x) / (s * s)
    if kind == "v":
        eps = (s * x + a * output) / (a * a + s * s)
        return -eps / s
    if kind == "velocity":
        det = a * ds - s * da
        eps = (a * output - da * x) / det
        return -eps / s
    raise ValueError(f"unknown parameterisation {kind!r}; expected one of {KINDS}")


def from_score(
    kind: str, score: torch.Tensor, x: torch.Tensor, t: Time, process: NoiseProcess
) -> torch.Tensor:
    """Convert a score at ``(x, t)`` to parameterisation ``kind``."""
    a, s, da, ds = _coeffs(process, t)
    eps = -s * score
    x0 = (x - s * eps) / a
    if kind == "score":
        return score
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return da * x0 + ds * eps
    raise ValueError(f"unknown parameterisation {kind!r}; expected one of {KINDS}")
