"""Steering a diffusion prior toward a tilt: FK potentials, proposals, FKC and DriftLite, ``steer()``."""

from smcdiff.steering.fk import DiffusionFK, TiltTerm
from smcdiff.steering.fkc import FKCModel
from smcdiff.steering.potentials import POTENTIALS
from smcdiff.steering.steer import METHODS, steer

__all__ = ["METHODS", "POTENTIALS", "DiffusionFK", "FKCModel", "TiltTerm", "steer"]
