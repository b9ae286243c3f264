"""`nnpatch run --resume RUN_DIR`: continue a sweep that was interrupted, killed or failed.

The run folder's manifest names the recipe file and overrides it ran with, and the content
hashes of the recipe, model and pairs; a resume rebuilds all three and refuses to mix rows
computed under different conditions.
"""

from __future__ import annotations

from pathlib import Path

from nnpatch.errors import RunFolderError
from nnpatch.run.manifest import alive, read_manifest, require

WHAT_CHANGED = {
    "recipe": "the recipe (or an override) changed",
    "model": "the model's weights changed",
    "pairs": "the pairs changed",
}


def resume_source(run_dir: Path) -> tuple[dict, str, list[str]]:
    """The manifest, and the recipe file and overrides the run started with."""
    manifest = read_manifest(run_dir)
    require(manifest, run_dir, {"status": str})
    status = manifest["status"]
    if status == "finished":
        raise RunFolderError(f"{run_dir}: this run already finished; there is nothing to resume")
    if "fingerprint" not in manifest:
        raise RunFolderError(
            f"{run_dir}/manifest.json: no fingerprint (written by an older nnpatch); "
            "start a new run"
        )
    require(manifest, run_dir, {"fingerprint": dict, "recipe_file": str})
    fingerprint = manifest["fingerprint"]
    missing = [key for key in WHAT_CHANGED if not isinstance(fingerprint.get(key), str)]
    if missing:
        raise RunFolderError(
            f"{run_dir}/manifest.json: fingerprint.{missing[0]} is missing; the folder is "
            "damaged: start a new run"
        )
    overrides = manifest.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise RunFolderError(
            f"{run_dir}/manifest.json: field 'overrides' is not a list of text; the folder is "
            "damaged: start a new run"
        )
    if status == "running" and alive(manifest):
        raise RunFolderError(
            f"{run_dir}: still running as process {manifest['pid']}; stop it before resuming"
        )
    recipe_file = manifest["recipe_file"]
    if not Path(recipe_file).is_file():
        raise RunFolderError(
            f"{run_dir}/manifest.json: recipe_file {recipe_file} is gone; put the recipe back "
            "there to resume"
        )
    return manifest, recipe_file, list(overrides)


def check_unchanged(run_dir: Path, recorded: dict, now: dict) -> None:
    for key, reason in WHAT_CHANGED.items():
        if recorded.get(key) != now[key]:
            raise RunFolderError(
                f"{run_dir}/manifest.json: fingerprint.{key}: {reason} since this run started; "
                "start a new run instead of resuming"
            )
