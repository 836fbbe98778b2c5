"""Batched MCMC kernels over N chains ``(N, *event_shape)`` (ULA, MALA, HMC, underdamped
Langevin, pCNL), step-size adaptation, a chain runner with ArviZ output, and an SMC corrector
adapter."""

from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import Kernel, LogProb, MCMCState, MoveInfo, row_sum, value_and_grad
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.mcmc.hmc import HMC
from smcdiff.mcmc.langevin import MALA, ULA, UnderdampedLangevin
from smcdiff.mcmc.pcnl import PCNL
from smcdiff.mcmc.registry import (
    KERNELS,
    check_kernel_options,
    get_kernel,
    kernel_name,
    kernel_parameters,
    resolve_target_accept,
)
from smcdiff.mcmc.runner import ChainResult, DivergenceWarning, run_chain

__all__ = [
    "HMC",
    "KERNELS",
    "MALA",
    "PCNL",
    "ULA",
    "ChainResult",
    "DivergenceWarning",
    "Kernel",
    "LogProb",
    "MCMCState",
    "MoveInfo",
    "UnderdampedLangevin",
    "check_kernel_options",
    "get_kernel",
    "kernel_name",
    "kernel_parameters",
    "mcmc_corrector",
    "resolve_target_accept",
    "rm_gain",
    "robbins_monro",
    "row_sum",
    "run_chain",
    "value_and_grad",
]
