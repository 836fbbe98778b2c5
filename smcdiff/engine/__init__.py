"""The Feynman–Kac model protocol and the SMC engine that runs every sampler."""

from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.smc import Corrector, SMCRun, run_smc

__all__ = [
    "Corrector",
    "FeynmanKacModel",
    "ParticleState",
    "SMCRun",
    "StepOutput",
    "run_smc",
]
