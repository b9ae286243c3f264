"""`nnpatch eval`: the model's own accuracy, unpatched, left to decode its answers, for each
number of thoughts K the recipe lists (`model.num_thoughts = [0, 1, 2, ...]`): whether the
latents are needed at all, and how many.

Each K runs the family's real loop with K thoughts, then greedy decoding as its evaluation
decodes (stop at eos, at most `metrics.answer_tokens` tokens); an answer is right when the
part the family's evaluation reads gives the expected answer as a number. Each pair's clean
question is one question (its answer is `clean_answer`). The folder is built under a hidden
name and renamed when whole, so a folder named `eval_*` is always a finished evaluation.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import altair as alt
import polars as pl

from nnpatch.errors import RecipeError
from nnpatch.models import build_model
from nnpatch.models.text import answer_is
from nnpatch.report.stats import wilson_ci
from nnpatch.run import batching, folder

ACCURACY = {
    "thoughts": pl.Int64,
    "accuracy": pl.Float64,
    "ci95_low": pl.Float64,
    "ci95_high": pl.Float64,
    "correct": pl.Int64,
    "n": pl.Int64,
}


@dataclass
class Evaluated:
    path: Path
    accuracy: pl.DataFrame  # one row per K
    answers: pl.DataFrame  # one row per (K, question)
    notes: list[str]


def thought_counts(recipe) -> list[int | None]:
    """The Ks to evaluate: the recipe's list, or its one K (None: the release's own)."""
    value = recipe.model.num_thoughts
    return list(value) if isinstance(value, list) else [value]


def evaluate(path: str | Path, overrides: list[str] = (), progress=None) -> Evaluated:
    """Accuracy per K of the recipe's model on its pairs' clean questions, written to a new
    `<run.output>/<name>/eval_<time>_<id>/` folder."""
    from nnpatch.run.prepare import recipe_and_pairs

    source = Path(path)
    recipe, _, pairs, _ = recipe_and_pairs(source, list(overrides))
    notes = []
    if recipe.data.filter != "none":  # it would keep only the questions answered right
        pairs = pairs[: recipe.data.limit or len(pairs)]
        notes.append(f"data.filter = {recipe.data.filter!r} is not applied: eval measures accuracy")
    counts = thought_counts(recipe)
    section = recipe.model.model_copy(update={"num_thoughts": None})
    model = build_model(section, source, on_ndif=recipe.run.remote is True)
    _check_model(model, counts, source)
    default = getattr(model, "num_thoughts", None)
    tokens = recipe.metrics.answer_tokens
    chunk = max(1, batching.fixed(recipe.run.batch_size))
    tick = (progress or (lambda total: lambda n: None))(len(counts) * len(pairs))
    rows, clock = [], time.perf_counter()
    try:
        for k in counts:
            model.module.num_thoughts = default if k is None else k
            for start in range(0, len(pairs), chunk):
                part = pairs[start : start + chunk]
                texts = model.greedy_answers([p.clean_question for p in part], tokens)
                for pair, text in zip(part, texts, strict=True):
                    right = answer_is(model.read_answer(text), pair.clean_answer)
                    rows.append(
                        (model.module.num_thoughts, pair.id, pair.clean_answer, text, right)
                    )
                tick(len(part))
    finally:
        if default is not None:
            model.module.num_thoughts = default
    answers = pl.DataFrame(
        rows,
        schema={
            "thoughts": pl.Int64,
            "pair_id": pl.String,
            "expected": pl.String,
            "decoded": pl.String,
            "correct": pl.Boolean,
        },
        orient="row",
    )
    accuracy = accuracy_table(answers)
    record = {
        "recipe": str(source),
        "model": model.name,
        "questions": len(pairs),
        "thoughts": accuracy["thoughts"].to_list(),
        "answer_tokens": tokens,
        "seconds": time.perf_counter() - clock,
        "finished": folder.now(),
    }
    out = _write(Path(recipe.run.output) / recipe.name, accuracy, answers, record)
    return Evaluated(out, accuracy, answers, notes)


def accuracy_table(answers: pl.DataFrame) -> pl.DataFrame:
    """Per K: accuracy with its Wilson 95% interval, correct and n."""
    rows = []
    for (k,), part in answers.group_by("thoughts", maintain_order=True):
        n, right = part.height, int(part["correct"].sum())
        low, high = wilson_ci(right, n)
        rows.append((k, right / n, low, high, right, n))
    return pl.DataFrame(rows, schema=ACCURACY, orient="row").sort("thoughts")


def _check_model(model, counts: list[int | None], source: Path) -> None:
    """Ks other than the release's own need a loop whose length is the model's to choose."""
    if counts == [None]:
        if not hasattr(model, "greedy_answers"):
            raise RecipeError(
                source, "model", f"{model.name} cannot decode answers", "evaluate a thought model"
            )
        return
    if not getattr(model, "thoughts_settable", False):
        raise RecipeError(
            source,
            "model.num_thoughts",
            f"{model.name} does not take a number of thoughts to think (its loop decides it, "
            "or it has none)",
            "give no num_thoughts to evaluate its own",
        )


def accuracy_chart(accuracy: pl.DataFrame) -> alt.Chart:
    """Accuracy against K, with each K's Wilson 95% interval."""
    data = alt.Data(values=accuracy.to_dicts())
    x = alt.X("thoughts:O", title="thoughts (K)")
    line = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x, alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (unpatched)")
        )
    )
    bars = (
        alt.Chart(data)
        .mark_errorbar()
        .encode(x, alt.Y("ci95_low:Q", title=""), alt.Y2("ci95_high:Q"))
    )
    return (bars + line).properties(title="Accuracy against the number of thoughts (95% Wilson)")


def _write(parent: Path, accuracy: pl.DataFrame, answers: pl.DataFrame, record: dict) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    final = parent / f"eval_{stamp}_{secrets.token_hex(3)}"
    building = parent / f".{final.name}.partial"
    building.mkdir(parents=True)
    try:
        folder.write_table(building / "accuracy.parquet", accuracy)
        folder.write_table(building / "accuracy.csv", accuracy)
        folder.write_table(building / "answers.parquet", answers)
        folder.write_json(building / "eval.json", record)
        _draw(building, accuracy)
        os.replace(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final


def _draw(out: Path, accuracy: pl.DataFrame) -> None:
    from nnpatch.report.page import draw_charts

    makers: dict[str, Callable] = {"accuracy_by_thoughts": lambda: accuracy_chart(accuracy)}
    _, notes, _ = draw_charts(out, makers)
    if notes:
        folder.write_text(out / "charts_not_drawn.txt", "\n".join(notes) + "\n")


def screen_lines(done: Evaluated) -> list[str]:
    lines = [f"eval folder: {done.path}", "accuracy by thoughts (unpatched, greedy decoded):"]
    for r in done.accuracy.iter_rows(named=True):
        lines.append(
            f"  K={r['thoughts']:<3} {r['accuracy']:6.1%}  95% CI [{r['ci95_low']:.1%}, "
            f"{r['ci95_high']:.1%}]  {r['correct']}/{r['n']}"
        )
    return lines + [f"note: {note}" for note in done.notes]
