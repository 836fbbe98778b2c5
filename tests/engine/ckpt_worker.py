"""A checkpointed ``steer()`` run for ``test_checkpoint.py``: imported there for the same call
uninterrupted, run as a script (``python ckpt_worker.py PATH``) in a subprocess that the test
SIGKILLs mid-run. ``SMCDIFF_SLOW_REWARD=seconds`` makes every reward call sleep that long, so
the run is slow enough to be killed between steps; it does not change any number."""

import os
import sys
import time

import torch

import smcdiff

DEVICE = torch.device(os.environ.get("SMCDIFF_TEST_DEVICE", "cpu"))
N_STEPS = 30


def reward(x: torch.Tensor) -> torch.Tensor:
    """A module-level reward, so that the checkpoint stores it (it pickles by reference)."""
    delay = float(os.environ.get("SMCDIFF_SLOW_REWARD", "0"))
    if delay:
        time.sleep(delay)
    return -2.0 * ((x - torch.tensor([1.0, 0.5], device=x.device)) ** 2).sum(-1)


def prior_model() -> smcdiff.ScoreModel:
    """A two-component Gaussian mixture prior with its exact score and density."""
    prior = smcdiff.GaussianMixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[1.5, 0.0], [-1.0, 0.5]]), torch.full((2, 2), 0.2)
    )
    return smcdiff.exact_score(prior.to(device=DEVICE), smcdiff.VP())


def steer_kwargs() -> dict:
    return dict(reward=reward, n_particles=64, n_steps=N_STEPS, seed=7, n_runs=2, device=DEVICE,
                tilt_schedule="snr")  # fmt: skip


if __name__ == "__main__":
    import ckpt_worker  # this file as a module: the reward pickles as ckpt_worker.reward

    smcdiff.steer(
        ckpt_worker.prior_model(), checkpoint=sys.argv[1], checkpoint_every=1,
        **ckpt_worker.steer_kwargs(),
    )  # fmt: skip
