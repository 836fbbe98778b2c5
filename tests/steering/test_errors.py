"""Bad input gets a clear error naming the quantity and the step, and loses nothing."""

import pytest
import torch

import smcdiff
from smcdiff.errors import DegenerateWeightsError, NonFiniteError, SMCDiffError


@pytest.fixture
def model():
    return smcdiff.exact_score(smcdiff.Gaussian(torch.zeros(2), torch.eye(2)), smcdiff.VP())


def nan_from_call(k, bad=float("nan")):
    """A reward that returns ``bad`` for 3 particles from its k-th call on (call i = step i)."""
    calls = []

    def reward(x):
        calls.append(1)
        r = -(x * x).sum(-1)
        if len(calls) > k:
            r = r.clone()
            r[:3] = bad
        return r

    return reward


@pytest.mark.parametrize("tilt", ["reward", "log_likelihood"])
def test_nan_tilt_names_the_quantity_and_step_and_keeps_the_last_good_state(model, tilt):
    with pytest.raises(
        NonFiniteError, match=rf"{tilt} is not finite .* 3 of 100 particles at step 5/10"
    ) as e:
        smcdiff.steer(
            model,
            **{tilt: nan_from_call(5)},
            n_particles=100,
            n_steps=10,
            seed=0,
            tilt_schedule="snr",
        )  # one tilt call per step (adaptive moves call it more)
    assert e.value.quantity == tilt and e.value.step == 5
    partial = e.value.partial
    assert partial.completed_steps == 4 and torch.isfinite(partial.particles).all()


def test_plus_inf_reward_is_an_error_but_minus_inf_is_a_zero_weight(model):
    with pytest.raises(NonFiniteError, match="reward"):
        smcdiff.steer(
            model, reward=nan_from_call(3, float("inf")), n_particles=50, n_steps=6, seed=0
        )
    res = smcdiff.steer(
        model, reward=nan_from_call(0, float("-inf")), n_particles=50, n_steps=6, seed=0
    )
    assert torch.isfinite(res.log_z)


def test_all_minus_inf_rewards_are_degenerate_weights(model):
    def reward(x):
        return torch.full((x.shape[0],), float("-inf"))

    # before the last step -inf is a finite penalty (no support lost), so the weights empty there
    with pytest.raises(DegenerateWeightsError, match=r"all weights are zero .* step 6/6"):
        smcdiff.steer(model, reward=reward, n_particles=50, n_steps=6, seed=0)


def test_nan_score_is_reported_as_the_score(model):
    class Broken:
        process, dim = model.process, model.dim
        scalar_time = True  # t arrives as a float, as for the exact model it wraps

        def score(self, x, t):
            s = model.score(x, t)
            return s * float("nan") if t < 0.3 else s

    with pytest.raises(NonFiniteError, match=r"score is not finite .* at step \d+/20 \(t=0.2"):
        smcdiff.steer(Broken(), reward=lambda x: -x.sum(-1), n_particles=40, n_steps=20, seed=0)


@pytest.mark.parametrize(
    ("reward", "match"),
    [
        (
            lambda x: x.sum(-1, keepdim=True),
            r"step 0/10 .*: reward has shape \(64, 1\), expected \(64\)",
        ),
        (lambda x: x.sum(-1).to("meta"), r"step 0/10 .*: reward is on meta"),
        (lambda x: x.sum(-1).numpy(), r"reward must be a torch.Tensor"),
    ],
    ids=["shape", "device", "type"],
)
def test_badly_shaped_or_placed_rewards_fail_at_the_first_step(model, reward, match):
    with pytest.raises(SMCDiffError, match=match):
        smcdiff.steer(model, reward=reward, n_particles=64, n_steps=10, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_particles": 1}, "n_particles must be at least 2"),
        ({"n_particles": 0}, "n_particles must be at least 2"),
        ({"n_particles": 10.5}, "n_particles must be an int"),
        ({"n_steps": 0}, "n_steps must be an int >= 1"),
        ({"method": "magic"}, "method must be one of"),
        ({"potential": "mean"}, "potential must be one of"),
        ({"resampling": "fancy"}, "fancy"),
        ({"proposal": "twisted"}, "proposal must be"),
        ({"sampler": "ode"}, "deterministic"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"beta": float("nan")}, "beta must be a finite number"),
        ({"reward": None}, "needs a reward or a log_likelihood"),
        ({"reward": 3.0}, "reward must be a callable"),
        ({"device": "meta"}, "model lives on cpu"),
    ],
)
def test_bad_arguments_are_rejected_before_any_work(model, kwargs, match):
    args = {"reward": lambda x: -x.sum(-1), "n_particles": 10, "n_steps": 5, **kwargs}
    with pytest.raises(SMCDiffError, match=match):
        smcdiff.steer(model, **args)


def test_inputs_are_not_modified(model):
    prior = model.dist
    before = (prior.means.clone(), prior.covs.clone())
    smcdiff.steer(model, reward=lambda x: -x.sum(-1), n_particles=20, n_steps=5, seed=0)
    assert torch.equal(prior.means, before[0]) and torch.equal(prior.covs, before[1])
