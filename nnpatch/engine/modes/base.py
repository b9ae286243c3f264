"""What an analysis mode is, and what it is given to compute its rows.

A mode is one family of analyses (`patching`: single, layer, chained, sets; `attribution`).
The runner (`nnpatch.run.execute`) runs the same stages for every mode: prepare, baselines,
rows, tables, statistics, report. A mode fills in the parts that are its own:

- `sections`: the recipe [patch] tables it runs (each a pydantic model with a `mode` tag);
- `plan`: the rows it patches per pair, checked against the model; `check`: anything else
  that must hold before a run starts (an export's size, say);
- `cells`, `reads_both_runs`: the activations the baseline pass records for it;
- `compute`: its rows, from the engine's traced forwards, saved batch by batch in shards,
  and any tables or tensors of its own;
- `summarize`: the statistics stage (default: per cell, mean and CI over pairs, control);
- `key_table`, `screen_lines`, `charts`, `report_lines`: what the report and the end-of-run
  screen show.

A new mode is one module with a `Mode` subclass, its tests, and one entry in
`nnpatch.engine.modes.FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import polars as pl
import torch

from nnpatch.engine.answers import split
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Baselines, Engine, PairAnswers, Row, Written
from nnpatch.pairs import Pair
from nnpatch.report.summary import lead_metric, summarize
from nnpatch.report.top import Table, top_cells_lines, top_cells_table

if TYPE_CHECKING:
    from nnpatch.models.base import ModelShape
    from nnpatch.recipe import Recipe
    from nnpatch.run.shards import ShardStore

Tick = Callable[[int], None]


@dataclass
class Sweep:
    """Everything a mode computes its rows with, once the baselines have run."""

    recipe: Recipe
    model: object  # a ThoughtModel or a CausalLM
    pairs: list[Pair]
    answers: PairAnswers
    engine: Engine
    plan: list[PatchSpec]
    baselines: Baselines
    store: ShardStore
    progress: Callable[[int], Tick]  # total rows → a tick per batch done
    groups: dict = field(default_factory=dict)  # (site, direction) → (Engine, Baselines)
    baseline_chunk: int | None = None  # pairs per baseline trace (default: half a batch)

    def group(
        self, site: str, direction: str, cells: list, both_runs: bool
    ) -> tuple[Engine, Baselines]:
        """The engine and baselines of one (site, direction): the run's own for its first,
        others built once (one baseline pass each) and kept for every source."""
        if (site, direction) == (self.engine.site, self.engine.direction):
            return self.engine, self.baselines
        if (site, direction) not in self.groups:
            engine = Engine(
                self.model,
                site,
                direction,
                self.engine.metric_names,
                self.engine.remote,
                self.engine.decode_tokens,
                self.engine.remote_timeout,
            )
            chunk = self.baseline_chunk or max(1, self.recipe.run.batch_size // 2)
            base = engine.baselines(self.pairs, self.answers, cells, chunk, both_runs)
            self.groups[(site, direction)] = (engine, base)
        return self.groups[(site, direction)]

    def patched(
        self,
        rows: list[Row],
        tick: Tick,
        written: Written | None = None,
        group: tuple[Engine, Baselines] | None = None,
        shards: str | None = None,
    ) -> tuple[torch.Tensor, list[str] | None, int]:
        """Metrics [rows, numeric metrics] for (spec, receiver, donor) rows: batch by batch
        through the engine (of `group`, else the run's own), each batch saved as a shard (in
        the `shards` group's folder); batches already saved are read back. Returns the
        values, each row's decoded answer (None when no metric decodes) and how many rows
        were computed."""
        engine, baselines = group or (self.engine, self.baselines)
        store = self.store.group(shards)
        size, width = self.recipe.run.batch_size, self.recipe.metrics.shard_width
        saved = store.load(width)
        batches = {first: len(rows[first : first + size]) for first in range(0, len(rows), size)}
        store.check_batches(saved, batches)
        parts, computed = [torch.empty(0, width)], 0
        for first in range(0, len(rows), size):
            batch = rows[first : first + size]
            if first in saved:
                parts.append(torch.from_numpy(saved[first]))
                tick(len(batch))
                continue
            values = engine.patch(self.pairs, self.answers, baselines, batch, size, tick, written)
            store.write(first, values.numpy())
            parts.append(values)
            computed += len(batch)
        receivers = [receiver for _, receiver, _ in rows]
        names = self.recipe.metrics.names
        values, texts = split(torch.cat(parts), names, self.model, self.pairs, receivers)
        return values, texts, computed

    def inside_spans(self, rows: list[Row]) -> list[bool]:
        """For each row, whether every position lies inside the receiver's and the donor's
        span (plain LMs: spans differ in length); with fixed positions every row is inside."""
        return rows_inside_spans(rows, self.model, self.pairs)

    def receiver_tokens(self, direction: str | None = None) -> list[dict[str, tuple[int, str]]]:
        """Per pair: each position's index in the receiver's sequence and its token's text."""
        direction = direction or self.engine.direction
        side = "corrupted_question" if direction == "denoise" else "clean_question"
        return [self.model.position_tokens(getattr(pair, side)) for pair in self.pairs]


def rows_inside_spans(rows: list[Row], model, pairs: list[Pair]) -> list[bool]:
    spans = [model.span_of(pair) for pair in pairs]
    if all(span is None for span in spans):
        return [True] * len(rows)

    def inside(index: int, positions) -> bool:
        return all(not p.isdigit() or int(p) < spans[index] for p in positions)  # bot, eot: always

    return [inside(r, spec.positions) and inside(d, spec.positions) for spec, r, d in rows]


@dataclass
class Computed:
    """A mode's rows as the results table, what computing them cost, and the mode's own
    outputs: tables (`<name>.parquet`) and tensors (`<name>.safetensors`)."""

    results: pl.DataFrame
    rows_computed: int
    seconds: float
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class Mode:
    """One family of analyses; see the module docstring for what each part is."""

    sections: ClassVar[tuple[type, ...]] = ()
    # why its traced forwards cannot run on NDIF, or None when they can
    remote_refusal: ClassVar[str | None] = None
    # the baseline pass records both runs' activations (not only the donor's)
    reads_both_runs: ClassVar[bool] = False
    # batch_size = "auto" sizes its batches from a probe of patched rows (modes whose rows
    # hold gradients or every cell's logits are not sized by it)
    sized_by_memory: ClassVar[bool] = True
    # what its rows are, for `nnpatch compare`: None where they are effects of interventions
    # on cells (compare differences them, mode against mode), else why compare cannot
    compare_refusal: ClassVar[str | None] = None
    # why its rows cannot carry decoded answers (metrics answer, correct, gives_corrupted),
    # or None when they can
    decode_refusal: ClassVar[str | None] = None

    def plan(self, patch, shape: ModelShape, source: str | Path) -> list[PatchSpec]:
        raise NotImplementedError

    def check_fields(self, patch, source: str | Path) -> None:
        """Refuse, with a RecipeError, a [patch] field that its other fields make meaningless
        (set where it would be ignored); runs with the schema, for every command."""

    def primary(self, patch) -> tuple[str, str]:
        """The (site, direction) the run's own engine and baseline pass are built for."""
        return patch.site, getattr(patch, "direction", "denoise")

    def check(
        self, recipe: Recipe, model, pairs: list[Pair], plan: list[PatchSpec], source
    ) -> None:
        """Refuse, with a RecipeError, what only the built model and pairs can tell."""

    def row_count(
        self, recipe: Recipe, shape: ModelShape, plan: list[PatchSpec], pairs: int
    ) -> int:
        """How many rows the run plans (checked against `run.max_rows` before it starts)."""
        return len(plan) * pairs

    def probe_engine(self, engine: Engine) -> Engine:
        """The engine whose rows `batch_size = "auto"` measures (the mode's own, where its
        rows run through another)."""
        return engine

    def probe_rows(self, plan: list[PatchSpec], pairs: int, count: int) -> list[Row]:
        """`count` rows like the run's, for the probe: its first cell (the earliest, so
        the most of the loop is recomputed) on successive pairs."""
        return [(plan[0], i % pairs, i % pairs) for i in range(count)]

    def needs_both_runs(self, recipe: Recipe) -> bool:
        """Whether the baseline pass must record both runs' activations, not the donor's."""
        return self.reads_both_runs

    def cells(self, plan: list[PatchSpec]) -> list[tuple[int | None, str]]:
        """Every (layer, position) the plan patches, in a stable order."""
        return sorted(
            {(spec.layer, p) for spec in plan for p in spec.positions},
            key=lambda cell: (-1 if cell[0] is None else cell[0], cell[1]),
        )

    def notes(self, recipe: Recipe, pairs: list[Pair], model) -> list[str]:
        """What this run of the mode cannot do, said on screen and in the manifest."""
        return []

    def compute(self, sweep: Sweep) -> Computed:
        raise NotImplementedError

    def summarize(self, results: pl.DataFrame, recipe: Recipe) -> pl.DataFrame:
        """Per cell and metric: mean, sem, bootstrap CI over pairs, and the control."""
        return summarize(results, recipe.metrics.numeric, recipe.run.seed, recipe.stats.fdr)

    def key_table(self, summary: pl.DataFrame, metrics: list[str]) -> Table:
        """The table the report leads with."""
        return top_cells_table(summary, lead_metric(metrics))

    def screen_lines(self, summary: pl.DataFrame, recipe: Recipe) -> list[str]:
        """What the end-of-run screen says about the rows."""
        patch = recipe.patch
        parts = [patch.mode, patch.site, getattr(patch, "direction", None)]
        title = ", ".join("+".join(p) if isinstance(p, list) else p for p in parts if p)
        return top_cells_lines(summary, lead_metric(recipe.metrics.numeric), title)

    def charts(self, run) -> dict[str, Callable[[], object]]:
        """Chart makers by file stem (each builds one altair chart, and may raise
        `charts.Undrawable`)."""
        return {}

    def report_lines(self, run) -> list[str]:
        """Markdown sections for summary.md after the top cells."""
        return []
