"""Reverse-time kernels (Euler–Maruyama, ancestral / exponential integrator, DDIM / ODE)."""

from smcdiff.samplers.kernels import (
    SAMPLERS,
    ReverseStep,
    gaussian_log_prob,
    noise_log_prob,
    reverse_step,
    shifted_proposal_log_ratio,
)

__all__ = [
    "SAMPLERS",
    "ReverseStep",
    "gaussian_log_prob",
    "noise_log_prob",
    "reverse_step",
    "shifted_proposal_log_ratio",
]
