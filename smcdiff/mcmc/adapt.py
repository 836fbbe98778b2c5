r"""Step-size adaptation toward a target acceptance rate: Robbins–Monro in log step size.

Per chain, after a step with acceptance probability :math:`\alpha_t` (:math:`t = 1, 2, \dots`):

.. math:: \log h_{t+1} = \log h_t + \eta_t(\alpha_t - \alpha^*),\qquad \eta_t = \eta_0 t^{-\kappa},

with :math:`\eta_0 = 1`, :math:`\kappa = 0.6` during :func:`~smcdiff.mcmc.run_chain`'s warm-up
(:math:`\sum\eta_t = \infty`, :math:`\sum\eta_t^2 < \infty`: each chain's :math:`h_t` converges to
the root of :math:`E[\alpha(h)] = \alpha^*`); the last iterate is then frozen. The SMC corrector,
whose target moves between calls, uses a constant gain on the particle-mean acceptance, or, with
``per_particle=True``, this decaying gain on each particle's own acceptance within a call (its
step sizes then depend on its past, so its moves are exact only as the gain vanishes; see
:func:`~smcdiff.mcmc.mcmc_corrector`).

Per-chain dual averaging (Hoffman & Gelman 2014) was tried and dropped: with one chain's noisy
:math:`\alpha_t` its averaged iterate settled below HMC's stability cliff on the test Gaussian
(acceptance 0.91 for a target of 0.65 after 200 warm-up steps); this update reached 0.65.
"""

from __future__ import annotations

import torch

__all__ = ["rm_gain", "robbins_monro"]


def rm_gain(t: int, eta0: float = 1.0, kappa: float = 0.6) -> float:
    r""":math:`\eta_t = \eta_0 t^{-\kappa}` for update ``t >= 1`` (a host float)."""
    return eta0 * t**-kappa


def robbins_monro(
    log_step: torch.Tensor, accept_prob: torch.Tensor, target: float, gain: float
) -> torch.Tensor:
    r""":math:`\log h + \eta(\alpha - \alpha^*)`, elementwise, on the device (no sync).
    ``log_step`` and ``accept_prob``: ``(N,)`` per chain, or scalars for a shared step size."""
    return log_step + gain * (accept_prob.to(log_step.dtype) - target)
