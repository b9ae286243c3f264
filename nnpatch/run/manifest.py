"""Reading a run folder's manifest: a JSON object with the fields its reader needs, and the
folder's true state (a `running` folder whose process is gone was killed or crashed)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from nnpatch.errors import RunFolderError


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(
            f"{run_dir}: a file, not a run folder; pass a folder nnpatch run wrote"
        )
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir}: not a run folder (no manifest.json); pass a folder nnpatch run wrote"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: unreadable manifest ({err}); start a new run") from None
    except OSError as err:
        raise RunFolderError(f"{path}: cannot read it ({err.strerror})") from None
    if not isinstance(manifest, dict):
        raise RunFolderError(
            f"{path}: not a JSON object (a {type(manifest).__name__}); the folder is damaged, "
            "start a new run"
        )
    return manifest


def require(manifest: dict, run_dir: Path, fields: dict[str, type]) -> None:
    """Each field present with the type its reader needs, or one line naming it."""
    for name, kind in fields.items():
        value = manifest.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = "missing" if name not in manifest else f"not a {kind.__name__}"
            raise RunFolderError(
                f"{run_dir}/manifest.json: field {name!r} is {what}; the folder is damaged "
                "(or written by another tool): start a new run"
            )


def alive(manifest: dict) -> bool:
    """Whether the process that wrote `running` is still alive on this machine."""
    pid = manifest.get("pid")
    if not isinstance(pid, int) or manifest.get("host") != platform.node() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"nnpatch" in cmdline.read_bytes()


def not_finished(run_dir: Path, manifest: dict) -> str:
    """Why a folder that is not `finished` has no results yet, and what to do about it."""
    status = manifest.get("status")
    resume = f"continue it with: nnpatch run --resume {run_dir}"
    if status == "running" and alive(manifest):
        return f"{run_dir}: not finished: still running as process {manifest['pid']}; wait for it"
    if status == "running":
        return f"{run_dir}: not finished: its process is gone (killed or crashed); {resume}"
    if status in ("interrupted", "failed"):
        error = manifest.get("error")
        why = error if status == "interrupted" and error else status
        if status == "failed" and error:
            why = f"failed: {error}"
        return f"{run_dir}: not finished: {why}; {resume}"
    return f"{run_dir}/manifest.json: status {status!r} is not one nnpatch writes; start a new run"
