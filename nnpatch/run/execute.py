"""The run's stages, the same for every mode: the run folder, the baselines, the mode's
rows (batch by batch, saved as shards), the tables, the statistics and the report. However
the process ends, the manifest is left with a true status.

    prepare (run.prepare) → folder → baselines → rows (mode.compute) → tables → statistics
    → report (report.page) → finished
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

import nnpatch
from nnpatch.engine.answers import JUDGED, judged
from nnpatch.engine.modes import Sweep
from nnpatch.errors import BaselineError, FolderError, Terminated
from nnpatch.pairs import Pair
from nnpatch.report.page import render as render_report
from nnpatch.report.summary import with_unpatched
from nnpatch.run import batching, folder
from nnpatch.run.fingerprint import fingerprint
from nnpatch.run.prepare import Prepared
from nnpatch.run.resume import check_unchanged
from nnpatch.run.shards import ShardStore
from nnpatch.run.tables import baselines_table


@dataclass
class Finished:
    path: Path
    results: pl.DataFrame
    baselines: pl.DataFrame
    summary: pl.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # charts not drawn, or why no report
    warnings: list[str] = field(default_factory=list)  # what failed once the tables stood


def execute(
    prep: Prepared,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    resume: tuple[Path, dict] | None = None,
) -> Finished:
    """Run the sweep and write the run folder; the manifest says how it ended.

    `resume` is (run folder, its manifest) from `nnpatch.run.resume.resume_source`: the sweep
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
        ShardStore(path).load_all(recipe.metrics.shard_width)  # damaged shards: refuse now
        manifest = {**manifest, "resumed": manifest.get("resumed", 0) + 1}
        for stale in ("error", "ended", "report"):
            manifest.pop(stale, None)
    manifest.update(status="running", pid=os.getpid(), host=platform.node())
    if prep.notes:
        manifest["notes"] = prep.notes
    tracker = None
    try:
        if recipe.run.wandb is not None:  # before the rows: its id goes into the manifest
            tracker = start_tracking(recipe.run.wandb, path, manifest)
        folder.write_manifest(path / "manifest.json", manifest)
        started = time.perf_counter()
        finished = _sweep(prep, path, progress, manifest)
        finished.timings = {
            **prep.seconds,
            **finished.timings,
            "total_s": time.perf_counter() - started,
            "rows_per_s": finished.timings["rows_computed"]
            / max(finished.timings["patch_s"], 1e-9),
        }
        done = {
            "rows": finished.results.height,
            "nonfinite_rows": int(finished.results["nonfinite"].sum()),
            "timings": finished.timings,
        }
    except BaseException as err:
        ended = _ended(path, manifest, err)
        _close_stopped(tracker, manifest)
        if ended is err:
            raise
        raise ended from None
    manifest.update(status="finished", ended=folder.now(), **done)
    try:
        finished.report = _report(path, manifest, prep.recipe.run.report)
    except BaseException:  # Ctrl-C in the report
        _close_stopped(tracker, manifest)
        raise
    finished.timings["report_s"] = manifest["report_s"]
    if tracker is not None:
        _finish_tracking(tracker, path, manifest, finished)
    ShardStore(path).remove()  # results.parquet holds every row now
    return finished


def start_tracking(section, path: Path, manifest: dict):
    from nnpatch.run.tracking import Tracker, TrackingError

    try:
        return Tracker(section, path, manifest)
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - W&B's errors are many: one line
        raise TrackingError(
            f"run.wandb: W&B could not start ({_one_line(err)}); run `wandb login`, or set "
            'run.wandb.mode = "offline" (WANDB_MODE=offline for a run to resume)'
        ) from None


def _close_stopped(tracker, manifest: dict) -> None:
    """A W&B run whose nnpatch run stopped says it failed; --resume continues it."""
    if tracker is not None:
        with contextlib.suppress(Exception):
            tracker.finish(manifest, failed=True)


def _finish_tracking(tracker, path: Path, manifest: dict, finished: Finished) -> None:
    """The W&B run's summary and files. The tables are whole whatever happens here, so a
    failure is recorded and said, not raised."""
    try:
        tracker.finish(manifest)
    except Exception as err:  # noqa: BLE001 - W&B's errors are many: one line
        manifest["wandb"]["error"] = _one_line(err)
        folder.write_manifest(path / "manifest.json", manifest)
        finished.warnings.append(
            f"the W&B run did not get its summary and files ({manifest['wandb']['error']}); "
            "the run folder holds them"
        )


def _new_folder(prep: Prepared, prints: dict) -> tuple[Path, dict]:
    """A new run folder with its manifest, the recipe file verbatim and the resolved recipe;
    a folder that cannot be completed is removed, never left half-made."""
    recipe = prep.recipe
    try:
        path = folder.new_run_dir(Path(recipe.run.output), recipe.name)
    except OSError as err:
        raise FolderError.from_os(err, "choose another run.output (or --out)") from None
    manifest = {**base_manifest(prep), "fingerprint": prints}
    try:
        folder.write_manifest(path / "manifest.json", manifest)
        folder.write_bytes(path / "recipe.toml", prep.recipe_bytes)
        folder.write_json(path / "resolved.json", resolved(prep))
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
        ended=folder.now(),
    )
    # when nothing more can be written, readers see `running` with its process gone
    with contextlib.suppress(OSError):
        folder.write_manifest(path / "manifest.json", manifest)
    err.run_dir = path  # the CLI tells the user how to resume it
    return err


def _report(path: Path, manifest: dict, what: str) -> dict:
    """Charts and report.html, then the final manifest. A chart that cannot be drawn is a note;
    a report that cannot be written at all is recorded, and the finished tables stand."""
    clock = time.perf_counter()
    try:  # the report shows the final manifest; `nnpatch report` re-renders the same files
        if what == "none":
            report = {"skipped": "run.report = none: nnpatch report RUN_DIR draws it"}
        else:
            rendered = render_report(path, manifest, png=what == "full")
            report = {"charts_not_drawn": rendered.notes}
    except KeyboardInterrupt as err:  # the tables are written; --resume draws the report
        _ended(path, manifest, err)
        raise
    except Exception as err:  # noqa: BLE001 - the sweep's tables are whole whatever failed here
        report = {"error": _one_line(err)}
    manifest.update(report=report, report_s=time.perf_counter() - clock)
    folder.write_manifest(path / "manifest.json", manifest)
    return report


def _one_line(err: BaseException) -> str:
    if isinstance(err, Terminated):
        return f"interrupted by {err.name}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted by Ctrl-C"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _sweep(prep: Prepared, path: Path, progress, manifest: dict) -> Finished:
    """The baselines, the batch size, the mode's rows, the tables and the statistics, each
    timed."""
    recipe, engine, pairs = prep.recipe, prep.engine, prep.pairs
    names = recipe.metrics.numeric
    clock = time.perf_counter()
    cells = prep.mode.cells(prep.plan)
    size = recipe.run.batch_size
    chunk = max(1, batching.fixed(size) // 2)
    base = engine.baselines(pairs, prep.answers, cells, chunk, prep.mode.needs_both_runs(recipe))
    _check_finite_baselines(pairs, base)
    baseline_s = time.perf_counter() - clock
    clock = time.perf_counter()
    planned = prep.mode.row_count(recipe, prep.model.shape, prep.plan, len(pairs))
    recorded = manifest.get("batch")
    if recorded is None and manifest.get("resumed"):  # started before batch sizes were recorded
        recorded = {"size": batching.fixed(size), "how": "the batch size of its recipe"}
    chosen = batching.choose(prep, base, planned, recorded)
    manifest["batch"] = chosen.record()  # before any shard: a resume must cut rows the same
    folder.write_manifest(path / "manifest.json", manifest)
    recipe = prep.recipe = _with_batch_size(recipe, chosen.size)
    batch_s = time.perf_counter() - clock
    store = ShardStore(path)
    no_bar: Callable = lambda total: lambda n: None  # noqa: E731
    sweep = Sweep(
        recipe,
        prep.model,
        pairs,
        prep.answers,
        engine,
        prep.plan,
        base,
        store,
        progress or no_bar,
        baseline_chunk=chunk,  # the probe sized patched rows, not baseline passes
    )
    computed = prep.mode.compute(sweep)
    clock = time.perf_counter()
    results = computed.results
    baselines = baselines_table(
        pairs,
        base.clean_metrics.cpu(),
        base.corrupt_metrics.cpu(),
        names,
        _answer_columns(prep, base),
    )
    folder.write_table(path / "results.parquet", results)
    folder.write_table(path / "baselines.parquet", baselines)
    for name, table in computed.tables.items():
        folder.write_table(path / f"{name}.parquet", table)
    for name, tensors in computed.tensors.items():
        folder.write_tensors(path / f"{name}.safetensors", tensors)
    tables_s = time.perf_counter() - clock
    clock = time.perf_counter()
    summary = with_unpatched(prep.mode.summarize(results, recipe), baselines, names)
    folder.write_table(path / "summary.parquet", summary)
    folder.write_table(path / "summary.csv", summary)
    timings = {
        "baselines_s": baseline_s,
        "batch_size_s": batch_s,
        "patch_s": computed.seconds,
        "rows_computed": computed.rows_computed,
        "tables_s": tables_s,
        "statistics_s": time.perf_counter() - clock,
    }
    return Finished(path, results, baselines, summary, timings)


def _with_batch_size(recipe, size: int):
    """The recipe the modes run with: its batch size a number (the one chosen)."""
    return recipe.model_copy(update={"run": recipe.run.model_copy(update={"batch_size": size})})


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
        **_decoded_columns(prep, base),
    }


def _decoded_columns(prep: Prepared, base) -> dict[str, list]:
    """Each unpatched run's decoded answer, when the metrics decode, and whether it gives the
    clean and the corrupted answer (both always: each run's own accuracy is one of them)."""
    if base.clean_texts is None:
        return {}
    own = list(range(len(prep.pairs)))
    columns: dict[str, list] = {
        "clean_decoded": base.clean_texts,
        "corrupted_decoded": base.corrupt_texts,
    }
    for name in JUDGED:
        if name in prep.recipe.metrics.names:
            continue  # a metric column of its own
        for run, texts in (("clean", base.clean_texts), ("corrupted", base.corrupt_texts)):
            hits = judged(name, texts, prep.model, prep.pairs, own)
            columns[f"{run}_{name}"] = [float(hit) for hit in hits]
    return columns


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
        "schema_version": folder.SCHEMA_VERSION,
        "status": "running",
        "started": folder.now(),
        "nnpatch_version": nnpatch.__version__,
        "git_hash": folder.git_hash(),
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
