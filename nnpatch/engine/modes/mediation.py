"""Mediation: how a cell's effect reaches the answer, directly or through later thoughts.

For each cell (layer l, position t), three rows per pair, each a patch from the donor run:
- `total`: the cell patched, everything downstream recomputed (a `single` patch);
- `direct`: the cell patched, and every later thought (t+1..K-1: its input, the `prj`
  output, and every layer's output) held at the receiver's own unpatched values, so the
  patch reaches the answer only through position t's keys and values;
- `indirect`: the cell left alone, and the later thoughts set to the values they take under
  the patch (read in the total row's own forward), so the patch reaches the answer only
  through them.
Later thoughts of `bot` are all K; `eot` and the last thought have none (indirect = 0).

Each batch runs two traced forwards: its total and direct rows (the totals read the later
thoughts as they go), then its indirect rows, which write what their totals read. An
indirect row whose total falls in another batch gets a total of its own, read and dropped.
`mediation.parquet` holds per cell and metric the three mean effects (each the patched
value minus the unpatched receiver's) and the direct share, direct / total, with a bootstrap
CI over pairs where the total effect's CI excludes zero.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import numpy as np
import polars as pl
import torch

from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.modes.patching import control_donors
from nnpatch.engine.plan import (
    PatchSpec,
    by_first_position,
    check_site,
    selected_layers,
    selected_positions,
)
from nnpatch.engine.trace import Engine
from nnpatch.errors import RecipeError
from nnpatch.fields import PatchCommon
from nnpatch.report import charts
from nnpatch.report.stats import RESAMPLES, cell_stats, excludes_zero, generator, percentile_ci
from nnpatch.report.summary import cell_key, cell_label, signed
from nnpatch.run.tables import Facets, results_table

EFFECTS = ("total", "direct", "indirect")


@dataclass(frozen=True)
class EffectSpec(PatchSpec):
    """A cell, the effect its row measures, and the later-thought cells that carry it on."""

    effect: str = "total"
    later: tuple = ()  # (layer or None for the thought input, position) cells after it


class MediationPatch(PatchCommon):
    """Total, direct and indirect effects of every (layer, thought) cell."""

    mode: Literal["mediation"]
    site: Literal["resid", "thought"] = "resid"


class Mediation(Mode):
    sections = (MediationPatch,)
    reads_both_runs = True  # direct rows hold later thoughts at the receiver's own values

    def primary(self, patch) -> tuple[str, str]:
        return "resid", patch.direction  # later thoughts are resid cells whatever the site

    def plan(self, patch, shape, source) -> list[EffectSpec]:
        if not shape.named_positions:
            raise RecipeError(
                source,
                "patch.mode",
                f"mediation follows a thought loop and {shape.name} has none (a plain LM)",
                "use a continuous-thought model (`nnpatch models` lists them)",
            )
        check_site(patch, shape, source)
        layers = selected_layers(patch, shape, source)
        positions = selected_positions(
            patch.positions, shape, source, "patch.positions", patch.site
        )
        return [
            EffectSpec(layer, (p,), later=later_cells(p, shape.num_layers, shape.num_thoughts))
            for layer in layers
            for p in positions
        ]

    def cells(self, plan: list[EffectSpec]) -> list:
        keys = {(spec.layer, spec.positions[0]) for spec in plan}
        keys |= {key for spec in plan for key in spec.later}
        return sorted(keys, key=lambda key: (-1 if key[0] is None else key[0], key[1]))

    def row_count(self, recipe, shape, plan, pairs: int) -> int:
        controls = int(recipe.patch.control == "random-donor" and pairs > 1)
        return len(plan) * len(EFFECTS) * (1 + controls) * pairs

    def notes(self, recipe, pairs, model) -> list[str]:
        if recipe.patch.control == "random-donor" and len(pairs) < 2:
            return [
                "control: not made: the random-donor control needs at least 2 pairs and this "
                f"run has {len(pairs)}; no cell is compared with a noise floor"
            ]
        return []

    def probe_engine(self, engine: Engine) -> Engine:
        return MediationEngine(engine)

    def probe_rows(self, plan, pairs: int, count: int) -> list:
        """The three effects in turn: indirect rows cost a second traced forward."""
        effects = [replace(plan[0], effect=EFFECTS[i % len(EFFECTS)]) for i in range(count)]
        return [(spec, i % pairs, i % pairs) for i, spec in enumerate(effects)]

    def compute(self, sweep: Sweep) -> Computed:
        clock = time.perf_counter()
        patch, pairs = sweep.recipe.patch, len(sweep.pairs)
        owners = [(i, i) for i in range(pairs)]
        if patch.control == "random-donor" and pairs > 1:
            owners += list(enumerate(control_donors(pairs, sweep.recipe.run.seed)))
        rows = [
            (replace(spec, effect=effect), receiver, donor)
            for receiver, donor in owners
            for spec in sweep.plan
            for effect in EFFECTS
        ]
        rows = by_first_position(rows, sweep.model.position_labels())
        engine = MediationEngine(sweep.engine)
        tick = sweep.progress(len(rows))
        values, texts, computed = sweep.patched(rows, tick, None, (engine, sweep.baselines))
        names = sweep.recipe.metrics.numeric
        facets = Facets("mediation", patch.site, patch.direction)
        tokens = sweep.receiver_tokens()
        results = results_table(
            rows, sweep.pairs, values, names, facets, True, tokens=tokens, texts=texts
        )
        effect = pl.Series("effect", [spec.effect for spec, _, _ in rows], dtype=pl.String)
        results = results.insert_column(results.columns.index("head") + 1, effect)
        base = sweep.baselines
        unpatched = base.corrupt_metrics if patch.direction == "denoise" else base.clean_metrics
        table = mediation_table(results, sweep.pairs, unpatched.cpu(), names, sweep.recipe.run.seed)
        return Computed(results, computed, time.perf_counter() - clock, {"mediation": table})

    def charts(self, run) -> dict:
        out = {}
        for effect in EFFECTS:
            part = run.summary.filter(pl.col("effect") == effect)
            for metric in run.metrics:
                title = f"{metric}: {effect} effect, mean over pairs (* = differs from control)"
                out[f"heatmap_{metric}_{effect}"] = partial(
                    charts.heatmap, part, metric, run.positions, title
                )
        table = run.table("mediation")
        out[f"direct_share_{run.lead_metric}"] = partial(
            share_heatmap, table, run.lead_metric, run.positions
        )
        return out

    def report_lines(self, run) -> list[str]:
        table = run.table("mediation").filter(pl.col("metric") == run.lead_metric)
        lines = [
            "",
            f"## Direct and indirect effects ({run.lead_metric})",
            "",
            "Effects are the patched value minus the unpatched receiver's, means over pairs. "
            "Direct: later thoughts held at the receiver's own values; indirect: only the later "
            "thoughts carry the patch. Direct share = direct / total, with a bootstrap CI, "
            "where the total effect's CI excludes zero.",
            "",
            "| cell | total | direct | indirect | direct share | 95% CI | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in table.iter_rows(named=True):
            share = "" if r["direct_share"] is None else f"{r['direct_share']:.2f}"
            ci = (
                ""
                if r["share_ci95_low"] is None
                else f"[{r['share_ci95_low']:.2f}, {r['share_ci95_high']:.2f}]"
            )
            lines.append(
                f"| {cell_label(r)} | {signed(r['total'])} | {signed(r['direct'])} | "
                f"{signed(r['indirect'])} | {share} | {ci} | {r['n']} |"
            )
        return lines


def later_cells(position: str, num_layers: int, num_thoughts: int) -> tuple:
    """The cells of every thought after `position`: its input (layer None) and each layer's
    output, thought by thought."""
    if position == "eot":
        return ()
    first = 0 if position == "bot" else int(position) + 1
    return tuple(
        key
        for t in range(first, num_thoughts)
        for key in [(None, str(t)), *((layer, str(t)) for layer in range(num_layers))]
    )


class MediationEngine(Engine):
    """The run's engine (its model, site and traced module), batching the three effects."""

    def __init__(self, engine: Engine) -> None:
        self.__dict__.update(engine.__dict__)

    def _patch_batch(self, pairs, answers, baselines, batch, written) -> torch.Tensor:
        own_run = 1 if self.direction == "denoise" else 0
        need = {_owner(spec, r, d): spec for spec, r, d in batch if spec.effect == "indirect"}
        first = [row for row in batch if row[0].effect != "indirect"]
        totals = {_owner(s, r, d) for s, r, d in first if s.effect == "total"}
        first += [
            (replace(s, effect="total"), *key[2:]) for key, s in need.items() if key not in totals
        ]
        writes, reads, source = defaultdict(list), defaultdict(list), {}
        for row, (spec, r, d) in enumerate(first):
            cell = (spec.layer, spec.positions[0])
            writes[cell].append((row, baselines.donor[cell][d]))
            if spec.effect == "direct":
                for key in spec.later:
                    writes[key].append((row, baselines.runs[key][own_run][r]))
            elif _owner(spec, r, d) in need:
                source[_owner(spec, r, d)] = row
                for key in spec.later:
                    reads[key].append(row)
        receivers = [r for _, r, _ in first]
        values, read = self.run_rows(pairs, answers, baselines, receivers, _stacked(writes), reads)
        slot = {key: {row: i for i, row in enumerate(rows)} for key, rows in reads.items()}
        second = [row for row in batch if row[0].effect == "indirect"]
        carried = defaultdict(list)
        for row, (spec, r, d) in enumerate(second):
            total = source[_owner(spec, r, d)]
            for key in spec.later:
                carried[key].append((row, read[("read", *key)][slot[key][total]]))
        indirect = None
        if second:
            receivers = [r for _, r, _ in second]
            indirect = self.run_rows(pairs, answers, baselines, receivers, _stacked(carried))[0]
        out, done = [], {"first": 0, "second": 0}
        for spec, _, _ in batch:
            part = "second" if spec.effect == "indirect" else "first"
            out.append((indirect if part == "second" else values)[done[part]])
            done[part] += 1
        return torch.stack(out)


def _stacked(writes: dict) -> dict:
    """cell → [(row, vector)] as cell → (rows, values [rows, width])."""
    return {
        key: ([row for row, _ in items], torch.stack([value for _, value in items]))
        for key, items in writes.items()
    }


def _owner(spec: EffectSpec, receiver: int, donor: int) -> tuple:
    """What a total and its indirect row share: the cell and the pair of runs."""
    return (spec.layer, spec.positions, receiver, donor)


def mediation_table(
    results: pl.DataFrame, pairs, unpatched: torch.Tensor, names: list[str], seed: int
) -> pl.DataFrame:
    """Per cell and metric: mean total, direct and indirect effects over the pairs with all
    three finite, the total's CI, and the direct share with its bootstrap CI."""
    index = {pair.id: i for i, pair in enumerate(pairs)}
    own = results.filter(~pl.col("control"))
    rows = []
    for group in own.partition_by(["layer", "position"], maintain_order=True):
        first = group.row(0, named=True)
        for m, name in enumerate(names):
            by_effect = {}
            for effect in EFFECTS:
                part = group.filter(pl.col("effect") == effect).sort("pair_id")
                base = unpatched[[index[p] for p in part["pair_id"]], m].double().numpy()
                by_effect[effect] = part[name].to_numpy().astype(float) - base
            finite = np.logical_and.reduce([np.isfinite(v) for v in by_effect.values()])
            total, direct, indirect = (by_effect[e][finite] for e in EFFECTS)
            key = cell_key({**first, "effect": None}, name)
            stats = cell_stats(total, None, seed, "mediation|" + key)
            share, low, high = direct_share(total, direct, stats, seed, key)
            rows.append(
                {
                    "site": first["site"],
                    "direction": first["direction"],
                    "layer": first["layer"],
                    "position": first["position"],
                    "positions": first["positions"],
                    "head": None,
                    "metric": name,
                    "n": int(finite.sum()),
                    "total": stats["mean"],
                    "total_ci95_low": stats["ci95_low"],
                    "total_ci95_high": stats["ci95_high"],
                    "direct": float(direct.mean()) if len(direct) else None,
                    "indirect": float(indirect.mean()) if len(indirect) else None,
                    "direct_share": share,
                    "share_ci95_low": low,
                    "share_ci95_high": high,
                }
            )
    return pl.DataFrame(rows, schema=MEDIATION_SCHEMA)


def direct_share(total: np.ndarray, direct: np.ndarray, stats: dict, seed: int, key: str):
    """mean direct / mean total and its percentile bootstrap CI (pairs resampled together);
    none where the total effect's CI does not exclude zero (the ratio would be noise)."""
    if not excludes_zero(stats["ci95_low"], stats["ci95_high"]):
        return None, None, None
    draws = generator(seed, "share|" + key).integers(0, len(total), size=(RESAMPLES, len(total)))
    ratios = direct[draws].mean(axis=1) / total[draws].mean(axis=1)
    low, high = percentile_ci(ratios)
    return float(direct.mean() / total.mean()), low, high


MEDIATION_SCHEMA = {
    "site": pl.String,
    "direction": pl.String,
    "layer": pl.Int64,
    "position": pl.String,
    "positions": pl.List(pl.String),
    "head": pl.Int64,
    "metric": pl.String,
    "n": pl.Int64,
    "total": pl.Float64,
    "total_ci95_low": pl.Float64,
    "total_ci95_high": pl.Float64,
    "direct": pl.Float64,
    "indirect": pl.Float64,
    "direct_share": pl.Float64,
    "share_ci95_low": pl.Float64,
    "share_ci95_high": pl.Float64,
}


def share_heatmap(table: pl.DataFrame, metric: str, positions: list[str]):
    """Layer × position: the direct share of each cell's total effect (blank: no total)."""
    shown = table.filter(pl.col("metric") == metric).select(
        "layer",
        "positions",
        pl.col("direct_share").alias("mean"),
        pl.col("share_ci95_low").alias("ci95_low"),
        pl.col("share_ci95_high").alias("ci95_high"),
        "n",
        pl.lit(None, dtype=pl.Float64).alias("control_mean"),
        pl.lit(None, dtype=pl.Boolean).alias("differs_from_control"),
        pl.lit("direct_share").alias("metric"),
    )
    title = f"{metric}: direct share of the total effect (blank: the total's CI includes 0)"
    return charts.heatmap(shown, "direct_share", positions, title)
