r"""Proposals of a diffusion FK model: how a particle moves from :math:`x_t` to :math:`x_s`.

Every proposal is Gaussian around the reverse kernel's mean (:mod:`smcdiff.samplers.kernels`),
:math:`x_s = c_x x_t + c_s s_t(x_t) + \delta + \sqrt v\, z`:

* :class:`BaseProposal`: :math:`\delta = 0`, the reverse kernel itself;
* :class:`GuidedProposal` ``(scale)``: :math:`\delta = c_s\,\gamma\,\nabla_{x_t}\lambda_t\phi(\hat
  x_0(x_t))`, the score of the intermediate tilt times ``scale`` :math:`\gamma` (DPS-style
  guidance). Weighted, it carries the exact correction :math:`\log p_\theta(x_s\mid x_t) - \log
  q(x_s\mid x_t)` (:func:`~smcdiff.samplers.kernels.shifted_proposal_log_ratio`);
* :class:`TwistedProposal`: the twisted proposal of TDS (Wu et al. 2023) with twist
  :math:`\tilde p_k(x) = e^{\lambda_k\phi(\hat x_0(x))}` is the guided proposal with scale 1
  (the gradient of the log-twist shifts the mean by :math:`c_s\nabla\log\tilde p_k`); with the
  :class:`~smcdiff.diffusion_fk.potentials.Difference` potential its weights are TDS's.
"""

from __future__ import annotations

import torch

from smcdiff.engine.model import ParticleState
from smcdiff.samplers.kernels import ReverseStep, shifted_proposal_log_ratio

__all__ = ["BaseProposal", "GuidedProposal", "TwistedProposal"]


class BaseProposal:
    """The reverse kernel as the proposal: no shift, no correction. ``guided`` says whether the
    proposal needs the gradient of the tilt (cached as ``state["grad"]``)."""

    guided = False

    def shift(self, ker: ReverseStep, state: ParticleState) -> torch.Tensor | None:
        """The mean shift :math:`\\delta` ``(N, *event_shape)``, or ``None`` for none."""
        return None

    def propose(
        self, ker: ReverseStep, state: ParticleState, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x_new, z, shift)``: one draw of the proposal from ``state["x"]`` (uses
        ``state["score"]``), ``z`` the standard normal draw, ``shift`` as in :meth:`shift`."""
        x = state["x"]
        mean = ker.mean(x, state["score"])
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        shift = self.shift(ker, state)
        if shift is not None:
            mean = mean + shift
        return torch.add(mean, z, alpha=ker.std), z, shift  # mean + std z, one pass

    def log_ratio(
        self, z: torch.Tensor, shift: torch.Tensor | None, var: float
    ) -> torch.Tensor | None:
        """:math:`\\log p_\\theta(x_s\\mid x_t) - \\log q(x_s\\mid x_t)` ``(N,)`` float64, or
        ``None`` when the proposal is the reverse kernel itself."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GuidedProposal(BaseProposal):
    r"""The reverse kernel shifted by ``scale`` times :math:`c_s` times the gradient of the
    intermediate log-tilt (module docstring), with its exact log p/q correction."""

    guided = True

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def shift(self, ker: ReverseStep, state: ParticleState) -> torch.Tensor | None:
        if "grad" not in state:  # no tilt gradient at this step (e.g. no tilt terms)
            return None
        return (ker.cs * self.scale) * state["grad"]

    def log_ratio(
        self, z: torch.Tensor, shift: torch.Tensor | None, var: float
    ) -> torch.Tensor | None:
        return None if shift is None else shifted_proposal_log_ratio(z, shift, var)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale:g})"


class TwistedProposal(GuidedProposal):
    """TDS's twisted proposal: :class:`GuidedProposal` with scale 1 (module docstring)."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def __repr__(self) -> str:
        return "TwistedProposal()"
