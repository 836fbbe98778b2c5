"""Steering a diffusion prior toward a tilt: FK potentials, proposals, FKC and DriftLite, ``steer()``.

``steer(method=...)`` dispatches through a registry (:mod:`smcdiff.steering.registry`); the
built-in methods are in :mod:`smcdiff.steering.methods`, and :func:`register_method` adds one.
"""

from smcdiff.diffusion_fk import POTENTIALS, DiffusionFK, TiltTerm
from smcdiff.steering.fkc import FKCModel
from smcdiff.steering.registry import (
    CommonConfig,
    MethodPlan,
    get_method,
    register_method,
    registered_methods,
    unregister_method,
)
from smcdiff.steering.steer import run_plan, steer

__all__ = [
    "POTENTIALS",
    "CommonConfig",
    "DiffusionFK",
    "FKCModel",
    "MethodPlan",
    "TiltTerm",
    "get_method",
    "register_method",
    "registered_methods",
    "run_plan",
    "steer",
    "unregister_method",
]
