"""The one-screen summary printed at the end of `nnpatch run`."""

from __future__ import annotations

from nnpatch.report import accuracy
from nnpatch.report.summary import accuracy as proportion
from nnpatch.report.summary import lead_metric


def render_summary(prep, finished) -> str:
    recipe, base = prep.recipe, finished.baselines
    names = recipe.metrics.numeric
    lines = [
        f"run folder: {finished.path}",
        f"model {prep.model.name} | pairs {len(prep.pairs)} | rows {finished.results.height} | "
        f"{finished.timings['total_s']:.1f} s ({finished.timings['rows_per_s']:.0f} rows/s)",
        where_time_went(finished.timings),
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
    lines += accuracy_lines(base)
    lines += prep.mode.screen_lines(finished.summary, recipe)
    if lead_metric(names) != "correct":
        lines += accuracy.screen_lines(finished.summary)
    lines += [f"note: {note}" for note in prep.notes]
    lines += [f"note: {note}" for note in finished.report.get("charts_not_drawn", [])]
    return "\n".join(lines)


def accuracy_lines(base) -> list[str]:
    """The unpatched runs' decoded-answer accuracy, when the run decodes answers: each run
    giving its own question's answer, with Wilson 95% intervals."""
    if "clean_correct" not in base.columns or "corrupted_gives_corrupted" not in base.columns:
        return []
    parts = []
    for run, column in (("clean", "clean_correct"), ("corrupted", "corrupted_gives_corrupted")):
        mean, low, high, n = proportion(base[column])
        parts.append(f"{run} {mean:.0%} [{low:.0%}, {high:.0%}]")
    return [f"  decoded accuracy (own answer, n={n}): " + "   ".join(parts)]


STAGES = {  # timing key: the stage's name on screen, in the order a run passes them
    "imports_s": "imports",
    "pairs_s": "recipe and pairs",
    "model_s": "model",
    "checks_s": "checks",
    "baselines_s": "baselines",
    "batch_size_s": "batch size",
    "patch_s": "sweep",
    "tables_s": "tables",
    "statistics_s": "statistics",
    "report_s": "report",
}


def where_time_went(timings: dict[str, float]) -> str:
    """One line: each stage's seconds, and the time outside the sweep as a multiple of it."""
    shown = {name: timings[key] for key, name in STAGES.items() if key in timings}
    outside = sum(seconds for name, seconds in shown.items() if name != "sweep")
    parts = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in shown.items())
    sweep = shown.get("sweep", 0.0)
    ratio = f"; outside the sweep {outside / sweep:.1f}× it" if sweep > 0 else ""
    return f"time: {parts}{ratio}"
