"""Score models: the ScoreModel protocol and exact (closed-form) scores."""

from smcdiff.scores.base import DensityScoreModel, ScoreModel, has_log_density
from smcdiff.scores.exact import ExactScore, exact_score

__all__ = ["DensityScoreModel", "ExactScore", "ScoreModel", "exact_score", "has_log_density"]
