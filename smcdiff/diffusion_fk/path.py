r"""Path correction of a diffusion FK model: the forward kernel as the backward kernel.

For a prior that knows :math:`\log p_t`, the sampler's discretisation error is weighted out with
the forward transition :math:`q_{t|s}` as the backward kernel of an SMC sampler: per step

.. math:: \log \frac{p_s(x_s)\, q_{t|s}(x_t \mid x_s)}{p_t(x_t)\, q(x_s \mid x_t)},

with :math:`q` the proposal actually used (shifted or not), and at the start
:math:`\log p_{t_{max}}(x) - \log \mathcal N(x; 0, \sigma_{ref}^2 I)`. The weighted particles then
target :math:`p(x) e^{\phi(x)}` and ``log_z`` estimates :math:`\log \mathbb E_p[e^{\phi}]` without
bias from the step count. ``end_log_prob`` (an unnormalised :math:`\log\tilde\pi`) replaces
:math:`\log p_{t_{min}}` at the last step by :math:`\log\tilde\pi(x)` (:meth:`PathCorrection.
finish`): the path weights then telescope to :math:`\tilde\pi` (the energy-target sampler, where
:math:`p_t` is estimated and the estimate at the last step is no part of the weight). All terms sum over every event dim; for a
:class:`~smcdiff.processes.MeanFree` process every Gaussian is the one of its subspace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.checks import check_shape, nan_or_posinf
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.samplers.kernels import ReverseStep, gaussian_log_prob, noise_log_prob

__all__ = ["PathCorrection"]


class PathCorrection:
    """The path-correction weights (module docstring); ``end_log_prob`` maps
    ``(N, *event_shape)`` to ``(N,)``."""

    def __init__(self, end_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.end_log_prob = end_log_prob

    def start(
        self, x: torch.Tensor, logp: torch.Tensor, ref_std: float, process: NoiseProcess | None
    ) -> torch.Tensor:
        r""":math:`\log p_{t_{max}}(x) - \log\mathcal N(x; 0, \sigma_{ref}^2 I)`, ``(N,)``; the
        reference is the start law on ``process``'s support (the subspace Gaussian for a
        :class:`~smcdiff.processes.MeanFree` process)."""
        return logp - gaussian_log_prob(x, torch.zeros_like(x), ref_std**2, process)

    def step(
        self,
        process: NoiseProcess,
        ker: ReverseStep,
        x: torch.Tensor,
        x_new: torch.Tensor,
        z: torch.Tensor,
        logp: torch.Tensor,
        prev_logp: torch.Tensor,
    ) -> torch.Tensor:
        r"""The step weight from ``x`` (time ``ker.t``, density ``prev_logp``) to ``x_new`` (time
        ``ker.s``, density ``logp``) drawn with standard normal ``z``; ``(N,)`` float64. A
        density of ``-inf`` (an estimate with no mass there) gives weight 0, and a particle
        whose previous density was ``-inf`` keeps weight 0 (not ``-inf - (-inf)``). That is the
        weight for the intermediate target the estimate defines; where the exact :math:`p_t`
        has mass, the estimates no longer cancel along that path and :math:`\hat Z` of the end
        target is biased low (an estimator that underflows is the thing to fix)."""
        a, v = (float(c) for c in process.transition(ker.s, ker.t))
        log_q = noise_log_prob(z, ker.var, process)
        log_g = logp - prev_logp + gaussian_log_prob(x, a * x_new, v, process) - log_q
        return torch.where(prev_logp == -torch.inf, -torch.inf, log_g)

    def finish(
        self,
        process: NoiseProcess,
        ker: ReverseStep,
        x: torch.Tensor,
        x_new: torch.Tensor,
        z: torch.Tensor,
        logp: torch.Tensor,
        prev_logp: torch.Tensor,
        checks: dict[str, torch.Tensor],
        where: str,
    ) -> torch.Tensor:
        r"""The last step's weight (arguments of :meth:`step`): :meth:`step` with
        ``end_log_prob(x_new)`` in place of :math:`\log p_{t_{min}}` = ``logp`` (unchanged without
        one); NaN / +inf end values go into ``checks`` under ``"end log_prob"``.

        With ``end_log_prob`` the estimate :math:`\log\hat p_{t_{min}}` is no part of the weight
        (the path weights telescope to :math:`\tilde\pi`), so a ``-inf`` there, an estimate with
        no mass where the end density has some, is not an error and gives the weight of the end
        density; an end density of ``-inf`` gives weight 0."""
        if self.end_log_prob is None:
            return self.step(process, ker, x, x_new, z, logp, prev_logp)
        end = self.end_log_prob(x_new)
        check_shape("end log_prob", end, (x_new.shape[0],), where=where)
        checks["end log_prob"] = nan_or_posinf(end.detach())
        return self.step(process, ker, x, x_new, z, end.detach().double(), prev_logp)

    def __repr__(self) -> str:
        return f"PathCorrection(end_log_prob={self.end_log_prob!r})"
