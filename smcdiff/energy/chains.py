r"""MCMC baselines behind ``sample(method="mala" | "hmc" | "ula" | "underdamped" | "pcnl")``:
N independent chains from the reference, returned as an equally weighted :class:`SMCResult`."""

from __future__ import annotations

import math

import torch

from smcdiff.energy.options import MCMCOptions, RunSettings
from smcdiff.energy.reference import reference_tensors
from smcdiff.mcmc.registry import kernel_name
from smcdiff.mcmc.runner import run_chain
from smcdiff.result import SMCResult
from smcdiff.target import CountingTarget, target_event_shape

__all__ = ["run_mcmc"]


def run_mcmc(settings: RunSettings, options: MCMCOptions) -> SMCResult:
    r"""``G * N`` chains of ``options.kernel`` started from the reference
    :math:`\mathcal N(\mu, \sigma_0^2 I)` (:func:`~smcdiff.mcmc.run_chain`: warm-up adaptation,
    then ``n_steps`` steps); the particles ``(N, *event_shape)`` are the chains' last states.

    The result has the shape of every :class:`SMCResult`: equal ``log_weights`` :math:`-\log N`;
    ``log_z`` NaN (MCMC gives no normaliser); a one-step trace (``K = 0``) with ``ess`` ``(1,)``
    (``(1, R)`` for ``n_runs = R``) equal to N, the ESS of the equal weights (not an
    autocorrelation ESS of the chains), and ``accept_rate``, the mean acceptance probability over
    the chains and their post-warm-up steps.
    """
    s, o = settings, options
    G, N = s.n_groups, s.n_particles
    shape = target_event_shape(s.target)
    std, mean = reference_tensors(s.reference_std, s.reference_mean, shape, "sample")
    std = std.to(device=s.device, dtype=s.dtype)
    z = torch.randn(G * N, *shape, generator=s.generator, device=s.device, dtype=s.dtype)
    x0 = z * std + mean.to(z)
    counted = CountingTarget(s.target)
    step_size = o.step_size if o.step_size is not None else 0.1 * float(std.min()) ** 2
    chain = run_chain(
        o.kernel, counted.log_prob, x0, o.n_steps, step_size=step_size,
        target_accept=o.target_accept, n_warmup=o.n_warmup, generator=s.generator,
        progress=s.progress, nan_as_neg_inf=o.nan_as_neg_inf, **o.kernel_options,
    )  # fmt: skip
    x = chain.samples[-1].reshape(G, N, *shape)
    lw = torch.full((G, N), -math.log(N), dtype=torch.float64, device=x.device)
    lz = torch.full((G,), math.nan, dtype=torch.float64)
    accept = chain.accept_rate.reshape(G, N).mean(-1).double().cpu()
    trace = {
        "ess": torch.full((1, G), float(N), dtype=torch.float64),
        "accept_rate": accept.reshape(1, G),
    }
    info = {
        "kernel": kernel_name(o.kernel),
        "n_steps": o.n_steps,
        "n_target_evals": counted.n_evals,
        "n_grad_evals": counted.n_grads,
        "n_nonfinite": chain.n_nonfinite,
        "n_diverged": chain.n_diverged,
    }
    if not s.grouped:
        x, lw, lz, trace = x[0], lw[0], lz[0], {k: v[:, 0] for k, v in trace.items()}
    return SMCResult(x, lw, lz, trace, info)
