from smcdiff.scores.base import DensityScoreModel, ScoreModel, has_log_density
