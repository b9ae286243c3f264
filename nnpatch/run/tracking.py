"""`[run] wandb = {project = "...", entity = "...", mode = "offline" | "online"}`: one Weights
& Biases run per nnpatch run (the optional extra `nnpatch[wandb]`).

The W&B run starts with the run folder, its id derived from the folder (so `--resume`
continues the same W&B run) and recorded in the manifest. It holds only what the folder
holds: the resolved recipe as config; the baselines, counts and top cells as summary;
results.parquet, summary.csv, manifest.json and report.html as an artifact; the heatmaps as
images. W&B's own collectors (system metrics, machine and environment metadata, git, code,
console, requirements) are off, and its files go into the run folder's `wandb/`.
"""

from __future__ import annotations

import json
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import polars as pl

from nnpatch.errors import NnpatchError

ARTIFACT_FILES = ("results.parquet", "summary.csv", "manifest.json", "report.html")
TOP = 5


class TrackingError(NnpatchError):
    pass


def online_without_login(section) -> bool:
    """Whether a run would go online with no W&B credentials anywhere W&B looks for them
    (its key or identity-token variables, the netrc entry `wandb login` writes for its
    host); wandb.init would then fail, or prompt, after the run folder exists."""
    wanted = os.environ.get("WANDB_MODE")
    mode = wanted if wanted in ("offline", "disabled") else section.mode
    if mode != "online":
        return False
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        found = None
    return found is None


def wandb_id(path: Path) -> str:
    """A W&B run id from the run folder: the same folder, the same W&B run. The folder's own
    name (timestamp and random suffix) comes whole; the recipe's name fills what is left of
    W&B's 64 characters."""
    own, name = (re.sub(r"[^a-zA-Z0-9_-]", "-", p.name) for p in (path, path.parent))
    return f"{own}-{name}"[:64]


class Tracker:
    """The W&B run of one nnpatch run: `start` with the folder, `finish` when it ends."""

    def __init__(self, section, path: Path, manifest: dict):
        try:
            import wandb
        except ImportError:
            raise TrackingError(
                "run.wandb is set but wandb is not installed; pip install 'nnpatch[wandb]' "
                "or remove run.wandb"
            ) from None
        self.wandb, self.path = wandb, path
        # the environment may keep a run local (WANDB_MODE=offline or disabled), never
        # send one the recipe keeps offline
        wanted = os.environ.get("WANDB_MODE")
        mode = wanted if wanted in ("offline", "disabled") else section.mode
        self.run = wandb.init(
            project=section.project,
            entity=section.entity,
            mode=mode,
            id=wandb_id(path),
            name=path.name,
            resume="allow",
            reinit="create_new",  # never hand back, or close, a W&B run the user has open
            dir=str(path),
            config=json.loads((path / "resolved.json").read_text(encoding="utf-8")),
            settings=wandb.Settings(
                x_disable_stats=True,
                x_disable_meta=True,
                x_disable_machine_info=True,
                x_save_requirements=False,
                disable_git=True,
                disable_code=True,
                save_code=False,
                disable_job_creation=True,
                console="off",
                silent=True,
            ),
        )
        manifest["wandb"] = {
            "id": self.run.id,
            "project": section.project,
            "entity": section.entity,
            "mode": mode,
        }

    def finish(self, manifest: dict, failed: bool = False) -> None:
        """Summary, artifact and heatmaps of a finished run; a failed or stopped run is
        marked so and left for `--resume` to continue."""
        try:
            if not failed:
                self.run.summary.update(summary_of(self.path, manifest))
                self._log_files()
        finally:  # whatever failed above, the W&B run is closed
            self.run.finish(exit_code=1 if failed else 0)

    def _log_files(self) -> None:
        wandb = self.wandb
        artifact = wandb.Artifact(f"nnpatch-{wandb_id(self.path)}", type="nnpatch-run")
        for name in ARTIFACT_FILES:
            if (self.path / name).is_file():
                artifact.add_file(str(self.path / name), name=name)
        self.run.log_artifact(artifact)
        heatmaps = sorted((self.path / "charts").glob("heatmap_*.png"))
        if heatmaps:
            self.run.log({f"charts/{p.stem}": wandb.Image(str(p)) for p in heatmaps})


def summary_of(path: Path, manifest: dict) -> dict:
    """The folder's numbers W&B's summary shows: rows, pair counts, baseline means per
    metric, and the top cells of the lead metric with their means and CIs."""
    from nnpatch.report.summary import cell_label, lead_metric, top_cells

    resolved = json.loads((path / "resolved.json").read_text(encoding="utf-8"))
    metrics = resolved["metrics"]["names"]
    out: dict[str, object] = {"rows": manifest.get("rows"), "status": "finished"}
    out.update({f"pairs/{k}": v for k, v in manifest.get("pairs", {}).items() if k != "source"})
    baselines = pl.read_parquet(path / "baselines.parquet")
    for name in metrics:
        for run in ("clean", "corrupted"):
            column = f"{run}_{name}"
            if column in baselines.columns:
                out[f"baselines/{column}"] = float(baselines[column].mean())
    summary = pl.read_parquet(path / "summary.parquet")
    lead = lead_metric(metrics)
    if {"metric", "mean", "layer", "position"} <= set(summary.columns):
        for rank, row in enumerate(top_cells(summary, lead, TOP).iter_rows(named=True), 1):
            out[f"top/{rank}/cell"] = cell_label(row)
            for key in ("mean", "ci95_low", "ci95_high", "q_value"):
                if row.get(key) is not None:
                    out[f"top/{rank}/{key}"] = row[key]
    return out
