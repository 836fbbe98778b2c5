"""Training score networks: denoising score matching (:func:`train_score`), loss weightings and
time sampling (:mod:`smcdiff.training.loss`), EMA, and one-file checkpoints
(:func:`save_score` / :func:`load_score`)."""

from smcdiff.training.checkpoint import load_score, save_score
from smcdiff.training.ema import EMA
from smcdiff.training.loss import PREDICTIONS, TIME_SAMPLINGS, WEIGHTINGS
from smcdiff.training.train import Trainer, TrainingLog, TrainSettings, train_score

__all__ = [
    "EMA",
    "PREDICTIONS",
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "TrainSettings",
    "Trainer",
    "TrainingLog",
    "load_score",
    "save_score",
    "train_score",
]
