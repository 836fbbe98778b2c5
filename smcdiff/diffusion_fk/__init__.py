"""Diffusion sampling as a Feynman–Kac model, composed from parts: proposals (base, guided /
twisted), FK potentials (difference, max, sum, final), path correction, tilt terms and tilt
schedules. Used by ``steer()`` (steering a diffusion prior) and ``sample()`` (energy targets)."""

from smcdiff.diffusion_fk.model import DiffusionFK, build_diffusion_fk
from smcdiff.diffusion_fk.path import PathCorrection
from smcdiff.diffusion_fk.potentials import (
    POTENTIALS,
    Difference,
    Final,
    Max,
    Potential,
    Sum,
    sub_keep_neg_inf,
)
from smcdiff.diffusion_fk.proposals import BaseProposal, GuidedProposal, TwistedProposal
from smcdiff.diffusion_fk.tilt import (
    TILT_SCHEDULES,
    Tilt,
    TiltSchedule,
    TiltTerm,
    constant_schedule,
    snr_schedule,
)

__all__ = [
    "POTENTIALS",
    "TILT_SCHEDULES",
    "BaseProposal",
    "Difference",
    "DiffusionFK",
    "Final",
    "GuidedProposal",
    "Max",
    "PathCorrection",
    "Potential",
    "Sum",
    "Tilt",
    "TiltSchedule",
    "TiltTerm",
    "TwistedProposal",
    "build_diffusion_fk",
    "constant_schedule",
    "snr_schedule",
    "sub_keep_neg_inf",
]
