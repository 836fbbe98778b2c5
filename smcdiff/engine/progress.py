"""Progress bars for runs, after tqdm's conventions (on when attached to a terminal)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


class Progress:
    """``progress(k, info)`` after each step, ``close()`` at the end. ``show``: ``None`` (a bar
    when standard error is a terminal), ``True``, ``False``, or a callable ``show(k, info)``."""

    def __init__(
        self,
        show: bool | Callable[[int, Any], None] | None,
        total: float,
        unit: str = "step",
        desc: str = "smc",
    ):
        self.callback = show if callable(show) else None
        self.bar = None
        if self.callback is None and show is not False:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                leave=False,
                disable=None if show is None else False,
            )
        self.done = 0.0

    def __call__(self, k: int, info: Any = None) -> None:
        if self.callback is not None:
            self.callback(k, info)
        elif self.bar is not None:
            self.bar.update(1)

    def advance_to(self, value: float) -> None:
        """Move the bar to ``value`` (for bars in units other than steps, e.g. a temperature)."""
        if self.bar is not None and value > self.done:
            self.bar.update(value - self.done)
            self.done = value

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
