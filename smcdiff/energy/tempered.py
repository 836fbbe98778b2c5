r"""Adaptive tempered SMC as a Feynman–Kac model.

Path from a Gaussian reference :math:`\rho = \mathcal N(\mu, \sigma_0^2 I)` to the target
:math:`\tilde\pi`:

.. math:: \pi_\lambda(x) \propto \rho(x)^{1-\lambda}\,\tilde\pi(x)^{\lambda}
    = \rho(x)\, e^{\lambda \ell(x)},\qquad \ell = \log\tilde\pi - \log\rho,\quad \lambda: 0 \to 1.

Step k (after the engine's resampling decision): MCMC moves invariant for :math:`\pi_{\lambda_{k-1}}`
(skipped at :math:`\lambda = 0`, where the particles are exact draws of :math:`\rho`), then the next
temperature :math:`\lambda_k = \lambda_{k-1} + \delta` with :math:`\delta` the root of

.. math:: \mathrm{CESS}(\delta) = \frac{(\sum_i W_i e^{\delta\ell_i})^2}{\sum_i W_i e^{2\delta\ell_i}}
    = \rho^\star N

(conditional ESS, Zhou, Johansen & Aston 2016; it equals the ESS of the new weights after a
resampling step), found by a batched grid search on the device for every group at once (no
host sync; :func:`next_temperature`), and
the potential :math:`\log G_k = \delta\,\ell(x)`. The engine's :math:`\hat Z` is then the
normaliser of :math:`\tilde\pi` (:math:`\rho` is normalised). Once every group reaches
:math:`\lambda = 1` the model runs one more step (resample, move at :math:`\lambda = 1`, no
reweighting), so the returned particles are moved at the target, then stops (``done``).

Step sizes adapt per group between moves by Robbins–Monro on the group's mean acceptance
(:mod:`smcdiff.mcmc.adapt`), a population statistic, so every move stays invariant.

**Bias of the adaptive run.** Temperatures and step sizes chosen from the particles themselves
make :math:`\hat Z` consistent but not unbiased: at small N its mean is low (on a 4-d
Gaussian, measured over thousands of runs: 2 % at N = 50, 7 % at N = 30 with two MALA moves and
``target_ess=0.3``, within 0.5 % at N = 200). A fixed ``schedule`` (with fixed step sizes) gives an
unbiased :math:`\hat Z`; ``unbiased=True`` (:func:`run_tempered`) runs twice: an adaptive pilot,
then a second, independent run on the pilot's temperatures and step sizes (Jasra et al. 2011).

**Failures are reported, not returned.** A run that ends (``max_steps``) below temperature 1
raises :class:`TemperingIncompleteError` (its ``partial`` holds the run; :func:`run_tempered`
checks, and :func:`check_reached_target` checks a run of your own); a target log-density
that is NaN (or +inf), or a gradient that is NaN, during the moves raises a
:class:`~smcdiff.errors.NonFiniteError` naming the quantity and the step (``nan_as_neg_inf``
treats NaN log-densities as zero density); unadjusted kernels (ULA, underdamped) that step to
where the target is not finite are counted per step (``diverged`` in the trace) and warned about.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from smcdiff.checks import check_shape, nan_or_posinf, nonfinite_rows
from smcdiff.energy.options import RunSettings, TemperedOptions
from smcdiff.energy.reference import reference_tensors
from smcdiff.energy.tempered_fused import run_fused
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.progress import Progress
from smcdiff.engine.result import SMCRun
from smcdiff.engine.smc import SMC, run_smc
from smcdiff.engine.state import StepInfo
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import robbins_monro
from smcdiff.mcmc.base import (
    MCMCState,
    chain_step_size,
    nan_to_neg_inf,
    row_sum,
    value_and_grad,
)
from smcdiff.mcmc.compiled import CompiledFunction, compile_transition, func_value_and_grad
from smcdiff.mcmc.hmc import HMC, hmc_transition
from smcdiff.mcmc.registry import get_kernel, kernel_name, resolve_target_accept
from smcdiff.mcmc.runner import DivergenceWarning
from smcdiff.resampling.policies import policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.seeding import child_generator
from smcdiff.target import Target, target_event_shape

__all__ = [
    "TemperedSMC",
    "TemperingIncompleteError",
    "check_reached_target",
    "next_temperature",
    "pilot_schedule",
    "reference_terms",
    "run_tempered",
    "tempered_hmc_move",
    "tempered_log_density",
    "tempered_pair",
    "tempered_reweight",
]

MOVE_CHECKS = ("target log_prob in MCMC move", "target gradient in MCMC move")
"""Names of the move checks (quantities of a :class:`~smcdiff.errors.NonFiniteError`)."""


class TemperingIncompleteError(SMCDiffError):
    """Tempered SMC stopped (``max_steps``) before temperature 1: its particles and ``log_z``
    belong to an intermediate tempered law, not to the target. ``temperature``: the final
    temperature per group (a list); ``partial``: the run as an :class:`~smcdiff.SMCResult`."""

    def __init__(self, message: str, *, temperature: list[float], partial: Any = None):
        super().__init__(message)
        self.temperature = temperature
        self.partial = partial


_GRAPH_CACHE: dict[tuple, dict[str, Any]] = {}
_GRAPH_CACHE_SIZE = 8
_COMPILED: dict[tuple, tuple[Any, CompiledFunction]] = {}  # key -> (target kept alive, move)


def reference_terms(
    y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, log_norm: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\log\rho(y)` ``(N,)`` and its gradient (shape of ``y`` ``(N, *event_shape)``)
    for :math:`\rho = N(\mu, \mathrm{diag}(\sigma^2))`: with :math:`z = (y - \mu)/\sigma`,
    :math:`-\tfrac12 \|z\|^2 +` ``log_norm`` and :math:`-z / \sigma`."""
    z = (y - mean) / std
    return -0.5 * row_sum(z * z) + log_norm, -z / std


def tempered_log_density(lp: torch.Tensor, ref: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\pi_\lambda = \log\rho + \lambda(\log\tilde\pi - \log\rho)` ``(N,)``
    from the target's ``lp``, the reference's ``ref`` and the temperatures ``lam`` (each
    ``(N,)``): at :math:`\lambda = 0` the reference alone (``0 * -inf`` would be NaN), and a
    NaN from ``-inf - (-inf)`` at a far-out point is a zero density (``-inf``), not a NaN of
    the target (a NaN ``lp`` stays NaN: the moves report it)."""
    out = ref + torch.where(lam > 0, lam * (lp - ref), torch.zeros_like(lp))
    return torch.where(torch.isnan(out) & ~torch.isnan(lp), -torch.inf, out)


def tempered_pair(
    y: torch.Tensor,
    lp: torch.Tensor,
    grad: torch.Tensor,
    lam: torch.Tensor,
    ref: tuple[torch.Tensor, torch.Tensor, float | torch.Tensor],
    nan_as_neg_inf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The tempered density's value :func:`tempered_log_density` and gradient
    :math:`\nabla\log\rho + \lambda(\nabla\log\tilde\pi - \nabla\log\rho)` (the
    reference's alone at :math:`\lambda = 0`) at ``y`` from the target's value ``lp`` ``(N,)``
    and gradient ``grad`` there; ``ref``: the reference's ``(mean, std, log_norm)``
    (:func:`reference_terms`); ``nan_as_neg_inf``: a NaN ``lp`` is a zero density."""
    if nan_as_neg_inf:
        lp = torch.where(torch.isnan(lp), -torch.inf, lp)
    ref_lp, g_ref = reference_terms(y, *ref)
    on = (lam > 0).reshape(-1, *([1] * (y.dim() - 1)))
    g = g_ref + torch.where(on, lam.reshape(on.shape) * (grad - g_ref), torch.zeros_like(grad))
    return tempered_log_density(lp, ref_lp, lam), g


def tempered_hmc_move(
    pair: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    state: MCMCState,
    p: torch.Tensor,
    u: torch.Tensor,
    log_h: torch.Tensor,
    inv_m: torch.Tensor,
    bad_lp: torch.Tensor,
    bad_grad: torch.Tensor,
    *,
    n_leapfrog: int,
    n_groups: int,
    target_accept: float | None,
    gain: float,
) -> tuple[MCMCState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One tempered HMC move with its bookkeeping, a pure function of tensors (compiled whole
    by :mod:`smcdiff.mcmc.compiled`): :func:`~smcdiff.mcmc.hmc.hmc_transition` at step sizes
    :math:`e^{\log h}` (``log_h`` ``(G*N,)``) on the draws ``p``, ``u``; the mean acceptance
    :math:`\bar a_g` ``(G,)`` of each of the ``n_groups`` groups; the Robbins–Monro update
    :math:`\log h \mathrel{+}= \eta(\bar a_g - a^\star)` (none if ``target_accept`` is
    ``None``); the NaN masks ``bad_lp``, ``bad_grad`` ``(G*N,)`` or-ed with this move's.
    Returns ``(state', log_h', accept (G,), bad_lp', bad_grad')``."""
    h = chain_step_size(log_h.exp(), state.x)
    new, info = hmc_transition(pair, state, p, u, h, inv_m, n_leapfrog)
    a = info.accept_prob.reshape(n_groups, -1).mean(-1)
    if target_accept is not None:
        per_chain = a.unsqueeze(-1).expand(n_groups, state.x.shape[0] // n_groups).reshape(-1)
        log_h = robbins_monro(log_h, per_chain, target_accept, gain)
    return new, log_h, a, bad_lp | info.nan_log_prob, bad_grad | info.nan_grad


def tempered_reweight(
    x: torch.Tensor,
    lp: torch.Tensor,
    log_w: torch.Tensor,
    lam: torch.Tensor,
    ref: tuple[torch.Tensor, torch.Tensor, float | torch.Tensor],
    target_ess: float,
) -> tuple[torch.Tensor, ...]:
    r"""The reweighting of an adaptive step, a pure function of tensors (compiled whole with
    the moves): :math:`\ell = \log\tilde\pi(x) - \log\rho(x)` ``(G*N,)`` float64 from the
    target's ``lp`` ``(G*N,)`` at ``x`` and the reference ``ref`` (:func:`reference_terms`),
    the increments :math:`\delta` (:func:`next_temperature` from ``log_w`` ``(G, N)`` and the
    per-particle temperatures ``lam`` ``(G*N,)``), the new temperatures (1 once reached), and
    :math:`\log G = \delta\,\ell` (0 if :math:`\delta = 0`, :math:`-\infty` where
    :math:`\ell` is). Returns ``(ell, new_lam (G,), new_lam (G*N,), log_g, bad_x, bad_lp)``,
    the last two the rows of ``x`` not finite and the NaN / +inf entries of ``lp``."""
    G, N = log_w.shape
    ell = lp.double() - reference_terms(x, *ref)[0].double()
    lam_g = lam.reshape(G, N)[:, 0].contiguous()
    delta = next_temperature(log_w, ell.reshape(G, N), lam_g, target_ess)
    new_lam = torch.where(delta >= 1.0 - lam_g, torch.ones_like(lam_g), lam_g + delta)
    d = delta.unsqueeze(-1).expand(G, N).reshape(-1)
    log_g = torch.where((d == 0) | (ell == -math.inf), torch.where(d == 0, 0.0, ell), d * ell)
    lam_n = new_lam.unsqueeze(-1).expand(G, N).contiguous().reshape(-1)  # a state tensor
    return ell, new_lam, lam_n, log_g, nonfinite_rows(x), nan_or_posinf(lp)


def next_temperature(
    log_w: torch.Tensor,
    ell: torch.Tensor,
    lam: torch.Tensor,
    target_ess: float,
    n_grid: int = 48,
    n_refine: int = 4,
    min_step: float = 1e-12,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Temperature increments :math:`\delta \in (0, 1-\lambda]` with
    :math:`\mathrm{CESS}(\delta)/N \ge` ``target_ess``, as large as the search resolves (or
    :math:`1-\lambda` if even that keeps the CESS above the target), per group.

    ``log_w``: normalised log-weights ``(G, N)``; ``ell``: :math:`\ell(x)` ``(G, N)`` (``-inf``
    allowed: weight zero); ``lam``: ``(G,)``. Returns ``(G,)`` float64.

    The CESS decreases in :math:`\delta`. Instead of a bisection (two reductions and a host-free
    branch per halving: ~400 kernel launches), all ``n_grid`` candidates of a pass are scored in
    one batched reduction ``(G, n_grid, N)``: a log-spaced pass over
    :math:`[\delta_{min}, 1-\lambda]` (``min_step`` relative), then ``n_refine`` linear passes
    inside the bracket found; the answer is the bracket's lower end (relative resolution
    :math:`\approx` ``n_grid`` :sup:`-n_refine`). If even :math:`\delta_{min}` falls below the
    target, :math:`\delta_{min}(1-\lambda)` is returned so the run still advances.

    ``reduce``: combines the two log-sums :math:`\log\sum_i W^i G^i`,
    :math:`\log\sum_i W^i (G^i)^2` ``(2, G, J)`` of this process's particles with the other
    processes' (distributed runs: an all-gather and a logsumexp); ``None``: one process.
    """
    ell = ell.double()
    dead = ell == -math.inf
    hi = (1.0 - lam.double()).clamp(min=0.0)

    def frac(delta: torch.Tensor) -> torch.Tensor:  # delta (G, J) -> CESS / N (G, J)
        g = delta.unsqueeze(-1) * ell.unsqueeze(1)
        g = torch.where(dead.unsqueeze(1), ell.unsqueeze(1), g)
        lw = log_w.double().unsqueeze(1)
        sums = torch.stack([torch.logsumexp(lw + g, -1), torch.logsumexp(lw + 2.0 * g, -1)])
        sums = sums if reduce is None else reduce(sums)
        return torch.exp(2.0 * sums[0] - sums[1])

    def bracket(cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ok = frac(cands) >= target_ess  # (G, J), True then False
        j = ok.sum(-1).clamp(min=1) - 1  # last candidate that keeps the ESS (or the first)
        nxt = (j + 1).clamp(max=cands.shape[-1] - 1)
        return cands.gather(-1, j.unsqueeze(-1))[:, 0], cands.gather(-1, nxt.unsqueeze(-1))[:, 0]

    u = torch.logspace(math.log10(min_step), 0.0, n_grid, dtype=torch.float64, device=hi.device)
    lo, up = bracket(hi.unsqueeze(-1) * u)
    steps = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64, device=hi.device)
    for _ in range(n_refine):
        lo, up = bracket(lo.unsqueeze(-1) + (up - lo).unsqueeze(-1) * steps)
    reach = frac(hi.unsqueeze(-1))[:, 0] >= target_ess
    return torch.where(reach, hi, lo)


class TemperedSMC(FeynmanKacModel):
    """A :class:`~smcdiff.engine.FeynmanKacModel` for adaptive tempering (module docstring).

    ``target``: a :class:`~smcdiff.Target` with particles ``(N, *event_shape)`` (``(N, d)`` for
    vectors); ``options``: a :class:`~smcdiff.energy.options.TemperedOptions` (kernel, moves per
    step, CESS fraction, step size and its adaptation, ``max_steps``, CUDA graphs, kernel
    options); ``reference_std`` :math:`\\sigma_0` (a float, or a tensor of the event shape or
    ``(d,)``) and ``reference_mean`` :math:`\\mu` (event shape or ``(d,)``; ``None`` for 0) define
    :math:`\\rho`. With ``cuda_graph`` (default: on for CUDA) the MCMC moves of a step run as one
    CUDA graph, cached across runs (the target's ``log_prob`` must be capturable: no host syncs,
    no data-dependent shapes; if capture fails the moves run eagerly, with a warning).
    A target with ``grad_log_prob(x) -> (log_prob (N,), grad)`` (analytic, same contract as
    :func:`smcdiff.target.grad_log_prob`) has it used for the moves' gradients instead of
    autograd. ``options.fused`` runs whole steps as CUDA graphs
    (:mod:`smcdiff.energy.tempered_fused`).
    No diffusion time: ``times`` is ``None``; the trace records ``temperature`` ``(K+1, G)``.
    Counts: ``nfe`` = target evaluations, ``n_grad`` = gradient evaluations.

    Fixed temperatures (no adaptation, an unbiased :math:`\\hat Z`): ``schedule`` ``(K,)`` or
    ``(K, G)`` per group, increasing to 1 (``options.schedule`` if not given); then
    ``n_steps = K + 1`` (the last step moves at 1) and ``max_steps`` is not used.
    ``step_sizes`` ``(K+2, G)``: fixed step sizes, row k for the moves of step k (rows 0, 1
    unused), switching adaptation off.
    """

    def __init__(
        self,
        target: Target,
        options: TemperedOptions | None = None,
        *,
        reference_std: float | torch.Tensor = 1.0,
        reference_mean: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        schedule: torch.Tensor | None = None,
        step_sizes: torch.Tensor | None = None,
    ):
        options = TemperedOptions() if options is None else options
        if not isinstance(options, TemperedOptions):
            raise SMCDiffError(
                f"tempered SMC: options must be a TemperedOptions, got {type(options).__name__}"
            )
        self.options = options
        self.target, self.dim = target, int(target.dim)
        self.event_shape = target_event_shape(target)
        self.device, self.dtype = torch.device(device), dtype
        where = "tempered SMC"
        std, mean = reference_tensors(reference_std, reference_mean, self.event_shape, where)
        self.ref_std = std.to(device=self.device, dtype=dtype)
        self.ref_mean = mean.to(device=self.device, dtype=dtype)
        self._ref_log_norm = float(
            -torch.log(std).sum() * (1 if std.dim() >= 1 else self.dim)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )
        # a device tensor made here, not inside a CUDA-graph capture (a host copy there fails)
        self._ref_log_norm_t = torch.tensor(self._ref_log_norm, dtype=dtype, device=self.device)
        lp = target.log_prob
        self.target_log_prob = nan_to_neg_inf(lp) if options.nan_as_neg_inf else lp
        self.factory = get_kernel(options.kernel)
        self.kernel_name = kernel_name(options.kernel)
        self.kernel_kwargs = dict(options.kernel_options)
        self.target_accept = resolve_target_accept(self.factory, options.target_accept)
        self.n_moves, self.target_ess = options.n_moves, options.target_ess
        self.gain = options.adapt_gain
        on_cuda = self.device.type == "cuda"
        self.cuda_graph = on_cuda if options.cuda_graph is None else options.cuda_graph and on_cuda
        self._graph_seeded = False
        self._graph_gen: torch.Generator | None = None  # the CUDA graph's, once seeded
        self._graph_resume: torch.Tensor | None = None  # its state from a checkpoint
        self._reports_divergence = False
        self.compile_moves = self._use_compile(on_cuda)
        self.compile_status = "off" if not self.compile_moves else "not called"
        step_size = options.step_size
        if step_size is None:  # a fraction of the reference scale, shrinking with dimension
            s0 = float(std.min())
            leap = self.kernel_name == "hmc"
            step_size = (
                (0.5 * s0 * self.dim**-0.25) if leap else (0.5 * s0 * s0 * self.dim ** (-1 / 3))
            )
        self.step_size0 = float(step_size)
        self.n_steps = options.max_steps
        self._fixed(schedule, step_sizes)

    def _use_compile(self, on_cuda: bool) -> bool:
        """Whether the HMC moves run compiled: ``compile=True``, or ``"auto"`` on CUDA with the
        HMC kernel and the Gaussian reference. Raises for ``compile=True`` with another kernel
        or a subclass's own ``log_reference``."""
        flag = self.options.compile
        if flag in (True, "static") and self.kernel_name != "hmc":
            raise SMCDiffError(
                f"tempered SMC: compile=True compiles HMC moves only, got kernel={self.kernel_name!r}"
                " (use kernel='hmc' or compile=False)"
            )
        self.compile_static = flag == "static"
        gaussian = type(self).log_reference is TemperedSMC.log_reference
        if flag in (True, "static") and not gaussian:  # the compiled code's reference is rho's
            raise SMCDiffError(
                f"tempered SMC: compile={flag!r} compiles the Gaussian reference's closed form, "
                f"but {type(self).__name__} has its own log_reference (use compile=False)"
            )
        return (self.kernel_name == "hmc" and gaussian
                and (flag is True or self.compile_static or (flag == "auto" and on_cuda)))  # fmt: skip

    def _fixed(self, schedule: torch.Tensor | None, step_sizes: torch.Tensor | None) -> None:
        """Store a fixed temperature ``schedule`` (``(K,)`` or ``(K, G)``, float64, checked:
        increasing in (0, 1], last row 1) and fixed ``step_sizes`` (``(K+2, G)``)."""
        if schedule is None and self.options.schedule is not None:
            schedule = torch.tensor(self.options.schedule, dtype=torch.float64)
        self.schedule = self.step_sizes = None
        if schedule is not None:
            sch = torch.as_tensor(schedule, dtype=torch.float64).to(self.device)
            full = torch.cat([torch.zeros_like(sch[:1]), sch])
            ok = sch.dim() in (1, 2) and sch.shape[0] >= 1 and bool((full.diff(dim=0) >= 0).all())
            if not (ok and bool((sch[-1] == 1.0).all())):
                raise SMCDiffError(
                    "tempered SMC: schedule must be non-decreasing temperatures in (0, 1] ending "
                    f"at 1, shape (K,) or (K, G); got {tuple(sch.shape)}"
                )
            self.schedule, self.n_steps = sch, sch.shape[0] + 1
        if step_sizes is not None:
            if self.schedule is None:
                raise SMCDiffError("tempered SMC: step_sizes need a schedule")
            self.step_sizes = torch.as_tensor(step_sizes, dtype=self.dtype).to(self.device)
            check_shape("step_sizes", self.step_sizes, (self.n_steps + 1, None), where="tempered")
            self.target_accept = None  # fixed kernels: no adaptation

    # -- densities --
    def log_reference(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log\\rho(x)`, ``(N,)`` for ``x`` ``(N, *event_shape)``."""
        return reference_terms(x, self.ref_mean, self.ref_std, self._ref_log_norm)[0]

    def _ell(self, x: torch.Tensor, where: str) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            lp = self.target_log_prob(x)
        check_shape("target log_prob", lp, (x.shape[0],), where=where)
        checks = {"particles": nonfinite_rows(x), "target log_prob": nan_or_posinf(lp)}
        return lp.double() - self.log_reference(x).double(), checks

    # -- FK model --
    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        shape = (n, *self.event_shape)
        z = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        x = self.ref_mean + self.ref_std * z
        ell, checks = self._ell(x, "tempered SMC init")
        zero = torch.zeros(n, dtype=torch.float64, device=self.device)
        log_h = torch.full((n,), math.log(self.step_size0), dtype=self.dtype, device=self.device)
        state: ParticleState = {"x": x, "ell": ell, "lam": zero, "log_h": log_h}
        return StepOutput(state, zero, checks, nfe=n, info={"temperature": zero[:1].clone()})

    def step(
        self,
        k: int,
        state: ParticleState,
        generator: torch.Generator,
        log_weights: torch.Tensor,
    ) -> StepOutput:
        """Moves at :math:`\\lambda_{k-1}` (from step 2 on), then the next temperature from the
        CESS of ``log_weights`` ``(G, N)`` and the potential :math:`\\delta\\,\\ell(x)`."""
        G, N = log_weights.shape
        where = f"tempered SMC step {k}"
        x, lam, log_h = state["x"], state["lam"], state["log_h"]
        nfe = n_grad = 0
        info: dict[str, torch.Tensor] = {}
        checks: dict[str, torch.Tensor] = {}
        if k > 1:  # at k = 1 every particle is still an exact draw of the reference
            if self.step_sizes is not None:
                log_h = self.step_sizes[k].log().repeat_interleave(N)
            x, log_h, accept, bad, n_grad = self._moves(x, lam, log_h, G, generator)
            nfe += n_grad
            info["accept"] = accept
            info["step_size"] = log_h.reshape(G, N)[:, 0].exp()
            checks = dict(zip(MOVE_CHECKS, bad[:2], strict=True))
            if self._reports_divergence:
                info["diverged"] = bad[2].reshape(G, N).sum(-1)
        nfe += x.shape[0]
        # adaptive: one function (compiled with the moves); a subclass choosing temperatures
        # its own way (its _next: the distributed global CESS) keeps the path below
        # (and a subclass with its own log_reference: the fused function's is the Gaussian's)
        fused = type(self).log_reference is TemperedSMC.log_reference
        if self.schedule is None and type(self)._next is TemperedSMC._next and fused:
            with torch.no_grad():
                lp = self.target_log_prob(x)
            check_shape("target log_prob", lp, (x.shape[0],), where=where)
            ell, new_lam, lam_n, log_g, bad_x, bad_lp = self._reweight()(x, lp, log_weights, lam)
            checks.update({"particles": bad_x, "target log_prob": bad_lp})
        else:
            ell, more = self._ell(x, where)
            checks.update(more)
            lam_g = lam.reshape(G, N)[:, 0]
            delta, new_lam = self._next(k, log_weights, ell.reshape(G, N), lam_g)
            d, lam_n = delta.repeat_interleave(N), new_lam.repeat_interleave(N)
            log_g = torch.where(
                (d == 0) | (ell == -math.inf), torch.where(d == 0, 0.0, ell), d * ell
            )
        info["temperature"] = new_lam
        new: ParticleState = {"x": x, "ell": ell, "lam": lam_n, "log_h": log_h, "lam_start": lam}
        return StepOutput(new, log_g, checks, nfe=nfe, n_grad=n_grad, info=info)

    def _next(
        self, k: int, log_weights: torch.Tensor, ell: torch.Tensor, lam: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, new temperature)``, each ``(G,)``: from the CESS (:func:`next_temperature`)
        or, with a fixed schedule, its row ``k - 1`` (1 after its end)."""
        if self.schedule is None:
            delta = next_temperature(log_weights, ell, lam, self.target_ess)
            return delta, torch.where(delta >= 1.0 - lam, torch.ones_like(lam), lam + delta)
        row = self.schedule[min(k, self.schedule.shape[0]) - 1]
        new = row.expand(lam.shape[0]).to(lam)
        return new - lam, new

    def _reweight(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """:func:`tempered_reweight` at this reference and target ESS: compiled with the moves
        (one function for every target, cached; eager, with a warning, if compilation fails),
        else eager; called as ``fn(x, lp, log_weights, lam)``."""
        ref = (self.ref_mean, self.ref_std, self._ref_log_norm)
        if not self.compile_moves:
            return partial(tempered_reweight, ref=ref, target_ess=self.target_ess)
        key = ("reweight", self.target_ess, self.compile_static)
        if key not in _COMPILED:
            fn = partial(tempered_reweight, target_ess=self.target_ess)
            weigh = CompiledFunction(fn, "tempered SMC", dynamic=not self.compile_static,
                                     what="the reweighting and temperature search")  # fmt: skip
            _COMPILED[key] = (None, weigh)
        weigh = _COMPILED[key][1]
        ref_t = (self.ref_mean, self.ref_std, self._ref_log_norm_t)

        def run(x, lp, log_w, lam):  # N symbolic: dim 0 of x, lp and lam, dim 1 of log_w
            dims = ((x, 0), (lp, 0), (lam, 0), (log_w, 1)) if not self.compile_static else ()
            for t, dim in dims:
                if t.shape[dim] > 1:  # sizes 0 and 1 are always specialised
                    torch._dynamo.mark_dynamic(t, dim)
            return weigh(x, lp, log_w, lam, ref_t)

        return run

    def done(self, k: int, state: ParticleState) -> torch.Tensor:
        """True after the step whose moves ran at :math:`\\lambda = 1` in every group."""
        return (state["lam_start"] >= 1.0).all()

    def next_is_last(self, state: ParticleState) -> torch.Tensor:
        """True if the step after ``state``'s will be the last (:meth:`done`): every group
        reached :math:`\\lambda = 1` (the fused loop queues no step after it)."""
        return (state["lam"] >= 1.0).all()

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the CUDA-graph switch and the graph generator's state (the
        temperatures and step sizes live in the particles)."""
        gen = self._graph_gen
        return {
            "cuda_graph": self.cuda_graph,
            "graph_seeded": self._graph_seeded,
            "graph_generator": None if gen is None else gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cuda_graph = state["cuda_graph"]
        self._graph_seeded = state["graph_seeded"]
        gen = state["graph_generator"]
        self._graph_resume = None if gen is None else gen.cpu()  # set_state takes a CPU tensor

    def _moves(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], int]:
        """The step's MCMC moves, as a replayed CUDA graph when enabled (falling back to eager
        moves, with a warning, if the target cannot be captured). Returns ``x``, ``log_h``, the
        mean acceptance ``(G,)``, the ``(G*N,)`` masks of :meth:`_move` and the target calls."""
        if self.cuda_graph:
            try:
                return self._graphed_move(x, lam, log_h, G, generator)
            except Exception as err:  # a target that cannot be captured: run eagerly
                warnings.warn(
                    f"tempered SMC: CUDA-graph capture of the MCMC moves failed ({err!r}); "
                    "running them eagerly (pass cuda_graph=False to skip the attempt)",
                    stacklevel=3,
                )
                self.cuda_graph = False
        return self._move(x, lam, log_h, G, generator)

    def _graphed_move(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], int]:
        """:meth:`_move` captured once as a CUDA graph (all ``n_moves`` kernel steps, their
        gradients and the step-size updates) and replayed: one launch instead of thousands.

        Graphs are cached across runs (like a jit cache) under the target, the settings and the
        shape. Each cache entry keeps alive everything its kernels read (the capturing model's
        tensors, the static buffers) and owns a CUDA generator registered with the graph, which
        is re-seeded from the run's generator at the run's first move: runs stay reproducible by
        seed. Replays draw fresh numbers because the registered generator's offset advances."""
        key = (
            id(self.target), self.kernel_name, self.n_moves, repr(sorted(self.kernel_kwargs.items())),
            self.target_accept, self.gain, tuple(self.ref_mean.reshape(-1).tolist()),
            tuple(self.ref_std.reshape(-1).tolist()), tuple(x.shape), G, x.dtype, str(x.device),
            self.compile_moves,
        )  # fmt: skip
        g = _GRAPH_CACHE.get(key)
        if g is None:
            gen = torch.Generator(device=x.device)
            gen.manual_seed(0)
            static = {"x": x.clone(), "lam": lam.clone(), "log_h": log_h.clone()}
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):  # warm up (allocator, autograd) off the capture
                calls = self._move(static["x"], static["lam"], static["log_h"], G, gen)[4]
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                out = self._move(static["x"], static["lam"], static["log_h"], G, gen)
            g = {"graph": graph, "static": static, "out": out[:4], "calls": calls, "gen": gen}
            g["divergence"] = self._reports_divergence
            g["model"] = self  # the captured kernels read this model's tensors: keep them alive
            if len(_GRAPH_CACHE) >= _GRAPH_CACHE_SIZE:
                _GRAPH_CACHE.pop(next(iter(_GRAPH_CACHE)))
            _GRAPH_CACHE[key] = g
        if not self._graph_seeded:  # once per run: one number from the run's generator
            g["gen"].manual_seed(child_generator(generator, x.device).initial_seed())
            self._graph_seeded = True
        elif self._graph_resume is not None:  # a resumed run: where the checkpoint left it
            g["gen"].set_state(self._graph_resume)
            self._graph_resume = None
        self._graph_gen = g["gen"]
        st = g["static"]
        st["x"].copy_(x)
        st["lam"].copy_(lam)
        st["log_h"].copy_(log_h)
        g["graph"].replay()
        xo, lho, acc, bad = g["out"]
        self._reports_divergence = g["divergence"]
        return xo.clone(), lho.clone(), acc.clone(), tuple(b.clone() for b in bad), g["calls"]

    def _move(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], int]:
        r"""``n_moves`` kernel steps invariant for :math:`\pi_\lambda`, adapting ``log_h``.
        The masks ``(G*N,)`` flag particles whose moves evaluated the target log-density to
        NaN / +inf, its gradient to NaN (at finite points), or, for unadjusted kernels, were
        held back as diverged; they stay on the device (the engine's checks read them)."""
        lam_c = lam.to(x.dtype)
        calls = [0]

        def log_prob(y: torch.Tensor) -> torch.Tensor:
            calls[0] += y.shape[0]
            return tempered_log_density(self.target_log_prob(y), self.log_reference(y), lam_c)

        if callable(getattr(self.target, "grad_log_prob", None)):  # used by value_and_grad
            log_prob.value_and_grad = self._analytic_pair(lam_c, calls)  # type: ignore[attr-defined]
        kern = self.factory(log_prob, **self.kernel_kwargs)
        if isinstance(kern, HMC):
            return self._hmc_moves(kern, x, lam_c, log_h, G, generator, calls)
        s = kern.init(x, generator)
        acc = []
        N = x.shape[0] // G
        bad = [torch.zeros(x.shape[0], dtype=torch.bool, device=x.device) for _ in range(3)]
        self._reports_divergence = False
        for _ in range(self.n_moves):
            s, step_info = kern.step(s, log_h.exp(), generator)
            a = step_info.accept_prob.reshape(G, N).mean(-1)
            if self.target_accept is not None:
                log_h = robbins_monro(log_h, a.repeat_interleave(N), self.target_accept, self.gain)
            acc.append(a)
            masks = [getattr(step_info, m, None) for m in ("nan_log_prob", "nan_grad", "diverged")]
            bad = [b if m is None else b | m for b, m in zip(bad, masks, strict=True)]
            self._reports_divergence = masks[2] is not None
        return s.x.detach(), log_h, torch.stack(acc).mean(0), tuple(bad), calls[0]

    def _hmc_moves(
        self,
        kern: HMC,
        x: torch.Tensor,
        lam_c: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
        calls: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], int]:
        """:meth:`_move` for HMC: each move one :func:`tempered_hmc_move` (the transition, the
        acceptance per group, the step-size adaptation and the masks) on random numbers drawn
        here (:meth:`HMC.draws <smcdiff.mcmc.hmc.HMC.draws>`), compiled
        (:mod:`smcdiff.mcmc.compiled`: the tempered density's parameters passed as tensors, one
        compiled function for every step and run, cached per target and settings) or eager:
        the same numbers either way. If compilation fails it warns once and runs the eager
        function on the same numbers. Counts the target calls as the eager path does."""
        static = dict(n_leapfrog=kern.n_leapfrog, n_groups=G, target_accept=self.target_accept,
                      gain=self.gain)  # fmt: skip
        eager_pair = partial(value_and_grad, kern.log_prob)

        def eager(state: MCMCState, *args: torch.Tensor) -> tuple:
            return tempered_hmc_move(eager_pair, state, *args[:-1], **static)

        params = (lam_c, self.ref_mean, self.ref_std, self._ref_log_norm_t)
        move = start = None
        if self.compile_moves:
            start, move = self._compiled_move(static)
            lp, g = start(x, *params, eager=lambda *a: value_and_grad(kern.log_prob, x),
                          batch=(x, lam_c))  # fmt: skip
            if start.status == "compiled":  # the eager path counts inside log_prob
                calls[0] += x.shape[0]
            s = MCMCState(x, lp, g)
        else:
            s = kern.init(x, generator)
        inv_m = kern.inv_mass_tensor(s.x)
        # two tensors, not one aliased twice: the compiled move's guards would otherwise see
        # aliased masks on the first move only, and compile it a second time
        bad_lp = torch.zeros(s.x.shape[0], dtype=torch.bool, device=s.x.device)
        bad_grad = torch.zeros_like(bad_lp)
        acc = []
        self._reports_divergence = False
        for _ in range(self.n_moves):
            p, u = kern.draws(s, generator)
            args = (s, p, u, log_h, inv_m, bad_lp, bad_grad, params)
            if move is None:
                out = eager(*args)
            else:
                batch = (s.x, s.log_prob, s.grad, p, u, log_h, lam_c, bad_lp, bad_grad)
                out = move(*args, eager=eager, batch=batch)
                eager_start = start.status.startswith("eager")
                self.compile_status = start.status if eager_start else move.status
                if move.status == "compiled":  # the eager path counts inside log_prob
                    calls[0] += kern.n_leapfrog * s.x.shape[0]
            s, log_h, a, bad_lp, bad_grad = out
            acc.append(a)
        none = torch.zeros_like(bad_lp)
        return s.x.detach(), log_h, torch.stack(acc).mean(0), (bad_lp, bad_grad, none), calls[0]

    def _compiled_move(self, static: dict[str, Any]) -> tuple[CompiledFunction, CompiledFunction]:
        """The compiled tempered density's ``pair(y, *params) -> (log_prob, grad)`` (a step's
        start) and :func:`tempered_hmc_move` of this target and settings (cached across runs):
        the target's analytic ``grad_log_prob`` when present, else ``torch.func`` gradients of
        its ``log_prob``, tempered by :func:`tempered_pair` / :func:`tempered_log_density`."""
        analytic = callable(getattr(self.target, "grad_log_prob", None))
        nan_inf = self.options.nan_as_neg_inf
        key = (id(self.target), analytic, nan_inf, self.compile_static, *sorted(static.items()))
        entry = _COMPILED.get(key)
        if entry is None:
            target, lp_fn = self.target, self.target_log_prob
            if analytic:

                def pair(y, lam, mean, std, log_norm):
                    lp, g = target.grad_log_prob(y)
                    return tempered_pair(y, lp, g, lam, (mean, std, log_norm), nan_inf)

            else:

                def density(y, lam, mean, std, log_norm):
                    ref = reference_terms(y, mean, std, log_norm)[0]
                    return tempered_log_density(lp_fn(y), ref, lam)

                pair = func_value_and_grad(density)
            move = compile_transition(
                tempered_hmc_move, pair, "tempered SMC", dynamic=not self.compile_static, **static
            )
            start = CompiledFunction(pair, "tempered SMC", dynamic=not self.compile_static,
                                     what="the tempered gradient")  # fmt: skip
            if len(_COMPILED) >= _GRAPH_CACHE_SIZE:
                _COMPILED.pop(next(iter(_COMPILED)))
            entry = _COMPILED[key] = (target, (start, move))
        return entry[1]

    def _analytic_pair(
        self, lam_c: torch.Tensor, calls: list[int]
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        r"""The tempered density's value and gradient from the target's analytic
        ``grad_log_prob(y) -> (log_prob (N,), grad (N, *event_shape))``:
        :math:`\log\rho + \lambda(\log\tilde\pi - \log\rho)` and
        :math:`\nabla\log\rho + \lambda(\nabla\log\tilde\pi - \nabla\log\rho)`, with the
        rules of the autograd path (:math:`\lambda = 0`: the reference alone; NaN as
        :math:`-\infty` under ``nan_as_neg_inf``). ``lam_c``: ``(N,)`` temperatures."""

        def pair(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls[0] += y.shape[0]
            lp, g = self.target.grad_log_prob(y)
            check_shape("target grad_log_prob value", lp, (y.shape[0],), where="tempered SMC")
            check_shape("target grad_log_prob gradient", g, tuple(y.shape), where="tempered SMC")
            ref = (self.ref_mean, self.ref_std, self._ref_log_norm)
            out, grad = tempered_pair(y, lp, g, lam_c, ref, self.options.nan_as_neg_inf)
            return out.detach(), grad.detach()

        return pair


def run_tempered(settings: RunSettings, options: TemperedOptions) -> SMCResult:
    r"""Runner behind ``sample(method="tempered")``: :class:`TemperedSMC` run by the engine with
    resampling when the ESS falls below ``settings.ess_threshold * N``.

    ``options.unbiased``: first an adaptive pilot run, then a second run (fresh random numbers
    from the same generator) on each group's pilot temperatures and step sizes; the result is
    the second run, whose :math:`\hat Z` is unbiased; ``info["adaptive_log_z"]`` holds the
    pilot's, and the counts add both runs. Raises :class:`TemperingIncompleteError` if a run
    ends below temperature 1; warns (:class:`~smcdiff.mcmc.DivergenceWarning`) if an unadjusted
    kernel's moves diverged."""
    s = settings
    extra: dict[str, Any] = {}
    schedule = step_sizes = None
    if options.unbiased:
        pilot, fk = _run_once(s, options, "tempered (pilot)")
        schedule, step_sizes = pilot_schedule(pilot, fk.step_size0)
        extra = {
            "adaptive_log_z": pilot.log_z if s.grouped else pilot.log_z[0],
            "pilot_target_evals": int(pilot.trace["nfe"].sum()),
            "pilot_grad_evals": int(pilot.trace["n_grad"].sum()),
        }
    run, fk = _run_once(s, options, "tempered", schedule, step_sizes)
    info = {
        "kernel": fk.kernel_name,
        "n_moves": fk.n_moves,
        "target_ess": fk.target_ess,
        "n_temperatures": run.completed_steps,
        "n_target_evals": int(run.trace["nfe"].sum()) + extra.pop("pilot_target_evals", 0),
        "n_grad_evals": int(run.trace["n_grad"].sum()) + extra.pop("pilot_grad_evals", 0),
        "n_resampled": int(run.trace["resampled"].sum()),
        "compile": fk.compile_status,
        **extra,
    }
    return SMCResult.from_run(run, grouped=s.grouped, info=info)


def pilot_schedule(run: SMCRun, initial_step_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """From an adaptive run: its temperatures ``(K, G)`` up to the first step where every group
    reached 1, and step sizes ``(K+2, G)``, row k for the moves of step k: the run's step size
    after its step-k adaptation (adapted to the same tempered law; ``initial_step_size`` where
    the run has none), the fixed schedule of an unbiased second run."""
    temps = run.trace["temperature"][1:].double()  # (K_run, G)
    K = int((temps >= 1.0).all(-1).nonzero()[0, 0]) + 1
    adapted = run.trace["step_size"].double()  # (K_run + 1, G), NaN at steps 0 and 1
    sizes = torch.full((K + 2, temps.shape[1]), initial_step_size, dtype=torch.float64)
    rows = min(K + 2, adapted.shape[0])
    sizes[2:rows] = adapted[2:rows]
    if rows < K + 2 and rows > 2:  # the run ended at 1 without a last move: keep its last size
        sizes[rows:] = adapted[rows - 1]
    return temps[:K], sizes


def _run_once(
    s: RunSettings,
    options: TemperedOptions,
    desc: str,
    schedule: torch.Tensor | None = None,
    step_sizes: torch.Tensor | None = None,
) -> tuple[SMCRun, TemperedSMC]:
    """One engine run of :class:`TemperedSMC` (with a temperature progress bar), checked: it
    must reach temperature 1, and diverged moves are warned about."""
    fk = TemperedSMC(
        s.target, options, reference_std=s.reference_std, reference_mean=s.reference_mean,
        device=s.device, dtype=s.dtype, schedule=schedule, step_sizes=step_sizes,
    )  # fmt: skip
    bar = None
    if s.progress is None or s.progress is True:
        bar = Progress(s.progress, 1.0, unit="", desc=desc)
        if bar.bar is not None:  # the temperature, not a count of steps
            bar.bar.bar_format = "{desc}: temperature {n:.4f} |{bar}| [{elapsed}]"
            bar.bar.refresh()
    hook = s.progress if bar is None else _temperature_hook(bar)
    policy = policy_from_threshold(s.ess_threshold)
    try:
        if _use_fused(fk, s):
            smc = SMC(fk, resampling=s.resampling, policy=policy)
            run = run_fused(
                smc, s.n_particles, s.n_groups, s.generator, check_every=s.check_every,
                progress=hook, chunk=options.fused_chunk, graph_key=_fused_key(fk, smc, s),
            )  # fmt: skip
        else:
            run = run_smc(
                fk, s.n_particles, n_groups=s.n_groups, resampling=s.resampling, policy=policy,
                generator=s.generator, check_every=s.check_every, progress=hook,
                checkpoint=s.checkpoint, start=s.start,
            )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    check_reached_target(run, fk, s.grouped)
    return run, fk


def _use_fused(fk: TemperedSMC, s: RunSettings) -> bool:
    """Whether the run goes through :func:`~smcdiff.energy.tempered_fused.run_fused`: asked
    for (``fused=True``; ``None``: CUDA with CUDA graphs on), adaptive (no fixed schedule or
    step sizes) and without checkpoints."""
    fused = fk.options.fused
    if fused is None:
        fused = fk.device.type == "cuda" and fk.cuda_graph
    plain = fk.schedule is None and fk.step_sizes is None
    return bool(fused) and plain and s.checkpoint is None and s.start is None


def _fused_key(fk: TemperedSMC, smc: SMC, s: RunSettings) -> tuple | None:
    """The cache key of the fused step's CUDA graph (``None``: no graph, eager masked steps):
    the moves are captured inside the step's graph, so their own graphs are switched off."""
    if fk.device.type != "cuda" or not fk.cuda_graph:
        return None
    fk.cuda_graph = False
    return (
        id(fk.target), repr(fk.options), tuple(fk.ref_mean.reshape(-1).tolist()),
        tuple(fk.ref_std.reshape(-1).tolist()), s.n_particles, s.n_groups, fk.dtype,
        str(fk.device), repr(smc.resampler), repr(smc.policy),
    )  # fmt: skip


def check_reached_target(run: SMCRun, fk: TemperedSMC, grouped: bool = True) -> None:
    """Raise :class:`TemperingIncompleteError` if a group of ``run`` ended below temperature 1
    (its ``partial``: the run as an :class:`~smcdiff.SMCResult`); warn
    (:class:`~smcdiff.mcmc.DivergenceWarning`) if an unadjusted kernel's moves diverged."""
    final = run.trace["temperature"][-1].reshape(-1)
    if bool((final < 1.0).any()):
        lams = [round(float(v), 6) for v in final]
        raise TemperingIncompleteError(
            f"tempered SMC stopped at max_steps={fk.n_steps} at temperature "
            f"{min(lams):.4g} < 1 (per run: {lams}): the particles and log_z are those of an "
            "intermediate tempered law, not of the target. Raise max_steps, lower target_ess "
            "(larger temperature steps) or use a reference closer to the target",
            temperature=lams,
            partial=SMCResult.from_run(run, grouped=grouped, info={"kernel": fk.kernel_name}),
        )
    if "diverged" in run.trace:
        n = int(run.trace["diverged"].nan_to_num(0.0).sum())
        if n:
            warnings.warn(
                f"tempered SMC: the {fk.kernel_name} moves diverged in {n} particle-steps (a particle's step "
                "went where the target or its gradient is not finite and was held back; "
                "trace['diverged'] per step): lower step_size or use an adjusted kernel",
                DivergenceWarning,
                stacklevel=4,
            )


def _temperature_hook(bar: Progress) -> Callable[[int, StepInfo], None]:
    """An engine progress hook moving ``bar`` to the step's lowest temperature."""

    def hook(k: int, info: StepInfo) -> None:
        bar.advance_to(float(info.extra["temperature"].min()))

    return hook
