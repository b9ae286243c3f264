"""Other libraries' warnings, held back while a command runs: a refused command shows its one
`Error:` line and nothing else; a finished one shows each held warning once, after its own
output, as a `warning:` line that names the library."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

# the libraries whose loggers write to the screen themselves (transformers, by default, at
# WARNING); their records are held like Python warnings
LIBRARIES = ("transformers", "huggingface_hub", "nnsight", "datasets", "wandb", "accelerate")


class _Keep(logging.Handler):
    def __init__(self, held: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        library = record.name.split(".")[0]
        self.held.append(f"{library}: {' '.join(record.getMessage().split())}")


@contextmanager
def held_back():
    """Yields the list the held lines collect in (de-duplicated by `shown`)."""
    import transformers.utils.logging  # noqa: F401 - its own handler exists before we swap it

    held: list[str] = []
    keep = _Keep(held)
    saved = []
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [keep], False
    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters as they are
            try:
                yield held
            finally:
                held += [_warning_line(w) for w in caught]
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def _warning_line(caught: warnings.WarningMessage) -> str:
    library = caught.filename.rpartition("site-packages/")[2].split("/")[0] or "python"
    return f"{library}: {caught.category.__name__}: {' '.join(str(caught.message).split())}"


def shown(held: list[str]) -> list[str]:
    """Each held line once, in order."""
    return list(dict.fromkeys(held))
