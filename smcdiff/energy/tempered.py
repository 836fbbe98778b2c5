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
from typing import Any

import torch

from smcdiff.checks import check_shape, nan_or_posinf, nonfinite_rows
from smcdiff.engine.model import ParticleState, StepOutput
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc.adapt import robbins_monro
from smcdiff.mcmc.runner import get_kernel, resolve_target_accept
from smcdiff.target import Target

__all__ = ["TemperedSMC", "next_temperature"]

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


class TemperedSMC:
    """A :class:`~smcdiff.engine.FeynmanKacModel` for adaptive tempering (module docstring).

    ``target``: a :class:`~smcdiff.Target`; ``reference_std`` :math:`\\sigma_0` (float or ``(d,)``)
    and ``reference_mean`` :math:`\\mu` (``(d,)`` or ``None`` for 0) define :math:`\\rho`;
    ``kernel`` a name in :data:`smcdiff.mcmc.KERNELS` (``"hmc"``, ``"mala"``, ...) run
    ``n_moves`` times per step, ``step_size`` its initial step (default from :math:`\\sigma_0`
    and d), adapted toward ``target_accept`` (the kernel's default if ``None``);
    ``target_ess``: the CESS fraction :math:`\\rho^\\star`; ``max_steps``: a cap on the number
    of temperatures; ``cuda_graph`` (default: on for CUDA): capture the MCMC moves of a step as one
    CUDA graph, cached across runs (the target's ``log_prob`` must be capturable: no host syncs,
    no data-dependent shapes; if capture fails the moves run eagerly, with a warning).
    Counts: ``nfe`` = target evaluations, ``n_grad`` = gradient evaluations.
    """

    uses_weights = True

    def __init__(
        self,
        target: Target,
        *,
        reference_std: float | torch.Tensor = 1.0,
        reference_mean: torch.Tensor | None = None,
        kernel: str = "hmc",
        n_moves: int = 5,
        step_size: float | None = None,
        target_accept: float | None = None,
        target_ess: float = 0.5,
        max_steps: int = 1000,
        adapt_gain: float = 0.5,
        cuda_graph: bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        **kernel_kwargs: Any,
    ):
        if not 0.0 < target_ess < 1.0:
            raise SMCDiffError(f"tempered SMC: target_ess must be in (0, 1), got {target_ess}")
        if isinstance(n_moves, bool) or not isinstance(n_moves, int) or n_moves < 1:
            raise SMCDiffError(f"tempered SMC: n_moves must be an int >= 1, got {n_moves!r}")
        self.target, self.dim = target, int(target.dim)
        self.device, self.dtype = torch.device(device), dtype
        std = torch.as_tensor(reference_std, dtype=torch.float64)
        if (
            std.dim() > 1
            or (std.dim() == 1 and std.shape[0] != self.dim)
            or not bool((std > 0).all())
        ):
            raise SMCDiffError(
                f"tempered SMC: reference_std must be a positive float or a ({self.dim},) tensor"
            )
        self.ref_std = std.to(device=self.device, dtype=dtype)
        mean = torch.zeros(self.dim) if reference_mean is None else torch.as_tensor(reference_mean)
        check_shape("reference_mean", mean, (self.dim,), where="tempered SMC")
        self.ref_mean = mean.to(device=self.device, dtype=dtype)
        self._ref_log_norm = float(
            -torch.log(std).sum() * (1 if std.dim() == 1 else self.dim)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )
        self.factory = get_kernel(kernel)
        self.kernel_name = kernel if isinstance(kernel, str) else getattr(kernel, "__name__", "?")
        self.kernel_kwargs = kernel_kwargs
        self.target_accept = resolve_target_accept(self.factory, target_accept)
        self.n_moves, self.target_ess, self.gain = n_moves, float(target_ess), float(adapt_gain)
        on_cuda = self.device.type == "cuda"
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph) and on_cuda
        self._graph_seeded = False
        if step_size is None:  # a fraction of the reference scale, shrinking with dimension
            s0 = float(std.min())
            leap = self.kernel_name == "hmc"
            step_size = (
                (0.5 * s0 * self.dim**-0.25) if leap else (0.5 * s0 * s0 * self.dim ** (-1 / 3))
            )
        if not (math.isfinite(step_size) and step_size > 0):
            raise SMCDiffError(f"tempered SMC: step_size must be finite and > 0, got {step_size}")
        self.step_size0 = float(step_size)
        self.n_steps = int(max_steps)
        self.times = [0.0] * (self.n_steps + 1)  # no diffusion time; the trace has "temperature"

    # -- densities --
    def log_reference(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.ref_mean) / self.ref_std
        return -0.5 * (z * z).sum(-1) + self._ref_log_norm

    def _ell(self, x: torch.Tensor, where: str) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            lp = self.target.log_prob(x)
        check_shape("target log_prob", lp, (x.shape[0],), where=where)
        checks = {"particles": nonfinite_rows(x), "target log_prob": nan_or_posinf(lp)}
        return lp.double() - self.log_reference(x).double(), checks

    # -- FK model --
    def init(self, n: int, generator: torch.Generator) -> StepOutput:
        z = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=self.dtype)
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
        log_weights: torch.Tensor | None = None,
    ) -> StepOutput:
        if log_weights is None:
            raise SMCDiffError("TemperedSMC.step needs log_weights (run it with run_smc)")
        G, N = log_weights.shape
        where = f"tempered SMC step {k}"
        x, lam, log_h = state["x"], state["lam"], state["log_h"]
        nfe = n_grad = 0
        info: dict[str, torch.Tensor] = {}
        if k > 1:  # at k = 1 every particle is still an exact draw of the reference
            out = None
            if self.cuda_graph:
                try:
                    out = self._graphed_move(x, lam, log_h, G, generator)
                except Exception as err:  # a target that cannot be captured: run eagerly
                    warnings.warn(
                        f"tempered SMC: CUDA-graph capture of the MCMC moves failed ({err!r}); "
                        "running them eagerly (pass cuda_graph=False to skip the attempt)",
                        stacklevel=2,
                    )
                    self.cuda_graph = False
            if out is None:
                out = self._move(x, lam, log_h, G, generator)
            x, log_h, accept, moves_grad = out
            n_grad += moves_grad
            nfe += moves_grad
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

    def done(self, k: int, state: ParticleState) -> torch.Tensor:
        """True after the step whose moves ran at :math:`\\lambda = 1` in every group."""
        return (state["lam_start"] >= 1.0).all()

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
            seed = torch.randint(0, 2**62, (1,), generator=generator, device=x.device)
            g["gen"].manual_seed(int(seed))
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
