"""Resampling: which ancestors (schemes) and when (policies)."""

from smcdiff.resampling.gather import gather_rows
from smcdiff.resampling.policies import (
    ActiveWindow,
    Always,
    ESSBelow,
    EveryK,
    Never,
    ResamplingPolicy,
    policy_from_threshold,
)
from smcdiff.resampling.schemes import (
    SCHEMES,
    Scheme,
    get_scheme,
    multinomial,
    offspring_counts,
    residual,
    ssp,
    stratified,
    systematic,
)

__all__ = [
    "SCHEMES",
    "ActiveWindow",
    "Always",
    "ESSBelow",
    "EveryK",
    "Never",
    "ResamplingPolicy",
    "Scheme",
    "gather_rows",
    "get_scheme",
    "multinomial",
    "offspring_counts",
    "policy_from_threshold",
    "residual",
    "ssp",
    "stratified",
    "systematic",
]
