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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from smcdiff.checks import check_device, check_shape, nan_or_posinf
from smcdiff.processes.schedules import NoiseProcess

__all__ = [
    "TILT_SCHEDULES",
    "Tilt",
    "TiltSchedule",
    "TiltTerm",
    "TiltValue",
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


class TiltValue(NamedTuple):
    r"""The tilt at one set of points, before its strength is applied: ``f`` ``(N,)`` float64, the
    finite part :math:`\sum_j c_j f_j` (terms at ``-inf`` count 0 there), and ``hard`` ``(N,)``
    bool, where a term is ``-inf`` (a hard constraint is violated)."""

    f: torch.Tensor
    hard: torch.Tensor


class Tilt:
    r"""The terms of :math:`\phi` with their per-step strengths on a time grid.

    ``lam[k]`` = ``schedule(alpha(t_k), sigma(t_k))`` for k < K and 1 at the last step K;
    ``fade[k]`` = :math:`\alpha_k^2/(\alpha_k^2 + \sigma_k^2) < 1` for k < K and 1 at K.

    At strength :math:`\lambda` and hardness :math:`h` the log-tilt is (:meth:`phi`)

    .. math:: \phi_{\lambda,h}(x) = \lambda f(x) + \log(1 - h)\,\mathbb 1[\text{a term of }
        x \text{ is } -\infty],

    with hardness :math:`h_k = \text{fade}_k` before the last step, rising with :math:`\lambda`
    from :math:`\text{fade}_{K-1}` to 1 from it on (:meth:`hardness`): a hard constraint becomes a finite penalty before the last step, so
    no intermediate target loses support that the final target has (every :math:`x_k` can still
    reach the constraint set), and at the last step with :math:`\lambda = 1` it is exact
    (:math:`\log 0 = -\infty`).
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
        self.fade = [snr_schedule(a, s) for a, s in ab]
        self.fade[-1] = 1.0
        self.last = len(self.lam) - 1

    def __bool__(self) -> bool:
        return bool(self.terms)

    def evaluate(
        self, x0: torch.Tensor, k: int, checks: dict[str, torch.Tensor], where: str
    ) -> TiltValue:
        """The tilt's :class:`TiltValue` at ``x0`` ``(N, *event_shape)``, checking each term's
        shape, device and values (NaN / +inf masks go into ``checks`` under the term's name);
        differentiable in ``x0`` where finite."""
        n = x0.shape[0]
        f, hard = None, None  # no terms: zeros (the first term's values start the sums)
        for term in self.terms:
            v = term.fn(x0)
            check_shape(term.name, v, (n,), where=where)
            check_device(term.name, v, x0.device, where=where)
            checks[term.name] = nan_or_posinf(v.detach())
            v = v.double()
            out = v == float("-inf")
            hard = out if hard is None else hard | out
            v = torch.where(out, v.new_zeros(()), v)
            v = v if term.scale == 1.0 else term.scale * v  # 1 * v == v
            f = v if f is None else f + v
        if f is None:
            f = torch.zeros(n, dtype=torch.float64, device=x0.device)
            hard = torch.zeros(n, dtype=torch.bool, device=x0.device)
        return TiltValue(f, hard)

    def hardness(self, k: int, lam: float | torch.Tensor) -> float | torch.Tensor:
        r""":math:`h_k = \text{fade}_k` before the last step; from it on
        :math:`h = f + \lambda(1 - f)` with :math:`f = \text{fade}_{K-1}`, so the penalty never
        falls below the previous step's and reaches :math:`-\infty` at :math:`\lambda = 1`."""
        if k < self.last:
            return self.fade[k]
        before = self.fade[self.last - 1] if self.last > 0 else 0.0
        return before + lam * (1.0 - before)

    def phi(
        self, value: TiltValue, k: int, lam: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`\phi_{\lambda, h_k}` ``(N,)`` float64 at step ``k`` (class docstring);
        ``lam``: a float or ``(N,)`` tensor, default the schedule's ``lam[k]``."""
        lam = self.lam[min(k, self.last)] if lam is None else lam
        h = self.hardness(k, lam)
        if isinstance(h, torch.Tensor):
            penalty = torch.log1p(-h.to(torch.float64))
        else:  # a Python number: no host-to-device copy (the step stays capturable)
            penalty = -math.inf if h >= 1.0 else math.log1p(-h)
        return lam * value.f + torch.where(value.hard, penalty, value.f.new_zeros(()))

    def log_value(
        self, x0: torch.Tensor, k: int, lam: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`\phi_{\lambda, h_k}(x_0)` without checks (differentiable where finite),
        ``(N,)`` float64."""
        return self.phi(self.evaluate(x0, k, {}, where=f"step {k}"), k, lam)
