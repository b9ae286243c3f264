"""How an `nnpatch` command ends: every refusal, failure or stop is one `Error:` line on
stderr and an exit code (2: refused or failed; 130: Ctrl-C; 128 + N: stop signal N), other
libraries' warnings are held back until it is known how the command went, and stop signals
end a run as Ctrl-C does (its folder marked interrupted)."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

import click

from nnpatch.errors import NnpatchError, Terminated


class OneLineGroup(click.Group):
    """A usage error is one `Error:` line and exit 2, like every other nnpatch error (click
    would print the usage and a hint around it).

    Other libraries' warnings, from their imports on, are held back while a command runs:
    dropped when it is refused or stopped (its one line is all it says), shown once each
    after it succeeds (a `warning:` line naming the library), and shown before the
    traceback of an unexpected failure, which they may explain."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from nnpatch.held_back import held_back, nothing_held, shown

        argv = sys.argv[1:] if args is None else list(args)
        asks_help = not argv or {"-h", "--help", "--version"} & set(argv)
        with nothing_held() if asks_help else held_back() as held:
            try:
                code = self._one_line(args, prog_name, complete_var, **extra)
            except SystemExit as stop:
                if stop.code in (0, None):  # a command that ends itself as a success
                    warn(shown(held))
                raise
            except BaseException:
                warn(shown(held))
                raise
        warn(shown(held))
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code

    def _one_line(self, args, prog_name, complete_var, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)


def warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


@contextmanager
def stop_signals():
    """SIGTERM and SIGHUP stop a run as Ctrl-C does: the folder is marked interrupted."""

    def stop(signum, frame):
        raise Terminated(signum, signal.Signals(signum).name)

    wanted = [signal.SIGTERM, getattr(signal, "SIGHUP", None)]
    previous = {}
    try:
        for sig in filter(None, wanted):
            previous[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: signals stay as they were
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class errors:
    """Turn nnpatch errors and refused file operations into one `Error:` line on stderr and
    exit code 2; Ctrl-C into 130 and stop signals into 128 + the signal's number."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, NnpatchError):
            run_dir = getattr(err, "run_dir", None)
            then = f"; continue with: nnpatch run --resume {run_dir}"
            click.echo(
                f"Error: {err}{then if getattr(err, 'resumable', False) and run_dir else ''}",
                err=True,
            )
            sys.exit(err.exit_code)
        if isinstance(err, OSError):
            where = f"{err.filename}: " if err.filename is not None else ""
            click.echo(f"Error: {where}{err.strerror or type(err).__name__}", err=True)
            sys.exit(2)
        if isinstance(err, KeyboardInterrupt):
            run_dir = getattr(err, "run_dir", None)
            how = f"by {err.name}" if isinstance(err, Terminated) else "by Ctrl-C"
            then = (
                f"continue with: nnpatch run --resume {run_dir}"
                if run_dir
                else "nothing was written"
            )
            click.echo(f"Error: interrupted {how}; {then}", err=True)
            sys.exit(128 + err.signum if isinstance(err, Terminated) else 130)
        return False
