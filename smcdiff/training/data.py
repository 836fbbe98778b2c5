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
    """``next()`` -> a ``(B, *event_shape)`` batch on ``device`` in ``dtype``.

    * a tensor ``(N, *event_shape)``: moved to ``device`` once; each batch is ``batch_size`` rows
      drawn uniformly with replacement by ``generator`` (i.i.d. minibatches: the run is
      reproducible from the seed and resumes exactly from the generator's state);
    * any other iterable (a ``DataLoader``): its items in order, restarted when exhausted; an item
      may be a tensor or a tuple / list whose first entry is the tensor (labels are ignored); the
      loader's own batch size and shuffling apply (seed it yourself for a reproducible run).
    """

    def __init__(
        self,
        data: torch.Tensor | Iterable[Any],
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.batch_size = check_int("batch_size", batch_size, 1, where=WHERE)
        self.generator, self.device, self.dtype = generator, device, dtype
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
        self.first: torch.Tensor | None = self._pull()
        self.event_shape = tuple(self.first.shape[1:])

    def _pull(self) -> torch.Tensor:
        try:
            item = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.iterable)
            try:
                item = next(self.iterator)
            except StopIteration:
                raise SMCDiffError(f"{WHERE}: the data iterable yields no batches") from None
        if isinstance(item, tuple | list) and item:
            item = item[0]
        if not isinstance(item, torch.Tensor) or item.dim() < 2 or not item.is_floating_point():
            got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise SMCDiffError(
                f"{WHERE}: a batch of the data iterable must be a floating tensor "
                f"(B, *event_shape) (or a tuple starting with one), got {got}"
            )
        return item.to(device=self.device, dtype=self.dtype)

    def next(self) -> torch.Tensor:
        """The next batch ``(B, *event_shape)``."""
        if self.tensor is not None:
            n = self.tensor.shape[0]
            idx = torch.randint(0, n, (self.batch_size,), generator=self.generator,
                                device=self.device)  # fmt: skip
            return self.tensor[idx]
        if self.first is not None:
            out, self.first = self.first, None
            return out
        out = self._pull()
        if tuple(out.shape[1:]) != self.event_shape:
            raise SMCDiffError(
                f"{WHERE}: a batch has event shape {tuple(out.shape[1:])}, the first had "
                f"{self.event_shape}"
            )
        return out
