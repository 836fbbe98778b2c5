"""PathCorrection's step weight where a density estimate has no mass (log p = -inf)."""

import math

import torch

from smcdiff.diffusion_fk import PathCorrection
from smcdiff.processes import VP
from smcdiff.samplers.kernels import gaussian_log_prob, noise_log_prob, reverse_step

F64 = torch.float64


def test_minus_inf_density_gives_weight_zero_and_stays_zero():
    proc, gen = VP(), torch.Generator().manual_seed(0)
    ker = reverse_step(proc, 0.6, 0.5)
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    z = torch.randn(4, 2, generator=gen, dtype=F64)
    x_new = ker.cx * x + ker.std * z
    logp = torch.tensor([-1.0, -math.inf, -2.0, -math.inf], dtype=F64)
    prev = torch.tensor([-0.5, -0.5, -math.inf, -math.inf], dtype=F64)
    w = PathCorrection().step(proc, ker, x, x_new, z, logp, prev)
    a, v = (float(c) for c in proc.transition(ker.s, ker.t))
    expected = (
        logp[0]
        - prev[0]
        + gaussian_log_prob(x, a * x_new, v, proc)[0]
        - noise_log_prob(z, ker.var, proc)[0]
    )
    assert torch.isclose(w[0], expected)
    # no mass now: weight 0; no mass before (weight already 0): still 0, never NaN or +inf
    assert w[1:].tolist() == [-math.inf] * 3
