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
        try:
            library = record.name.split(".")[0]
            self.held.append(f"{library}: {' '.join(record.getMessage().split())}")
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report
            self.handleError(record)


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
        with warnings.catch_warnings():  # the filters as they are; shown into `held`

            def hold(message, category, filename, lineno, file=None, line=None):
                held.append(_warning_line(message, category, filename))

            warnings.showwarning = hold
            yield held
    finally:  # as they were, plus any handler a library configured meanwhile
        for logger, handlers, propagate in saved:
            added = [h for h in logger.handlers if h is not keep and h not in handlers]
            logger.handlers, logger.propagate = [*handlers, *added], propagate


@contextmanager
def nothing_held():
    """For `--help` and `--version`: nothing to hold, and no library to import."""
    yield []


def _warning_line(message, category: type, filename: str) -> str:
    path = filename.replace("dist-packages/", "site-packages/")
    installed = path.rpartition("site-packages/")[2] if "site-packages/" in path else ""
    library = installed.split("/")[0] or "python"  # the package that warned
    return f"{library}: {category.__name__}: {' '.join(str(message).split())}"


def shown(held: list[str]) -> list[str]:
    """Each held line once, in order."""
    return list(dict.fromkeys(held))
