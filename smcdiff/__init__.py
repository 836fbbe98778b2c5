"""smcdiff: Sequential Monte Carlo steering of diffusion processes, on GPU.

Front doors: :func:`sample` (energy-defined targets: tempered SMC, diffusion-path SMC, MCMC) and
:func:`steer` (tilt a diffusion prior by a reward or a likelihood); the noise
processes :class:`VP`, :class:`VE`, :class:`Flow`, closed-form priors :class:`GaussianMixture` with
:func:`exact_score`, and :class:`SMCResult`. The engine's step API (:class:`SMC`, :class:`SMCState`,
:class:`StepInfo`), resamplers and collectors are here for user-written loops; everything else is
importable from the subpackages.
"""

from smcdiff import nets
from smcdiff.distributions import Gaussian, GaussianMixture
from smcdiff.energy import DiffusionOptions, MCMCOptions, TemperedOptions, sample
from smcdiff.engine import (
    SMC,
    Collector,
    FeynmanKacModel,
    Genealogy,
    LocalResampler,
    Resampler,
    SMCState,
    StepInfo,
    StepOutput,
    WeightedMoments,
    WeightTails,
    run_smc,
)
from smcdiff.engine.checkpoint import Checkpointer, load_checkpoint, resume
from smcdiff.errors import (
    CheckpointError,
    DegeneracyWarning,
    DegenerateWeightsError,
    DiscretisationWarning,
    NonFiniteError,
    SMCDiffError,
    StiffDriftWarning,
)
from smcdiff.processes import VE, VP, DiscreteVP, Flow, NoiseProcess, time_grid
from smcdiff.result import SMCResult
from smcdiff.scores import (
    EnergyNetwork,
    GeometricScore,
    NetworkScore,
    ScoreModel,
    anneal,
    cfg,
    exact_score,
    from_diffusers,
    product,
)
from smcdiff.steering import steer
from smcdiff.steering.linear_obs import LinearGaussianObservation
from smcdiff.target import Target, as_target
from smcdiff.training import load_score, save_score, train_score

__version__ = "0.1.0"

_LAZY = {"from_pyro": "smcdiff.pyro_target", "PyroTarget": "smcdiff.pyro_target"}


def __getattr__(name: str):
    """Import the Pyro bridge (pyro + xarray, ~1 s) on first use only."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'smcdiff' has no attribute {name!r}")


__all__ = [
    "SMC",
    "VE",
    "VP",
    "CheckpointError",
    "Checkpointer",
    "Collector",
    "DegeneracyWarning",
    "DegenerateWeightsError",
    "DiffusionOptions",
    "DiscreteVP",
    "DiscretisationWarning",
    "EnergyNetwork",
    "FeynmanKacModel",
    "Flow",
    "Gaussian",
    "GaussianMixture",
    "Genealogy",
    "GeometricScore",
    "LinearGaussianObservation",
    "LocalResampler",
    "MCMCOptions",
    "NetworkScore",
    "NoiseProcess",
    "NonFiniteError",
    "PyroTarget",
    "Resampler",
    "SMCDiffError",
    "SMCResult",
    "SMCState",
    "ScoreModel",
    "StepInfo",
    "StepOutput",
    "StiffDriftWarning",
    "Target",
    "TemperedOptions",
    "WeightTails",
    "WeightedMoments",
    "anneal",
    "as_target",
    "cfg",
    "exact_score",
    "from_diffusers",
    "from_pyro",
    "load_checkpoint",
    "load_score",
    "nets",
    "product",
    "resume",
    "run_smc",
    "sample",
    "save_score",
    "steer",
    "time_grid",
    "train_score",
]
