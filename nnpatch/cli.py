"""The `nnpatch` command: thin click commands over the library."""

from __future__ import annotations

import click

from nnpatch import __version__
from nnpatch.cli_errors import OneLineGroup, errors, stop_signals
from nnpatch.run.progress import progress_bar as _progress  # tests stand in for it here

SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set patch.site=attn (value parsed as TOML).",
)

RUN_HELP = """Run the patching sweep a RECIPE describes and write a run folder.

\b
Example:
  nnpatch run recipes/position.toml --set patch.direction=noise --limit 8
  nnpatch run --resume outputs/position/20261125T101500Z_1a2b3c

Rows are saved as batches finish; a run stopped by Ctrl-C, a kill or a crash continues
with --resume, which refuses if the recipe, the model's weights or the pairs changed.
"""


@click.group(
    cls=OneLineGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "NNPATCH"},
)
@click.version_option(__version__, prog_name="nnpatch")
def main() -> None:
    """Activation patching for continuous-thought models (CODI, Coconut), from TOML recipes."""


@main.command(help=RUN_HELP)
@click.argument("recipe", type=click.Path(), required=False)
@SET_OPTION
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N pairs.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (run.output).")
@click.option("--remote", is_flag=True, help="Run every traced forward on NDIF (run.remote).")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    help="Continue an interrupted run in RUN_DIR (its recipe, overrides and saved rows).",
)
def run(
    recipe: str | None,
    overrides: tuple[str, ...],
    limit: int | None,
    out: str | None,
    remote: bool,
    resume_dir: str | None,
) -> None:
    import time
    from pathlib import Path

    clock = time.perf_counter()
    from nnpatch.run.execute import execute  # noqa: F401 - torch, transformers, the report: timed
    from nnpatch.run.prepare import prepare
    from nnpatch.run.resume import resume_source

    imports_s = time.perf_counter() - clock

    if (recipe is None) == (resume_dir is None):
        raise click.UsageError("give a RECIPE to start a run, or --resume RUN_DIR to continue one")
    if remote:
        overrides = (*overrides, "run.remote=true")
    if resume_dir is not None and (overrides or limit is not None or out):
        raise click.UsageError("--resume takes the recipe, overrides and output of the run")
    with errors(), stop_signals():
        resume = None
        if resume_dir is not None:
            manifest, recipe, recorded = resume_source(Path(resume_dir))
            prep = prepare(recipe, recorded)
            resume = (Path(resume_dir), manifest)
        else:
            prep = prepare(recipe, list(overrides), limit, out)
        prep.seconds["imports_s"] = imports_s
        _execute(prep, resume)


RECORD_HELP = """Export every cell's activation of a RECIPE, both runs of every pair.

\b
Example:
  nnpatch record recipes/position.toml --set patch.layers=[0,2] --limit 16

Runs the recipe's model, pairs, site, layers and positions in mode "record": the
activations go to activations.safetensors in the run folder, indexed by results.parquet;
load both with nnpatch.load_activations(RUN_DIR). An export over run.max_export (default
2GiB) is refused before anything runs. Continue a stopped one with nnpatch run --resume.
"""


@main.command(help=RECORD_HELP)
@click.argument("recipe", type=click.Path())
@SET_OPTION
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N pairs.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (run.output).")
def record(recipe: str, overrides: tuple[str, ...], limit: int | None, out: str | None) -> None:
    from nnpatch.recipe import record_override
    from nnpatch.run.prepare import prepare

    with errors(), stop_signals():
        as_record = record_override(recipe)
        _execute(prepare(recipe, [as_record, *overrides], limit, out), None)


def _execute(prep, resume) -> None:
    """Run a prepared recipe with a progress bar, then print the end-of-run screen."""
    from nnpatch.report.screen import render_summary
    from nnpatch.run.execute import execute

    auto = " (auto)" if prep.recipe.run.batch_size == "auto" else ""

    def start(total: int):  # once the sweep begins: what it is, then the bar
        click.echo(
            f"{prep.model.name}: {len(prep.pairs)} pairs, {len(prep.plan)} patches per "
            f"pair, {total} rows, batch {prep.recipe.run.batch_size}{auto}",
            err=True,
        )
        return _progress(total)

    finished = execute(prep, progress=start, resume=resume)
    click.echo(render_summary(prep, finished))
    for warning in finished.warnings:
        click.echo(f"warning: {warning}", err=True)
    if "error" in finished.report:
        click.echo(
            f"warning: the report was not written ({finished.report['error']}); the tables "
            f"are; draw it again with: nnpatch report {finished.path}",
            err=True,
        )


@main.command(name="eval")
@click.argument("recipe", type=click.Path())
@SET_OPTION
def evaluate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Accuracy of a RECIPE's model, unpatched, decoding its own answers to the pairs' clean
    questions, for each number of thoughts in model.num_thoughts (a list, 0 allowed).

    \b
    Example:
      nnpatch eval recipes/eval.toml --set 'model.num_thoughts=[0,1,2,3]'
    """
    from nnpatch.evaluate import evaluate as run_eval
    from nnpatch.evaluate import screen_lines

    with errors(), stop_signals():
        for line in screen_lines(run_eval(recipe, list(overrides), _progress)):
            click.echo(line)


@main.command()
@click.argument("recipe", type=click.Path())
@SET_OPTION
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a RECIPE without running it or loading weights.

    Checks the schema, the pairs, and the patch cells against the model's layers and
    thoughts when its config is reachable (a note says so when it is not).
    """
    from nnpatch.run.prepare import check

    with errors():
        checked = check(recipe, list(overrides))
        patch = checked.recipe.patch
        plan = "" if checked.plan is None else f", {len(checked.plan)} patches per pair"
        name = checked.shape.name if checked.shape else checked.recipe.model.checkpoint
        click.echo(
            f"{recipe}: ok ({name}, {checked.pairs} pairs{plan}, mode {patch.mode}, "
            f"site {patch.site})"
        )
        for note in checked.notes:
            click.echo(f"note: {note}")


@main.command()
@click.argument("recipe", type=click.Path())
@SET_OPTION
def inspect(recipe: str, overrides: tuple[str, ...]) -> None:
    """Load a RECIPE's model and describe it: layers, sites, positions, ids, key accounting."""
    from nnpatch.models.describe import describe
    from nnpatch.recipe import load_recipe

    with errors():
        loaded = load_recipe(recipe, list(overrides))
        description = describe(loaded, recipe)
        click.echo(
            f"recipe {recipe}: {loaded.name}, mode {loaded.patch.mode}, "
            f"site {loaded.patch.site}, direction {getattr(loaded.patch, 'direction', '-')}"
        )
        click.echo(description)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Re-render a finished RUN_DIR's charts, report.html and summary.md from its tables."""
    from nnpatch.report.page import render

    with errors():
        rendered = render(run_dir)
        click.echo(
            f"{run_dir}: wrote {len(rendered.files)} files (report.html, summary.md, charts/)"
        )
        for note in rendered.notes:
            click.echo(f"note: {note}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Cross-validation folds (by pair).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the folds and control labels.",
)
def probe(run_dir: str, folds: int, seed: int) -> None:
    """Fit linear probes on a finished record RUN_DIR: per cell, the answer and each step.

    Cross-validated by pair (--folds), against the majority class and a control task of
    permuted labels; writes probe.parquet, probe.md and charts/probe_*.html into RUN_DIR.
    """
    from nnpatch.probe import probe_run
    from nnpatch.probe.report import summary_lines

    with errors():
        for line in summary_lines(probe_run(run_dir, folds, seed)):
            click.echo(line)


@main.command()
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder (default: outputs/compare/<A>_vs_<B>).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Bootstrap seed."
)
def compare(run_a: str, run_b: str, out: str | None, seed: int) -> None:
    """Difference heatmaps A - B with bootstrap CIs (paired when the runs share pairs)."""
    from pathlib import Path

    from nnpatch.report.compare import compare_runs

    with errors():
        target = (
            Path(out)
            if out
            else (Path("outputs") / "compare" / f"{Path(run_a).name}_vs_{Path(run_b).name}")
        )
        table = compare_runs(run_a, run_b, target, seed)
        click.echo(
            f"{target}: {table.height} (cell, metric) differences, "
            f"{int(table['differs'].sum())} with a CI that excludes zero"
        )


@main.command()
def models() -> None:
    """List the known releases a recipe can name by hub id (model.checkpoint = "<id>")."""
    from nnpatch.models.registry import listing

    for line in listing():
        click.echo(line)


@main.group()
def pairs() -> None:
    """Make clean/corrupted pair files."""


@pairs.command("gsm8k")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(),
    help="GSM8K (question, answer with <<...>> annotations): a JSONL file, a Hugging Face "
    "dataset folder (save_to_disk), or a hub id in the local HF cache (openai/gsm8k:main).",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(),
    help="Where to write the pairs: a JSONL file, or with --format dataset a folder.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["jsonl", "dataset"]),
    default="jsonl",
    show_default=True,
    help="dataset: a Hugging Face save_to_disk folder (pip install 'nnpatch[datasets]').",
)
@click.option("--n", type=click.IntRange(min=1), help="Stop after N pairs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def pairs_gsm8k(input_path: str, out_path: str, out_format: str, n: int | None, seed: int) -> None:
    """Change one number per GSM8K problem and recompute its answer through the annotations.

    Problems where that is ambiguous are skipped; the counts say why.
    """
    from pathlib import Path

    from nnpatch.pairs.gsm8k import (
        check_distinct_paths,
        describe_counts,
        make_pairs,
        read_gsm8k,
        write_pairs_jsonl,
    )

    out = Path(out_path)
    if out_format == "jsonl" and out.is_dir():
        raise click.BadParameter(
            f"{out_path} is a folder; give a .jsonl file, or --format dataset to write a "
            "dataset folder",
            param_hint="'--out'",
        )
    if out_format == "dataset" and out.exists() and (out.is_file() or any(out.iterdir())):
        raise click.BadParameter(
            f"{out_path} exists and is not an empty folder; nothing was written: choose a new "
            "folder",
            param_hint="'--out'",
        )
    with errors():
        check_distinct_paths(input_path, out_path)
        records, counts = make_pairs(read_gsm8k(input_path), n=n, seed=seed)
        if out_format == "dataset":
            from nnpatch.pairs.hf import write_folder

            write_folder(records, out_path)
        else:
            write_pairs_jsonl(records, out_path)
        click.echo(f"{out_path}: {len(records)} pairs; {describe_counts(counts)}")
