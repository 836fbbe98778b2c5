"""Every energy target by name, with the reference scale samplers start from.

``TARGETS[name] = (factory, reference_std)``: ``factory()`` builds the target; ``reference_std``
is the :math:`\\sigma_0` of the Gaussian reference :math:`\\mathcal N(0, \\sigma_0^2 I)` used by
``smcdiff.sample`` in our benchmarks (the BlackJAX peer's values for the four targets it covers;
for the others, the scale of the target's bulk).
"""

from __future__ import annotations

from collections.abc import Callable

from smcdiff_targets.double_well import dw5, dw50
from smcdiff_targets.energy import MW5, Funnel, Gmm40Fab, ManyWell
from smcdiff_targets.logistic import LogisticRegression
from smcdiff_targets.mog40 import Mog40
from smcdiff_targets.particles import dw4, lj13, lj55

__all__ = ["TARGETS", "get_target"]

TARGETS: dict[str, tuple[Callable[[], object], float]] = {
    "gmm40_fab": (Gmm40Fab, 40.0),
    "funnel10": (Funnel, 3.0),
    "manywell32": (ManyWell, 2.0),
    "mw5": (MW5, 2.5),
    "dw5": (dw5, 2.5),
    "dw50": (dw50, 2.0),
    "mog40_50d": (Mog40, Mog40.reference_std),
    "dw4": (dw4, 2.0),
    "lj13": (lj13, 1.0),
    "lj55": (lj55, 1.5),
    "logreg_breast_cancer": (LogisticRegression, 1.0),
}


def get_target(name: str) -> tuple[object, float]:
    """``(target, reference_std)`` for a name in :data:`TARGETS`."""
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; known: {', '.join(sorted(TARGETS))}")
    make, std = TARGETS[name]
    return make(), std
