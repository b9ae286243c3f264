"""nnpatch's error types: each carries one line a researcher can act on."""

from __future__ import annotations


class NnpatchError(Exception):
    """Base class: the CLI prints the message as one line and exits 2."""

    exit_code = 2


class RecipeError(NnpatchError):
    """A recipe file or override is wrong: names the file, the dotted field and the fix."""

    def __init__(self, path: object, field: str, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.field = field
        message = f"{self.path}: {field}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class PairsError(NnpatchError):
    """A pairs file or built-in set cannot be used as clean/corrupted pairs."""


class ModelError(NnpatchError):
    """A model cannot be built or does not support what the recipe asks of it."""


class RunFolderError(NnpatchError):
    """A run folder cannot be resumed or read: names the folder and what to do."""


class BaselineError(NnpatchError):
    """An unpatched run gives non-finite scores: nothing patched against it would mean anything."""


class FolderError(NnpatchError):
    """The machine refused a file operation (a full disk, a read-only folder): names the file,
    the reason and what to do."""

    @classmethod
    def from_os(cls, err: OSError, then: str = "") -> FolderError:
        where = err.filename if err.filename is not None else "a file"
        reason = err.strerror or type(err).__name__
        return cls(f"{where}: {reason}" + (f"; {then}" if then else ""))


class RemoteRunError(NnpatchError):
    """NDIF refused a request, failed it, timed out or dropped the connection: says which.
    The rows saved before it stand; the CLI adds how to resume."""

    resumable = True


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) taken like Ctrl-C: the run is marked interrupted."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum = signum
        self.name = name
