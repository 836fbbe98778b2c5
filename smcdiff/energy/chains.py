r"""MCMC baselines behind ``sample(method="mala" | "hmc" | "ula" | "underdamped" | "pcnl")``:
N independent chains from the reference, returned as an equally weighted :class:`SMCResult`."""

from __future__ import annotations

import math

import torch

from smcdiff.energy.options import MCMCOptions, RunSettings
from smcdiff.energy.reference import reference_tensors
from smcdiff.mcmc.registry import kernel_name
from smcdiff.mcmc.runner import ChainResult, run_chain
from smcdiff.result import SMCResult
from smcdiff.target import CountingTarget, target_event_shape

__all__ = ["chain_result", "run_mcmc"]


def run_mcmc(settings: RunSettings, options: MCMCOptions) -> SMCResult:
    r"""``G * N`` chains of ``options.kernel`` started from the reference
    :math:`\mathcal N(\mu, \sigma_0^2 I)` (:func:`~smcdiff.mcmc.run_chain`: warm-up adaptation,
    then ``n_steps`` steps); the particles ``(N, *event_shape)`` are the chains' last states.

    The result has the shape of every :class:`SMCResult`: equal ``log_weights`` :math:`-\log N`;
    ``log_z`` NaN (MCMC gives no normaliser); a one-step trace (``K = 0``) with ``ess`` ``(1,)``
    (``(1, R)`` for ``n_runs = R``) equal to N, the ESS of the equal weights (not an
    autocorrelation ESS of the chains), and ``accept_rate``, the mean acceptance probability over
    the chains and their post-warm-up steps. A run stopped by an exception or ``KeyboardInterrupt``
    (a target that is NaN where a chain proposed, Ctrl-C) re-raises it with ``err.partial``, this
    result for the chains so far (their last kept draws, or their current states in warm-up;
    ``info["chain_steps"]``: the steps they completed).
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
    try:
        chain = run_chain(
            o.kernel, counted.log_prob, x0, o.n_steps, step_size=step_size,
            target_accept=o.target_accept, n_warmup=o.n_warmup, generator=s.generator,
            progress=s.progress, nan_as_neg_inf=o.nan_as_neg_inf, check_every=s.check_every,
            **o.kernel_options,
        )  # fmt: skip
    except BaseException as err:  # the chains so far, as the SMCResult of a finished run
        if isinstance(getattr(err, "partial", None), ChainResult):
            failed = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            err.partial = chain_result(err.partial, s, o, counted, failed=failed)
        raise
    return chain_result(chain, s, o, counted)


def chain_result(
    chain: ChainResult,
    settings: RunSettings,
    options: MCMCOptions,
    counted: CountingTarget,
    failed: str | None = None,
) -> SMCResult:
    """The :class:`SMCResult` of :func:`run_mcmc` from its chains (see there); ``failed``: the
    error that stopped a partial run (then ``info`` also has ``chain_steps``, the last step the
    chains completed, warm-up included)."""
    s, o = settings, options
    G, N = s.n_groups, s.n_particles
    x = chain.samples[-1].reshape(G, N, *chain.samples.shape[2:])
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
    if failed is not None:
        info.update(completed_steps=0, chain_steps=chain.stopped_at, failed=failed)
    if not s.grouped:
        x, lw, lz, trace = x[0], lw[0], lz[0], {k: v[:, 0] for k, v in trace.items()}
    return SMCResult(x, lw, lz, trace, info)
