"""What the front doors call for ``distributed=True``: :func:`smcdiff.steer` runs its plan with
:func:`distributed_runner`; :func:`smcdiff.sample` runs ``method="tempered"`` with
:func:`~smcdiff.distributed.tempered.run_tempered_distributed`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smcdiff.distributed.runner import run_smc_distributed
from smcdiff.errors import SMCDiffError

__all__ = ["distributed_runner", "distributed_sample_runner"]


def distributed_runner(common: Any, plan: Any) -> Callable[..., Any]:
    """:func:`run_smc_distributed` for a :func:`smcdiff.steer` plan, after refusing what a
    distributed run cannot do: several runs (``n_runs``) and a tilt strength chosen from the
    particles (``tilt_schedule="adaptive"``, which each rank would choose differently)."""
    if common.n_runs is not None:
        raise SMCDiffError("steer(distributed=True): n_runs is not supported; a distributed run "
                           "is one particle system (run independent jobs for replicates)")  # fmt: skip
    if getattr(plan.model, "adaptive", None) is not None:
        raise SMCDiffError(
            "steer(distributed=True): tilt_schedule='adaptive' chooses each step's tilt from the "
            "particles, which the ranks would choose apart; use tilt_schedule='snr' or "
            "'constant'"
        )
    return run_smc_distributed


def distributed_sample_runner(method: str, options: Any) -> Callable[..., Any]:
    """The runner of ``sample(method, distributed=True)``: tempered SMC only (with adaptive
    temperatures from the global conditional ESS, or ``schedule=``)."""
    if method != "tempered":
        raise SMCDiffError(f"sample(distributed=True) runs method='tempered', got {method!r}")
    if getattr(options, "unbiased", False):
        raise SMCDiffError("sample(distributed=True) does not take unbiased=True; pass the "
                           "pilot's temperatures as schedule= instead")  # fmt: skip
    from smcdiff.distributed.tempered import run_tempered_distributed

    return run_tempered_distributed
