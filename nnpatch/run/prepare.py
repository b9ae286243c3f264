"""The prepare stage: every check that can fail on bad input (recipe, pairs, model, plan,
output folder) runs here, before anything is written. `check` is the part `nnpatch validate`
can do without weights."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnpatch.engine.modes import Mode, build_plan, mode_for
from nnpatch.engine.modes.base import rows_inside_spans
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Engine, PairAnswers
from nnpatch.errors import ModelError, PairsError, RecipeError
from nnpatch.models import ModelShape, ThoughtModel, build_model, model_shape
from nnpatch.models.text import answer_is
from nnpatch.pairs import Pair, load_pair_set
from nnpatch.recipe import Recipe, read_recipe
from nnpatch.run import batching
from nnpatch.run.remote import check_remote, ship_code


@dataclass
class Prepared:
    recipe: Recipe
    source: Path
    recipe_bytes: bytes  # the recipe file as read: the run folder keeps it verbatim
    overrides: list[str]
    model: ThoughtModel
    pairs: list[Pair]
    pair_counts: dict[str, int]
    mode: Mode
    plan: list[PatchSpec]
    engine: Engine
    answers: PairAnswers
    notes: list[str] = field(default_factory=list)  # said on screen and in the manifest
    seconds: dict[str, float] = field(default_factory=dict)  # where the time before the run went


def prepare(
    path: str | Path,
    overrides: list[str] = (),
    limit: int | None = None,
    output: str | Path | None = None,
) -> Prepared:
    """Load and check everything a run needs; raises NnpatchError on any bad input."""
    clock = time.perf_counter()
    source = Path(path)
    overrides = list(overrides)
    if limit is not None:
        overrides.append(f"data.limit={limit}")
    if output is not None:
        overrides.append(f"run.output={json.dumps(str(output))}")
    recipe, data, pairs, counts = recipe_and_pairs(source, overrides)
    seconds = {"pairs_s": time.perf_counter() - clock}
    if isinstance(recipe.model.num_thoughts, list):
        raise RecipeError(
            source,
            "model.num_thoughts",
            "a list of thought counts is for `nnpatch eval` (accuracy for each count)",
            "give one number to run a sweep",
        )
    mode = mode_for(recipe.patch.mode)
    _check_output(Path(recipe.run.output), source)
    check_remote(recipe, source, mode)
    if recipe.run.remote:
        ship_code()
    _check_extras(recipe, source)
    torch.manual_seed(recipe.run.seed)
    clock = time.perf_counter()
    model = build_model(recipe.model, source, on_ndif=recipe.run.remote is True)
    seconds["model_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if recipe.data.filter == "both-correct":
        pairs, counts = _keep_both_correct(model, pairs, counts, recipe, source)
    try:
        if hasattr(model, "bind_pairs"):  # plain LMs: span positions come from the pairs
            model.bind_pairs(pairs, recipe.data.span_markers)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    plan = build_plan(recipe, model.shape, source)
    try:
        site, direction = mode.primary(recipe.patch)
        engine = Engine(
            model,
            site,
            direction,
            recipe.metrics.names,
            remote=recipe.run.remote,
            decode_tokens=recipe.metrics.decode_tokens,
            remote_timeout=recipe.run.remote_timeout,
        )
        answers = engine.answers(pairs)
        check_context(model, pairs, answers)
    except PairsError as err:
        raise RecipeError(source, "data.pairs", str(err)) from None
    mode.check(recipe, model, pairs, plan, source)
    _check_row_count(mode, recipe, model.shape, plan, len(pairs), source)
    notes = _span_notes(model, pairs, plan) + mode.notes(recipe, pairs, model)
    seconds["checks_s"] = time.perf_counter() - clock  # the filter, answers and plan checks
    return Prepared(
        recipe,
        source,
        data,
        overrides,
        model,
        pairs,
        counts,
        mode,
        plan,
        engine,
        answers,
        notes,
        seconds,
    )


def _check_extras(recipe: Recipe, source: Path) -> None:
    """An optional integration the recipe asks for is installed, before anything is written."""
    import importlib.util

    if recipe.run.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise RecipeError(
            source,
            "run.wandb",
            "wandb is not installed",
            "pip install 'nnpatch[wandb]', or remove run.wandb",
        )
    if recipe.run.wandb is not None:
        from nnpatch.run.tracking import online_without_login

        if online_without_login(recipe.run.wandb):
            raise RecipeError(
                source,
                "run.wandb.mode",
                "W&B is online but this machine has no W&B login (no WANDB_API_KEY, no "
                "entry in ~/.netrc)",
                'run `wandb login`, or set run.wandb.mode = "offline"',
            )


def _check_row_count(mode: Mode, recipe: Recipe, shape, plan, pairs: int, source) -> None:
    count, limit = mode.row_count(recipe, shape, plan, pairs), recipe.run.max_rows
    if count > limit:
        raise RecipeError(
            source,
            "run.max_rows",
            f"the plan has {count:,} rows ({pairs} pairs), more than run.max_rows = {limit:,}",
            "raise run.max_rows, or narrow patch.layers, patch.positions or data.limit",
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
    recipe, _, pairs, _ = recipe_and_pairs(source, list(overrides))
    _check_extras(recipe, source)
    counts = recipe.model.num_thoughts
    if isinstance(counts, list):  # an eval recipe: check the sweep's cells at its largest K
        recipe = recipe.model_copy(
            update={"model": recipe.model.model_copy(update={"num_thoughts": max(counts) or None})}
        )
    try:
        shape = model_shape(recipe.model, source)
    except ModelError as err:
        note = f"model not checked here (layer and position ranges unchecked): {err}"
        return Checked(recipe, len(pairs), None, None, [note])
    mode = mode_for(recipe.patch.mode)
    plan = build_plan(recipe, shape, source)
    _check_row_count(mode, recipe, shape, plan, len(pairs), source)
    return Checked(recipe, len(pairs), shape, plan, [])


def recipe_and_pairs(source: Path, overrides: list[str]):
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
    limit, chunk = (
        recipe.data.limit or len(pairs),
        max(1, batching.fixed(recipe.run.batch_size) // 2),
    )
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
            read = getattr(model, "read_answer", str)  # as the family's evaluation reads it
            if answer_is(read(clean), pair.clean_answer) and answer_is(
                read(corrupt), pair.corrupted_answer
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


def _span_notes(model, pairs: list[Pair], plan: list[PatchSpec]) -> list[str]:
    """Said out loud when pairs' spans differ in length (plain LMs' marked text, latents a
    model decides per question): which rows are left out."""
    spans = [model.span_of(pair) for pair in pairs]
    if None in spans or len(set(spans)) < 2:
        return []
    own = [(spec, i, i) for spec in plan for i in range(len(pairs))]
    left_out = len(own) - sum(rows_inside_spans(own, model, pairs))
    unit = "thoughts" if model.shape.named_positions else "tokens"
    return [
        f"spans differ in length ({min(spans)} to {max(spans)} {unit}): {left_out} of "
        f"{len(own)} patched rows lie past their pair's span and are left out, so positions "
        "past the shortest span have fewer pairs (n in summary; span_tokens in baselines)"
    ]
