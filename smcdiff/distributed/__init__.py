"""One SMC run across the processes (and GPUs) of a ``torch.distributed`` process group.

``smcdiff.steer(..., distributed=True)`` / ``smcdiff.sample(..., distributed=True)`` inside an
initialised group (``torchrun``; docs/distributed.md) split the N particles over the ranks;
:func:`run_smc_distributed` does it for any Feynman–Kac model. Global normalisation
(:mod:`~smcdiff.distributed.weights`), distributed systematic resampling with a balanced
redistribution (:mod:`~smcdiff.distributed.resample`), island resampling
(:mod:`~smcdiff.distributed.islands`) and the collectives with their byte counts
(:mod:`~smcdiff.distributed.comm`).
"""

from smcdiff.distributed.comm import Comm
from smcdiff.distributed.gather import gather_result
from smcdiff.distributed.islands import IslandResampler
from smcdiff.distributed.resample import DistributedSystematic, redistribute, systematic_slots
from smcdiff.distributed.runner import (
    DistributedSMC,
    GlobalPolicy,
    rank_path,
    run_smc_distributed,
)
from smcdiff.distributed.weights import GlobalWeights, global_weights

__all__ = [
    "Comm",
    "DistributedSMC",
    "DistributedSystematic",
    "GlobalPolicy",
    "GlobalWeights",
    "IslandResampler",
    "gather_result",
    "global_weights",
    "rank_path",
    "redistribute",
    "run_smc_distributed",
    "systematic_slots",
]
