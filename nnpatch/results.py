"""Result tables: per-row results, per-pair baselines and the per-cell summary (polars)."""

from __future__ import annotations

import polars as pl
import torch

from nnpatch.pairs import Pair
from nnpatch.plan import PatchSpec

Z95 = 1.959963984540054  # normal quantile for a two-sided 95% interval
CELL_KEYS = ["mode", "site", "direction", "layer", "position", "positions"]


def results_table(
    rows: list[tuple[PatchSpec, int]],
    pairs: list[Pair],
    values: torch.Tensor,
    names: list[str],
    mode: str,
    site: str,
    direction: str,
) -> pl.DataFrame:
    """One row per (pair, patch): cell columns, then one column per metric."""
    columns = {
        "pair_id": [pairs[p].id for _, p in rows],
        "mode": [mode] * len(rows),
        "site": [site] * len(rows),
        "direction": [direction] * len(rows),
        "layer": [spec.layer for spec, _ in rows],
        "position": [spec.positions[0] if mode == "single" else None for spec, _ in rows],
        "positions": [list(spec.positions) for spec, _ in rows],
    }
    schema = {
        "pair_id": pl.String,
        "mode": pl.String,
        "site": pl.String,
        "direction": pl.String,
        "layer": pl.Int64,
        "position": pl.String,
        "positions": pl.List(pl.String),
    }
    frame = pl.DataFrame(columns, schema=schema)
    metrics = pl.DataFrame(values.double().numpy(), schema=names, orient="row")
    return pl.concat([frame, metrics], how="horizontal")


def baselines_table(
    pairs: list[Pair],
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    names: list[str],
    extra: dict[str, list],
) -> pl.DataFrame:
    """One row per pair: the unpatched clean and corrupted runs scored by every metric."""
    table = {
        "pair_id": [p.id for p in pairs],
        "clean_answer": [p.clean_answer for p in pairs],
        "corrupted_answer": [p.corrupted_answer for p in pairs],
        **extra,
    }
    for j, name in enumerate(names):
        table[f"clean_{name}"] = clean[:, j].double().tolist()
        table[f"corrupted_{name}"] = corrupt[:, j].double().tolist()
    return pl.DataFrame(table)


def summarize(results: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Per cell and metric: n, mean, sem and a normal-approximation 95% CI over pairs."""
    long = results.with_columns(pl.col("positions").list.join(",").alias("_key")).unpivot(
        index=[*CELL_KEYS, "_key", "pair_id"], on=names, variable_name="metric"
    )
    keys = ["mode", "site", "direction", "layer", "position", "_key", "metric"]
    summary = (
        long.group_by(keys, maintain_order=True)
        .agg(
            pl.col("positions").first(),
            pl.col("value").count().alias("n"),
            pl.col("value").mean().alias("mean"),
            (pl.col("value").std(ddof=1) / pl.col("value").count().sqrt()).alias("sem"),
        )
        .with_columns(
            (pl.col("mean") - Z95 * pl.col("sem")).alias("ci95_low"),
            (pl.col("mean") + Z95 * pl.col("sem")).alias("ci95_high"),
        )
        .drop("_key")
    )
    return summary.select([*CELL_KEYS, "metric", "n", "mean", "sem", "ci95_low", "ci95_high"])


def cell_label(row: dict) -> str:
    """A short human label for a summary row: "L2 t0", "L1 t0-2", "thought t3"."""
    layer = "thought" if row["layer"] is None else f"L{row['layer']}"
    positions = row["positions"]
    if len(positions) == 1:
        where = positions[0] if not positions[0].isdigit() else f"t{positions[0]}"
    else:
        where = "{" + ",".join(positions) + "}"
    return f"{layer} {where}"
