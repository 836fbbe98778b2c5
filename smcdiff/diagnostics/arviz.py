r"""Export an :class:`~smcdiff.result.SMCResult` to ArviZ.

The groups are built as plain :class:`xarray.Dataset` objects (the same for every ArviZ version);
only the container differs, and that choice lives in :func:`_container` (with
:func:`import_arviz`):

- ArviZ 0.x: an ``arviz.InferenceData``; the two smcdiff groups are attached with
  ``InferenceData.add_groups``, which warns about groups outside the ArviZ schema unless told not
  to (``warn_on_custom_groups=False``, a flag since 0.21; older versions always warn, and that
  one warning is filtered by its message);
- ArviZ 1.x (arviz-base): an ``xarray.DataTree`` with the same groups, which is what
  ``arviz_base.from_dict`` returns there.

Layout (``R`` runs, 1 for a single run; ``N`` particles; event shape ``(d,)`` or ``(d0, d1, ...)``):

- ``posterior``: ``x`` ``(chain=R, draw=n, x_dim_0=d, ...)``, an equal-weight resample of the
  particles, so every ArviZ summary and plot reads it as draws from the weighted target. ArviZ
  computes its ESS from these draws and has no notion of weights, so ``n`` is the number of draws
  the run can support: by default :func:`honest_draws`, the minimum ESS over the run's steps and
  runs (rounded, at least 1) -- a run whose ESS fell to 2 mid-run gives 2 draws, not N draws
  that ``az.summary`` would count as N independent ones. ``n_draws=N`` restores the old layout;
- ``smc_particles``: the raw weighted system, ``x`` ``(chain, particle, x_dim_0, ...)``,
  ``log_weights`` ``(chain, particle)`` (normalised, float64) and ``log_z`` ``(chain,)``;
- ``smc_trace``: every trace entry over ``step = 0..K`` with ``t`` as a coordinate on ``step``;
  per-run entries get ``(chain, step)``;
- ``smc_diagnostics``: the per-step degeneracy diagnostics of
  :func:`~smcdiff.diagnostics.degeneracy.degeneracy_report`, ``(chain, step)``: ``ess``,
  ``distinct_ancestors`` and ``pareto_k`` (those the run collected), with attributes
  ``min_ess``, ``final_ess``, ``degenerate`` (0/1) and ``problems`` (the warning's sentences);
- ``attrs`` (on every group; on the root too for 1.x): the scalars of ``result.info``, ``log_z``
  (a float, or a list of ``R`` floats), ``n_particles``, ``n_runs`` and the creation stamp, all
  ``str`` / ``int`` / ``float`` (or lists of numbers), so the object writes to netCDF and JSON.
"""

from __future__ import annotations

import inspect
import warnings
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from smcdiff.checks import check_int

if TYPE_CHECKING:
    from smcdiff.result import SMCResult

__all__ = ["honest_draws", "import_arviz", "to_inference_data", "to_numpy"]

_SMC_GROUPS = ("smc_particles", "smc_trace", "smc_diagnostics")


def import_arviz() -> tuple[ModuleType, int]:
    """Import ArviZ and return ``(module, major_version)``.

    ArviZ 0.2x announces its 1.x refactor with a ``FutureWarning`` on import; smcdiff handles both
    major versions here, so that notice is silenced (only that one).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
        )
        import arviz

    return arviz, int(arviz.__version__.split(".")[0])


def to_inference_data(
    result: SMCResult,
    seed: int | None = 0,
    posterior: xr.Dataset | None = None,
    n_draws: int | None = None,
) -> Any:
    """Convert ``result`` to an ArviZ object (``InferenceData`` on 0.x, ``DataTree`` on 1.x).

    ``seed`` drives the systematic resample that fills ``posterior`` (``None``: fresh entropy)
    with ``n_draws`` draws per run (default :func:`honest_draws`). See the module docstring for
    groups, dimensions and attributes.
    """
    from smcdiff.diagnostics.degeneracy import degeneracy_report

    report = degeneracy_report(result)
    if n_draws is None:
        n_draws = honest_draws(result)
    n_draws = check_int("n_draws", n_draws, 1, where="to_arviz")
    attrs = _attrs(result)
    groups = {
        "posterior": posterior if posterior is not None else _posterior(result, seed, n_draws),
        "smc_particles": _particles(result),
        "smc_trace": _trace(result),
        "smc_diagnostics": _diagnostics(report, result.log_weights.dim() == 2),
    }
    for ds in groups.values():
        ds.attrs.update(attrs)
    return _container(groups, attrs)


def _container(groups: dict[str, xr.Dataset], attrs: dict[str, Any]) -> Any:
    """Wrap the group datasets in the installed ArviZ's container type."""
    az, major = import_arviz()
    if major == 0:
        idata = az.InferenceData(posterior=groups["posterior"])
        custom = {name: groups[name] for name in _SMC_GROUPS}
        if "warn_on_custom_groups" in inspect.signature(idata.add_groups).parameters:
            idata.add_groups(custom, warn_on_custom_groups=False)
        else:  # ArviZ < 0.21 always warns about groups outside its schema
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="The group .* is not defined in the InferenceData scheme"
                )
                idata.add_groups(custom)
        return idata
    if major == 1:
        tree = xr.DataTree.from_dict(dict(groups))
        tree.attrs.update(attrs)
        return tree
    raise NotImplementedError(
        f"smcdiff.diagnostics.arviz supports ArviZ 0.x and 1.x; found arviz {az.__version__}"
    )


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """CPU numpy copy of a tensor (bfloat16, which numpy lacks, and float16 become float32)."""
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.numpy()


def _with_chain(a: np.ndarray, grouped: bool) -> np.ndarray:
    """Give a single run's array the leading ``chain`` axis of length 1."""
    return a if grouped else a[None]


def _event_dims(event_ndim: int) -> list[str]:
    return [f"x_dim_{i}" for i in range(event_ndim)]


def honest_draws(result: SMCResult) -> int:
    """The number of equal-weight draws a run supports: its minimum ESS over the steps (and the
    runs), rounded, at least 1 (N for equally weighted results such as MCMC chains)."""
    return max(1, round(float(result.min_ess.min())))


def _posterior(result: SMCResult, seed: int | None, n_draws: int) -> xr.Dataset:
    grouped = result.log_weights.dim() == 2
    x = _with_chain(to_numpy(result.resample(n_draws, seed=seed)), grouped)
    dims = ["chain", "draw", *_event_dims(x.ndim - 2)]
    return xr.Dataset(
        {"x": (dims, x)}, coords={d: np.arange(n) for d, n in zip(dims, x.shape, strict=True)}
    )


def _particles(result: SMCResult) -> xr.Dataset:
    grouped = result.log_weights.dim() == 2
    x = _with_chain(to_numpy(result.particles), grouped)
    lw = _with_chain(to_numpy(result.log_weights).astype(np.float64), grouped)
    lz = np.atleast_1d(to_numpy(result.log_z).astype(np.float64))
    dims = ["chain", "particle", *_event_dims(x.ndim - 2)]
    return xr.Dataset(
        {"x": (dims, x), "log_weights": (dims[:2], lw), "log_z": (["chain"], lz)},
        coords={d: np.arange(n) for d, n in zip(dims, x.shape, strict=True)},
    )


def _trace(result: SMCResult) -> xr.Dataset:
    """Trace entries ``(K+1, ...)``; in grouped results an entry whose second axis has length ``R``
    is per run and becomes ``(chain, step, ...)``."""
    n_runs = result.log_weights.shape[0] if result.log_weights.dim() == 2 else None
    data = {}
    n_steps = None
    for name, value in result.trace.items():
        a = to_numpy(torch.as_tensor(value))
        n_steps = a.shape[0]
        if name == "t":
            continue
        if n_runs is not None and a.ndim >= 2 and a.shape[1] == n_runs:
            a = np.swapaxes(a, 0, 1)
            dims = ["chain", "step", *(f"{name}_dim_{i}" for i in range(a.ndim - 2))]
        else:
            dims = ["step", *(f"{name}_dim_{i}" for i in range(a.ndim - 1))]
        data[name] = (dims, a)
    coords: dict[str, Any] = {} if n_steps is None else {"step": np.arange(n_steps)}
    if "t" in result.trace:
        coords["t"] = ("step", to_numpy(torch.as_tensor(result.trace["t"])).astype(np.float64))
    if n_runs is not None:
        coords["chain"] = np.arange(n_runs)
    return xr.Dataset(data, coords=coords)


def _diagnostics(report: Any, grouped: bool) -> xr.Dataset:
    """The per-step degeneracy diagnostics as ``(chain, step)`` variables, with the summaries."""
    data = {}
    for name in ("ess", "distinct_ancestors", "pareto_k"):
        a = report.per_step.get(name)
        if a is not None:
            data[name] = (["chain", "step"], np.swapaxes(a, 0, 1).astype(np.float64))
    n_steps, n_chains = report.per_step["ess"].shape
    coords: dict[str, Any] = {"chain": np.arange(n_chains), "step": np.arange(n_steps)}
    if "t" in report.per_step:
        coords["t"] = ("step", np.asarray(report.per_step["t"], dtype=np.float64))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["min_ess"] = [float(v) for v in report.min_ess]
    ds.attrs["final_ess"] = [float(v) for v in report.final_ess]
    ds.attrs["degenerate"] = int(not report.ok)
    ds.attrs["problems"] = "; ".join(report.problems)
    return ds


def _attrs(result: SMCResult) -> dict[str, Any]:
    """``result.info`` made netCDF/JSON-friendly, plus the run's size, ``log_z`` and a stamp."""
    attrs: dict[str, Any] = {}
    for key, value in result.info.items():
        v = _attr_value(value)
        if v is not None:
            attrs[str(key)] = v
    grouped = result.log_weights.dim() == 2
    attrs["log_z"] = _attr_value(result.log_z)
    attrs["n_particles"] = int(result.n_particles)
    attrs["n_runs"] = int(result.log_weights.shape[0]) if grouped else 1
    attrs["inference_library"] = "smcdiff"
    attrs["created_at"] = datetime.now(timezone.utc).isoformat()
    return attrs


def _attr_value(value: Any) -> str | int | float | list | None:
    """``bool`` -> ``int``; numbers and one-element tensors -> ``int``/``float``; 1-D numeric
    tensors or sequences -> list; ``None`` -> dropped; anything else -> ``str``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor | np.ndarray):
        a = to_numpy(value) if isinstance(value, torch.Tensor) else value
        if a.size == 1:
            return _attr_value(a.reshape(()).item())
        if a.ndim == 1 and a.dtype.kind in "biuf":
            return [_attr_value(v) for v in a.tolist()]
        return str(value)
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    return str(value)
