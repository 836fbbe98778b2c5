"""Fixtures of tests/mcmc."""

import pytest
import torch
from mcmc_gauss import Gauss, gaussian


@pytest.fixture(scope="session")
def gauss() -> Gauss:
    sd = torch.tensor([1.0, 2.0, 0.5])
    corr = torch.full((3, 3), 0.5).fill_diagonal_(1.0)
    return gaussian(torch.tensor([1.0, -2.0, 0.5]), sd[:, None] * corr * sd[None, :])
