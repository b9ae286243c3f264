"""A finished run folder as polars tables and dicts: what the report, `compare` and a
notebook read. A folder that is mid-run, stopped, failed or damaged is one line saying so."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from nnpatch.engine.metrics import numeric
from nnpatch.errors import RunFolderError
from nnpatch.report.summary import lead_metric
from nnpatch.run.manifest import not_finished, read_manifest, require

RUN_FILES = (
    "results.parquet",
    "baselines.parquet",
    "summary.parquet",
    "resolved.json",
    "recipe.toml",
)


@dataclass
class Run:
    """A run folder's tables and records, as polars frames and dicts."""

    path: Path
    results: pl.DataFrame
    baselines: pl.DataFrame
    summary: pl.DataFrame
    manifest: dict
    resolved: dict
    recipe_text: str

    @property
    def metrics(self) -> list[str]:
        return numeric(self.resolved["metrics"]["names"])  # the decoded text is no metric

    @property
    def lead_metric(self) -> str:
        return lead_metric(self.metrics)

    @property
    def positions(self) -> list[str]:
        return self.resolved["resolved"]["model"]["positions"]

    @property
    def charts(self) -> dict[str, Path]:
        """The charts drawn, by file stem: each one's PNG where there is one, else its page."""
        folder = self.path / "charts"
        pages = {p.stem: p for p in sorted(folder.glob("*.html"))}
        return {
            stem: page.with_suffix(".png") if page.with_suffix(".png").is_file() else page
            for stem, page in pages.items()
        }

    def table(self, name: str) -> pl.DataFrame:
        """Any table of the folder by name: "results", "summary", a mode's own ("lens",
        "mediation", "synergy", ...)."""
        file = self.path / f"{name}.parquet"
        if not file.is_file():
            have = sorted(p.stem for p in self.path.glob("*.parquet"))
            raise RunFolderError(
                f"{self.path}: no table {name!r} ({name}.parquet); it has {', '.join(have)}"
            )
        return _read(file, pl.read_parquet)

    def _repr_html_(self) -> str:
        """Jupyter's view: the facts, the key table and the lead metric's heatmap."""
        from nnpatch.report.notebook import run_html

        return run_html(self)


def load_run(path: str | Path, manifest: dict | None = None) -> Run:
    """Open a finished run folder (`manifest`: use this one instead of the stored one). A
    folder that is mid-run, stopped, failed or damaged is one line saying so."""
    path = Path(path)
    if manifest is None:
        manifest = read_manifest(path)
        require(manifest, path, {"status": str})
        if manifest["status"] != "finished":
            raise RunFolderError(not_finished(path, manifest))
    require(manifest, path, {"model": dict, "pairs": dict, "versions": dict})
    for name in RUN_FILES:
        if not (path / name).is_file():
            raise RunFolderError(f"{path}: not a finished run folder ({name} is missing)")
    resolved = _read(path / "resolved.json", lambda f: json.loads(f.read_text(encoding="utf-8")))
    tables = [
        _read(path / f"{name}.parquet", pl.read_parquet)
        for name in ("results", "baselines", "summary")
    ]
    recipe_text = _read(path / "recipe.toml", lambda f: f.read_text(encoding="utf-8"))
    if not _resolved_recipe(resolved):
        raise RunFolderError(f"{path}/resolved.json: not the resolved recipe nnpatch writes")
    return Run(path, *tables, manifest, resolved, recipe_text)


def _resolved_recipe(resolved: object) -> bool:
    """Whether resolved.json holds what the report reads of it: a known mode, the metric
    names and the model's positions."""
    from nnpatch.engine.modes import MODES

    try:
        mode = resolved["patch"]["mode"]
        return (
            isinstance(resolved["name"], str)
            and isinstance(mode, str)
            and mode in MODES  # a registered mode, looked up
            and all(isinstance(m, str) for m in resolved["metrics"]["names"])
            and all(isinstance(p, str) for p in resolved["resolved"]["model"]["positions"])
        )
    except (KeyError, TypeError):
        return False


def _read(file: Path, read):
    """`read(file)`, or one line naming the file when it cannot be read."""
    try:
        return read(file)
    except (OSError, ValueError, pl.exceptions.PolarsError) as err:
        raise RunFolderError(
            f"{file}: unreadable ({describe_error(err)}); the run folder is damaged"
        ) from None


def describe_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def load_activations(path: str | Path):
    """A finished record run's activations: the [rows, d] tensor and its index (a polars
    table: row, pair_id, run, site, layer, position, token_index, token)."""
    from safetensors.torch import load_file

    run = load_run(path)
    file = run.path / "activations.safetensors"
    if not file.is_file():
        raise RunFolderError(f"{run.path}: no activations.safetensors (not a record run)")
    try:
        tensor = load_file(str(file))["activations"]
    except Exception as err:  # noqa: BLE001 - a damaged file: one line
        raise RunFolderError(f"{file}: unreadable ({describe_error(err)})") from None
    index = run.results.select(
        "row", "pair_id", "run", "site", "layer", "position", "token_index", "token"
    )
    if tensor.shape[0] != index.height:
        raise RunFolderError(f"{file}: {tensor.shape[0]} rows but an index of {index.height}")
    return tensor, index
