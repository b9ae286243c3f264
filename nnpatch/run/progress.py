"""The progress bar of a run's rows (and of the probes fitted), for the CLI and `nnpatch.run`
alike."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str = "patching", unit: str = "row"):
    """A tick per batch done, drawn on stderr where a terminal shows it, and as tqdm's
    notebook bar in Jupyter (which has no terminal, so it is shown there too)."""
    from tqdm.auto import tqdm

    shown = False if "ipykernel" in sys.modules else None  # None: only on a terminal
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=shown)

    def tick(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return tick
