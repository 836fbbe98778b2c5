r"""Pyro models as :class:`~smcdiff.target.Target`\ s: the posterior of the latent sites, in
unconstrained space, as a batched log density over particles.

A Pyro model ``model(*args, **kwargs)`` with continuous latent sites :math:`z_s` (support
:math:`S_s`) and observed sites :math:`y` defines the unnormalised posterior
:math:`p(z, y)`. Each latent site is mapped to :math:`\mathbb R^{d_s}` by
:math:`T_s = \mathrm{biject\_to}(S_s)` (identity, ``exp``, sigmoid, stick-breaking, ...), and the
sites are laid out one after the other in a flat vector :math:`u \in \mathbb R^d`. The target is

.. math:: \log\tilde\pi(u) = \sum_{\text{sites } s}\log p_s(\text{value}_s \mid \text{parents})
          + \sum_{\text{latent } s}\log\lvert\det J_{T_s}(u_s)\rvert,
          \qquad z_s = T_s(u_s),

whose normaliser is the evidence :math:`\int\tilde\pi(u)\,du = p(y)`. Site terms respect
``scale`` (``poutine.scale``, subsampling) and masks; ``pyro.deterministic`` sites are skipped,
``pyro.factor`` sites counted.

Vectorisation. ``log_prob(u)`` for ``u`` ``(N, d)`` runs the model **once**, inside an outer
``pyro.plate("_smcdiff_particles", N, dim=-(M + 1))`` where ``M`` is the model's batch depth (its
deepest plate, or the longest batch shape of a site's log-density, whichever is larger). A latent
site whose value has batch shape ``B`` (inside user plates) and event shape ``E`` gets the value
``(N, 1, ..., 1, *B, *E)`` (``M - len(B)`` ones), so it broadcasts against the plates, and every
site's log-density has ``M + 1`` batch dims with the particles leftmost. The bijection of a site is
built from the site's distribution *during* the run, so supports that depend on other latents
(``Uniform(0, theta)``) are right per particle. Models that are not plate-aware (``.item()``,
Python branches on values, hand-made shapes) are detected at construction by comparing the
vectorised log density with a one-particle-at-a-time loop on a few points; on a mismatch or an
exception the target falls back to that loop (same outputs, batched, but ~N times slower) and
warns once (:class:`PyroVectorizationWarning`).

Latent sites must be continuous: a discrete site (``has_enumerate_support`` or an integer support)
is rejected with an :class:`~smcdiff.errors.SMCDiffError` naming it; marginalise it out by hand.
The model structure must be static (the same latent sites, with the same shapes, in every run),
and plates must not subsample (a subsampled log density is random, not a target).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from smcdiff.checks import check_device, check_int, check_shape
from smcdiff.diagnostics.arviz import import_arviz, to_numpy
from smcdiff.errors import SMCDiffError
from smcdiff.resampling import get_scheme

__all__ = ["PyroTarget", "PyroVectorizationWarning", "from_pyro"]

_PARTICLE_PLATE = "_smcdiff_particles"


class PyroVectorizationWarning(UserWarning):
    """The model could not be vectorised over particles; ``log_prob`` loops over them."""


class _NotVectorizable(Exception):
    """Raised inside a vectorised run when a site's shapes do not fit the particle plate."""


@dataclass(frozen=True)
class SiteLayout:
    """Where latent site ``name`` lives: ``u[:, slice]`` reshaped to ``unconstrained_shape`` is
    mapped by ``biject_to(support)`` to a value of ``shape = batch_shape + event_shape``."""

    name: str
    slice: slice
    shape: torch.Size
    batch_shape: torch.Size
    event_shape: torch.Size
    unconstrained_shape: torch.Size
    support: Any


def _counts(site: dict) -> bool:
    """Sample sites whose log-density enters the joint (not plate indices, not deterministic)."""
    return (
        site["type"] == "sample"
        and not isinstance(site["fn"], _Subsample)
        and not site["infer"].get("_deterministic", False)
    )


def _is_latent(site: dict) -> bool:
    return _counts(site) and not site["is_observed"]


def _per_particle(t: torch.Tensor, n: int, pdim: int) -> torch.Tensor:
    """Sum ``t`` over every dim but the particle dim ``pdim`` (``< 0``: ``t`` has none): ``(n,)``
    float64."""
    t = t.to(torch.float64)
    if pdim < 0:
        return t.sum().expand(n)
    if pdim > 0 or t.shape[0] not in (1, n):
        raise _NotVectorizable(
            f"a log-density term has shape {tuple(t.shape)}, which does not put the {n} "
            f"particles on its dim {pdim - t.dim()}"
        )
    return t.reshape(t.shape[0], -1).sum(-1).expand(n)


class _FromUnconstrained(Messenger):
    r"""At each latent site in ``u``: :math:`x = T(u)` with :math:`T = \mathrm{biject\_to}` of the
    site's own support (so supports that depend on other sites are right), record
    :math:`\log\lvert\det J_T(u)\rvert` and condition the site on :math:`x`."""

    def __init__(self, u: dict[str, torch.Tensor]):
        super().__init__()
        self.u = u
        self.values: dict[str, torch.Tensor] = {}
        self.log_det: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"]
        if name not in self.u or msg["is_observed"]:
            return
        transform = biject_to(msg["fn"].support)
        u = self.u[name]
        x = transform(u)
        self.values[name] = x
        self.log_det[name] = transform.log_abs_det_jacobian(u, x)
        msg["value"] = x
        msg["is_observed"] = True


class PyroTarget:
    r"""The posterior of a Pyro model's latent sites as a :class:`~smcdiff.target.Target` on the
    unconstrained space :math:`\mathbb R^{d}` (see the module docstring for the math).

    ``log_prob(u)``: ``(N, dim) -> (N,)`` in ``u``'s dtype (summed in float64), differentiable.
    Its normaliser is the evidence :math:`p(y)`, so an SMC run's ``log_z`` estimates
    :math:`\log p(y)` when it starts from a normalised initial law.

    ``vectorize``: ``"auto"`` (check at construction, fall back to a loop with a warning),
    ``True`` (always one plated run; errors propagate) or ``False`` (always the loop).
    ``seed`` fixes the one traced prior run that finds the sites and the check points.

    Attributes: ``dim``, ``site_names`` (execution order), ``site_shapes`` (name -> constrained
    shape of one particle), ``layout`` (name -> :class:`SiteLayout`), ``max_plate_nesting``
    (``M``), ``vectorized`` (the mode in use), ``dtype``/``device`` (of the traced values).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        *,
        vectorize: bool | Literal["auto"] = "auto",
        seed: int = 0,
        n_check: int = 4,
    ):
        if not callable(model):
            raise SMCDiffError(f"from_pyro: model must be callable, got {type(model).__name__}")
        if not (isinstance(vectorize, bool) or vectorize == "auto"):
            raise SMCDiffError(
                f"from_pyro: vectorize must be True, False or 'auto', got {vectorize!r}"
            )
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs or {})
        self.name = getattr(model, "__name__", type(model).__name__)
        self._warned = False

        with poutine.block():
            trace = poutine.trace(poutine.seed(model, rng_seed=seed)).get_trace(
                *self.args, **self.kwargs
            )
            trace.compute_log_prob(site_filter=lambda _, site: _counts(site))
        self.layout, self.max_plate_nesting = self._build_layout(trace)
        self.site_names = tuple(self.layout)
        self.site_shapes = {k: s.shape for k, s in self.layout.items()}
        self.dim = sum(s.slice.stop - s.slice.start for s in self.layout.values())
        u0 = torch.cat(
            [
                biject_to(trace.nodes[k]["fn"].support).inv(trace.nodes[k]["value"]).reshape(-1)
                for k in self.site_names
            ]
        ).detach()
        self.dtype, self.device = u0.dtype, u0.device

        self.vectorized = vectorize is True
        self._auto = vectorize == "auto"
        if self._auto:
            self.vectorized = self._check_vectorization(u0, seed, n_check)

    # ------------------------------------------------------------------ construction
    def _build_layout(self, trace: Any) -> tuple[dict[str, SiteLayout], int]:
        depth = 0
        layout: dict[str, SiteLayout] = {}
        offset = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            if isinstance(fn, _Subsample):
                if fn.subsample_size is not None and fn.subsample_size < fn.size:
                    raise SMCDiffError(
                        f"from_pyro: plate {name!r} subsamples {fn.subsample_size} of {fn.size}; "
                        "a subsampled log density is random, not a target (use the full plate)"
                    )
                continue
            dims = [f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
            depth = max(depth, -min(dims, default=0))
            if not _counts(site):
                continue
            depth = max(depth, site["log_prob"].dim())
            if site["is_observed"]:
                continue
            support = fn.support
            if fn.has_enumerate_support or getattr(support, "is_discrete", False):
                raise SMCDiffError(
                    f"from_pyro: latent site {name!r} is discrete ({type(fn).__name__}, support "
                    f"{support}); only continuous latent sites can be a target: marginalise it "
                    "out or observe it"
                )
            try:
                transform = biject_to(support)
            except NotImplementedError as e:
                raise SMCDiffError(
                    f"from_pyro: latent site {name!r} has support {support}, which has no "
                    "bijection to unconstrained space (torch.distributions.biject_to)"
                ) from e
            value = site["value"]
            event_shape = fn.event_shape
            batch_shape = value.shape[: value.dim() - len(event_shape)]
            ushape = torch.Size(transform.inverse_shape(value.shape))
            depth = max(depth, len(batch_shape))
            size = math.prod(ushape)
            layout[name] = SiteLayout(
                name,
                slice(offset, offset + size),
                value.shape,
                batch_shape,
                event_shape,
                ushape,
                support,
            )
            offset += size
        if not layout:
            raise SMCDiffError(
                f"from_pyro: model {self.name!r} has no latent sample site; nothing to sample"
            )
        return layout, depth

    def _check_vectorization(self, u0: torch.Tensor, seed: int, n_check: int) -> bool:
        """Vectorised ``log_prob`` on ``u0`` and ``n_check - 1`` perturbed points equals the loop."""
        gen = torch.Generator(device=u0.device).manual_seed(seed)
        noise = torch.randn(
            (max(n_check, 2) - 1, self.dim), generator=gen, dtype=u0.dtype, device=u0.device
        )
        u = torch.cat([u0[None], u0 + noise])
        with torch.no_grad():
            try:
                vec = self._log_prob_vectorized(u)
            except Exception as e:  # any failure means: not plate-aware
                self._warn(f"{type(e).__name__}: {e}")
                return False
            loop = self._log_prob_loop(u)
        ok = torch.isclose(vec, loop, rtol=1e-4, atol=1e-4) | (vec.isnan() & loop.isnan())
        if not bool(ok.all()):
            self._warn(
                f"vectorised log_prob {vec.tolist()} differs from the per-particle "
                f"loop {loop.tolist()} at {u.shape[0]} check points"
            )
            return False
        return True

    def _warn(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"from_pyro: model {self.name!r} could not be vectorised over particles with an outer "
            f"pyro.plate ({reason}); falling back to a Python loop over particles: the values are "
            "right but about N times slower. Make the model plate-aware (no .item() or Python "
            "branches on sampled values, shapes by broadcasting against plates) or pass "
            "vectorize=False to choose the loop without this warning.",
            PyroVectorizationWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ model runs
    def _run(self, n: int | None, handler: Messenger | None, validate: bool = False) -> Any:
        """Trace one run of the model under ``handler``; ``n``: inside the particle plate of size
        ``n``; ``None``: a single unbatched run."""
        fn = self.model if handler is None else handler(self.model)
        with pyro.validation_enabled(validate), poutine.block():
            if n is None:
                return poutine.trace(fn).get_trace(*self.args, **self.kwargs)
            with pyro.plate(_PARTICLE_PLATE, n, dim=-(self.max_plate_nesting + 1)):
                return poutine.trace(fn).get_trace(*self.args, **self.kwargs)

    def _aligned(self, lay: SiteLayout, n: int | None, shape: torch.Size) -> tuple[int, ...]:
        """``(n, 1, ..., 1, *shape)`` with the particle dim at batch dim ``-(M + 1)``, or
        ``shape`` for a single run."""
        if n is None:
            return tuple(shape)
        return (n, *([1] * (self.max_plate_nesting - len(lay.batch_shape))), *shape)

    def _split(self, u: torch.Tensor, n: int | None) -> dict[str, torch.Tensor]:
        """Flat ``u`` ``(N, dim)`` (or ``(dim,)`` when ``n`` is None) -> aligned site tensors."""
        return {
            k: u[..., lay.slice].reshape(self._aligned(lay, n, lay.unconstrained_shape))
            for k, lay in self.layout.items()
        }

    def _check_sites(self, trace: Any) -> None:
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and _is_latent(site) and name not in self.layout:
                raise SMCDiffError(
                    f"PyroTarget {self.name!r}: latent site {name!r} appeared that the first "
                    "trace did not have; models with a dynamic structure are not supported"
                )
        missing = [k for k in self.layout if k not in trace.nodes]
        if missing:
            raise SMCDiffError(
                f"PyroTarget {self.name!r}: latent sites {missing} of the first trace were not "
                "sampled in this run; models with a dynamic structure are not supported"
            )

    def _joint(
        self, u: torch.Tensor, n: int | None, log_prob: bool = True
    ) -> tuple[torch.Tensor | None, dict]:
        """Log joint plus log-Jacobians ``(n,)`` (or ``()``; ``None`` unless ``log_prob``) and the
        constrained values, aligned."""
        sub = _FromUnconstrained(self._split(u, n))
        trace = self._run(n, sub)
        self._check_sites(trace)
        if not log_prob:
            return None, sub.values
        trace.compute_log_prob(site_filter=lambda _, site: _counts(site))
        total = torch.zeros((), dtype=torch.float64, device=u.device)
        for site in trace.nodes.values():
            if site["type"] == "sample" and _counts(site):
                lp = site["log_prob"]
                if n is None:
                    total = total + lp.to(torch.float64).sum()
                else:
                    total = total + _per_particle(lp, n, lp.dim() - self.max_plate_nesting - 1)
        for ld in sub.log_det.values():
            if n is None:
                total = total + ld.to(torch.float64).sum()
            else:
                total = total + _per_particle(ld, n, 0 if ld.dim() else -1)
        return total, sub.values

    def _log_prob_vectorized(self, u: torch.Tensor) -> torch.Tensor:
        return self._joint(u, u.shape[0])[0]

    def _log_prob_loop(self, u: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._joint(ui, None)[0] for ui in u])

    # ------------------------------------------------------------------ public API
    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        r"""Unnormalised log posterior in unconstrained space, ``(N, dim) -> (N,)`` in ``u``'s
        dtype: :math:`\log p(T(u), y) + \log\lvert\det J_T(u)\rvert`, normaliser :math:`p(y)`."""
        where = f"PyroTarget {self.name!r}.log_prob"
        check_shape("u", u, (None, self.dim), where=where)
        check_device("u", u, self.device, where=where)
        if self.vectorized:
            try:
                return self._log_prob_vectorized(u).to(u.dtype)
            except Exception as e:  # any failure means: not plate-aware
                if not self._auto:
                    raise
                self._warn(f"{type(e).__name__}: {e}")
                self.vectorized = False
        return self._log_prob_loop(u).to(u.dtype)

    def constrain(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site values ``{name: (N, *site_shape)}`` of unconstrained particles ``u`` ``(N, dim)``."""
        check_shape("u", u, (None, self.dim), where=f"PyroTarget {self.name!r}.constrain")
        n = u.shape[0]
        if self.vectorized:
            values = self._joint(u, n, log_prob=False)[1]
            return {k: values[k].reshape(n, *self.site_shapes[k]) for k in self.site_names}
        per = [self._joint(ui, None, log_prob=False)[1] for ui in u]
        return {k: torch.stack([p[k] for p in per]) for k in self.site_names}

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`constrain`: ``{name: (N, *site_shape)}`` -> ``u`` ``(N, dim)``."""
        where = f"PyroTarget {self.name!r}.unconstrain"
        missing = set(self.site_names) - set(values)
        if missing:
            raise SMCDiffError(f"{where}: values lack the sites {sorted(missing)}")
        n = values[self.site_names[0]].shape[0]
        for k in self.site_names:
            check_shape(f"values[{k!r}]", values[k], (n, *self.site_shapes[k]), where=where)
        if self.vectorized:
            data = {
                k: values[k].reshape(self._aligned(lay, n, lay.shape))
                for k, lay in self.layout.items()
            }
            return self._unconstrain_trace(self._run(n, poutine.condition(data=data)), n)
        rows = [
            self._unconstrain_trace(
                self._run(None, poutine.condition(data={k: values[k][i] for k in values})), None
            )
            for i in range(n)
        ]
        return torch.stack(rows)

    def _unconstrain_trace(self, trace: Any, n: int | None) -> torch.Tensor:
        """Flat unconstrained vector ``(n, dim)`` (or ``(dim,)``) of the latent values of a trace,
        each inverted by the bijection of its own (run-time) support."""
        self._check_sites(trace)
        parts = []
        for k, lay in self.layout.items():
            site = trace.nodes[k]
            value = site["value"]
            want = self._aligned(lay, n, lay.shape)
            if tuple(value.shape) != want:
                raise _NotVectorizable(
                    f"site {k!r} has value shape {tuple(value.shape)} inside the particle plate, "
                    f"expected {want}"
                )
            u = biject_to(site["fn"].support).inv(value)
            parts.append(u.reshape(-1) if n is None else u.reshape(n, -1))
        return torch.cat(parts, dim=-1)

    def init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, dim)`` from the prior, in unconstrained space (the pushforward of the
        prior by :math:`T^{-1}`): a normalised initial law for samplers. Pyro samples from the
        global torch RNG, so one seed is drawn from ``generator`` and the run is wrapped in
        ``poutine.seed`` (which restores the global CPU RNG state afterwards)."""
        n = check_int("n", n, 1, where=f"PyroTarget {self.name!r}.init")
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**32, (), generator=generator, device=device))
        with torch.no_grad():
            if self.vectorized:
                try:
                    return self._unconstrain_trace(
                        self._run(n, poutine.seed(rng_seed=seed)), n
                    ).detach()
                except _NotVectorizable as e:
                    self._warn(f"prior sampling: {e}")
            with poutine.seed(rng_seed=seed):
                rows = [self._unconstrain_trace(self._run(None, None), None) for _ in range(n)]
        return torch.stack(rows).detach()

    def prior_sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``n`` prior draws of the latent sites, ``{name: (n, *site_shape)}`` (constrained);
        ``constrain(init(n, g))`` with the same generator state."""
        with torch.no_grad():
            return self.constrain(self.init(n, generator))

    def posterior_dataset(
        self,
        particles: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        n_draws: int | None = None,
        seed: int | None = 0,
    ) -> xr.Dataset:
        """The ArviZ ``posterior`` group: each latent site under its own name, constrained,
        ``(chain, draw, {name}_dim_0, ...)``.

        ``particles``: unconstrained ``(N, dim)`` (one chain) or ``(R, N, dim)`` (R runs);
        ``log_weights`` ``(N,)`` / ``(R, N)``: then ``n_draws`` (default ``N``) draws per chain by
        systematic resampling seeded with ``seed``. Without weights the particles are the draws
        (resampled uniformly if ``n_draws`` is given).
        """
        where = f"PyroTarget {self.name!r}.posterior_dataset"
        grouped = particles.dim() == 3
        if particles.dim() not in (2, 3):
            raise SMCDiffError(
                f"{where}: particles has shape {tuple(particles.shape)}, expected (N, {self.dim}) "
                f"or (R, N, {self.dim})"
            )
        check_shape(
            "particles", particles, (None,) * (particles.dim() - 1) + (self.dim,), where=where
        )
        x = particles if grouped else particles[None]
        n_chain, n_part = x.shape[:2]
        if log_weights is not None or n_draws is not None:
            if log_weights is None:
                lw = torch.zeros(n_chain, n_part, dtype=torch.float64, device=x.device)
            else:
                check_shape("log_weights", log_weights, tuple(particles.shape[:-1]), where=where)
                lw = log_weights if grouped else log_weights[None]
            n = n_part if n_draws is None else n_draws
            gen = torch.Generator(device=lw.device)
            gen.manual_seed(seed) if seed is not None else gen.seed()
            anc = get_scheme("systematic")(lw, n, generator=gen)
            x = torch.gather(x, 1, anc.unsqueeze(-1).expand(-1, -1, self.dim))
        n = x.shape[1]
        with torch.no_grad():
            values = self.constrain(x.reshape(n_chain * n, self.dim).detach())
        data = {}
        for k, v in values.items():
            a = to_numpy(v).reshape(n_chain, n, *self.site_shapes[k])
            data[k] = (["chain", "draw", *(f"{k}_dim_{i}" for i in range(a.ndim - 2))], a)
        coords = {"chain": np.arange(n_chain), "draw": np.arange(n)}
        attrs = {"inference_library": "smcdiff", "pyro_model": self.name}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def to_inference_data(
        self,
        particles: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        n_draws: int | None = None,
        seed: int | None = 0,
    ) -> Any:
        """ArviZ object (``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x) whose ``posterior``
        group is :meth:`posterior_dataset` (same arguments)."""
        ds = self.posterior_dataset(particles, log_weights, n_draws, seed)
        az, major = import_arviz()
        if major == 0:
            return az.InferenceData(posterior=ds)
        tree = xr.DataTree.from_dict({"posterior": ds})
        tree.attrs.update(ds.attrs)
        return tree

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}{tuple(s)}" for k, s in self.site_shapes.items())
        mode = "vectorized" if self.vectorized else "loop"
        return f"PyroTarget({self.name!r}, dim={self.dim}, sites=[{sites}], {mode})"


def from_pyro(
    model: Callable[..., Any],
    *args: Any,
    vectorize: bool | Literal["auto"] = "auto",
    **kwargs: Any,
) -> PyroTarget:
    """The posterior of ``model(*args, **kwargs)`` as a :class:`PyroTarget` (a Target on the
    unconstrained space). ``vectorize``: see :class:`PyroTarget` (a model keyword argument
    named ``vectorize`` needs ``PyroTarget(model, args, kwargs)`` instead)."""
    return PyroTarget(model, args, kwargs, vectorize=vectorize)
