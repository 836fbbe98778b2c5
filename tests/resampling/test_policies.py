"""Resampling policies: masks of the groups to resample."""

import math

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.resampling import (
    ActiveWindow,
    Always,
    ESSBelow,
    EveryK,
    Never,
    policy_from_threshold,
)

N = 8


def log_w_with_ess(*ess_values: int) -> torch.Tensor:
    """Groups ``(G, N)`` with ``k`` equal weights and ``N - k`` zero weights: ESS exactly ``k``."""
    log_w = torch.full((len(ess_values), N), -math.inf)
    for g, k in enumerate(ess_values):
        log_w[g, :k] = 0.3 * g  # the constant does not change the ESS
    return log_w


def test_ess_below_flags_exactly_the_groups_under_the_fraction():
    log_w = log_w_with_ess(8, 1, 4, 2, 6)
    mask = ESSBelow(0.4)(log_w, step=0, t=0.5)  # threshold 3.2
    assert mask.dtype == torch.bool
    assert mask.tolist() == [False, True, False, True, False]


def test_always_and_never_return_full_masks_of_the_group_shape():
    log_w = log_w_with_ess(8, 1, 4)
    assert Always()(log_w, 0, 1.0).tolist() == [True] * 3
    assert Never()(log_w, 0, 1.0).tolist() == [False] * 3
    assert Always()(torch.zeros(2, 3, N), 0, 1.0).shape == (2, 3)


def test_every_k_resamples_at_the_last_step_of_each_block():
    log_w = log_w_with_ess(8, 1)
    pattern = [bool(EveryK(3)(log_w, step, 0.5).all()) for step in range(9)]
    assert pattern == [False, False, True] * 3
    assert EveryK(3)(log_w, 2, 0.5).shape == (2,)
    assert all(EveryK(1)(log_w, step, 0.5).all() for step in range(4))


def test_active_window_applies_inner_only_between_t_lo_and_t_hi_inclusive():
    log_w = log_w_with_ess(8, 1)
    policy = ActiveWindow(0.2, 0.6, ESSBelow(0.5))
    active = {t: policy(log_w, 0, t).tolist() for t in (0.1, 0.2, 0.4, 0.6, 0.9)}
    assert active == {
        0.1: [False, False],
        0.2: [False, True],
        0.4: [False, True],
        0.6: [False, True],
        0.9: [False, False],
    }


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0.0, Never()), (1.0, Always()), (2.0, Always()), (0.5, ESSBelow(0.5))],
)
def test_policy_from_threshold(threshold, expected):
    assert policy_from_threshold(threshold) == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: ESSBelow(-0.1),
        lambda: ESSBelow(1.5),
        lambda: EveryK(0),
        lambda: EveryK(2.5),
        lambda: ActiveWindow(0.6, 0.2, Always()),
        lambda: ActiveWindow(0.0, 1.5, Always()),
        lambda: policy_from_threshold(-0.5),
    ],
)
def test_invalid_policy_arguments_raise(make):
    with pytest.raises(SMCDiffError):
        make()
