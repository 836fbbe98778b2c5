from smcdiff.scores.base import DensityScoreModel, ScoreModel, has_log_density
from smcdiff.scores.exact import ExactScore, exact_score
