r"""The tilt of a diffusion FK model: its terms and the schedule that fades it in.

The log-tilt is :math:`\phi(x) = \sum_j c_j f_j(x)` (a reward :math:`\beta r`, a log-likelihood
:math:`\log p(y\mid x)`, ...), one :class:`TiltTerm` per summand. At step k it is applied to
Tweedie's :math:`\hat x_0(x_k)` (to :math:`x_K` itself at the last step) and scaled by a schedule
:math:`\lambda_k` (:data:`TILT_SCHEDULES`):

* ``"constant"``: :math:`\lambda = 1` (as in FK steering and the published TDS twist);
* ``"snr"``: :math:`\lambda_t = \alpha_t^2/(\alpha_t^2 + \sigma_t^2)`, which fades out the
  overconfident :math:`\phi(\hat x_0)` at high noise.

The last step always uses :math:`\lambda_K = 1`, so the final target is the same for every schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from smcdiff.checks import check_device, check_shape, nan_or_posinf
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "TILT_SCHEDULES",
    "Tilt",
    "TiltSchedule",
    "TiltTerm",
    "constant_schedule",
    "snr_schedule",
]

TiltSchedule = Callable[[float, float], float]
"""A tilt schedule: :math:`(\\alpha_t, \\sigma_t) \\mapsto \\lambda_t`."""


@dataclass(frozen=True)
class TiltTerm:
    """One term :math:`c\\, f(x_0)` of the log-tilt; ``fn`` maps ``(N, *event_shape)`` to ``(N,)``;
    ``name`` is used in error messages."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0


def constant_schedule(alpha: float, sigma: float) -> float:
    """:math:`\\lambda_t = 1`."""
    return 1.0


def snr_schedule(alpha: float, sigma: float) -> float:
    r""":math:`\lambda_t = \alpha_t^2/(\alpha_t^2 + \sigma_t^2)`."""
    return alpha * alpha / (alpha * alpha + sigma * sigma)


TILT_SCHEDULES: dict[str, TiltSchedule] = {"constant": constant_schedule, "snr": snr_schedule}
"""Tilt schedules by name."""


class Tilt:
    r"""The terms of :math:`\phi` with their per-step weights :math:`\lambda_k` on a time grid.

    ``lam[k]`` = ``schedule(alpha(t_k), sigma(t_k))`` for k < K and 1 at the last step K.
    """

    def __init__(
        self,
        terms: Sequence[TiltTerm],
        process: NoiseProcess,
        times: Sequence[float],
        schedule: TiltSchedule = constant_schedule,
    ):
        self.terms = tuple(terms)
        ab = [(float(process.alpha(t)), float(process.sigma(t))) for t in times]
        self.lam = [schedule(a, s) for a, s in ab]
        self.lam[-1] = 1.0  # so that potentials telescope to the same final target

    def __bool__(self) -> bool:
        return bool(self.terms)

    def evaluate(
        self, x0: torch.Tensor, k: int, checks: dict[str, torch.Tensor], where: str
    ) -> torch.Tensor:
        r""":math:`\lambda_k \phi(x_0)` ``(N,)`` float64, checking each term's shape, device and
        values (NaN / +inf masks go into ``checks`` under the term's name). A ``-inf`` term (a hard
        constraint) stays ``-inf`` even where :math:`\lambda_k = 0`."""
        n = x0.shape[0]
        phi = torch.zeros(n, dtype=torch.float64, device=x0.device)
        for term in self.terms:
            v = term.fn(x0)
            check_shape(term.name, v, (n,), where=where)
            check_device(term.name, v, x0.device, where=where)
            checks[term.name] = nan_or_posinf(v.detach())
            v = v.double()
            phi = phi + torch.where(v == float("-inf"), v, (self.lam[k] * term.scale) * v)
        return phi

    def log_value(self, x0: torch.Tensor, k: int) -> torch.Tensor | float:
        r""":math:`\lambda_k \phi(x_0)` without checks (differentiable), ``(N,)`` float64 (0 when
        there are no terms)."""
        lam = self.lam[k]
        return sum(lam * term.scale * term.fn(x0).double() for term in self.terms)
