"""Donor patching: copy one run's activations into the other's at chosen cells, during the
recurrent forward, and measure the answer.

Four ways to group the selected positions into rows, one per recipe `mode`:
- `single`: one (layer, position) cell per row;
- `layer`: every selected position at one layer per row;
- `chained`: the prefixes t ≤ k of the selected positions at one layer (k = 0..K-1), each
  patched step feeding the next thought;
- `sets`: each listed position set at each layer.

Every row is patched from its own pair's other run; with `control = "random-donor"` the same
cells are patched again from a mismatched pair (a seeded derangement): the noise floor.
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Annotated, Literal

from pydantic import Field, field_validator

from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import (
    PatchSpec,
    by_first_position,
    check_site,
    selected_layers,
    selected_positions,
)
from nnpatch.fields import PatchCommon, Position
from nnpatch.report import charts
from nnpatch.run.tables import results_table


class SinglePatch(PatchCommon):
    """One (layer, position) cell per row."""

    mode: Literal["single"]


class LayerPatch(PatchCommon):
    """Every selected position at one layer per row."""

    mode: Literal["layer"]


class ChainedPatch(PatchCommon):
    """Cumulative prefixes of the selected positions (t ≤ k) at one layer per row."""

    mode: Literal["chained"]


class SetsPatch(PatchCommon):
    """Explicit position sets at one layer per row."""

    mode: Literal["sets"]
    sets: list[list[Annotated[Position, Field(union_mode="left_to_right")]]] = Field(min_length=1)

    @field_validator("sets")
    @classmethod
    def _distinct_nonempty_sets(cls, sets: list[list[Position]]) -> list[list[Position]]:
        if any(len(s) == 0 for s in sets):
            raise ValueError("every set needs at least one position")
        seen: dict[frozenset, int] = {}
        for index, group in enumerate(sets):
            key = frozenset(map(str, group))
            if key in seen:
                raise ValueError(
                    f"sets {seen[key]} and {index} are the same set of positions; list each "
                    "set once (a repeated set would count its pairs twice)"
                )
            seen[key] = index
        return sets


class Patching(Mode):
    sections = (SinglePatch, LayerPatch, ChainedPatch, SetsPatch)

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        """Every row of the sweep, in a stable order (layer-major, then positions)."""
        check_site(patch, shape, source)
        layers = selected_layers(patch, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", patch.site)
        if patch.mode == "single":
            groups = [(p,) for p in selected]
        elif patch.mode == "layer":
            groups = [tuple(selected)]
        elif patch.mode == "chained":
            groups = [tuple(selected[: k + 1]) for k in range(len(selected))]
        else:
            groups = [
                tuple(selected_positions(group, shape, source, f"patch.sets.{i}", patch.site))
                for i, group in enumerate(patch.sets)
            ]
        return [PatchSpec(layer, group) for layer in layers for group in groups]

    def notes(self, recipe, pairs) -> list[str]:
        if recipe.patch.control == "random-donor" and len(pairs) < 2:
            return [
                "control: not made: the random-donor control needs at least 2 pairs and this "
                f"run has {len(pairs)}; no cell is compared with a noise floor"
            ]
        return []

    def compute(self, sweep: Sweep) -> Computed:
        recipe, pairs, patch = sweep.recipe, sweep.pairs, sweep.recipe.patch
        rows = [(spec, index, index) for spec in sweep.plan for index in range(len(pairs))]
        if patch.control == "random-donor" and len(pairs) > 1:
            donors = control_donors(len(pairs), recipe.run.seed)
            rows += [(spec, i, donors[i]) for spec in sweep.plan for i in range(len(pairs))]
        inside = sweep.inside_spans(rows)
        rows = [row for row, ok in zip(rows, inside, strict=True) if ok]
        rows = by_first_position(rows, sweep.model.position_labels())
        tick = sweep.progress(len(rows))
        clock = time.perf_counter()
        values, computed = sweep.patched(rows, tick)
        seconds = time.perf_counter() - clock
        results = results_table(
            rows,
            pairs,
            values,
            recipe.metrics.names,
            patch.mode,
            patch.site,
            patch.direction,
            single=patch.mode == "single",
            tokens=sweep.receiver_tokens(),
        )
        return Computed(results, computed, seconds)

    def charts(self, run) -> dict:
        out = {}
        mode, lead = run.resolved["patch"]["mode"], run.lead_metric
        summary, results = run.summary, run.results
        if mode == "chained":
            out[f"chained_{lead}"] = partial(charts.chained_lines, summary, lead)
        if mode == "layer":
            out[f"layer_{lead}"] = partial(charts.layer_bars, summary, lead)
        for metric in run.metrics:
            out[f"heatmap_{metric}"] = partial(charts.heatmap, summary, metric, run.positions)
        out[f"top_{lead}"] = partial(charts.top_distributions, results, summary, lead)
        return out


def control_donors(count: int, seed: int) -> list[int]:
    """A seeded derangement: pair i takes its control activations from pair donors[i] != i."""
    shift = random.Random(seed).randint(1, count - 1)
    return [(index + shift) % count for index in range(count)]
