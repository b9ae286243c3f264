"""Record: every cell's activation in both runs of every pair, exported for work elsewhere (a
probe, an SAE). The baseline pass records both runs at every cell, one traced forward per
chunk of pairs; the activations go to `activations.safetensors` ([rows, d], the model's
dtype) and `results.parquet` is their index: row, pair, run, site, layer, position, and the
position's token. `nnpatch.load_activations(run_dir)` gives both back. An export larger
than `run.max_export` is refused before anything runs."""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import polars as pl
import torch

from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, check_site, selected_layers, selected_positions
from nnpatch.errors import RecipeError
from nnpatch.fields import Layers, Positions, Section
from nnpatch.report import charts
from nnpatch.report.summary import summarize
from nnpatch.report.top import Table
from nnpatch.sizes import parse_size, shown

RUNS = ("clean", "corrupted")
FILE = "activations"  # activations.safetensors, tensor "activations"


class RecordPatch(Section):
    """Every cell's activation, both runs of every pair, written to activations.safetensors."""

    mode: Literal["record"]
    site: Literal["resid", "attn", "mlp", "thought"] = "resid"  # the activations exported
    # the layers read or patched: all, or a list such as [0, 3]
    layers: Layers = "all"
    # thoughts 0..K-1 (plain LMs: span token indices); a list may name bot and eot
    positions: Positions = "all"


class Record(Mode):
    sections = (RecordPatch,)
    reads_both_runs = True
    sized_by_memory = False
    compare_refusal = "its rows index an activation export, not effects of a patch"
    decode_refusal = "it exports activations and measures no answer"

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        check_site(patch, shape, source)
        layers = selected_layers(patch, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", patch.site)
        return [PatchSpec(layer, (p,)) for layer in layers for p in selected]

    def check(self, recipe, model, pairs, plan, source) -> None:
        rows = len(plan) * len(pairs) * len(RUNS)
        element = torch.empty((), dtype=model.dtype).element_size()
        size, limit = rows * model.hidden_size * element, parse_size(recipe.run.max_export)
        if size > limit:
            raise RecipeError(
                source,
                "run.max_export",
                f"the export would be {shown(size)} ({rows} activations of {model.hidden_size} "
                f"{str(model.dtype).removeprefix('torch.')} values), more than {shown(limit)}",
                "raise run.max_export, or narrow patch.layers, patch.positions or data.limit",
            )

    def compute(self, sweep: Sweep) -> Computed:
        clock = time.perf_counter()
        model, pairs, site = sweep.model, sweep.pairs, sweep.recipe.patch.site
        tokens = [[model.position_tokens(getattr(p, f"{r}_question")) for r in RUNS] for p in pairs]
        every = [(spec, i, i) for spec in sweep.plan for i in range(len(pairs))]
        inside = sweep.inside_spans(every)
        tick = sweep.progress(len(every))
        parts, index = [], []
        for s, spec in enumerate(sweep.plan):
            layer, position = spec.layer, spec.positions[0]
            runs = sweep.baselines.runs[(layer, position)]  # [2, pairs, d]
            for r, run in enumerate(RUNS):
                keep = [i for i in range(len(pairs)) if inside[s * len(pairs) + i]]
                values = runs[r].index_select(0, torch.tensor(keep, device=runs.device))
                parts.append(values.detach().cpu())
                norms = values.float().norm(dim=-1).tolist()
                finite = torch.isfinite(values).all(dim=-1).tolist()
                for j, i in enumerate(keep):
                    token_index, token = tokens[i][r][position]
                    index.append(
                        {
                            "row": len(index),
                            "pair_id": pairs[i].id,
                            "run": run,
                            "site": site,
                            "layer": layer,
                            "position": position,
                            "token_index": token_index,
                            "token": token,
                            "norm": norms[j],
                            "nonfinite": not finite[j],
                        }
                    )
            tick(len(pairs))
        table = pl.DataFrame(index, schema_overrides={"layer": pl.Int64}, infer_schema_length=None)
        tensor = torch.cat(parts) if parts else torch.empty(0, model.hidden_size)
        return Computed(
            table, len(index), time.perf_counter() - clock, tensors={FILE: {FILE: tensor}}
        )

    def summarize(self, results: pl.DataFrame, recipe) -> pl.DataFrame:
        """Per cell: the mean activation norm over pairs (each pair's two runs averaged)."""
        per_pair = results.group_by(["pair_id", "layer", "position"], maintain_order=True).agg(
            pl.col("norm").mean()
        )
        cells = per_pair.with_columns(
            pl.lit("record").alias("mode"),
            pl.lit(recipe.patch.site).alias("site"),
            pl.lit(None, dtype=pl.String).alias("direction"),
            pl.concat_list(pl.col("position")).alias("positions"),
            pl.lit(False).alias("control"),
        )
        return summarize(cells, ["norm"], recipe.run.seed)

    def key_table(self, summary: pl.DataFrame, metrics: list[str]) -> Table:
        cells = summary.height
        return Table(
            "Exported activations",
            ["file", "cells", "index"],
            [[f"{FILE}.safetensors", str(cells), "results.parquet (row, pair_id, run, cell)"]],
            "Load them with nnpatch.load_activations(run_dir): the [rows, d] tensor and its index.",
        )

    def screen_lines(self, summary: pl.DataFrame, recipe) -> list[str]:
        return [
            f"activations: {FILE}.safetensors, indexed by results.parquet ({summary.height} cells)"
        ]

    def charts(self, run) -> dict:
        title = "norm: mean activation norm over pairs (both runs)"
        return {"heatmap_norm": partial(charts.heatmap, run.summary, "norm", run.positions, title)}
