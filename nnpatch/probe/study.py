"""Probe every cell of a finished record run for every tracked value, and write the results
into its folder: probe.parquet (long form), probe.md and a heatmap per value in charts/."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import torch

from nnpatch.errors import RunFolderError
from nnpatch.probe.fit import WEIGHT_DECAY, cross_validate
from nnpatch.probe.labels import run_labels, value_order
from nnpatch.probe.report import write_probe
from nnpatch.report.load import Run, load_activations, load_run
from nnpatch.run.progress import progress_bar

CELL = ["site", "layer", "position"]
SCHEMA = {
    "site": pl.String,
    "layer": pl.Int64,
    "position": pl.String,
    "value": pl.String,
    "accuracy": pl.Float64,
    "ci95_low": pl.Float64,
    "ci95_high": pl.Float64,
    "n": pl.Int64,
    "classes": pl.Int64,
    "majority": pl.Float64,
    "control_accuracy": pl.Float64,
    "selectivity": pl.Float64,
    "folds": pl.Int64,
}


@dataclass
class Probed:
    """A probed run: its table (one row per cell and value), notes and the files written."""

    run: Run
    table: pl.DataFrame
    notes: list[str]
    files: list[Path]


def probe_run(
    path: str | Path,
    folds: int = 5,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    progress: bool = True,
    charts: bool = True,
) -> Probed:
    """Probe a finished record run folder and write probe.parquet, probe.md and (`charts`)
    charts/probe_<value>.html and .png into it."""
    run = record_run(path)
    tensor, index = load_activations(run.path)
    labels, notes = run_labels(run)
    tick = partial(progress_bar, desc="probing", unit="cell") if progress else None
    table, skipped = probe_table(tensor, index, labels, folds, seed, weight_decay, tick)
    files, notes = write_probe(run, table, notes + skipped, folds, seed, charts)
    return Probed(run, table, notes, files)


def record_run(path: str | Path) -> Run:
    """A finished record run, or one line saying why the folder is not one."""
    run = load_run(path)
    mode = run.resolved["patch"]["mode"]
    if mode != "record":
        raise RunFolderError(
            f"{run.path}: a {mode} run, not a record run; probe a folder that "
            '`nnpatch record` (or mode = "record") wrote'
        )
    return run


def probe_table(
    tensor: torch.Tensor,
    index: pl.DataFrame,
    labels: pl.DataFrame,
    folds: int = 5,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """One row per (cell, value) of `tensor` [rows, d], indexed by `index` (row, pair_id,
    run, site, layer, position) and labelled by `labels` (pair_id, run, value, label); and
    a note for each value or cell left out."""
    values, notes = [], []
    for value in value_order(labels["value"].unique().to_list()):
        group = labels.filter(pl.col("value") == value)
        classes, pairs = group["label"].n_unique(), group["pair_id"].n_unique()
        if classes < 2 or pairs < 2:
            few = f"{classes} class" if classes < 2 else f"{pairs} pair"
            notes.append(f"{value}: skipped, it has {few} only (a probe needs 2)")
        else:
            values.append(value)
    examples = index.join(labels.filter(pl.col("value").is_in(values)), on=["pair_id", "run"])
    cells = index.select(CELL).unique(maintain_order=True)
    total = cells.height * len(values)
    tick = progress(total) if progress and total else None
    rows = []
    for cell in cells.iter_rows(named=True):
        at = examples.filter(*[_is(pl.col(k), cell[k]) for k in CELL])
        for value in values:
            group = at.filter(pl.col("value") == value)
            x = tensor[torch.tensor(group["row"].to_list(), dtype=torch.long)]  # [n, d]
            finite = torch.isfinite(x).all(-1)
            if not finite.all():
                notes.append(f"{_where(cell)} {value}: {int((~finite).sum())} non-finite left out")
                group, x = group.filter(pl.Series(finite.tolist())), x[finite]
            if group["label"].n_unique() < 2 or group["pair_id"].n_unique() < 2:
                notes.append(f"{_where(cell)} {value}: skipped, fewer than 2 classes or pairs")
            else:
                texts, ids = group["label"].to_list(), group["pair_id"].to_list()
                scores = cross_validate(x, texts, ids, folds, seed, weight_decay)
                rows.append({**cell, "value": value, **scores})
            if tick:
                tick(1)
    return pl.DataFrame(rows, schema=SCHEMA), notes


def _is(column: pl.Expr, value) -> pl.Expr:
    return column.is_null() if value is None else column == value


def _where(cell: dict) -> str:
    layer = "thought" if cell["layer"] is None else f"L{cell['layer']}"
    return f"{cell['site']} {layer} {cell['position']}"
