r"""The one SMC loop. Every sampler in smcdiff is a :class:`FeynmanKacModel` run by :func:`run_smc`.

Per step k = 1..K, for each of G independent groups of N particles:

1. decide (a device mask, no sync) whether to resample, from the current weights;
2. resample where the mask is set (weights reset to uniform), else keep the ancestry;
3. move and reweight: :math:`\log w_k^i = \log W_{k-1}^i + \log G_k^i` with :math:`W` normalised;
4. :math:`\log\hat Z \mathrel{+}= \log\sum_i W_{k-1}^i G_k^i` — right whether or not step 2 resampled,
   because :math:`W_{k-1}` is the normalised weight *after* that choice (uniform if it resampled);
5. optionally apply an MCMC corrector that leaves the current target invariant.

Log-weights and log Z are kept in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff.checks import check_n_particles
from smcdiff.engine.guard import FiniteGuard
from smcdiff.engine.model import FeynmanKacModel, ParticleState
from smcdiff.errors import SMCDiffError
from smcdiff.resampling import get_scheme
from smcdiff.resampling.policies import Always
from smcdiff.weights import ess as ess_fn
from smcdiff.weights import log_normalize

__all__ = ["Corrector", "SMCRun", "run_smc"]

Corrector = Callable[[int, ParticleState, torch.Generator], tuple[ParticleState, dict]]
"""``corrector(k, state, generator) -> (state, info)``: an MCMC move invariant for the step-k
target, applied after reweighting. ``info`` maps names (e.g. ``"accept"``) to scalar tensors that
go into the trace."""


@dataclass
class SMCRun:
    """Raw engine output. Shapes: ``state`` entries ``(G*N, ...)``, ``log_weights`` ``(G, N)``
    (normalised, float64), ``log_z`` ``(G,)`` float64; ``trace`` maps names to CPU tensors with a
    leading step dimension ``K+1`` (see :func:`run_smc`)."""

    state: ParticleState
    log_weights: torch.Tensor
    log_z: torch.Tensor
    trace: dict[str, torch.Tensor]
    n_groups: int
    n_particles: int
    completed_steps: int


def run_smc(
    model: FeynmanKacModel,
    n_particles: int,
    *,
    n_groups: int = 1,
    resampling: str | Callable = "systematic",
    policy: Callable | None = None,
    corrector: Corrector | None = None,
    init_corrector: Corrector | None = None,
    generator: torch.Generator | None = None,
    check_every: int | None = None,
    progress: bool | Callable[[int], None] = False,
) -> SMCRun:
    r"""Run ``model`` with ``n_groups`` independent systems of ``n_particles`` particles.

    ``policy(log_w (G,N), k, t) -> (G,)`` bool decides when to resample (default: always);
    ``init_corrector(0, state, generator)``: MCMC moves invariant for the step-0 target
    :math:`M_0 G_0`, applied after step 0's reweighting and a resampling decision by ``policy``
    (e.g. pCNL or MALA moves that start the particles from a tilted prior);
    ``check_every`` steps between finiteness checks (each one host-device sync); default 1 on CPU
    and 32 elsewhere; a final check always runs.

    The trace holds, per step k = 0..K: ``t``; ``ess`` ``(K+1, G)`` after reweighting;
    ``log_z_increment`` ``(K+1, G)``; ``resampled`` ``(K+1, G)`` (decided at the start of step k);
    ``nfe`` and ``n_grad`` ``(K+1,)``; and any model or corrector info (NaN at steps without it).
    A model with ``done(k, state)`` may stop early: then K is the last step run.
    """
    check_n_particles(n_particles)
    if n_groups < 1:
        raise SMCDiffError(f"n_groups must be >= 1, got {n_groups}")
    scheme = get_scheme(resampling)
    policy = policy if policy is not None else Always()
    G, N, K = n_groups, n_particles, model.n_steps
    if len(model.times) != K + 1:
        raise SMCDiffError(
            f"model.times has {len(model.times)} entries, expected n_steps+1={K + 1}"
        )
    if generator is None:
        generator = torch.Generator()
        generator.seed()

    out = model.init(G * N, generator)
    state = out.state
    device = state["x"].device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 32
    guard = FiniteGuard(G * N, model.times, K)
    offsets = (torch.arange(G, device=device) * N).unsqueeze(1)
    identity = torch.arange(N, device=device).expand(G, N)

    log_g = out.log_potential.reshape(G, N).double()
    inc = torch.logsumexp(log_g, dim=-1) - math.log(N)
    log_z = inc
    guard.record_checks(0, out.checks, log_g, log_g)
    log_w = log_normalize(log_g)
    rec: dict[str, list] = {
        "ess": [ess_fn(log_w)],
        "log_z_increment": [inc],
        "resampled": [torch.zeros(G, dtype=torch.bool, device=device)],
        "nfe": [out.nfe],
        "n_grad": [out.n_grad],
    }
    corr: dict[str, dict[int, torch.Tensor]] = {}
    last_good = (state, log_w, log_z, 0)

    def resample(
        mask: torch.Tensor, state: ParticleState, log_w: torch.Tensor
    ) -> tuple[ParticleState, torch.Tensor]:
        """Resample the groups where ``mask`` is set; their weights become uniform."""
        ancestors = torch.where(mask.unsqueeze(1), scheme(log_w, generator=generator), identity)
        flat = (ancestors + offsets).reshape(-1)
        state = {name: v.index_select(0, flat) for name, v in state.items()}
        log_w = torch.where(mask.unsqueeze(1), torch.full_like(log_w, -math.log(N)), log_w)
        return state, log_w

    def partial() -> SMCRun:
        st, lw, lz, k = last_good
        return SMCRun(st, lw, lz, _finish_trace(rec, corr, model.times, k), G, N, k)

    if init_corrector is not None:
        mask = policy(log_w, 0, model.times[0])
        state, log_w = resample(mask, state, log_w)
        state, info = init_corrector(0, state, generator)
        _record_info(corr, 0, info)
        if callable(getattr(model, "refresh", None)):
            state, extra = model.refresh(0, state)
            rec["nfe"][0] += extra
        rec["resampled"][0] = mask
        last_good = (state, log_w, log_z, 0)

    ticker = _progress(progress, K)
    uses_weights = bool(getattr(model, "uses_weights", False))
    done = getattr(model, "done", None)
    _record_info(corr, 0, out.info)
    for k in range(1, K + 1):
        t_prev = model.times[k - 1]
        mask = policy(log_w, k, t_prev)  # (G,) bool on device
        state, log_w = resample(mask, state, log_w)

        if uses_weights:
            out = model.step(k, state, generator, log_weights=log_w)
        else:
            out = model.step(k, state, generator)
        log_g = out.log_potential.reshape(G, N).double()
        log_w = log_w + log_g
        inc = torch.logsumexp(log_w, dim=-1)
        log_z = log_z + inc
        guard.record_checks(k, out.checks, log_g, log_w)
        log_w = log_normalize(log_w)
        state = out.state
        nfe = out.nfe
        _record_info(corr, k, out.info)
        if corrector is not None:
            state, info = corrector(k, state, generator)
            _record_info(corr, k, info)
            if callable(getattr(model, "refresh", None)):
                state, extra = model.refresh(k, state)
                nfe += extra

        rec["ess"].append(ess_fn(log_w))
        rec["log_z_increment"].append(inc)
        rec["resampled"].append(mask)
        rec["nfe"].append(nfe)
        rec["n_grad"].append(out.n_grad)
        if k % check_every == 0 or k == K:
            guard.raise_if_bad(partial)
            last_good = (state, log_w, log_z, k)
        ticker(k)
        if done is not None and k < K and bool(done(k, state)):
            K = k
            break
    guard.raise_if_bad(partial)
    return SMCRun(state, log_w, log_z, _finish_trace(rec, corr, model.times, K), G, N, K)


def _record_info(store: dict[str, dict[int, torch.Tensor]], k: int, info: dict) -> None:
    for name, v in info.items():
        store.setdefault(name, {})[k] = v


def _finish_trace(
    rec: dict[str, list], corr: dict[str, dict[int, torch.Tensor]], times: list[float], k: int
) -> dict[str, torch.Tensor]:
    """Stack the per-step records (one device-to-host copy each); corrector info is NaN at the
    steps where no corrector ran."""
    trace: dict[str, torch.Tensor] = {"t": torch.tensor(times[: k + 1], dtype=torch.float64)}
    for name, vals in rec.items():
        vals = vals[: k + 1]
        if isinstance(vals[0], int):
            trace[name] = torch.tensor(vals, dtype=torch.long)
        else:
            trace[name] = torch.stack(vals).cpu()
    for name, by_step in corr.items():
        vals = [torch.as_tensor(v) for v in by_step.values()]
        shape = max((v.shape for v in vals), key=lambda s: math.prod(s))  # scalars broadcast
        col = torch.full((k + 1, *shape), float("nan"), dtype=torch.float64)
        for j, v in by_step.items():
            if j <= k:
                col[j] = torch.as_tensor(v).double().cpu()
        trace[name] = col
    return trace


def _progress(progress: bool | Callable[[int], None], total: int) -> Callable[[int], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda k: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="smc", unit="step", leave=False)

    def tick(k: int) -> None:
        bar.update(1)
        if k == total:
            bar.close()

    return tick
