"""The one-screen summary printed at the end of `nnpatch run`."""

from __future__ import annotations


def render_summary(prep, finished) -> str:
    recipe, base = prep.recipe, finished.baselines
    names = recipe.metrics.names
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
    lines += prep.mode.screen_lines(finished.summary, recipe)
    lines += [f"note: {note}" for note in prep.notes]
    lines += [f"note: {note}" for note in finished.report.get("charts_not_drawn", [])]
    return "\n".join(lines)
