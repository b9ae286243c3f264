"""What a probed run shows: "which cell decodes which value" (per value, its best cell),
probe.md, a heatmap per value and the command's one-screen summary."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import polars as pl

from nnpatch.probe.labels import value_order
from nnpatch.report import charts
from nnpatch.report.summary import cell_label
from nnpatch.run.folder import write_table, write_text

METHOD = (
    "Multinomial logistic regression on standardized activations (L-BFGS, L2 weight decay), "
    "{folds} folds split by pair (both runs of a pair in one fold), seed {seed}. accuracy: "
    "over all held-out examples (one per pair and run), with a Wilson 95% interval (which "
    "treats the two runs of a pair as independent); majority: the training folds' most "
    "frequent value, scored held out; control: the same probe on the labels permuted across "
    "examples (no relation to the activations); selectivity = accuracy - control. The best "
    "cell of a value: the highest accuracy; of cells tied there, the first in the forward "
    "pass (earliest position, then lowest layer)."
)


def best_cells(table: pl.DataFrame, positions: list[str]) -> pl.DataFrame:
    """Per value, the cell with the highest held-out accuracy; of cells tied there, the
    first in the forward pass (the earliest position, then the lowest layer). Steps in
    order, then the answer."""
    rank = {p: i for i, p in enumerate(positions)}
    best = (
        table.with_columns(
            pl.col("position").replace_strict(rank, default=len(rank)).alias("order")
        )
        .sort(["accuracy", "order", "layer"], descending=[True, False, False], nulls_last=False)
        .group_by("value", maintain_order=True)
        .first()
    )
    order = {v: i for i, v in enumerate(value_order(best["value"].to_list()))}
    return best.sort(pl.col("value").replace_strict(order)).drop("order")


def label(value: str) -> str:
    return value.replace("_", " ")


def where(row: dict) -> str:
    """ "L2 t0", "thought t1" (site `thought`), with the site when it is not resid."""
    name = cell_label({"layer": row["layer"], "positions": [row["position"]]})
    return name if row["site"] == "resid" else f"{name} ({row['site']})"


def best_rows(table: pl.DataFrame, positions: list[str]) -> list[list[str]]:
    return [
        [
            label(r["value"]),
            where(r),
            f"{r['accuracy']:.3f}",
            f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]",
            f"{r['control_accuracy']:.3f}",
            f"{r['selectivity']:+.3f}",
            f"{r['majority']:.3f}",
            str(r["classes"]),
            str(r["n"]),
        ]
        for r in best_cells(table, positions).iter_rows(named=True)
    ]


HEADER = ["value", "cell", "accuracy", "95% CI", "control", "selectivity", "majority"]
HEADER += ["classes", "n"]


def markdown(run, table: pl.DataFrame, notes: list[str], folds: int, seed: int) -> str:
    lines = [f"# Linear probes: {run.resolved['name']} ({run.path.name})", ""]
    lines += [METHOD.format(folds=folds, seed=seed), "", "## Which cell decodes which value", ""]
    positions = run.positions
    lines += _md_table(HEADER, best_rows(table, positions))
    for value in value_order(table["value"].unique().to_list()):
        part = table.filter(pl.col("value") == value)
        cols = [p for p in positions if p in set(part["position"].to_list())]
        lines += ["", f"## {label(value)}: accuracy (selectivity) per cell", ""]
        grid = []
        for (site, layer), rows in part.group_by(["site", "layer"], maintain_order=True):
            at = {r["position"]: r for r in rows.iter_rows(named=True)}
            name = where({"site": site, "layer": layer, "position": "-"}).replace(" -", "")
            grid.append([name] + [_score(at.get(p)) for p in cols])
        lines += _md_table(["layer", *[f"t{p}" if p.isdigit() else p for p in cols]], grid)
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _score(row: dict | None) -> str:
    return "" if row is None else f"{row['accuracy']:.2f} ({row['selectivity']:+.2f})"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def heatmap_frame(table: pl.DataFrame, value: str) -> pl.DataFrame:
    """One value's cells laid out as the heatmap reads a summary: `*` marks cells whose
    Wilson interval lies above both the control's accuracy and the majority baseline."""
    part = table.filter(pl.col("value") == value)
    return part.select(
        "layer",
        pl.concat_list(pl.col("position")).alias("positions"),
        pl.lit("accuracy").alias("metric"),
        pl.col("accuracy").alias("mean"),
        "ci95_low",
        "ci95_high",
        "n",
        pl.col("control_accuracy").alias("control_mean"),
        (pl.col("ci95_low") > pl.max_horizontal("control_accuracy", "majority")).alias(
            "differs_from_control"
        ),
    )


def chart_makers(run, table: pl.DataFrame) -> dict:
    out = {}
    for value in value_order(table["value"].unique().to_list()):
        title = f"{label(value)}: held-out probe accuracy (* = CI above control and majority)"
        frame = heatmap_frame(table, value)
        out[f"probe_{value}"] = partial(charts.heatmap, frame, "accuracy", run.positions, title)
    return out


def write_probe(run, table, notes, folds, seed, draw: bool = True) -> tuple[list[Path], list]:
    """probe.parquet, probe.md and (`draw`) charts/probe_<value>.html and .png, each written
    atomically: the files, and the notes with one per chart that could not be drawn."""
    from nnpatch.report.page import BUNDLE, draw_charts, vega_bundle

    write_table(run.path / "probe.parquet", table)
    files = [run.path / "probe.parquet"]
    if draw and table.height:
        folder = run.path / "charts"
        folder.mkdir(exist_ok=True)
        if not (folder / BUNDLE).is_file():  # the chart pages load it from beside them
            write_text(folder / BUNDLE, vega_bundle())
            files.append(folder / BUNDLE)
        _, undrawn, written = draw_charts(folder, chart_makers(run, table))
        notes = notes + undrawn
        files += written
    write_text(run.path / "probe.md", markdown(run, table, notes, folds, seed))
    return [*files, run.path / "probe.md"], notes


def summary_lines(probed) -> list[str]:
    """The command's screen: what was probed and written, the best cell per value, notes."""
    table = probed.table
    cells = table.select("site", "layer", "position").unique().height
    folds = table["folds"].max() if table.height else 0
    lines = [
        f"{probed.run.path}: probed {cells} cells x {table['value'].n_unique()} values "
        f"({folds} folds by pair); wrote probe.parquet, probe.md, charts/probe_*",
        "which cell decodes which value (held-out accuracy; control: permuted labels):",
    ]
    for value, cell, acc, ci, control, selectivity, majority, _, n in best_rows(
        table, probed.run.positions
    ):
        lines.append(
            f"  {value:<8} {cell:<10} acc {acc} {ci}  control {control}  "
            f"selectivity {selectivity}  majority {majority}  n={n}"
        )
    return lines + [f"note: {note}" for note in probed.notes]
