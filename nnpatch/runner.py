"""From a recipe file to a finished run folder.

`prepare` does every check that can fail on bad input (recipe, model, pairs, plan) before
anything is written; `execute` runs the sweep and writes the folder.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

import nnpatch
from nnpatch import rundir
from nnpatch.attribution import estimate, verify_cells
from nnpatch.engine import Engine, PairAnswers
from nnpatch.errors import BaselineError, ModelError, PairsError, RecipeError
from nnpatch.fingerprint import fingerprint
from nnpatch.models import ModelShape, ThoughtModel, build_model, model_shape
from nnpatch.models.base import last_number
from nnpatch.pairs import Pair, load_pair_set
from nnpatch.plan import PatchSpec, build_plan, by_first_position
from nnpatch.recipe import Recipe, load_recipe
from nnpatch.remote import check_remote
from nnpatch.report import render as render_report
from nnpatch.results import baselines_table, results_table, summarize
from nnpatch.resume import check_unchanged
from nnpatch.shards import ShardStore


@dataclass
class Prepared:
    recipe: Recipe
    source: Path
    overrides: list[str]
    model: ThoughtModel
    pairs: list[Pair]
    pair_counts: dict[str, int]
    plan: list[PatchSpec]
    engine: Engine
    answers: PairAnswers


@dataclass
class Finished:
    path: Path
    results: pl.DataFrame
    baselines: pl.DataFrame
    summary: pl.DataFrame
    timings: dict[str, float] = field(default_factory=dict)


def prepare(
    path: str | Path,
    overrides: list[str] = (),
    limit: int | None = None,
    output: str | Path | None = None,
) -> Prepared:
    """Load and check everything a run needs; raises NnpatchError on any bad input."""
    source = Path(path)
    overrides = list(overrides)
    if limit is not None:
        overrides.append(f"data.limit={limit}")
    if output is not None:
        overrides.append(f"run.output={json.dumps(str(output))}")
    recipe, pairs, counts = _recipe_and_pairs(source, overrides)
    _check_output(Path(recipe.run.output), source)
    check_remote(recipe, source)
    torch.manual_seed(recipe.run.seed)
    model = build_model(recipe.model, source, on_ndif=recipe.run.remote is True)
    if recipe.data.filter == "both-correct":
        pairs, counts = _keep_both_correct(model, pairs, counts, recipe, source)
    try:
        if hasattr(model, "bind_pairs"):  # plain LMs: span positions come from the pairs
            model.bind_pairs(pairs, recipe.data.span_markers)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    plan = build_plan(recipe, model.shape, source)
    try:
        engine = Engine(
            model,
            recipe.patch.site,
            recipe.patch.direction,
            recipe.metrics.names,
            remote=recipe.run.remote,
        )
        answers = engine.answers(pairs)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    return Prepared(recipe, source, overrides, model, pairs, counts, plan, engine, answers)


@dataclass
class Checked:
    """What `nnpatch validate` could check without loading weights."""

    recipe: Recipe
    pairs: int
    shape: ModelShape | None
    plan: list[PatchSpec] | None
    notes: list[str]


def check(path: str | Path, overrides: list[str] = ()) -> Checked:
    """Schema, pairs and (when the model's config is reachable) the plan's cells."""
    source = Path(path)
    recipe, pairs, _ = _recipe_and_pairs(source, list(overrides))
    try:
        shape = model_shape(recipe.model, source)
    except ModelError as err:
        note = f"model not checked here (layer and position ranges unchecked): {err}"
        return Checked(recipe, len(pairs), None, None, [note])
    return Checked(recipe, len(pairs), shape, build_plan(recipe, shape, source), [])


def _recipe_and_pairs(source: Path, overrides: list[str]) -> tuple[Recipe, list[Pair], dict]:
    recipe = load_recipe(source, overrides)
    data = recipe.data
    limit = None if data.filter != "none" else data.limit  # a filter takes the limit after it
    try:
        pairs, counts = load_pair_set(data.pairs, source.parent, limit, data.source, data.seed)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    return recipe, pairs, counts


def _keep_both_correct(model, pairs: list[Pair], counts: dict, recipe: Recipe, source: Path):
    """Pairs whose clean and corrupted questions the model answers right (greedy, real loop),
    in order, until data.limit are kept."""
    if not hasattr(model, "greedy_answers"):
        raise RecipeError(
            source,
            "data.filter",
            f"{model.name} cannot decode answers",
            "use filter = 'none' for plain causal LMs",
        )
    limit, chunk = recipe.data.limit or len(pairs), max(1, recipe.run.batch_size // 2)
    kept: list[Pair] = []
    checked = 0
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        decoded = model.greedy_answers(
            [p.clean_question for p in part] + [p.corrupted_question for p in part]
        )
        for pair, clean, corrupt in zip(
            part, decoded[: len(part)], decoded[len(part) :], strict=True
        ):
            checked += 1
            if (
                last_number(clean) == pair.clean_answer
                and last_number(corrupt) == pair.corrupted_answer
            ):
                kept.append(pair)
            if len(kept) == limit:
                break
        if len(kept) == limit:
            break
    if not kept:
        raise RecipeError(
            source,
            "data.filter",
            f"the model answers no pair right on both sides ({checked} checked)",
            "check the model, or set filter = 'none'",
        )
    counts = {
        **counts,
        "filter_checked": checked,
        "filter_dropped": checked - len(kept),
        "kept": len(kept),
    }
    return kept, counts


def execute(
    prep: Prepared,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    resume: tuple[Path, dict] | None = None,
) -> Finished:
    """Run the sweep and write the run folder; the manifest says how it ended.

    `resume` is (run folder, its manifest) from `nnpatch.resume.resume_source`: the sweep
    continues in that folder, keeping the row shards already written.
    """
    recipe = prep.recipe
    prints = fingerprint(recipe, prep.model, prep.pairs)
    if resume is None:
        path = rundir.new_run_dir(Path(recipe.run.output), recipe.name)
        rundir.write_text(path / "recipe.toml", prep.source.read_text(encoding="utf-8"))
        rundir.write_json(path / "resolved.json", resolved(prep))
        manifest = {**base_manifest(prep), "fingerprint": prints}
    else:
        path, manifest = resume
        check_unchanged(path, manifest["fingerprint"], prints)
        manifest = {**manifest, "resumed": manifest.get("resumed", 0) + 1}
        for stale in ("error", "ended"):
            manifest.pop(stale, None)
    manifest.update(status="running", pid=os.getpid(), host=platform.node())
    rundir.write_json(path / "manifest.json", manifest)
    started = time.perf_counter()
    try:
        finished = _sweep(prep, path, progress)
    except BaseException as err:
        manifest.update(
            status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
            error=f"{type(err).__name__}: {err}",
            ended=rundir.now(),
        )
        rundir.write_json(path / "manifest.json", manifest)
        err.run_dir = path  # the CLI tells the user how to resume it
        raise
    total = time.perf_counter() - started
    rows = finished.results.height
    finished.timings.update(
        total_s=total,
        rows_per_s=finished.timings["rows_computed"] / max(finished.timings["patch_s"], 1e-9),
    )
    manifest.update(
        status="finished",
        ended=rundir.now(),
        rows=rows,
        nonfinite_rows=finished.results["nonfinite"].sum(),
        timings=finished.timings,
    )
    clock = time.perf_counter()
    try:  # the report shows the final manifest; `nnpatch report` re-renders the same files
        render_report(path, manifest)
    except BaseException as err:
        manifest.update(status="failed", error=f"report: {type(err).__name__}: {err}")
        rundir.write_json(path / "manifest.json", manifest)
        raise
    rundir.write_json(path / "manifest.json", {**manifest, "report_s": time.perf_counter() - clock})
    ShardStore(path).remove()  # results.parquet holds every row now
    return finished


def _sweep(prep: Prepared, path: Path, progress) -> Finished:
    recipe, engine, pairs = prep.recipe, prep.engine, prep.pairs
    names = recipe.metrics.names
    cells = sorted(
        {(s.layer, p) for s in prep.plan for p in s.positions},
        key=lambda c: (-1 if c[0] is None else c[0], c[1]),
    )
    clock = time.perf_counter()
    base = engine.baselines(pairs, prep.answers, cells, max(1, recipe.run.batch_size // 2))
    _check_finite_baselines(pairs, base)
    baseline_s = time.perf_counter() - clock
    patch = recipe.patch
    if patch.mode == "attribution":
        results, computed, patch_s = _attribution(prep, base, progress, ShardStore(path))
    else:
        rows = [(spec, index, index) for spec in prep.plan for index in range(len(pairs))]
        if patch.control == "random-donor" and len(pairs) > 1:
            donors = control_donors(len(pairs), recipe.run.seed)
            rows += [(spec, i, donors[i]) for spec in prep.plan for i in range(len(pairs))]
        rows = by_first_position(rows, prep.model.position_labels())
        tick = progress(len(rows)) if progress else (lambda n: None)
        clock = time.perf_counter()
        values, computed = _patch_in_shards(prep, base, rows, ShardStore(path), tick)
        patch_s = time.perf_counter() - clock
        results = results_table(rows, pairs, values, names, patch.mode, patch.site, patch.direction)
    baselines = baselines_table(
        pairs,
        base.clean_metrics.cpu(),
        base.corrupt_metrics.cpu(),
        names,
        _answer_columns(prep, base),
    )
    summary = summarize(results, names, recipe.run.seed)
    rundir.write_table(path / "results.parquet", results)
    rundir.write_table(path / "baselines.parquet", baselines)
    rundir.write_table(path / "summary.parquet", summary)
    rundir.write_table(path / "summary.csv", summary)
    timings = {"baselines_s": baseline_s, "patch_s": patch_s, "rows_computed": computed}
    return Finished(path, results, baselines, summary, timings)


def _attribution(prep: Prepared, base, progress, store) -> tuple[pl.DataFrame, int, float]:
    """Estimated rows for every cell, then the `verify_top` strongest cells patched exactly
    (mode `single`, `estimate` false); returns the rows, the exact rows computed and the
    seconds spent."""
    recipe, pairs, names = prep.recipe, prep.pairs, prep.recipe.metrics.names
    patch = recipe.patch
    clock = time.perf_counter()
    chunk = max(1, recipe.run.batch_size // 2)
    estimates = estimate(prep.engine, pairs, prep.answers, base, prep.plan, chunk)
    receiver = base.corrupt_metrics if patch.direction == "denoise" else base.clean_metrics
    verify = verify_cells(estimates, receiver.cpu(), prep.plan, names, patch.verify_top)
    estimate_rows = [(spec, i, i) for spec in prep.plan for i in range(len(pairs))]
    exact_rows = [(spec, i, i) for spec in verify for i in range(len(pairs))]
    tick = progress(len(estimate_rows) + len(exact_rows)) if progress else (lambda n: None)
    tick(len(estimate_rows))
    values, computed = _patch_in_shards(prep, base, exact_rows, store, tick)
    frames = [
        results_table(
            estimate_rows, pairs, estimates, names, patch.mode, patch.site, patch.direction, True
        ),
        results_table(exact_rows, pairs, values, names, "single", patch.site, patch.direction),
    ]
    return pl.concat(frames), computed, time.perf_counter() - clock


def _patch_in_shards(prep: Prepared, base, rows: list, store: ShardStore, tick):
    """Patched metrics for every row, one shard per batch; batches already saved are read
    back instead of recomputed. Returns the values and how many rows were computed."""
    size = prep.recipe.run.batch_size
    saved = store.load()
    parts, computed = [torch.empty(0, len(prep.recipe.metrics.names))], 0
    for first in range(0, len(rows), size):
        batch = rows[first : first + size]
        if first in saved and saved[first].shape == (len(batch), len(prep.recipe.metrics.names)):
            parts.append(torch.from_numpy(saved[first]))
            tick(len(batch))
            continue
        values = prep.engine.patch(prep.pairs, prep.answers, base, batch, size, tick)
        store.write(first, values.numpy())
        parts.append(values)
        computed += len(batch)
    return torch.cat(parts), computed


def _check_finite_baselines(pairs: list[Pair], base) -> None:
    """Patching against a non-finite unpatched run measures nothing: stop, naming the pair."""
    refs = base.references
    checks = {
        "clean logits": refs.clean_logits,
        "corrupted logits": refs.corrupt_logits,
        "clean logit difference": refs.clean_logit_diff,
        "corrupted logit difference": refs.corrupt_logit_diff,
    }
    for what, tensor in checks.items():
        bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
        if bad.any():
            pair = pairs[int(bad.nonzero()[0])]
            raise BaselineError(
                f"pair {pair.id}: the unpatched run's {what} are not finite "
                f"({int(bad.sum())} pair(s) affected); check the model's weights and dtype "
                "(float32 rules out overflow), or drop the pair"
            )


def _check_output(output: Path, source: Path) -> None:
    """run.output must be a folder we can write (or create), checked before any work."""
    existing = next((p for p in [output, *output.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RecipeError(
            source,
            "run.output",
            f"{existing} is a file, not a folder",
            "point run.output (or --out) at a folder",
        )


def control_donors(count: int, seed: int) -> list[int]:
    """A seeded derangement: pair i takes its control activations from pair donors[i] != i."""
    shift = random.Random(seed).randint(1, count - 1)
    return [(index + shift) % count for index in range(count)]


def _answer_columns(prep: Prepared, base) -> dict[str, list]:
    """Where the answers first differ, and whether each unpatched run's top-1 is its answer."""
    answers = prep.answers
    clean_tok = [answers.clean[i][d] for i, d in enumerate(answers.diff_index)]
    corrupt_tok = [answers.corrupt[i][d] for i, d in enumerate(answers.diff_index)]
    refs = base.references
    return {
        "diff_index": answers.diff_index,
        "clean_top1_is_clean_answer": (
            refs.clean_logits.argmax(-1).cpu() == torch.tensor(clean_tok)
        ).tolist(),
        "corrupted_top1_is_corrupted_answer": (
            refs.corrupt_logits.argmax(-1).cpu() == torch.tensor(corrupt_tok)
        ).tolist(),
    }


def resolved(prep: Prepared) -> dict:
    model = prep.model
    return {
        **prep.recipe.model_dump(mode="json"),
        "resolved": {
            "model": {
                "name": model.name,
                "num_layers": model.num_layers,
                "positions": model.position_labels(),
                "dtype": str(model.dtype),
                "device": str(model.device),
            },
            "layers": sorted({s.layer for s in prep.plan}, key=lambda x: -1 if x is None else x),
            "patch_rows": [{"layer": s.layer, "positions": list(s.positions)} for s in prep.plan],
            "pairs": [p.id for p in prep.pairs],
            "overrides": prep.overrides,
        },
    }


def base_manifest(prep: Prepared) -> dict:
    import nnsight
    import transformers

    model = prep.model
    return {
        "schema_version": rundir.SCHEMA_VERSION,
        "status": "running",
        "started": rundir.now(),
        "nnpatch_version": nnpatch.__version__,
        "git_hash": rundir.git_hash(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "nnsight": nnsight.__version__,
            "polars": pl.__version__,
        },
        "recipe_file": str(prep.source.resolve()),
        "overrides": prep.overrides,
        "model": {
            "name": model.name,
            "revision": None,
            "dtype": str(model.dtype),
            "device": str(model.device),
            "num_layers": model.num_layers,
            "positions": model.position_labels(),
            "parameters": sum(p.numel() for p in model.module.parameters()),
        },
        "seed": prep.recipe.run.seed,
        "remote": prep.recipe.run.remote,
        "pairs": {"source": prep.recipe.data.pairs, **prep.pair_counts},
        "patches_per_pair": len(prep.plan),
    }
