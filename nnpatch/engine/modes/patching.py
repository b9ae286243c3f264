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

import polars as pl
import torch
from pydantic import Field, field_validator

from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import (
    PatchSpec,
    by_first_position,
    check_site,
    selected_layers,
    selected_positions,
)
from nnpatch.engine.sources import NEEDS_BOTH_RUNS, source_values
from nnpatch.engine.trace import donor_values
from nnpatch.errors import RecipeError
from nnpatch.fields import Float, Int, PatchCommon, Position, distinct
from nnpatch.report import charts
from nnpatch.run.tables import Facets, results_table

Site = Literal["resid", "attn", "mlp", "head", "thought"]
Direction = Literal["denoise", "noise"]
Source = Literal["donor", "mean", "zero", "random", "steer"]


class PatchingSection(PatchCommon):
    """Where and which way to patch, and what to write. `site`, `direction` and `source`
    take one value or a list: every combination runs, in one run folder."""

    # where: resid, attn, mlp, head (one attention head's slice) or thought; a list: a grid
    site: Site | Annotated[list[Site], Field(min_length=1)] = "resid"
    # denoise: clean into corrupted; noise: corrupted into clean; a list: both, one folder
    direction: Direction | Annotated[list[Direction], Field(min_length=1)] = "denoise"
    # what is written: the pair's other run (donor), the mean over the other pairs, zeros, a
    # random vector of the activation's norm, or steer (see scale); a list: each in turn
    source: Source | Annotated[list[Source], Field(min_length=1)] = "donor"
    scale: Float = 1.0  # source "steer": receiver + scale × (mean clean − mean corrupted)
    # site head only: every query head, or a list such as [0, 5]
    heads: (
        Literal["all"]
        | Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1), distinct("a head")]
    ) = "all"

    @property
    def sites(self) -> list[str]:
        return _listed(self.site)

    @property
    def directions(self) -> list[str]:
        return _listed(self.direction)

    @property
    def sources(self) -> list[str]:
        return _listed(self.source)


def _listed(value) -> list[str]:
    return list(dict.fromkeys(value)) if isinstance(value, list) else [value]


class SinglePatch(PatchingSection):
    """One (layer, position) cell per row."""

    mode: Literal["single"]


class LayerPatch(PatchingSection):
    """Every selected position at one layer per row."""

    mode: Literal["layer"]


class ChainedPatch(PatchingSection):
    """Cumulative prefixes of the selected positions (t ≤ k) at one layer per row."""

    mode: Literal["chained"]


class SetsPatch(PatchingSection):
    """Explicit position sets at one layer per row."""

    mode: Literal["sets"]
    # each listed set of positions is patched together, at each layer
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

    def primary(self, patch) -> tuple[str, str]:
        return patch.sites[0], patch.directions[0]

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        """The first site's rows (every site is checked): layer-major, then positions."""
        plans = [self.site_plan(patch, shape, source, site) for site in patch.sites]
        return plans[0]

    def check_fields(self, patch, source) -> None:
        fields = patch.model_fields_set
        if "scale" in fields and "steer" not in patch.sources:
            raise RecipeError(source, "patch.scale", "applies to source 'steer' only", "remove it")
        if "heads" in fields and "head" not in patch.sites:
            raise RecipeError(source, "patch.heads", "applies to site 'head' only", "remove it")

    def site_plan(self, patch, shape, source, site: str) -> list[PatchSpec]:
        """Every row of one site, in a stable order (layer-major, heads, then positions)."""
        one = patch.model_copy(update={"site": site})
        check_site(one, shape, source)
        layers = selected_layers(one, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", site)
        groups = self.groups(patch, shape, source, site, selected)
        heads = _heads(patch, shape, source) if site == "head" else [None]
        return [
            PatchSpec(layer, group, head) for layer in layers for head in heads for group in groups
        ]

    def groups(self, patch, shape, source, site: str, selected: list[str]) -> list[tuple]:
        """The position sets patched together per row, by the recipe's mode."""
        if patch.mode == "single":
            return [(p,) for p in selected]
        if patch.mode == "layer":
            return [tuple(selected)]
        if patch.mode == "chained":
            return [tuple(selected[: k + 1]) for k in range(len(selected))]
        return [
            tuple(selected_positions(group, shape, source, f"patch.sets.{i}", site))
            for i, group in enumerate(patch.sets)
        ]

    def row_count(self, recipe, shape, plan, pairs: int) -> int:
        """Every site's rows, for each direction and source, and the control's once per
        (site, direction)."""
        patch = recipe.patch
        controls = int(patch.control == "random-donor" and pairs > 1)
        per_site = [
            plan if site == patch.sites[0] else self.site_plan(patch, shape, "<recipe>", site)
            for site in patch.sites
        ]
        each = len(patch.directions) * (len(patch.sources) + controls) * pairs
        return sum(len(rows) for rows in per_site) * each

    def needs_both_runs(self, recipe) -> bool:
        patch = recipe.patch
        return any(s in NEEDS_BOTH_RUNS for s in patch.sources) or len(patch.directions) > 1

    def check(self, recipe, model, pairs, plan, source) -> None:
        if "mean" in recipe.patch.sources and len(pairs) < 2:
            raise RecipeError(
                source,
                "patch.source",
                "'mean' averages the other pairs' activations and this run has 1 pair",
                "use more pairs, or another source",
            )

    def notes(self, recipe, pairs, model) -> list[str]:
        if recipe.patch.control == "random-donor" and len(pairs) < 2:
            return [
                "control: not made: the random-donor control needs at least 2 pairs and this "
                f"run has {len(pairs)}; no cell is compared with a noise floor"
            ]
        return []

    def compute(self, sweep: Sweep) -> Computed:
        """Every (site, direction, source) of the recipe, each its own list of rows (batches
        and shards), the control once per (site, direction); the baseline pass of a (site,
        direction) serves all its sources."""
        patch, shape = sweep.recipe.patch, sweep.model.shape
        combos = [(s, d, o) for s in patch.sites for d in patch.directions for o in patch.sources]
        lists = []
        for site in patch.sites:
            plan = (
                sweep.plan
                if site == patch.sites[0]
                else self.site_plan(patch, shape, "<recipe>", site)
            )
            for direction in patch.directions:
                for number, source in enumerate(patch.sources):
                    rows = self._rows(sweep, plan, control=number == 0)
                    lists.append((site, direction, source, plan, rows))
        tick = sweep.progress(sum(len(rows) for *_, rows in lists))
        clock, frames, computed = time.perf_counter(), [], 0
        for site, direction, source, plan, rows in lists:
            group = sweep.group(
                site, direction, self.cells(plan), self.needs_both_runs(sweep.recipe)
            )
            shards = None if len(combos) == 1 else f"{site}-{direction}-{source}"
            written = _written(sweep, group[1], direction, source, patch.scale)
            values, texts, count = sweep.patched(rows, tick, written, group, shards)
            computed += count
            facets = Facets(
                patch.mode, site, direction, source, patch.scale if source == "steer" else None
            )
            frames.append(
                results_table(
                    rows,
                    sweep.pairs,
                    values,
                    sweep.recipe.metrics.numeric,
                    facets,
                    single=patch.mode == "single",
                    tokens=sweep.receiver_tokens(direction),
                    texts=texts,
                )
            )
        return Computed(pl.concat(frames), computed, time.perf_counter() - clock)

    def _rows(self, sweep: Sweep, plan: list[PatchSpec], control: bool) -> list:
        """Each pair's own rows, then (with `control`) the random-donor rows, the rows past
        a plain LM's span left out, in order of first patched position."""
        pairs = len(sweep.pairs)
        rows = [(spec, index, index) for spec in plan for index in range(pairs)]
        if control and sweep.recipe.patch.control == "random-donor" and pairs > 1:
            donors = control_donors(pairs, sweep.recipe.run.seed)
            rows += [(spec, i, donors[i]) for spec in plan for i in range(pairs)]
        inside = sweep.inside_spans(rows)
        rows = [row for row, ok in zip(rows, inside, strict=True) if ok]
        return by_first_position(rows, sweep.model.position_labels())

    def charts(self, run) -> dict:
        out = {}
        mode, lead = run.resolved["patch"]["mode"], run.lead_metric
        for suffix, summary in facet_groups(run.summary):
            results = facet_rows(run.results, summary)
            if mode == "chained":
                out[f"chained_{lead}{suffix}"] = partial(charts.chained_lines, summary, lead)
            if mode == "layer":
                out[f"layer_{lead}{suffix}"] = partial(charts.layer_bars, summary, lead)
            if summary["head"].is_not_null().any():
                for position in summary["position"].unique(maintain_order=True).drop_nulls():
                    out |= {
                        f"heads_{metric}_{position}{suffix}": partial(
                            charts.head_heatmap, summary, metric, position
                        )
                        for metric in run.metrics
                    }
            else:
                for metric in run.metrics:
                    out[f"heatmap_{metric}{suffix}"] = partial(
                        charts.heatmap, summary, metric, run.positions
                    )
            out[f"top_{lead}{suffix}"] = partial(charts.top_distributions, results, summary, lead)
        return out


FACETS = ("site", "direction", "source", "scale", "effect")


def facet_groups(summary: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """The summary per (site, direction, source, scale) it holds, each with a file-name
    suffix ("" when the run has one of each, as its charts had before grids)."""
    keys = [k for k in FACETS if k in summary.columns]
    parts = summary.partition_by(keys, maintain_order=True, as_dict=True)
    if len(parts) == 1:
        return [("", summary)]
    named = []
    for values, part in parts.items():
        words = [str(v) for k, v in zip(keys, values, strict=True) if v is not None]
        named.append(("__" + "_".join(words).replace(".", "p").replace("-", "m"), part))
    return named


def facet_rows(results: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """The rows behind one facet's summary: its own rows, and the control rows of its cells."""
    first = summary.row(0, named=True)
    own = results
    for key in ("site", "direction", "effect"):
        if key in results.columns:
            own = own.filter(pl.col(key).eq_missing(first[key]))
    if "source" in results.columns:
        own = own.filter(pl.col("control") | (pl.col("source") == first["source"]))
    return own


def _heads(patch, shape, source) -> list[int]:
    count = shape.num_heads
    if patch.heads == "all":
        return list(range(count))
    wrong = next((h for h in patch.heads if h >= count), None)
    if wrong is not None:
        raise RecipeError(
            source,
            "patch.heads",
            f"head {wrong} is out of range for {shape.name} (heads 0..{count - 1})",
            "use heads in range or 'all'",
        )
    return list(patch.heads)  # each listed once: checked where heads is declared


def _written(sweep: Sweep, baselines, direction: str, source: str, scale: float):
    """The writes of one list of rows: the source for each pair's own rows, a mismatched
    donor's run for the control rows among them."""
    own = source_values(source, baselines, direction, sweep.recipe.run.seed, scale, _inside(sweep))
    if source == "donor":
        return own
    control = donor_values(baselines)

    def written(key, cell, receivers, donors):
        values = own(key, cell, receivers, donors)
        mismatched = [i for i, (r, d) in enumerate(zip(receivers, donors, strict=True)) if r != d]
        if mismatched:
            index = torch.tensor(mismatched, device=values.device)
            picked = [donors[i] for i in mismatched]
            values = values.index_copy(0, index, control(key, cell, picked, picked))
        return values

    return written


def _inside(sweep: Sweep):
    """[pairs, positions]: which span positions each pair has (plain LMs), else None."""
    spans = [sweep.model.span_of(pair) for pair in sweep.pairs]
    if all(span is None for span in spans):
        return None
    width = max(spans)
    return torch.tensor([[t < span for t in range(width)] for span in spans])


def control_donors(count: int, seed: int) -> list[int]:
    """A seeded derangement: pair i takes its control activations from pair donors[i] != i."""
    shift = random.Random(seed).randint(1, count - 1)
    return [(index + shift) % count for index in range(count)]
