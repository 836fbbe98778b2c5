"""A progress bar over an experiment's runs (shared by the experiment scripts)."""

from __future__ import annotations

from collections.abc import Callable


def run_bar(total: int, enabled: bool, desc: str) -> Callable[[str], None]:
    """``tick(label)`` advancing a tqdm bar of ``total`` runs (labelled with the run just done),
    closed after the last; a no-op when not ``enabled``."""
    if not enabled:
        return lambda label: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="run", desc=desc)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return tick
