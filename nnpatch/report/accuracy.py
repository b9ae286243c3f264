"""Answer accuracy under intervention, as the report and the screen show it: per cell, how
often the patched run's decoded answer is the clean one (`correct`), with its Wilson 95%
interval, n and the control's accuracy, beside the unpatched runs' own accuracies."""

from __future__ import annotations

import polars as pl

from nnpatch.report.summary import accuracy
from nnpatch.report.top import labeller

SHOWN = 40  # cells in the report's table; summary.parquet has every one


def _pct(value) -> str:
    return "" if value is None else f"{value:.0%}"


def unpatched(baselines: pl.DataFrame) -> list[str]:
    """The unpatched runs' own accuracies, each with its interval, as one sentence."""
    parts = []
    for run, column in (("clean", "clean_correct"), ("corrupted", "corrupted_gives_corrupted")):
        if column in baselines.columns:
            mean, low, high, n = accuracy(baselines[column])
            parts.append(f"{run} run {mean:.0%} [{low:.0%}, {high:.0%}] (n={n})")
    return parts


def report_lines(summary: pl.DataFrame, baselines: pl.DataFrame) -> list[str]:
    """The markdown section, when the run measured `correct`."""
    cells = summary.filter(pl.col("metric") == "correct") if "metric" in summary.columns else None
    if cells is None or cells.is_empty():
        return []
    label = labeller(summary)
    lines = [
        "",
        "## Answer accuracy under intervention (decoded)",
        "",
        "Correct: the patched run's greedy answer gives the clean answer, read as the family's "
        "evaluation reads it. 95% CIs are Wilson score intervals over pairs; the control "
        "patches the same cells from a mismatched pair. Unpatched, each run answering its own "
        f"question: {'; '.join(unpatched(baselines)) or 'not measured'}.",
        "",
        "| cell | accuracy | 95% CI | n | control | clean run | corrupted run gives clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in cells.head(SHOWN).iter_rows(named=True):
        ci = "" if r["ci95_low"] is None else f"[{_pct(r['ci95_low'])}, {_pct(r['ci95_high'])}]"
        lines.append(
            f"| {label(r)} | {_pct(r['mean'])} | {ci} | {r['n']} | {_pct(r['control_mean'])} | "
            f"{_pct(r.get('clean_run_mean'))} | {_pct(r.get('corrupted_run_mean'))} |"
        )
    if cells.height > SHOWN:
        lines.append(f"\n({cells.height - SHOWN} more cells in summary.parquet)")
    return lines


def screen_lines(summary: pl.DataFrame, count: int = 8) -> list[str]:
    """The cells with the highest decoded accuracy, one line each."""
    if "metric" not in summary.columns:
        return []
    cells = summary.filter(pl.col("metric") == "correct")
    if cells.is_empty():
        return []
    label = labeller(summary)
    top = cells.sort("mean", descending=True, nulls_last=True).head(count)
    rows = list(top.iter_rows(named=True))
    width = max(16, *(len(label(r)) for r in rows))
    lines = ["decoded accuracy (gives the clean answer), best cells:"]
    for r in rows:
        ci = "" if r["ci95_low"] is None else f" [{_pct(r['ci95_low'])}, {_pct(r['ci95_high'])}]"
        control = "" if r["control_mean"] is None else f"  control {_pct(r['control_mean'])}"
        lines.append(f"  {label(r):<{width}} {_pct(r['mean']):>4}{ci}  n={r['n']}{control}")
    return lines
