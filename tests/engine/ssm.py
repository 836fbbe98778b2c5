"""A linear-Gaussian state-space model, where the Kalman filter gives the exact answers."""

import math

import torch

from smcdiff.checks import nonfinite_rows
from smcdiff.engine import FeynmanKacModel, StepOutput

RHO, Q, R = 0.9, 0.5, 1.0
Y = [0.4, 1.3, 0.8, -0.5, 0.2, 1.9, 1.1, 0.0, -0.7, 0.3, 0.9]


class BootstrapSSM(FeynmanKacModel):
    """x_0 ~ N(0,1), x_k = RHO x_{k-1} + N(0,Q), G_k = N(y_k; x_k, R)."""

    def __init__(self, y=Y):
        self.y = y
        self.n_steps = len(y) - 1
        self.times = [float(k) for k in range(len(y))]

    def _log_g(self, x, k):
        return -0.5 * (self.y[k] - x[:, 0].double()) ** 2 / R - 0.5 * math.log(2 * math.pi * R)

    def init(self, n, generator):
        x = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        return StepOutput({"x": x}, self._log_g(x, 0), {"particles": nonfinite_rows(x)}, nfe=1)

    def step(self, k, state, generator, log_weights):
        x = RHO * state["x"] + math.sqrt(Q) * torch.randn(
            state["x"].shape, generator=generator, dtype=torch.float64
        )
        return StepOutput({"x": x}, self._log_g(x, k), {"particles": nonfinite_rows(x)}, nfe=1)


def kalman(y=Y):
    """Exact log-likelihood and the filtering means / variances."""
    m, P, ll, means, vars_ = 0.0, 1.0, 0.0, [], []
    for k, yk in enumerate(y):
        if k > 0:
            m, P = RHO * m, RHO**2 * P + Q
        S = P + R
        ll += -0.5 * (yk - m) ** 2 / S - 0.5 * math.log(2 * math.pi * S)
        K = P / S
        m, P = m + K * (yk - m), (1 - K) * P
        means.append(m)
        vars_.append(P)
    return ll, means, vars_
