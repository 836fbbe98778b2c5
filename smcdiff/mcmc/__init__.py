"""Batched MCMC kernels over N chains ``(N, d)`` (ULA, MALA, HMC, underdamped Langevin, pCNL),
step-size adaptation, a chain runner with ArviZ output, and an SMC corrector adapter."""

from smcdiff.mcmc.adapt import rm_gain, robbins_monro
from smcdiff.mcmc.base import Kernel, LogProb, MCMCState, StepInfo, value_and_grad
from smcdiff.mcmc.corrector import mcmc_corrector
from smcdiff.mcmc.hmc import HMC
from smcdiff.mcmc.langevin import MALA, ULA, UnderdampedLangevin
from smcdiff.mcmc.pcnl import PCNL
from smcdiff.mcmc.runner import KERNELS, ChainResult, get_kernel, run_chain

__all__ = [
    "HMC",
    "KERNELS",
    "MALA",
    "PCNL",
    "ULA",
    "ChainResult",
    "Kernel",
    "LogProb",
    "MCMCState",
    "StepInfo",
    "UnderdampedLangevin",
    "get_kernel",
    "mcmc_corrector",
    "rm_gain",
    "robbins_monro",
    "run_chain",
    "value_and_grad",
]
