"""What can go wrong with a request to NDIF, each said in one line (`RemoteRunError`).

A traced forward sent to NDIF can be refused (the HTTP request is answered with an error:
a bad key, a model that is not deployed, a payload the server will not take), fail as a job
(the server ran it and it raised), get no answer in time (`run.remote_timeout`), or lose its
connection. nnsight raises its own `RemoteError` for the first two, and httpx's or the
websocket client's errors for the last; none of them names the host, and a job that hangs
blocks forever (its websocket loop swallows read timeouts). `ndif_request` bounds the wait
with a timer (main thread only) and turns each into one line.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from nnpatch.errors import RemoteRunError


class _Deadline(Exception):
    pass


@contextmanager
def ndif_request(host: str, timeout: float | None):
    """Run one request to NDIF at `host`; what goes wrong becomes one `RemoteRunError`."""
    try:
        with _deadline(timeout):
            yield
    except _Deadline:
        raise RemoteRunError(
            f"NDIF at {host} gave no answer within {timeout:g} s (run.remote_timeout); the job "
            "may still be queued or running there"
        ) from None
    except RemoteRunError:
        raise
    except Exception as err:  # noqa: BLE001 - sorted below; anything else is re-raised
        what = describe(err, host)
        if what is None:
            raise
        raise RemoteRunError(what) from None


def describe(err: BaseException, host: str) -> str | None:
    """One line for a failure of a request to NDIF, or None when it is not one."""
    from nnsight.intervention.backends.remote import RemoteError

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, RemoteError):
        detail = text.removeprefix("Failed to send request:").strip()
        if text.startswith("Failed to send request"):
            if "not" in detail.lower() and "deploy" in detail.lower():
                return f"NDIF at {host} has no such model deployed ({detail})"
            return f"NDIF at {host} refused the request ({detail})"
        return f"NDIF at {host} ran the request and it failed ({text})"
    module = type(err).__module__.split(".")[0]
    if module in ("httpx", "httpcore", "websocket") or isinstance(err, ConnectionError):
        return f"lost the connection to NDIF at {host} ({type(err).__name__}: {text})"
    return None


@contextmanager
def _deadline(seconds: float | None):
    """Raise `_Deadline` in the main thread after `seconds` (a real-time timer); elsewhere,
    or with no bound, no timer."""
    main = threading.current_thread() is threading.main_thread()
    if not seconds or not main or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
