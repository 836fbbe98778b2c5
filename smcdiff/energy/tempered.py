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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from smcdiff.checks import check_shape, nan_or_posinf, nonfinite_rows
from smcdiff.energy.options import RunSettings, TemperedOptions
from smcdiff.energy.reference import reference_tensors
from smcdiff.engine.model import FeynmanKacModel, ParticleState, StepOutput
from smcdiff.engine.progress import Progress
from smcdiff.engine.smc import run_smc
from smcdiff.engine.state import SMCState, StepInfo
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import robbins_monro
from smcdiff.mcmc.base import row_sum
from smcdiff.mcmc.registry import get_kernel, kernel_name, resolve_target_accept
from smcdiff.resampling.policies import policy_from_threshold
from smcdiff.result import SMCResult
from smcdiff.seeding import child_generator
from smcdiff.target import Target, target_event_shape

__all__ = ["TemperedSMC", "next_temperature", "run_tempered"]

_GRAPH_CACHE: dict[tuple, dict[str, Any]] = {}
_GRAPH_CACHE_SIZE = 8


def next_temperature(
    log_w: torch.Tensor,
    ell: torch.Tensor,
    lam: torch.Tensor,
    target_ess: float,
    n_grid: int = 48,
    n_refine: int = 4,
    min_step: float = 1e-12,
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
    """
    ell = ell.double()
    dead = ell == -math.inf
    hi = (1.0 - lam.double()).clamp(min=0.0)

    def frac(delta: torch.Tensor) -> torch.Tensor:  # delta (G, J) -> CESS / N (G, J)
        g = delta.unsqueeze(-1) * ell.unsqueeze(1)
        g = torch.where(dead.unsqueeze(1), ell.unsqueeze(1), g)
        lw = log_w.unsqueeze(1)
        return torch.exp(2.0 * torch.logsumexp(lw + g, -1) - torch.logsumexp(lw + 2.0 * g, -1))

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
    No diffusion time: ``times`` is ``None``; the trace records ``temperature`` ``(K+1, G)``.
    Counts: ``nfe`` = target evaluations, ``n_grad`` = gradient evaluations.
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
        self.factory = get_kernel(options.kernel)
        self.kernel_name = kernel_name(options.kernel)
        self.kernel_kwargs = dict(options.kernel_options)
        self.target_accept = resolve_target_accept(self.factory, options.target_accept)
        self.n_moves, self.target_ess = options.n_moves, options.target_ess
        self.gain = options.adapt_gain
        on_cuda = self.device.type == "cuda"
        self.cuda_graph = on_cuda if options.cuda_graph is None else options.cuda_graph and on_cuda
        self._graph_seeded = False
        step_size = options.step_size
        if step_size is None:  # a fraction of the reference scale, shrinking with dimension
            s0 = float(std.min())
            leap = self.kernel_name == "hmc"
            step_size = (
                (0.5 * s0 * self.dim**-0.25) if leap else (0.5 * s0 * s0 * self.dim ** (-1 / 3))
            )
        self.step_size0 = float(step_size)
        self.n_steps = options.max_steps

    # -- densities --
    def log_reference(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log\\rho(x)`, ``(N,)`` for ``x`` ``(N, *event_shape)``."""
        z = (x - self.ref_mean) / self.ref_std
        return -0.5 * row_sum(z * z) + self._ref_log_norm

    def _ell(self, x: torch.Tensor, where: str) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            lp = self.target.log_prob(x)
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
        if k > 1:  # at k = 1 every particle is still an exact draw of the reference
            x, log_h, accept, n_grad = self._moves(x, lam, log_h, G, generator)
            nfe += n_grad
            info["accept"] = accept
            info["step_size"] = log_h.reshape(G, N)[:, 0].exp()
        ell, checks = self._ell(x, where)
        nfe += x.shape[0]
        lam_g = lam.reshape(G, N)[:, 0]
        delta = next_temperature(log_weights, ell.reshape(G, N), lam_g, self.target_ess)
        new_lam = torch.where(delta >= 1.0 - lam_g, torch.ones_like(lam_g), lam_g + delta)
        d = delta.repeat_interleave(N)
        log_g = torch.where((d == 0) | (ell == -math.inf), torch.where(d == 0, 0.0, ell), d * ell)
        info["temperature"] = new_lam
        new: ParticleState = {
            "x": x,
            "ell": ell,
            "lam": new_lam.repeat_interleave(N),
            "log_h": log_h,
            "lam_start": lam,
        }
        return StepOutput(new, log_g, checks, nfe=nfe, n_grad=n_grad, info=info)

    def done(self, k: int, state: ParticleState | SMCState) -> torch.Tensor:
        """True after the step whose moves ran at :math:`\\lambda = 1` in every group.
        ``state``: the particles (or the engine's :class:`~smcdiff.engine.SMCState` holding
        them)."""
        particles = state.particles if isinstance(state, SMCState) else state
        return (particles["lam_start"] >= 1.0).all()

    def _moves(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The step's MCMC moves, as a replayed CUDA graph when enabled (falling back to eager
        moves, with a warning, if the target cannot be captured)."""
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """:meth:`_move` captured once as a CUDA graph (all ``n_moves`` kernel steps, their
        gradients and the step-size updates) and replayed: one launch instead of thousands.

        Graphs are cached across runs (like a jit cache) under the target, the settings and the
        shape. Each cache entry keeps alive everything its kernels read (the capturing model's
        tensors, the static buffers) and owns a CUDA generator registered with the graph, which
        is re-seeded from the run's generator at the run's first move: runs stay reproducible by
        seed. Replays draw fresh numbers because the registered generator's offset advances."""
        key = (
            id(self.target), self.kernel_name, self.n_moves, repr(sorted(self.kernel_kwargs.items())),
            self.target_accept, self.gain, tuple(self.ref_mean.tolist()),
            tuple(self.ref_std.reshape(-1).tolist()), tuple(x.shape), G, x.dtype, str(x.device),
        )  # fmt: skip
        g = _GRAPH_CACHE.get(key)
        if g is None:
            gen = torch.Generator(device=x.device)
            gen.manual_seed(0)
            static = {"x": x.clone(), "lam": lam.clone(), "log_h": log_h.clone()}
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):  # warm up (allocator, autograd) off the capture
                calls = self._move(static["x"], static["lam"], static["log_h"], G, gen)[3]
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                out = self._move(static["x"], static["lam"], static["log_h"], G, gen)
            g = {"graph": graph, "static": static, "out": out[:3], "calls": calls, "gen": gen}
            g["model"] = self  # the captured kernels read this model's tensors: keep them alive
            if len(_GRAPH_CACHE) >= _GRAPH_CACHE_SIZE:
                _GRAPH_CACHE.pop(next(iter(_GRAPH_CACHE)))
            _GRAPH_CACHE[key] = g
        if not self._graph_seeded:  # once per run: one number from the run's generator
            g["gen"].manual_seed(child_generator(generator, x.device).initial_seed())
            self._graph_seeded = True
        st = g["static"]
        st["x"].copy_(x)
        st["lam"].copy_(lam)
        st["log_h"].copy_(log_h)
        g["graph"].replay()
        xo, lho, acc = g["out"]
        return xo.clone(), lho.clone(), acc.clone(), g["calls"]

    def _move(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        log_h: torch.Tensor,
        G: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        lam_c = lam.to(x.dtype)
        calls = [0]

        def log_prob(y: torch.Tensor) -> torch.Tensor:
            calls[0] += y.shape[0]
            lp = self.target.log_prob(y)
            ref = self.log_reference(y)
            # lambda = 0: the reference alone (0 * -inf would be NaN)
            return ref + torch.where(lam_c > 0, lam_c * (lp - ref), torch.zeros_like(lp))

        kern = self.factory(log_prob, **self.kernel_kwargs)
        s = kern.init(x, generator)
        acc = []
        N = x.shape[0] // G
        for _ in range(self.n_moves):
            s, step_info = kern.step(s, log_h.exp(), generator)
            a = step_info.accept_prob.reshape(G, N).mean(-1)
            if self.target_accept is not None:
                log_h = robbins_monro(log_h, a.repeat_interleave(N), self.target_accept, self.gain)
            acc.append(a)
        return s.x.detach(), log_h, torch.stack(acc).mean(0), calls[0]


def run_tempered(settings: RunSettings, options: TemperedOptions) -> SMCResult:
    """Runner behind ``sample(method="tempered")``: :class:`TemperedSMC` run by the engine with
    resampling when the ESS falls below ``settings.ess_threshold * N``.

    The progress bar (``settings.progress`` ``None`` or ``True``) shows the temperature going
    from 0 to 1 (the lowest over groups; one value read back per step, which ``done`` reads
    anyway); a callable ``progress(k, info)`` is handed to the engine as is."""
    s = settings
    fk = TemperedSMC(
        s.target, options, reference_std=s.reference_std, reference_mean=s.reference_mean,
        device=s.device, dtype=s.dtype,
    )  # fmt: skip
    bar = None
    if s.progress is None or s.progress is True:
        bar = Progress(s.progress, 1.0, unit="", desc="tempered")
        if bar.bar is not None:  # the temperature, not a count of steps
            bar.bar.bar_format = "{desc}: temperature {n:.4f} |{bar}| [{elapsed}]"
            bar.bar.refresh()
    hook = s.progress if bar is None else _temperature_hook(bar)
    try:
        run = run_smc(
            fk, s.n_particles, n_groups=s.n_groups, resampling=s.resampling,
            policy=policy_from_threshold(s.ess_threshold), generator=s.generator,
            check_every=s.check_every, progress=hook,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    info = {
        "kernel": fk.kernel_name,
        "n_moves": fk.n_moves,
        "target_ess": fk.target_ess,
        "n_temperatures": run.completed_steps,
        "n_target_evals": int(run.trace["nfe"].sum()),
        "n_grad_evals": int(run.trace["n_grad"].sum()),
        "n_resampled": int(run.trace["resampled"].sum()),
    }
    return SMCResult.from_run(run, grouped=s.grouped, info=info)


def _temperature_hook(bar: Progress) -> Callable[[int, StepInfo], None]:
    """An engine progress hook moving ``bar`` to the step's lowest temperature."""

    def hook(k: int, info: StepInfo) -> None:
        bar.advance_to(float(info.extra["temperature"].min()))

    return hook
