"""Running a sweep on NDIF (nnsight `remote=True`), or rehearsing it here (`remote="local"`).

Remotely, the model is built on the meta device from its config (no weights on this
machine) and every traced forward is sent to NDIF as a job; only the reduced metrics and the
donor activations of the baseline pass come back. `"local"` serialises each trace exactly as
for NDIF and runs it in this process, so a recipe can be checked before it costs anything.

Only hosted plain causal LMs can run there: continuous-thought kinds are custom modules (a
recurrent loop around a base model) that NDIF does not host (`Kind.hosted`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from nnpatch.errors import RecipeError
from nnpatch.models.kinds import KINDS
from nnpatch.models.presets import PLAIN_PRESETS
from nnpatch.recipe import Recipe

if TYPE_CHECKING:
    from nnpatch.engine.modes import Mode

HOSTED = next(name for name, kind in KINDS.items() if kind.hosted)
CUSTOM = "continuous-thought models run a recurrent thought loop that NDIF does not host"


def check_remote(recipe: Recipe, source: Path, analysis: Mode, status=None) -> None:
    """Everything that can refuse a remote run, checked before any model is built.

    `status` fetches NDIF's /status (injectable for tests; nnsight's client by default).
    """
    mode, model = recipe.run.remote, recipe.model
    if not mode:
        return
    if analysis.remote_refusal:
        raise RecipeError(
            source, "patch.mode", analysis.remote_refusal, "run it locally (run.remote = false)"
        )
    if model.preset is not None and model.preset not in PLAIN_PRESETS:
        raise RecipeError(
            source,
            "model.preset",
            f"{model.preset} is a continuous-thought model; {CUSTOM}",
            "run it locally (run.remote = false)",
        )
    if model.kind is not None and not KINDS[model.kind].hosted:
        raise RecipeError(
            source,
            "model.kind",
            f"{model.kind}: {CUSTOM}",
            "run it locally on a GPU (run.remote = false)",
        )
    if mode == "local":
        return
    if model.preset is not None:
        raise RecipeError(
            source,
            "model.preset",
            "presets exist only on this machine",
            f"name a hosted hub id: model.kind = {HOSTED!r}, model.checkpoint = ...",
        )
    from nnsight import CONFIG

    if not CONFIG.API.APIKEY:
        raise RecipeError(
            source,
            "run.remote",
            "no NDIF API key",
            "set NDIF_API_KEY, or save one with "
            "nnsight.CONFIG.set_default_api_key(KEY) (https://login.ndif.us)",
        )
    host = CONFIG.API.HOST
    try:
        deployments = (status or _fetch_status)().get("deployments", {})
    except Exception as err:  # noqa: BLE001 - any transport failure means the same to the user
        raise RecipeError(
            source,
            "run.remote",
            f"NDIF at {host} is unreachable ({type(err).__name__})",
            "check the network, or run locally",
        ) from None
    running = running_repos(deployments)
    if model.checkpoint not in running:
        hosted = ", ".join(sorted(running)[:5]) or "none right now"
        listed = next(
            (d for d in deployments.values() if d.get("repo_id") == model.checkpoint), None
        )
        state = "" if listed is None else f" (listed, {_state(listed)})"
        raise RecipeError(
            source,
            "model.checkpoint",
            f"{model.checkpoint} is not running on NDIF{state}; running: {hosted}",
            "pick a running model, have it deployed first, or run locally",
        )


def running_repos(deployments: dict) -> set[str]:
    """The repo ids NDIF's /status reports running. A deployment names its repo in its
    `repo_id`, or (ndif 0.1.2's Ray deployments) only in its key, which ends with the
    model key: the nnsight class path, then the JSON that holds `repo_id`."""
    running = set()
    for key, deployment in deployments.items():
        if deployment.get("application_state") != "RUNNING":
            continue
        repo = deployment.get("repo_id")
        if repo is None and "{" in key:
            with contextlib.suppress(ValueError, AttributeError):
                repo = json.loads(key[key.index("{") :]).get("repo_id")
        if repo:
            running.add(repo)
    return running


def _state(deployment: dict) -> str:
    level = deployment.get("deployment_level") or deployment.get("application_state")
    return f"deployment level {level}" if level else "not running"


def ship_code() -> None:
    """Have nnsight send nnpatch's own code with every request, by value.

    A trace body calls nnpatch's functions and holds its small objects (the ops, the
    answer reader, the metric reducers). NDIF's servers do not have nnpatch installed, and
    nnsight ships by value only the modules it finds outside site-packages: a pip-installed
    nnpatch (editable ones too, which register as installed distributions) would otherwise
    be pickled by reference and fail there with ModuleNotFoundError."""
    import nnsight

    nnsight.register("nnpatch")  # the package name covers every submodule


def _fetch_status() -> dict:
    from nnsight.ndif import _get

    return _get("/status")
