r"""A network that returns one scalar energy per sample, as a score model with a log-density
known up to a per-time constant: :class:`EnergyNetwork` (its docstring says what stays exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from smcdiff.checks import check_int, check_shape
from smcdiff.errors import SMCDiffError
from smcdiff.processes.parameterization import KINDS, from_score
from smcdiff.processes.schedules import NoiseProcess
from smcdiff.scores.base import model_time
from smcdiff.scores.network import NetworkScore, NFECounter

__all__ = ["EnergyNetwork"]

WHERE = "EnergyNetwork"


class EnergyNetwork:
    r"""An energy network as a :class:`~smcdiff.scores.base.DensityScoreModel` whose
    ``log_density`` is known up to a per-time constant.

    It reads ``net(x, net_time, **cond)`` ``(N,)`` as an energy
    :math:`E_\theta(x, t)` and defines

    .. math::
        \log\tilde p_t(x) = -E_\theta(x, t), \qquad s_t(x) = -\nabla_x E_\theta(x, t)
        \quad\text{(by autograd)},

    so :math:`\tilde p_t = e^{c(t)}\,q_t` with :math:`q_t` a normalised density and
    :math:`c(t) = \log\int e^{-E_\theta(x, t)}dx` a per-time constant nobody knows. (An energy
    diffusion model, Du et al. 2023 *Reduce, Reuse, Recycle*; Thornton et al. 2025 *Composition and
    Control with Distilled Energy Diffusion Models and SMC*.) What that constant changes:

    * **MCMC** (MALA, HMC, pCNL accept-reject; :func:`~smcdiff.mcmc.mcmc_corrector`): nothing —
      the Metropolis-Hastings ratio at one time cancels :math:`c(t)`; the kernels leave :math:`q_t`
      (times any tilt) exactly invariant.
    * **Path-corrected FK / TDS** (``path_correction=True``): the step weight :math:`\log\tilde
      p_s(x_s) - \log\tilde p_t(x_t) + \dots` gains :math:`c(s) - c(t)`, the same for every
      particle, so normalised weights, resampling, ESS and every weighted estimate are exactly those
      of a normalised model; the weighted particles target :math:`\pi(x) \propto e^{-E_\theta(x,
      t_{min})}\,e^{\phi(x)}` (exactly, whatever the net's errors: the intermediate :math:`\tilde
      p_t` only steer the variance). The constants telescope, so ``log_z`` estimates :math:`\log\int
      e^{-E_\theta(x, t_{min})}e^{\phi(x)}dx = \log\mathbb E_{q_{t_{min}}}[e^\phi] + c(t_{min})`:
      the evidence of the normalised model plus the unknown :math:`c(t_{min})` (with an
      ``end_log_prob`` the last term is replaced and ``log_z`` is that of the given end density,
      exactly). Differences of ``log_z`` between tilts of one net (model comparison, Bayes factors)
      cancel :math:`c` and stay exact.
    * **Products of experts with density ratios** (:func:`~smcdiff.product` of energy networks; its
      :math:`\log\rho_t = \sum_i w_i\log\tilde p_{i,t}` is unnormalised anyway): the same holds with
      :math:`c = \sum_i w_i c_i`; path-corrected SMC targets :math:`\prod_i\tilde
      p_{i,t_{min}}^{w_i}` exactly.
    * **FKC** (``method="fkc"``): its weights use scores only, except the start weight :math:`\sum_i
      w_i\log\tilde p_{i,t_{max}}`, so ``log_z`` shifts by :math:`\sum_i w_i c_i(t_{max})` and
      normalised weights do not change. DriftLite-ECG centres its potentials
      :math:`\log\tilde p_{i,t}` over the particles, so its control is unchanged too.

    Per-row gradients: the score is the gradient of the summed energies, so the net must treat rows
    independently (no batch norm in training mode). The outputs keep an autograd graph in ``x`` when
    grad mode is on and ``x`` requires grad (a guided proposal differentiating through
    :math:`\hat x_0(x)`, which needs second derivatives of the net; use a smooth activation).

    Args:
        net: an ``nn.Module`` or callable, ``net(x, net_time, **cond) -> (N,)`` (or ``(N, 1)``)
            energies for ``x`` ``(N, *event_shape)``; differentiable in ``x``.
        process: the :class:`NoiseProcess` the net was trained under.
        time_input: what time the net takes, as for :class:`~smcdiff.NetworkScore` (``"t"``,
            ``"sigma"``, ``"log_snr"``, ``"index"`` or a callable).
        max_batch: evaluate at most this many rows per call (``None``: all at once); tensor
            conditioning values with ``N`` rows are split with ``x``.
        event_shape: the shape of one sample; default ``net.event_shape``.
        counter: an :class:`~smcdiff.scores.network.NFECounter` to count into.
        **cond: conditioning keyword arguments passed to every call.

    ``energy(x, t)`` ``(N,)``; ``log_density = -energy``; ``score`` :math:`= -\nabla_x E`;
    ``score_and_log_density`` both from one forward and one backward pass (one NFE). ``t`` is a
    ``(N,)`` tensor or a float. Outputs are in the dtype of ``x`` (the net runs in its own dtype);
    ``adapter`` is the :class:`~smcdiff.NetworkScore` that maps times and counts evaluations.
    """

    scalar_time = False

    def __init__(
        self,
        net: Callable[..., Any],
        process: NoiseProcess,
        *,
        time_input: str | Callable[[torch.Tensor], torch.Tensor] = "t",
        max_batch: int | None = None,
        event_shape: Sequence[int] | int | None = None,
        counter: NFECounter | None = None,
        **cond: Any,
    ):
        self.adapter = NetworkScore(
            net, process, "score", time_input=time_input, event_shape=event_shape,
            counter=counter, **cond,
        )  # fmt: skip
        self.max_batch = check_int("max_batch", max_batch, 1, where=WHERE, allow_none=True)
        self.net, self.process = net, process
        self.event_shape: tuple[int, ...] = self.adapter.event_shape
        self.dim = self.adapter.dim
        self.prediction = "energy"

    @property
    def time_input(self) -> Any:
        return self.adapter.time_input

    @property
    def cond(self) -> dict[str, Any]:
        return self.adapter.cond

    @property
    def counter(self) -> NFECounter:
        return self.adapter.counter

    @property
    def nfe(self) -> int:
        """Network evaluations so far (one per :meth:`energy` or score call)."""
        return self.adapter.counter.evals

    @property
    def dtype(self) -> torch.dtype | None:
        return self.adapter.dtype

    @property
    def device(self) -> torch.device | None:
        return self.adapter.device

    def with_cond(self, **cond: Any) -> EnergyNetwork:
        """A copy on the same net and counter with conditioning ``{**self.cond, **cond}``."""
        return EnergyNetwork(
            self.net, self.process, time_input=self.time_input, max_batch=self.max_batch,
            event_shape=self.event_shape, counter=self.counter, **{**self.cond, **cond},
        )  # fmt: skip

    # ------------------------------------------------------------------------- evaluation
    def energy(
        self, x: torch.Tensor, t: float | torch.Tensor, *, keep_graph: bool | None = None
    ) -> torch.Tensor:
        r""":math:`E_\theta(x, t)`: ``(N, *event_shape)`` -> ``(N,)`` in the dtype of ``x``.
        ``keep_graph`` as for :meth:`energy_and_grad`."""
        keep = _keep(x, keep_graph)
        return torch.cat([e for e, _ in self._pieces(x, t, grad=False, keep=keep)])

    def energy_and_grad(
        self, x: torch.Tensor, t: float | torch.Tensor, *, keep_graph: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(E, ∇_x E)``: ``(N,)`` and ``(N, *event_shape)``, in the dtype of ``x``.

        ``keep_graph``: ``None`` keeps an autograd graph (through the gradient too:
        ``create_graph``) only when grad mode is on and ``x`` requires grad; ``True`` always
        keeps one (training: the loss on :math:`-\nabla_x E` needs it for the parameters);
        ``False`` returns detached tensors."""
        keep = _keep(x, keep_graph)
        pieces = list(self._pieces(x, t, grad=True, keep=keep))
        e = torch.cat([p[0] for p in pieces])
        g = torch.cat([p[1] for p in pieces])
        return e, g

    def _pieces(self, x: torch.Tensor, t: float | torch.Tensor, *, grad: bool, keep: bool):
        """``(energy, grad or None)`` per chunk of at most ``max_batch`` rows."""
        check_shape("x", x, (None, *self.event_shape), where=WHERE)
        tt = model_time(self, t, x)
        n = x.shape[0]
        step = n if self.max_batch is None else min(self.max_batch, n)
        cond = self.cond
        for i in range(0, n, step):
            sl = slice(i, i + step)
            c = {k: v[sl] if _rows(v, n) else v for k, v in cond.items()}
            yield self._chunk(x[sl], tt[sl], c, grad, keep)
        self.counter.evals += 1
        self.counter.rows += n

    def _chunk(
        self, x: torch.Tensor, t: torch.Tensor, cond: dict, grad: bool, keep: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = self.dtype or x.dtype
        with torch.enable_grad() if (grad or keep) else torch.no_grad():
            xr = x if (keep and x.requires_grad) or not grad else x.detach().requires_grad_(True)
            e = self.net(xr.to(dtype), self.adapter.net_time(t.to(dtype)), **cond)
            self.counter.calls += 1
            e = _as_energies(e, x.shape[0])
            g = torch.autograd.grad(e.sum(), xr, create_graph=keep)[0] if grad else None
        if not keep:
            e, g = e.detach(), None if g is None else g.detach()
        return e.to(x.dtype), None if g is None else g.to(x.dtype)

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log\tilde p_t(x) = -E_\theta(x, t)` ``(N,)``: :math:`\log p_t` up to a
        per-time constant :math:`c(t)` (module docstring)."""
        return -self.energy(x, t)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`s_t(x) = -\nabla_x E_\theta(x, t)`: ``(N, *event_shape)`` -> same shape."""
        return -self.energy_and_grad(x, t)[1]

    def score_and_log_density(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score, log_density)`` from one forward and one backward pass."""
        e, g = self.energy_and_grad(x, t)
        return -g, -e

    def predict_as(self, kind: str, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The score converted to parameterisation ``kind`` (``"eps"``, ``"x0"``, ...)."""
        if kind not in KINDS:
            raise SMCDiffError(f"{WHERE}.predict_as: kind must be one of {KINDS}, got {kind!r}")
        tt = model_time(self, t, x)
        return from_score(kind, self.score(x, tt), x, tt, self.process)

    def __repr__(self) -> str:
        ti = self.time_input if isinstance(self.time_input, str) else "<callable>"
        return (
            f"EnergyNetwork({type(self.net).__name__}, {self.process!r}, time_input={ti!r}, "
            f"event_shape={self.event_shape})"
        )


def _keep(x: torch.Tensor, keep_graph: bool | None) -> bool:
    if keep_graph is None:
        return torch.is_grad_enabled() and x.requires_grad
    return bool(keep_graph)


def _rows(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def _as_energies(e: Any, n: int) -> torch.Tensor:
    """The net's output as ``(n,)`` energies; ``(n, 1)`` is accepted."""
    if isinstance(e, torch.Tensor) and e.shape in ((n,), (n, 1)):
        return e.reshape(n)
    got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
    raise SMCDiffError(
        f"{WHERE}: the net returned {got} for {n} samples; an energy network returns one "
        f"scalar energy per sample, shape ({n},) or ({n}, 1)"
    )
