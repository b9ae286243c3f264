"""The key table of a run: for per-cell summaries, the cells with the highest mean of the
lead metric, with their CIs and the control. The report page, summary.md and the end-of-run
screen show it; a mode with another kind of summary gives its own (`Mode.key_table`)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from nnpatch.report.summary import cell_label, signed, top_cells

TOP = 10
VERDICT = {True: "differs from control", False: "within control", None: "no verdict"}


@dataclass
class Table:
    """A titled table of text cells, with a note on how to read it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


FACETS = ("site", "direction", "source", "scale", "effect")


def labeller(summary: pl.DataFrame):
    """A cell's label, with the facets (site, direction, source, scale) that vary in the
    summary: "L2 t0" in a one-recipe run, "L2 t0 (attn, mean)" in a grid."""
    varying = [k for k in FACETS if k in summary.columns and summary[k].n_unique() > 1]

    def label(row: dict) -> str:
        facets = [str(row[k]) for k in varying if row[k] is not None]
        return cell_label(row) + (f" ({', '.join(facets)})" if facets else "")

    return label


def top_cells_table(summary: pl.DataFrame, lead: str, count: int = TOP) -> Table:
    rows = []
    cell_label = labeller(summary)
    for row in top_cells(summary, lead, count).iter_rows(named=True):
        control = "" if row["control_mean"] is None else signed(row["control_mean"])
        beats = {True: "yes", False: "no", None: ""}[row["differs_from_control"]]
        ci = (
            ""
            if row["ci95_low"] is None
            else f"[{signed(row['ci95_low'])}, {signed(row['ci95_high'])}]"
        )
        q = row.get("q_value")  # absent from runs made before q-values
        fdr = {True: "yes", False: "no", None: ""}[row.get("differs_from_control_fdr")]
        rows.append(
            [
                cell_label(row),
                signed(row["mean"]),
                ci,
                str(row["n"]),
                control,
                beats,
                "" if q is None else f"{q:.3g}",
                fdr,
            ]
        )
    return Table(
        f"Top cells by mean {lead}",
        ["cell", "mean", "95% CI", "n", "control", "differs from control", "q (BH)", "after FDR"],
        rows,
        "95% CIs are percentile bootstraps over pairs. A cell differs from the control when the "
        "CI of its paired difference to the random-donor control excludes zero (uncorrected). "
        "q: the Benjamini-Hochberg q-value of that difference over the run's cells of this "
        "metric; after FDR: q at most stats.fdr.",
    )


def top_cells_lines(summary: pl.DataFrame, lead: str, title: str, count: int = 8) -> list[str]:
    """The same cells, one aligned line each, for the end-of-run screen."""
    lines = [f"top cells by mean {lead} ({title}):"]
    label = labeller(summary)
    rows = list(top_cells(summary, lead, count).iter_rows(named=True))
    width = max([16, *(len(label(row)) for row in rows)])
    for row in rows:
        lines.append(f"  {label(row):<{width}} {_cell_line(row)}")
    return lines


def _cell_line(row: dict) -> str:
    """mean, CI, n and the control for one summary row; what the data cannot carry is
    said, not printed as a number."""
    if row["mean"] is None:
        return f"no finite value (n={row['n']})"
    ci = (
        "no CI (fewer than 2 pairs)"
        if row["ci95_low"] is None
        else f"95% CI [{row['ci95_low']:+.3f}, {row['ci95_high']:+.3f}]"
    )
    control = ""
    if row["control_mean"] is not None:
        verdict = VERDICT[row["differs_from_control"]]
        if row.get("q_value") is not None:
            verdict += f", q={row['q_value']:.2g}"
        control = f"  control {row['control_mean']:+.3f} ({verdict})"
    return f"{row['mean']:+.3f}  {ci}  n={row['n']}{control}"
