"""Minibatches of training data: rows of a tensor, or the batches of a DataLoader-like iterable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from smcdiff.checks import check_int
from smcdiff.errors import SMCDiffError

__all__ = ["Batches"]

WHERE = "train_score"


class Batches:
    """``next()`` -> ``(x, labels)``: a ``(B, *event_shape)`` batch on ``device`` in ``dtype``
    and its ``(B,)`` integer labels (``None`` without labels).

    * a tensor ``(N, *event_shape)``: moved to ``device`` once; each batch is ``batch_size`` rows
      drawn uniformly with replacement by ``generator`` (i.i.d. minibatches: the run is
      reproducible from the seed and resumes exactly from the generator's state); ``labels``: an
      ``(N,)`` integer tensor of their classes, or ``None``;
    * any other iterable (a ``DataLoader``): its items in order, restarted when exhausted; an item
      may be a tensor or a tuple / list whose first entry is the tensor; ``labels=True`` takes the
      second entry as the labels (else they are ignored). The loader's own batch size and
      shuffling apply (seed it yourself for a reproducible run).
    """

    def __init__(
        self,
        data: torch.Tensor | Iterable[Any],
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
        labels: torch.Tensor | bool | None = None,
    ):
        self.batch_size = check_int("batch_size", batch_size, 1, where=WHERE)
        self.generator, self.device, self.dtype = generator, device, dtype
        self.labels = self._check_labels(data, labels)
        if isinstance(data, torch.Tensor):
            if data.dim() < 2 or data.shape[0] < 1 or not data.is_floating_point():
                raise SMCDiffError(
                    f"{WHERE}: data must be a floating tensor (N, *event_shape) with N >= 1, got "
                    f"{data.dtype} of shape {tuple(data.shape)}"
                )
            self.tensor: torch.Tensor | None = data.detach().to(device=device, dtype=dtype)
            self.event_shape = tuple(self.tensor.shape[1:])
            return
        if not isinstance(data, Iterable):
            raise SMCDiffError(
                f"{WHERE}: data must be a tensor (N, *event_shape) or an iterable of batches "
                f"(a DataLoader), got {type(data).__name__}"
            )
        self.tensor, self.iterable, self.iterator = None, data, iter(data)
        self.first: tuple | None = self._pull()
        self.event_shape = tuple(self.first[0].shape[1:])

    def _check_labels(self, data: Any, labels: Any) -> torch.Tensor | bool | None:
        if labels is None or labels is False:
            return None
        if not isinstance(data, torch.Tensor):
            if labels is not True:
                raise SMCDiffError(f"{WHERE}: with an iterable of batches, labels=True takes "
                                   f"each batch's second entry; got a {type(labels).__name__}")  # fmt: skip
            return True
        ok = isinstance(labels, torch.Tensor) and labels.shape == data.shape[:1]
        if not ok or labels.is_floating_point() or labels.is_complex():
            raise SMCDiffError(
                f"{WHERE}: labels must be an integer tensor of shape ({data.shape[0]},), one class "
                f"per row of data; got {labels!r:.60}"
            )
        return labels.to(device=self.device, dtype=torch.long)

    def _pull(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        try:
            item = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.iterable)
            try:
                item = next(self.iterator)
            except StopIteration:
                raise SMCDiffError(f"{WHERE}: the data iterable yields no batches") from None
        y = None
        if isinstance(item, tuple | list) and item:
            if self.labels is True:
                if len(item) < 2:
                    raise SMCDiffError(f"{WHERE}: labels=True but a batch has no second entry")
                y = torch.as_tensor(item[1], device=self.device).long().reshape(-1)
            item = item[0]
        elif self.labels is True:
            raise SMCDiffError(f"{WHERE}: labels=True needs batches (x, labels), got a tensor")
        if not isinstance(item, torch.Tensor) or item.dim() < 2 or not item.is_floating_point():
            got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise SMCDiffError(
                f"{WHERE}: a batch of the data iterable must be a floating tensor "
                f"(B, *event_shape) (or a tuple starting with one), got {got}"
            )
        if y is not None and y.shape != item.shape[:1]:
            raise SMCDiffError(f"{WHERE}: a batch has {item.shape[0]} rows but {y.numel()} labels")
        return item.to(device=self.device, dtype=self.dtype), y

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch ``(B, *event_shape)`` and its labels ``(B,)`` (or ``None``)."""
        if self.tensor is not None:
            n = self.tensor.shape[0]
            idx = torch.randint(0, n, (self.batch_size,), generator=self.generator,
                                device=self.device)  # fmt: skip
            y = self.labels[idx] if isinstance(self.labels, torch.Tensor) else None
            return self.tensor[idx], y
        if self.first is not None:
            out, self.first = self.first, None
            return out
        out = self._pull()
        if tuple(out[0].shape[1:]) != self.event_shape:
            raise SMCDiffError(
                f"{WHERE}: a batch has event shape {tuple(out[0].shape[1:])}, the first had "
                f"{self.event_shape}"
            )
        return out
