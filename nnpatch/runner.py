"""From a recipe file to a finished run folder.

`prepare` does every check that can fail on bad input (recipe, model, pairs, plan) before
anything is written; `execute` runs the sweep and writes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import tempfile
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
from nnpatch.errors import (
    BaselineError,
    FolderError,
    ModelError,
    PairsError,
    RecipeError,
    Terminated,
)
from nnpatch.fingerprint import fingerprint
from nnpatch.models import ModelShape, ThoughtModel, build_model, model_shape
from nnpatch.models.base import answer_is
from nnpatch.pairs import Pair, load_pair_set
from nnpatch.plan import PatchSpec, build_plan, by_first_position
from nnpatch.recipe import Recipe, read_recipe
from nnpatch.remote import check_remote
from nnpatch.report import render as render_report
from nnpatch.results import baselines_table, results_table, summarize
from nnpatch.resume import check_unchanged
from nnpatch.shards import ShardStore


@dataclass
class Prepared:
    recipe: Recipe
    source: Path
    recipe_bytes: bytes  # the recipe file as read: the run folder keeps it verbatim
    overrides: list[str]
    model: ThoughtModel
    pairs: list[Pair]
    pair_counts: dict[str, int]
    plan: list[PatchSpec]
    engine: Engine
    answers: PairAnswers
    notes: list[str] = field(default_factory=list)  # said on screen and in the manifest


@dataclass
class Finished:
    path: Path
    results: pl.DataFrame
    baselines: pl.DataFrame
    summary: pl.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # charts not drawn, or why no report


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
    recipe, data, pairs, counts = _recipe_and_pairs(source, overrides)
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
        check_context(model, pairs, answers)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    notes = _span_notes(model, pairs, plan)
    if recipe.patch.control == "random-donor" and len(pairs) < 2:
        notes.append(
            f"control: not made: the random-donor control needs at least 2 pairs and this run "
            f"has {len(pairs)}; no cell is compared with a noise floor"
        )
    return Prepared(
        recipe, source, data, overrides, model, pairs, counts, plan, engine, answers, notes
    )


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
    recipe, _, pairs, _ = _recipe_and_pairs(source, list(overrides))
    try:
        shape = model_shape(recipe.model, source)
    except ModelError as err:
        note = f"model not checked here (layer and position ranges unchecked): {err}"
        return Checked(recipe, len(pairs), None, None, [note])
    return Checked(recipe, len(pairs), shape, build_plan(recipe, shape, source), [])


def _recipe_and_pairs(source: Path, overrides: list[str]):
    """(recipe, the recipe file's bytes, pairs, pair counts)."""
    recipe, data = read_recipe(source, overrides)
    section = recipe.data
    limit = None if section.filter != "none" else section.limit  # a filter limits after it
    try:
        pairs, counts = load_pair_set(
            section.pairs, source.parent, limit, section.source, section.seed
        )
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    return recipe, data, pairs, counts


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
            if answer_is(clean, pair.clean_answer) and answer_is(corrupt, pair.corrupted_answer):
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
    continues in that folder, keeping the row shards already written. However the process
    ends (an error, Ctrl-C, SIGTERM, a full disk), the manifest is left with a true status:
    `finished`, `interrupted` or `failed`, never `running`.
    """
    recipe = prep.recipe
    prints = fingerprint(recipe, prep.model, prep.pairs)
    if resume is None:
        path, manifest = _new_folder(prep, prints)
    else:
        path, manifest = resume
        check_unchanged(path, manifest["fingerprint"], prints)
        ShardStore(path).load(len(recipe.metrics.names))  # refuse damaged shards up front
        manifest = {**manifest, "resumed": manifest.get("resumed", 0) + 1}
        for stale in ("error", "ended", "report"):
            manifest.pop(stale, None)
    manifest.update(status="running", pid=os.getpid(), host=platform.node())
    if prep.notes:
        manifest["notes"] = prep.notes
    try:
        rundir.write_manifest(path / "manifest.json", manifest)
        started = time.perf_counter()
        finished = _sweep(prep, path, progress)
    except BaseException as err:
        ended = _ended(path, manifest, err)
        if ended is err:
            raise
        raise ended from None
    total = time.perf_counter() - started
    finished.timings.update(
        total_s=total,
        rows_per_s=finished.timings["rows_computed"] / max(finished.timings["patch_s"], 1e-9),
    )
    manifest.update(
        status="finished",
        ended=rundir.now(),
        rows=finished.results.height,
        nonfinite_rows=finished.results["nonfinite"].sum(),
        timings=finished.timings,
    )
    finished.report = _report(path, manifest)
    ShardStore(path).remove()  # results.parquet holds every row now
    return finished


def _new_folder(prep: Prepared, prints: dict) -> tuple[Path, dict]:
    """A new run folder with its manifest, the recipe file verbatim and the resolved recipe;
    a folder that cannot be completed is removed, never left half-made."""
    recipe = prep.recipe
    try:
        path = rundir.new_run_dir(Path(recipe.run.output), recipe.name)
    except OSError as err:
        raise FolderError.from_os(err, "choose another run.output (or --out)") from None
    manifest = {**base_manifest(prep), "fingerprint": prints}
    try:
        rundir.write_manifest(path / "manifest.json", manifest)
        rundir.write_bytes(path / "recipe.toml", prep.recipe_bytes)
        rundir.write_json(path / "resolved.json", resolved(prep))
    except BaseException as err:
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(err, OSError):
            raise FolderError(
                f"{recipe.run.output}: cannot write a run folder there "
                f"({err.strerror or type(err).__name__}); nothing was run: free some space "
                "or choose another run.output (or --out)"
            ) from None
        raise
    return path, manifest


def _ended(path: Path, manifest: dict, err: BaseException) -> BaseException:
    """Record how the run ended and return the error to raise: interrupted for Ctrl-C and
    stop signals, failed otherwise; a refused file operation becomes one line."""
    interrupted = isinstance(err, KeyboardInterrupt)
    if isinstance(err, OSError):
        err = FolderError.from_os(err, f"continue with: nnpatch run --resume {path}")
    manifest.update(
        status="interrupted" if interrupted else "failed",
        error=_one_line(err),
        ended=rundir.now(),
    )
    # when nothing more can be written, readers see `running` with its process gone
    with contextlib.suppress(OSError):
        rundir.write_manifest(path / "manifest.json", manifest)
    err.run_dir = path  # the CLI tells the user how to resume it
    return err


def _report(path: Path, manifest: dict) -> dict:
    """Charts and report.html, then the final manifest. A chart that cannot be drawn is a note;
    a report that cannot be written at all is recorded, and the finished tables stand."""
    clock = time.perf_counter()
    try:  # the report shows the final manifest; `nnpatch report` re-renders the same files
        rendered = render_report(path, manifest)
        report = {"charts_not_drawn": rendered.notes}
    except KeyboardInterrupt as err:  # the tables are written; --resume draws the report
        _ended(path, manifest, err)
        raise
    except Exception as err:  # noqa: BLE001 - the sweep's tables are whole whatever failed here
        report = {"error": _one_line(err)}
    manifest.update(report=report, report_s=time.perf_counter() - clock)
    rundir.write_manifest(path / "manifest.json", manifest)
    return report


def _one_line(err: BaseException) -> str:
    if isinstance(err, Terminated):
        return f"interrupted by {err.name}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted by Ctrl-C"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
        rows = by_first_position(_inside(rows, prep.model, pairs), prep.model.position_labels())
        tick = progress(len(rows)) if progress else (lambda n: None)
        clock = time.perf_counter()
        values, computed = _patch_in_shards(prep, base, rows, ShardStore(path), tick)
        patch_s = time.perf_counter() - clock
        results = results_table(
            rows,
            pairs,
            values,
            names,
            patch.mode,
            patch.site,
            patch.direction,
            tokens=_receiver_tokens(prep),
        )
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
    every = [(spec, i, i) for spec in prep.plan for i in range(len(pairs))]  # as `estimate`
    inside = inside_spans(every, prep.model, pairs)
    estimate_rows = [row for row, ok in zip(every, inside, strict=True) if ok]
    keep = torch.tensor(inside, dtype=torch.bool)
    exact_rows = _inside(
        [(spec, i, i) for spec in verify for i in range(len(pairs))], prep.model, pairs
    )
    tick = progress(len(estimate_rows) + len(exact_rows)) if progress else (lambda n: None)
    tick(len(estimate_rows))
    values, computed = _patch_in_shards(prep, base, exact_rows, store, tick)
    tokens = _receiver_tokens(prep)
    frames = [
        results_table(
            estimate_rows,
            pairs,
            estimates[keep],
            names,
            patch.mode,
            patch.site,
            patch.direction,
            True,
            tokens=tokens,
        ),
        results_table(
            exact_rows, pairs, values, names, "single", patch.site, patch.direction, tokens=tokens
        ),
    ]
    return pl.concat(frames), computed, time.perf_counter() - clock


def inside_spans(rows: list, model, pairs: list[Pair]) -> list[bool]:
    """For each row, whether every position lies inside the receiver's and the donor's span
    (plain LMs: spans differ in length); every row of a fixed-position model is inside."""
    spans = [model.span_of(pair) for pair in pairs]
    if all(span is None for span in spans):
        return [True] * len(rows)

    def inside(index: int, positions) -> bool:
        return all(int(p) < spans[index] for p in positions)

    return [inside(r, spec.positions) and inside(d, spec.positions) for spec, r, d in rows]


def _inside(rows: list, model, pairs: list[Pair]) -> list:
    return [row for row, ok in zip(rows, inside_spans(rows, model, pairs), strict=True) if ok]


def _span_notes(model, pairs: list[Pair], plan: list[PatchSpec]) -> list[str]:
    """Said out loud when plain-LM spans differ in length: which rows are left out."""
    spans = [model.span_of(pair) for pair in pairs]
    if None in spans or len(set(spans)) < 2:
        return []
    own = [(spec, i, i) for spec in plan for i in range(len(pairs))]
    left_out = len(own) - sum(inside_spans(own, model, pairs))
    return [
        f"spans differ in length ({min(spans)} to {max(spans)} tokens): {left_out} of "
        f"{len(own)} patched rows lie past their pair's span and are left out, so positions "
        "past the shortest span have fewer pairs (n in summary; span_tokens in baselines)"
    ]


def _receiver_tokens(prep: Prepared) -> list[dict[str, tuple[int, str]]]:
    """Per pair: each position's index in the receiver's sequence and its token's text."""
    side = "corrupted_question" if prep.recipe.patch.direction == "denoise" else "clean_question"
    return [prep.model.position_tokens(getattr(pair, side)) for pair in prep.pairs]


def _patch_in_shards(prep: Prepared, base, rows: list, store: ShardStore, tick):
    """Patched metrics for every row, one shard per batch; batches already saved are read
    back instead of recomputed. Returns the values and how many rows were computed."""
    size, width = prep.recipe.run.batch_size, len(prep.recipe.metrics.names)
    saved = store.load(width)
    store.check_batches(
        saved, {first: len(rows[first : first + size]) for first in range(0, len(rows), size)}
    )
    parts, computed = [torch.empty(0, width)], 0
    for first in range(0, len(rows), size):
        batch = rows[first : first + size]
        if first in saved:
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
    """run.output must be a folder we can write (or create), outside every run folder,
    checked before any work with a probe file in its nearest existing folder."""
    existing = next((p for p in [output, *output.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RecipeError(
            source,
            "run.output",
            f"{existing} is a file, not a folder",
            "point run.output (or --out) at a folder",
        )
    inside = next((p for p in [output, *output.parents] if (p / "manifest.json").is_file()), None)
    if inside is not None:
        raise RecipeError(
            source,
            "run.output",
            f"{output} is inside the run folder {inside}, which is never edited",
            "point run.output (or --out) at another folder",
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing or Path.cwd(), prefix=".nnpatch-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise RecipeError(
            source,
            "run.output",
            f"cannot write to {output} ({err.strerror or type(err).__name__})",
            "point run.output (or --out) at a folder you can write",
        ) from None


def check_context(model, pairs: list[Pair], answers: PairAnswers) -> None:
    """Every forward must fit the model's context: question, thoughts, eot, prefix, answer."""
    limit = model.context_length
    if limit is None:
        return
    for i, pair in enumerate(pairs):
        answer = max(len(answers.clean[i]), len(answers.corrupt[i]))
        for side, question in (
            ("clean", pair.clean_question),
            ("corrupted", pair.corrupted_question),
        ):
            need = model.sequence_length(question, answer)
            if need > limit:
                raise PairsError(
                    f"pair {pair.id!r}: its {side} question needs {need} positions with its "
                    f"answer, more than {model.name}'s context of {limit}; shorten the "
                    "question or drop the pair"
                )


def control_donors(count: int, seed: int) -> list[int]:
    """A seeded derangement: pair i takes its control activations from pair donors[i] != i."""
    shift = random.Random(seed).randint(1, count - 1)
    return [(index + shift) % count for index in range(count)]


def _answer_columns(prep: Prepared, base) -> dict[str, list]:
    """Where the answers first differ, whether each unpatched run's top-1 is its answer, and
    (plain LMs) each pair's span length."""
    answers = prep.answers
    spans = {"span_tokens": [prep.model.span_of(pair) for pair in prep.pairs]}
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
        **spans,
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
