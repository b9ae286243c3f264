"""`nnpatch run --resume RUN_DIR`: continue a sweep that was interrupted, killed or failed.

The run folder's manifest names the recipe file and overrides it ran with, and the content
hashes of the recipe, model and pairs; a resume rebuilds all three and refuses to mix rows
computed under different conditions.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from nnpatch.errors import RunFolderError

WHAT_CHANGED = {
    "recipe": "the recipe (or an override) changed",
    "model": "the model's weights changed",
    "pairs": "the pairs changed",
}


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir}: not a run folder (no manifest.json); pass a folder nnpatch run wrote"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: unreadable manifest ({err}); start a new run") from None


def resume_source(run_dir: Path) -> tuple[dict, str, list[str]]:
    """The manifest, and the recipe file and overrides the run started with."""
    manifest = read_manifest(run_dir)
    status = manifest.get("status")
    if status == "finished":
        raise RunFolderError(f"{run_dir}: this run already finished; there is nothing to resume")
    if "fingerprint" not in manifest:
        raise RunFolderError(
            f"{run_dir}/manifest.json: no fingerprint (written by an older nnpatch); "
            "start a new run"
        )
    if status == "running" and _alive(manifest):
        raise RunFolderError(
            f"{run_dir}: still running as process {manifest['pid']}; stop it before resuming"
        )
    recipe_file = manifest["recipe_file"]
    if not Path(recipe_file).is_file():
        raise RunFolderError(
            f"{run_dir}/manifest.json: recipe_file {recipe_file} is gone; put the recipe back "
            "there to resume"
        )
    return manifest, recipe_file, list(manifest.get("overrides", []))


def check_unchanged(run_dir: Path, recorded: dict, now: dict) -> None:
    for key, reason in WHAT_CHANGED.items():
        if recorded.get(key) != now[key]:
            raise RunFolderError(
                f"{run_dir}/manifest.json: fingerprint.{key}: {reason} since this run started; "
                "start a new run instead of resuming"
            )


def _alive(manifest: dict) -> bool:
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
