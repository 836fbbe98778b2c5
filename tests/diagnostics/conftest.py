"""Synthetic SMCResult objects for the diagnostics tests (no sampler involved)."""

import math

import pytest
import torch

from smcdiff.result import SMCResult
from smcdiff.weights import ess, log_normalize

K = 10  # steps after the initial one: the trace has K + 1 rows
RESAMPLED_AT = (3, 7)  # steps k whose start resampled (triggered by the weights of step k - 1)


def synthetic_result(
    n: int = 400, d: int = 2, runs: int | None = None, tilt: float = 0.5, seed: int = 0
) -> SMCResult:
    """Particles x ~ N(0, I_d) with log-weights ``tilt * x[..., 0]`` (normalised), so the target
    is N(tilt e_0, I) and the weighted mean of coordinate 0 is about ``tilt``."""
    g = torch.Generator().manual_seed(seed)
    batch = (n,) if runs is None else (runs, n)
    x = torch.randn(*batch, d, generator=g)
    lw = log_normalize(tilt * x[..., 0].double())
    per_step = (K + 1,) if runs is None else (K + 1, runs)
    ess_trace = torch.linspace(1.0, 0.3, K + 1, dtype=torch.float64).reshape(
        -1, *[1] * (len(per_step) - 1)
    )
    ess_trace = (ess_trace * n).expand(per_step).clone()
    ess_trace[-1] = ess(lw)
    resampled = torch.zeros(per_step, dtype=torch.bool)
    resampled[list(RESAMPLED_AT)] = True
    inc = torch.randn(per_step, generator=g, dtype=torch.float64) * 0.1
    trace = {
        "t": torch.linspace(1.0, 0.02, K + 1, dtype=torch.float64),
        "ess": ess_trace,
        "log_z_increment": inc,
        "resampled": resampled,
        "nfe": torch.full((K + 1,), n * (runs or 1), dtype=torch.long),
        "n_grad": torch.zeros(K + 1, dtype=torch.long),
        "accept": torch.full((K + 1,), math.nan, dtype=torch.float64),
    }
    info = {
        "method": "fk",
        "seed": seed,
        "n_steps": K,
        "path_correction": True,
        "beta": None,
        "ess_threshold": 0.5,
        "nfe": int(trace["nfe"].sum()),
        "wall_time_s": 0.25,
    }
    return SMCResult(x, lw, inc.sum(0), trace, info)


@pytest.fixture
def make_result():
    return synthetic_result
