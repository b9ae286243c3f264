"""The one-screen summary printed at the end of `nnpatch run`."""

from __future__ import annotations

from nnpatch.report.summary import cell_label, lead_metric, top_cells

TOP = 8


def render_summary(prep, finished) -> str:
    recipe, base = prep.recipe, finished.baselines
    names = recipe.metrics.names
    lead = lead_metric(names)
    lines = [
        f"run folder: {finished.path}",
        f"model {prep.model.name} | pairs {len(prep.pairs)} | rows {finished.results.height} | "
        f"{finished.timings['total_s']:.1f} s ({finished.timings['rows_per_s']:.0f} rows/s)",
        "baselines (mean over pairs):",
    ]
    for name in [n for n in ("logit_diff", "logprob_diff") if n in names] or names[:1]:
        lines.append(
            f"  {name:<14} clean {base[f'clean_{name}'].mean():+9.4f}   "
            f"corrupted {base[f'corrupted_{name}'].mean():+9.4f}"
        )
    lines.append(
        f"  clean top-1 correct {base['clean_top1_is_clean_answer'].mean():.0%}   "
        f"corrupted top-1 correct {base['corrupted_top1_is_corrupted_answer'].mean():.0%}"
    )
    top = top_cells(finished.summary, lead, TOP)
    lines.append(
        f"top cells by mean {lead} ({recipe.patch.mode}, {recipe.patch.site}, "
        f"{recipe.patch.direction}):"
    )
    for row in top.iter_rows(named=True):
        lines.append(f"  {cell_label(row):<16} {_cell_line(row)}")
    lines += [f"note: {note}" for note in prep.notes]
    lines += [f"note: {note}" for note in finished.report.get("charts_not_drawn", [])]
    return "\n".join(lines)


VERDICT = {True: "differs from control", False: "within control", None: "no verdict"}


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
        control = f"  control {row['control_mean']:+.3f} ({VERDICT[row['differs_from_control']]})"
    return f"{row['mean']:+.3f}  {ci}  n={row['n']}{control}"
