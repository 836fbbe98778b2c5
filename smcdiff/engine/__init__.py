"""The Feynman–Kac model base class, the step API and the SMC loop that runs every sampler,
with its checkpoints."""

from smcdiff.engine.checkpoint import Checkpoint, Checkpointer, load_checkpoint
from smcdiff.engine.collectors import Collector, Genealogy, Trace, WeightedMoments, WeightTails
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.resampler import LocalResampler, Resampler, as_resampler
from smcdiff.engine.result import SMCRun
from smcdiff.engine.smc import SMC, Corrector, run_smc
from smcdiff.engine.state import SMCState, StepInfo

__all__ = [
    "SMC",
    "Checkpoint",
    "Checkpointer",
    "Collector",
    "Corrector",
    "FeynmanKacModel",
    "Genealogy",
    "LocalResampler",
    "ParticleState",
    "Resampler",
    "SMCRun",
    "SMCState",
    "StepInfo",
    "StepOutput",
    "Trace",
    "WeightTails",
    "WeightedMoments",
    "as_resampler",
    "load_checkpoint",
    "run_smc",
]
