"""The statistics stage: per cell and metric, the mean over pairs with its bootstrap CI and
the comparison with the control; and the queries the screen and report make of it."""

from __future__ import annotations

import polars as pl

from nnpatch.engine.metrics import DECODED
from nnpatch.report.stats import bh_q_values, cell_stats, wilson_ci

CELL_KEYS = [
    "mode",
    "site",
    "direction",
    "source",
    "scale",
    "head",
    "effect",
    "layer",
    "layers",
    "position",
    "positions",
]
# control rows stand for the cell whatever the rows write: matched on where they patch
CONTROL_KEYS = ["site", "direction", "head", "effect", "layer", "positions"]
# facets a mode may leave out of its rows; "effect" is mediation's total / direct / indirect
# "layers": knockout's window of layers ("0-3"), a row's layer being its first
FACET_DEFAULTS = {
    "source": "donor",
    "scale": None,
    "head": None,
    "effect": None,
    "layers": None,
}
TYPES = {
    "layer": pl.Int64,
    "head": pl.Int64,
    "scale": pl.Float64,
    "position": pl.String,
    "sem": pl.Float64,
    "control_mean": pl.Float64,
    "control_ci95_low": pl.Float64,
    "control_ci95_high": pl.Float64,
    "diff_ci95_low": pl.Float64,
    "diff_ci95_high": pl.Float64,
    "differs_from_control": pl.Boolean,
    "p_value": pl.Float64,
    "q_value": pl.Float64,
    "differs_from_control_fdr": pl.Boolean,
}
FDR = 0.05  # the default false discovery rate (recipe `stats.fdr`)
# summary.parquet's columns after the cell's keys (CELL_KEYS), for the docs' columns page
SUMMARY_COLUMNS = {
    **{key: "the cell: how its rows were made and where they patch" for key in CELL_KEYS},
    "metric": "the metric summarised",
    "n": "pairs with a finite value",
    "mean": "the mean over pairs (for correct and gives_corrupted: the accuracy)",
    "sem": "its standard error",
    "ci95_low": "95% CI: percentile bootstrap over pairs; Wilson for correct / gives_corrupted",
    "ci95_high": "its upper end",
    "control_mean": "the control rows' mean (same cells from a mismatched pair)",
    "control_ci95_low": "the control's CI",
    "control_ci95_high": "its upper end",
    "diff_ci95_low": "bootstrap CI of (patched - control), paired by pair",
    "diff_ci95_high": "its upper end",
    "differs_from_control": "that CI excludes zero (uncorrected; null when it has no width)",
    "p_value": "bootstrap p-value of the paired difference",
    "nonfinite_pairs": "pairs left out for a non-finite value",
    "q_value": "Benjamini-Hochberg q-value over the run's cells of the metric",
    "differs_from_control_fdr": "q_value <= stats.fdr",
    "clean_run_mean": "decoded metrics: the unpatched clean run's value (mean over pairs)",
    "corrupted_run_mean": "decoded metrics: the unpatched corrupted run's value",
}


def summarize(
    results: pl.DataFrame, names: list[str], seed: int = 0, fdr: float = FDR
) -> pl.DataFrame:
    """Per cell and metric: n, mean, sem, bootstrap 95% CI over pairs, and the control.

    A cell is everything that makes its rows: mode, site, direction, source, scale, head,
    layer and positions. It "differs from control" when the bootstrap CI of
    (patched - control), paired by pair, excludes zero: it moves the answer more than
    patching the same cells from a mismatched pair does. That flag is uncorrected: across
    a run's many cells some clear it by chance. `q_value` is the Benjamini-Hochberg q-value
    of the same difference's bootstrap p-value, over the run's cells of one metric, and
    `differs_from_control_fdr` says q <= `fdr`: the cells that survive the correction.
    """
    results = with_facets(results)
    real = results.filter(~pl.col("control")).sort("pair_id", maintain_order=True)
    control = results.filter(pl.col("control")).sort("pair_id", maintain_order=True)
    rows = []
    for group in real.partition_by(CELL_KEYS, maintain_order=True):
        first = group.row(0, named=True)
        match = control
        for key in CONTROL_KEYS:
            if key == "positions":
                match = match.filter(pl.col(key) == pl.lit(first[key], dtype=pl.List(pl.String)))
            else:
                match = match.filter(pl.col(key).eq_missing(first[key]))
        for name in names:
            key = cell_key(first, name)
            values = group[name].to_numpy().astype(float)
            paired = match[name].to_numpy().astype(float) if match.height == group.height else None
            cell = {k: first[k] for k in CELL_KEYS}
            binary = name in DECODED  # correct, gives_corrupted: 0/1 per pair
            stats = cell_stats(values, paired, seed, key, binary)
            rows.append({**cell, "metric": name, **stats})
    for name in names:
        family = [row for row in rows if row["metric"] == name]
        for row, q in zip(family, bh_q_values([r["p_value"] for r in family]), strict=True):
            row["q_value"] = q
            row["differs_from_control_fdr"] = None if q is None else q <= fdr
    return pl.DataFrame(rows, schema_overrides=TYPES, infer_schema_length=None)


def with_unpatched(
    summary: pl.DataFrame, baselines: pl.DataFrame, names: list[str]
) -> pl.DataFrame:
    """The decoded-answer metrics' values in the unpatched runs beside every cell (mean over
    pairs): for `correct`, the clean run's accuracy and how often the corrupted run gives
    the clean answer; for `gives_corrupted`, the reverse. Only those: they compare text with
    the pair's answers, so one value holds for every site and direction of a grid (a logit
    metric such as top1_changed reads the receiver, which direction decides). Summaries of
    other values, and runs that decode nothing, are left as they are."""
    decoded = [name for name in names if name in DECODED and name != "answer"]
    if "metric" not in summary.columns or not decoded or not set(summary["metric"]) <= set(names):
        return summary
    rows = [
        {
            "metric": name,
            "clean_run_mean": _mean(baselines, f"clean_{name}"),
            "corrupted_run_mean": _mean(baselines, f"corrupted_{name}"),
        }
        for name in decoded
    ]
    schema = {"metric": pl.String, "clean_run_mean": pl.Float64, "corrupted_run_mean": pl.Float64}
    table = pl.DataFrame(rows, schema=schema)
    return summary.join(table, on="metric", how="left", maintain_order="left")


def _mean(baselines: pl.DataFrame, column: str) -> float | None:
    if column not in baselines.columns:
        return None
    values = baselines[column].drop_nans().drop_nulls()
    return float(values.mean()) if len(values) else None


def accuracy(column: pl.Series) -> tuple[float, float, float, int]:
    """A 0/1 column's mean with its Wilson 95% interval and n."""
    values = column.drop_nans().drop_nulls()
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    low, high = wilson_ci(float(values.sum()), n)
    return float(values.mean()), low, high, n


def with_facets(results: pl.DataFrame) -> pl.DataFrame:
    """Rows with every facet column (tables of older runs and of modes without them)."""
    missing = {
        key: pl.lit(value, dtype=TYPES.get(key, pl.String)).alias(key)
        for key, value in FACET_DEFAULTS.items()
        if key not in results.columns
    }
    return results.with_columns(*missing.values()) if missing else results


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


def signed(value) -> str:
    """A value with its sign and three decimals; nothing at all for a missing one."""
    return "" if value is None else format(value, "+.3f")


def cell_key(row: dict, metric: str) -> str:
    """The stable name a cell's bootstrap generator is seeded with: its layer, positions and
    metric, and its source and head where they are not the defaults (so a grid's cells get
    the generators of the single-valued runs they stand for)."""
    extra = "".join(
        f"{key}={row[key]}|"
        for key in ("source", "scale", "head", "effect", "layers")
        if row.get(key) is not None and row.get(key) != FACET_DEFAULTS[key]
    )
    return f"{extra}{row['layer']}|{','.join(row['positions'])}|{metric}"


def cell_label(row: dict) -> str:
    """A short human label for a summary row: "L2 t0", "L1 t0-2", "thought t3"."""
    layer = "thought" if row["layer"] is None else f"L{row.get('layers') or row['layer']}"
    if row.get("head") is not None:
        layer += f" h{row['head']}"
    positions = row["positions"]
    if len(positions) == 1:
        where = positions[0] if not positions[0].isdigit() else f"t{positions[0]}"
    else:
        where = "{" + ",".join(positions) + "}"
    return f"{layer} {where}"
