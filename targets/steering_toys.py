r"""Steering problems whose tilted target is known exactly.

Each :class:`SteeringProblem` bundles a Gaussian-mixture prior, a noise process, a tilt
(a reward with its ``beta``, or a log-likelihood) and the exact tilted target
:math:`\pi(x) \propto p_{t_{min}}(x)\, e^{\phi(x)}` with :math:`\log Z = \log \mathbb E_{p_{t_{min}}}[e^{\phi}]`,
where :math:`p_{t_{min}}` is the prior's marginal at the end of the sampling grid (what a sampler
that stops at ``t_min`` targets; at ``t_min = 1e-3`` it differs from :math:`p_0` by noise of std ~0.01).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff import VP, GaussianMixture, NoiseProcess

__all__ = [
    "SteeringProblem",
    "gmm2d_likelihood_problem",
    "gmm2d_prior",
    "gmm2d_reward_problem",
    "linear_gaussian_problem",
]


@dataclass
class SteeringProblem:
    name: str
    prior: GaussianMixture
    process: NoiseProcess
    t_min: float
    exact: GaussianMixture
    log_z: float
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None
    log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None
    beta: float = 1.0

    def steer_kwargs(self) -> dict:
        """Keyword arguments of :func:`smcdiff.steer` that define this problem's tilt."""
        return {
            "reward": self.reward,
            "log_likelihood": self.log_likelihood,
            "beta": self.beta,
            "t_min": self.t_min,
        }


def gmm2d_prior(device: str | torch.device = "cpu", dtype=torch.float32) -> GaussianMixture:
    """An 8-component 2-D mixture: uneven weights on a ring of radius 4, anisotropic covariances."""
    k = torch.arange(8, dtype=torch.float64)
    ang = 2 * math.pi * k / 8
    means = 4.0 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    weights = torch.tensor([3, 1, 2, 1, 3, 1, 2, 1], dtype=torch.float64)
    rot = torch.stack(
        [
            torch.stack([torch.cos(ang), -torch.sin(ang)], 1),
            torch.stack([torch.sin(ang), torch.cos(ang)], 1),
        ],
        dim=1,
    )  # (8, 2, 2)
    diag = torch.diag_embed(torch.tensor([0.5, 0.12], dtype=torch.float64).expand(8, 2))
    covs = rot @ diag @ rot.transpose(1, 2)
    return GaussianMixture(weights, means.to(dtype), covs).to(device=device, dtype=dtype)


def gmm2d_reward_problem(
    beta: float = 1.0, process: NoiseProcess | None = None, t_min: float = 1e-3, device="cpu"
) -> SteeringProblem:
    r"""Linear reward :math:`r(x) = x_1 + 0.5 x_2` on :func:`gmm2d_prior`: the tilt reweights the modes
    by :math:`e^{\beta b^\top m_k + \beta^2 b^\top\Sigma_k b/2}` and shifts each one."""
    process = process or VP()
    prior = gmm2d_prior(device)
    b = torch.tensor([1.0, 0.5], device=device)
    exact, log_z = prior.noised(process, t_min).tilt(b=b.double(), beta=beta)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return x @ b.to(x.dtype)

    return SteeringProblem(
        "gmm2d-reward", prior, process, t_min, exact, float(log_z), reward=reward, beta=beta
    )


def gmm2d_likelihood_problem(
    noise_std: float = 0.5, process: NoiseProcess | None = None, t_min: float = 1e-3, device="cpu"
) -> SteeringProblem:
    r"""Observation :math:`y = (x_1 + x_2)/\sqrt2 + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 0.5^2)`,
    with :math:`y = 2` (between modes): the posterior keeps a few modes, each squeezed on a line."""
    process = process or VP()
    prior = gmm2d_prior(device)
    A = torch.tensor([[1.0, 1.0]], device=device) / math.sqrt(2.0)
    y = torch.tensor([2.0], device=device)
    return _linear_problem("gmm2d-inverse", prior, process, t_min, A, y, noise_std)


def linear_gaussian_problem(
    prior: GaussianMixture,
    A: torch.Tensor,
    y: torch.Tensor,
    noise_std: float,
    process: NoiseProcess | None = None,
    t_min: float = 1e-3,
) -> SteeringProblem:
    """Any mixture prior observed through ``y = A x + N(0, noise_std^2 I)``."""
    return _linear_problem("linear-gaussian", prior, process or VP(), t_min, A, y, noise_std)


def _linear_problem(name, prior, process, t_min, A, y, noise_std) -> SteeringProblem:
    exact, log_z = prior.noised(process, t_min).posterior(
        A.double(), y.double(), noise_std=noise_std
    )
    m = y.shape[0]

    def log_likelihood(x: torch.Tensor) -> torch.Tensor:
        r = y.to(x) - x @ A.to(x).T
        return -0.5 * (r * r).sum(-1) / noise_std**2 - 0.5 * m * math.log(
            2 * math.pi * noise_std**2
        )

    return SteeringProblem(
        name, prior, process, t_min, exact, float(log_z), log_likelihood=log_likelihood
    )
