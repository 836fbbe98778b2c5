r"""DriftLite basis fields: the span :math:`u = \sum_j\theta_j\phi_j` of the control drift.

A :class:`BasisField` knows, at an :class:`~smcdiff.steering.fkc.point.FKCPoint`, its value
:math:`\phi` ``(N, *event_shape)``, its divergence :math:`\nabla\cdot\phi` (float64 ``(N,)``), its
label and, for ECG, its potential :math:`a` with :math:`\phi = \nabla a` (float64 ``(N,)``). Its
class attributes declare what the point must hold: ``score_div`` (component score divergences),
``reward_div`` (:math:`\Delta r`), ``needs_reward``, and for ECG ``has_potential`` and
``potential_needs_log_density`` (:math:`\log q_i` of the components).

Built-in fields, by name in :data:`BASES` (``basis=("target", "reward")``):

* ``"scores"`` :class:`ScoreBasis` — each component score :math:`s_i` (one field per component,
  labels ``score0, score1, ...``), potential :math:`\log q_i`;
* ``"target"`` :class:`TargetBasis` — :math:`S = \sum_i w_i s_i + \beta_t\nabla r`, potential
  :math:`\log\rho_t`;
* ``"reward"`` :class:`RewardBasis` — :math:`\nabla r`, potential :math:`r`;
* ``"x"`` :class:`PositionBasis` — :math:`x`, divergence ``D``, potential :math:`|x|^2/2`.

A user field subclasses :class:`BasisField` (``value``, ``divergence``, ``label`` and, for ECG,
``potential`` with ``has_potential = True``) and is passed in ``basis`` next to names.
:func:`control_features` stacks the fields into ``phi`` ``(N, J, *E)``, the features
:math:`\psi_j = \nabla\cdot\phi_j + \phi_j\cdot S` ``(N, J)`` and, for ECG, ``pot`` ``(N, J)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from smcdiff.checks import check_shape
from smcdiff.errors import SMCDiffError
from smcdiff.steering.fkc.point import FKCPoint

__all__ = [
    "BASES",
    "BasisField",
    "PositionBasis",
    "RewardBasis",
    "ScoreBasis",
    "TargetBasis",
    "control_features",
    "resolve_basis",
]


class BasisField:
    """Base class of a control basis field (or a family of fields, like :class:`ScoreBasis`).

    A single field implements ``value``, ``divergence`` (and ``potential`` for ECG) and sets
    ``label``; a family overrides the list methods ``labels`` / ``values`` / ``divergences`` /
    ``potentials`` instead."""

    label = "field"
    score_div = False
    reward_div = False
    needs_reward = False
    has_potential = False
    potential_needs_log_density = False

    def labels(self, n_components: int) -> list[str]:
        return [self.label]

    def values(self, p: FKCPoint) -> list[torch.Tensor]:
        return [self.value(p)]

    def divergences(self, p: FKCPoint) -> list[torch.Tensor]:
        return [self.divergence(p)]

    def potentials(self, p: FKCPoint) -> list[torch.Tensor]:
        return [self.potential(p)]

    def value(self, p: FKCPoint) -> torch.Tensor:
        r""":math:`\phi(x)`, ``(N, *E)`` in the dtype of ``p.x``."""
        raise NotImplementedError

    def divergence(self, p: FKCPoint) -> torch.Tensor:
        r""":math:`\nabla\cdot\phi(x)`, float64 ``(N,)``."""
        raise NotImplementedError

    def potential(self, p: FKCPoint) -> torch.Tensor:
        r""":math:`a(x)` with :math:`\phi = \nabla a`, float64 ``(N,)`` (ECG only)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ScoreBasis(BasisField):
    r"""Each component score :math:`\phi_i = s_i`: divergence :math:`\nabla\cdot s_i`, potential
    :math:`\log q_i`."""

    label = "scores"
    score_div = True
    has_potential = True
    potential_needs_log_density = True

    def labels(self, n_components: int) -> list[str]:
        return [f"score{i}" for i in range(n_components)]

    def values(self, p: FKCPoint) -> list[torch.Tensor]:
        return list(p.scores)

    def divergences(self, p: FKCPoint) -> list[torch.Tensor]:
        return list(p.score_divs)

    def potentials(self, p: FKCPoint) -> list[torch.Tensor]:
        return list(p.log_q)


def _tilted(p: FKCPoint) -> bool:
    return p.reward is not None and p.beta != 0.0


class TargetBasis(BasisField):
    r"""The target score :math:`S = \sum_i w_i s_i + \beta_t\nabla r`: divergence
    :math:`\sum_i w_i\nabla\cdot s_i + \beta_t\Delta r`, potential
    :math:`\sum_i w_i\log q_i + \beta_t r`."""

    label = "target"
    score_div = True
    reward_div = True
    has_potential = True
    potential_needs_log_density = True

    def value(self, p: FKCPoint) -> torch.Tensor:
        return p.score.to(p.x.dtype)

    def divergence(self, p: FKCPoint) -> torch.Tensor:
        dv = sum(wi * v for wi, v in zip(p.weights, p.score_divs, strict=True))
        return dv + p.beta * p.reward_lap if _tilted(p) else dv

    def potential(self, p: FKCPoint) -> torch.Tensor:
        pt = sum(wi * v for wi, v in zip(p.weights, p.log_q, strict=True))
        return pt + p.beta * p.reward if _tilted(p) else pt


class RewardBasis(BasisField):
    r"""The reward gradient :math:`\nabla r`: divergence :math:`\Delta r`, potential :math:`r`."""

    label = "reward"
    reward_div = True
    needs_reward = True
    has_potential = True

    def value(self, p: FKCPoint) -> torch.Tensor:
        return p.reward_grad

    def divergence(self, p: FKCPoint) -> torch.Tensor:
        return p.reward_lap

    def potential(self, p: FKCPoint) -> torch.Tensor:
        return p.reward


class PositionBasis(BasisField):
    r"""The position :math:`x`: divergence ``D`` (the event size), potential :math:`|x|^2/2`."""

    label = "x"
    has_potential = True

    def value(self, p: FKCPoint) -> torch.Tensor:
        return p.x

    def divergence(self, p: FKCPoint) -> torch.Tensor:
        x = p.x
        size = float(math.prod(x.shape[1:]))
        return torch.full((x.shape[0],), size, dtype=torch.float64, device=x.device)

    def potential(self, p: FKCPoint) -> torch.Tensor:
        return 0.5 * p.x.double().square().flatten(1).sum(-1)


BASES: dict[str, type[BasisField]] = {
    "scores": ScoreBasis,
    "target": TargetBasis,
    "reward": RewardBasis,
    "x": PositionBasis,
}


def resolve_basis(
    basis: Sequence[str | BasisField] | str | BasisField | None, *, has_reward: bool,
    dense: bool, ecg: bool, n_components: int, where: str,
) -> tuple[tuple[BasisField, ...], list[str]]:  # fmt: skip
    """The field objects for ``basis`` (names from :data:`BASES` and/or :class:`BasisField`
    objects; default ``("scores", "reward")``, ``("scores",)`` without a reward) and their labels,
    checked: distinct labels, a reward where a field needs one, potentials for ECG."""
    if basis is None:
        basis = ("scores", "reward") if has_reward else ("scores",)
    if isinstance(basis, str | BasisField):
        basis = (basis,)
    fields = []
    for b in basis:
        if not isinstance(b, BasisField) and not (isinstance(b, str) and b in BASES):
            raise SMCDiffError(
                f"{where}: basis entries must be names from {tuple(BASES)} or BasisField "
                f"objects, got {b!r}"
            )
        fields.append(b if isinstance(b, BasisField) else BASES[b]())
    labels = [label for f in fields for label in f.labels(n_components)]
    if not fields or len(set(labels)) != len(labels):
        raise SMCDiffError(f"{where}: basis must be distinct fields, got {tuple(basis)}")
    for f in fields:
        if f.needs_reward and not has_reward:
            raise SMCDiffError(f"{where}: basis {f.label!r} needs a reward")
    if ecg and any(not f.has_potential or (f.potential_needs_log_density and not dense)
                   for f in fields):  # fmt: skip
        raise SMCDiffError(
            f"{where}: control='ecg' needs the potentials of its basis fields; 'scores' and "
            "'target' need components with log_density (use control='vcg' or basis "
            "('reward', 'x')); a BasisField of your own needs has_potential = True"
        )
    return tuple(fields), labels


def control_features(
    p: FKCPoint, fields: Sequence[BasisField], labels: Sequence[str], *, potentials: bool,
    where: str,
) -> dict[str, torch.Tensor]:  # fmt: skip
    r"""``phi`` ``(N, J, *E)``, ``psi = div phi + phi . S`` ``(N, J)`` float64 (sums over the
    flattened event dims) and, when ``potentials``, ``pot`` ``(N, J)`` float64."""
    phis, divs, pots = [], [], []
    for f in fields:
        phis += f.values(p)
        divs += f.divergences(p)
        pots += f.potentials(p) if potentials else []
    for label, v in zip(labels, phis, strict=True):
        check_shape(f"basis field {label!r}", v, tuple(p.x.shape), where=where)
    phi = torch.stack(phis, dim=1)
    psi = torch.stack(divs, dim=1) + (phi.double() * p.score.unsqueeze(1)).flatten(2).sum(-1)
    out = {"phi": phi, "psi": psi}
    if potentials:
        out["pot"] = torch.stack(pots, dim=1)
    return out
