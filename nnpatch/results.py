"""Result tables: per-row results, per-pair baselines and the per-cell summary (polars)."""

from __future__ import annotations

import polars as pl
import torch

from nnpatch.engine import Row
from nnpatch.pairs import Pair
from nnpatch.stats import cell_stats

CELL_KEYS = ["mode", "site", "direction", "layer", "position", "positions"]


def results_table(
    rows: list[Row],
    pairs: list[Pair],
    values: torch.Tensor,
    names: list[str],
    mode: str,
    site: str,
    direction: str,
    estimate: bool = False,
    tokens: list[dict[str, tuple[int, str]]] | None = None,
) -> pl.DataFrame:
    """One row per (pair, patch): cell columns, the patched tokens, the donor, one column per
    metric, `nonfinite` (some metric of the row is NaN or inf) and `estimate` (attribution
    estimates rather than patched values).

    `control` rows patch the same cells from another pair's run (the noise floor).
    `tokens` gives, per pair, each position's absolute index in the receiver's sequence and
    its token's text: `token_indices` and `tokens` per row, aligned with `positions`, and
    `token_index` / `token` for one-position rows.
    """
    where = [
        [tokens[p][label] if tokens else (None, None) for label in spec.positions]
        for spec, p, _ in rows
    ]
    single = mode in ("single", "attribution")
    columns = {
        "pair_id": [pairs[p].id for _, p, _ in rows],
        "mode": [mode] * len(rows),
        "site": [site] * len(rows),
        "direction": [direction] * len(rows),
        "layer": [spec.layer for spec, _, _ in rows],
        "position": [spec.positions[0] if single else None for spec, _, _ in rows],
        "positions": [list(spec.positions) for spec, _, _ in rows],
        "token_index": [cells[0][0] if single else None for cells in where],
        "token": [cells[0][1] if single else None for cells in where],
        "token_indices": [[index for index, _ in cells] for cells in where],
        "tokens": [[text for _, text in cells] for cells in where],
        "control": [p != d for _, p, d in rows],
        "donor_id": [pairs[d].id for _, _, d in rows],
    }
    schema = {
        "pair_id": pl.String,
        "mode": pl.String,
        "site": pl.String,
        "direction": pl.String,
        "layer": pl.Int64,
        "position": pl.String,
        "positions": pl.List(pl.String),
        "token_index": pl.Int64,
        "token": pl.String,
        "token_indices": pl.List(pl.Int64),
        "tokens": pl.List(pl.String),
        "control": pl.Boolean,
        "donor_id": pl.String,
    }
    frame = pl.DataFrame(columns, schema=schema)
    metrics = pl.DataFrame(values.double().numpy(), schema=names, orient="row")
    # flagged rather than dropped: recovery is NaN by definition when a pair's gap vanishes
    flags = pl.DataFrame(
        {
            "nonfinite": (~torch.isfinite(values).all(dim=1)).tolist(),
            "estimate": [estimate] * len(rows),
        },
        schema={"nonfinite": pl.Boolean, "estimate": pl.Boolean},
    )
    return pl.concat([frame, metrics, flags], how="horizontal")


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
    return pl.DataFrame(
        table, schema_overrides={"span_tokens": pl.Int64} if "span_tokens" in table else None
    )


def summarize(results: pl.DataFrame, names: list[str], seed: int = 0) -> pl.DataFrame:
    """Per cell and metric: n, mean, sem, bootstrap 95% CI over pairs, and the control.

    A cell "differs from control" when the bootstrap CI of (patched - control), paired by pair,
    excludes zero: it moves the answer more than patching the same cells from a mismatched
    pair does.
    """
    real = results.filter(~pl.col("control")).sort("pair_id", maintain_order=True)
    control = results.filter(pl.col("control")).sort("pair_id", maintain_order=True)
    rows = []
    for group in real.partition_by(["mode", "layer", "position", "positions"], maintain_order=True):
        first = group.row(0, named=True)
        match = control.filter(
            (pl.col("layer").eq_missing(first["layer"]))
            & (pl.col("positions") == pl.lit(first["positions"], dtype=pl.List(pl.String)))
        )
        for name in names:
            key = cell_key(first, name)
            values = group[name].to_numpy().astype(float)
            paired = match[name].to_numpy().astype(float) if match.height == group.height else None
            cell = {k: first[k] for k in CELL_KEYS}
            rows.append({**cell, "metric": name, **cell_stats(values, paired, seed, key)})
    return pl.DataFrame(
        rows,
        schema_overrides={
            "layer": pl.Int64,
            "position": pl.String,
            "sem": pl.Float64,
            "control_mean": pl.Float64,
            "control_ci95_low": pl.Float64,
            "control_ci95_high": pl.Float64,
            "diff_ci95_low": pl.Float64,
            "diff_ci95_high": pl.Float64,
            "differs_from_control": pl.Boolean,
        },
        infer_schema_length=None,
    )


def lead_metric(names: list[str]) -> str:
    """The metric cells are ranked by: recovery when measured, else the first one."""
    return "recovery" if "recovery" in names else names[0]


def top_cells(summary: pl.DataFrame, metric: str, count: int) -> pl.DataFrame:
    """The `count` cells with the highest mean `metric`."""
    return (
        summary.filter(pl.col("metric") == metric)
        .sort("mean", descending=True, nulls_last=True)
        .head(count)
    )


def cell_key(row: dict, metric: str) -> str:
    """The stable name a cell's bootstrap generator is seeded with."""
    return f"{row['layer']}|{','.join(row['positions'])}|{metric}"


def cell_label(row: dict) -> str:
    """A short human label for a summary row: "L2 t0", "L1 t0-2", "thought t3"."""
    layer = "thought" if row["layer"] is None else f"L{row['layer']}"
    positions = row["positions"]
    if len(positions) == 1:
        where = positions[0] if not positions[0].isdigit() else f"t{positions[0]}"
    else:
        where = "{" + ",".join(positions) + "}"
    return f"{layer} {where}"
