r"""Conversions between network parameterisations, all through :math:`(x_0, \varepsilon)`.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`:

* ``"score"``: :math:`s = \nabla\log p_t(x_t) = -\mathbb E[\varepsilon\mid x_t]/\sigma`;
* ``"eps"``: :math:`\hat\varepsilon = -\sigma s`;
* ``"x0"``: Tweedie, :math:`\hat x_0 = (x_t + \sigma^2 s)/\alpha`;
* ``"v"``: Salimans & Ho, :math:`v = \alpha\varepsilon - \sigma x_0`;
* ``"velocity"``: flow-matching velocity :math:`u = \dot\alpha x_0 + \dot\sigma\varepsilon`;
* ``"energy"`` is not a pointwise conversion (:math:`s = -\nabla E`) and lives with the score models.

All functions take ``x`` of shape ``(N, *event)`` and a time ``t``: a Python float (or 0-d tensor)
shared by every row, or a ``(N,)`` tensor with one time per row (what a network sees); the
coefficients then broadcast over the event dimensions and are computed in the dtype of ``x`` (at
least float32), so a float32 ``x`` stays float32. The formulas hold for any process
(:math:`\alpha, \sigma` and their derivatives), VP, VE and Flow alike.
"""

from __future__ import annotations

import torch

from smcdiff.processes.schedules import NoiseProcess, Time

__all__ = ["KINDS", "coefficients", "convert", "from_score", "to_score", "tweedie_x0"]

KINDS = ("score", "eps", "x0", "v", "velocity")


def tweedie_x0(x: torch.Tensor, score: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    r""":math:`\hat x_0 = (x_t + \sigma_t^2 s_t(x_t)) / \alpha_t = \mathbb E[x_0 \mid x_t]`."""
    if isinstance(sigma, (int, float)):  # two passes over (N, d), not three
        return torch.add(x, score, alpha=sigma * sigma) / alpha
    return (x + (sigma * sigma) * score) / alpha


Coeff = float | torch.Tensor


def coefficients(
    process: NoiseProcess, t: Time, x: torch.Tensor
) -> tuple[Coeff, Coeff, Coeff, Coeff]:
    r""":math:`(\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t)` in the form that multiplies ``x``.

    A float or 0-d tensor ``t``: four Python floats (computed in float64). A ``(N,)`` tensor: four
    tensors of shape ``(N, 1, ..., 1)`` (broadcasting over the event dimensions of ``x``
    ``(N, *event)``), in the dtype and on the device of ``x``.
    """
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        work = torch.promote_types(t.dtype, torch.promote_types(x.dtype, torch.float32))
        tt = t.to(device=x.device, dtype=work).reshape(-1, *([1] * (x.dim() - 1)))
        fns = (process.alpha, process.sigma, process.d_alpha, process.d_sigma)
        a, s, da, ds = (f(tt).to(x.dtype) for f in fns)
        return a, s, da, ds
    return (
        float(process.alpha(t)),
        float(process.sigma(t)),
        float(process.d_alpha(t)),
        float(process.d_sigma(t)),
    )


def to_score(
    kind: str, output: torch.Tensor, x: torch.Tensor, t: Time, process: NoiseProcess
) -> torch.Tensor:
    """Convert a model ``output`` of parameterisation ``kind`` at ``(x, t)`` to the score
    (``output`` and ``x`` ``(N, *event)``; ``t`` a float or a ``(N,)`` tensor)."""
    a, s, da, ds = coefficients(process, t, x)
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
    """Convert a score at ``(x, t)`` to parameterisation ``kind`` (shapes as :func:`to_score`)."""
    a, s, da, ds = coefficients(process, t, x)
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


def convert(
    source: str,
    target: str,
    output: torch.Tensor,
    x: torch.Tensor,
    t: Time,
    process: NoiseProcess,
) -> torch.Tensor:
    """A model ``output`` of parameterisation ``source`` at ``(x, t)`` in parameterisation
    ``target`` (through the score; the identity when both are the same)."""
    if source == target and source in KINDS:
        return output
    return from_score(target, to_score(source, output, x, t, process), x, t, process)
