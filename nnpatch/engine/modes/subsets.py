"""All subsets: every non-empty subset of the selected positions at each layer, patched
together (2^K - 1 rows per layer and pair), and whether the thoughts act alone or together.

A set's effect on a metric is its patched value minus the unpatched receiver's (the
corrupted run when denoising, the clean run when noising). Its synergy is that effect minus
the sum of its members' single-position effects, per pair: zero when the thoughts add up,
positive when the set does more than its parts (they compute together), negative when it
does less (they carry the same thing, or the metric saturates). `synergy.parquet` holds,
per set of two or more positions, the mean set effect, the mean sum of singles, and the
synergy's mean with a bootstrap CI over pairs.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Literal

import altair as alt
import numpy as np
import polars as pl

from nnpatch.engine.modes.base import Computed, Sweep
from nnpatch.engine.modes.patching import Patching, PatchingSection, facet_groups
from nnpatch.report.charts import Undrawable, require_finite
from nnpatch.report.stats import cell_stats
from nnpatch.report.summary import cell_key, signed, with_facets
from nnpatch.report.top import labeller

SET_KEYS = ["site", "direction", "source", "scale", "head", "layer", "positions"]


class SubsetsPatch(PatchingSection):
    """Every non-empty subset of the selected positions, at each layer."""

    mode: Literal["subsets"]


class Subsets(Patching):
    sections = (SubsetsPatch,)

    def groups(self, patch, shape, source, site: str, selected: list[str]) -> list[tuple]:
        """Singletons first, then pairs, ...; each set in sequence order."""
        return [
            combo
            for size in range(1, len(selected) + 1)
            for combo in itertools.combinations(selected, size)
        ]

    def compute(self, sweep: Sweep) -> Computed:
        computed = super().compute(sweep)
        patch = sweep.recipe.patch
        unpatched = []
        for site in patch.sites:
            for direction in patch.directions:
                primary = (sweep.engine.site, sweep.engine.direction)
                base = (
                    sweep.baselines
                    if (site, direction) == primary
                    else sweep.groups[(site, direction)][1]
                )
                receiver = base.corrupt_metrics if direction == "denoise" else base.clean_metrics
                unpatched.append(
                    unpatched_frame(sweep.pairs, receiver.cpu(), sweep.recipe, site, direction)
                )
        table = synergy(
            computed.results, pl.concat(unpatched), sweep.recipe.metrics.numeric, sweep.recipe
        )
        computed.tables["synergy"] = table
        return computed

    def report_lines(self, run) -> list[str]:
        table = _synergy_table(run)
        lead = run.lead_metric
        shown = (
            table.filter((pl.col("metric") == lead) & pl.col("synergy").is_not_null())
            .sort(pl.col("synergy").abs(), descending=True)
            .head(12)
        )
        lines = [
            "",
            f"## Synergy: each set against the sum of its members ({lead})",
            "",
            "Effect: patched minus the unpatched receiver, per pair. Synergy = set effect - "
            "sum of the members' single effects (0: they add up; > 0: the set does more than "
            "its parts; < 0: less). The sets with the largest |synergy|; all of them are in "
            "synergy.parquet.",
            "",
            "| set | set effect | sum of singles | synergy | 95% CI | n |",
            "|---|---|---|---|---|---|",
        ]
        label = labeller(table)
        return lines + [
            f"| {label(r)} | {signed(r['set_effect'])} | {signed(r['singles_sum'])} | "
            f"{signed(r['synergy'])} | [{signed(r['ci95_low'])}, {signed(r['ci95_high'])}] | "
            f"{r['n']} |"
            for r in shown.iter_rows(named=True)
        ]

    def charts(self, run) -> dict:
        out = super().charts(run)
        table = _synergy_table(run)
        for suffix, part in facet_groups(table):
            out[f"synergy_{run.lead_metric}{suffix}"] = partial(
                synergy_heatmap, part, run.lead_metric
            )
            out[f"synergy_scatter_{run.lead_metric}{suffix}"] = partial(
                synergy_scatter, part, run.lead_metric
            )
        return out


def unpatched_frame(pairs, receiver, recipe, site: str, direction: str) -> pl.DataFrame:
    """Per pair: every metric of the unpatched receiver of (site, direction)."""
    names = recipe.metrics.numeric
    frame = pl.DataFrame(receiver.double().numpy(), schema=names, orient="row")
    return frame.with_columns(
        pl.Series("pair_id", [p.id for p in pairs], dtype=pl.String),
        pl.lit(site).alias("site"),
        pl.lit(direction).alias("direction"),
    )


def synergy(
    results: pl.DataFrame, unpatched: pl.DataFrame, names: list[str], recipe
) -> pl.DataFrame:
    """Per set of two or more positions and metric: mean set effect, mean sum of the members'
    single effects and the synergy's mean and bootstrap CI over the pairs that have every
    row of the set (a plain LM's span can leave some out)."""
    own = with_facets(results).filter(~pl.col("control"))
    long = own.unpivot(names, index=["pair_id", *SET_KEYS], variable_name="metric")
    base = unpatched.unpivot(
        names, index=["pair_id", "site", "direction"], variable_name="metric", value_name="v0"
    )
    long = long.join(base, on=["pair_id", "site", "direction", "metric"], how="left").with_columns(
        (pl.col("value") - pl.col("v0")).alias("effect"),
        pl.col("positions").list.len().alias("size"),
    )
    facets = ["pair_id", "metric", *SET_KEYS[:-1]]
    singles = long.filter(pl.col("size") == 1).select(
        *facets, pl.col("positions").list.first().alias("member"), pl.col("effect").alias("single")
    )
    sets = long.filter(pl.col("size") > 1).with_row_index("set_row")
    members = (
        sets.select("set_row", *facets, pl.col("positions").alias("member"))
        .explode("member")
        .join(singles, on=[*facets, "member"], how="left", nulls_equal=True)
        .group_by("set_row")
        .agg(
            pl.col("single").sum().alias("singles_sum"),
            pl.col("single").is_not_null().sum().alias("found"),
        )
    )
    per_pair = sets.join(members, on="set_row").filter(pl.col("found") == pl.col("size"))
    rows = []
    for group in per_pair.partition_by([*SET_KEYS, "metric"], maintain_order=True):
        first = group.row(0, named=True)
        effect = group["effect"].to_numpy().astype(float)
        singles = group["singles_sum"].to_numpy().astype(float)
        finite = np.isfinite(effect) & np.isfinite(singles)  # all three over the same pairs
        effect, singles = effect[finite], singles[finite]
        seeded = "synergy|" + cell_key(first, first["metric"])
        stats = cell_stats(effect - singles, None, recipe.run.seed, seeded)
        rows.append(
            {
                **{key: first[key] for key in SET_KEYS},
                "size": first["size"],
                "metric": first["metric"],
                "n": stats["n"],
                "set_effect": float(effect.mean()) if finite.any() else None,
                "singles_sum": float(singles.mean()) if finite.any() else None,
                "synergy": stats["mean"],
                "ci95_low": stats["ci95_low"],
                "ci95_high": stats["ci95_high"],
            }
        )
    return pl.DataFrame(rows, schema=SYNERGY_SCHEMA)


SYNERGY_SCHEMA = {
    "site": pl.String,
    "direction": pl.String,
    "source": pl.String,
    "scale": pl.Float64,
    "head": pl.Int64,
    "layer": pl.Int64,
    "positions": pl.List(pl.String),
    "size": pl.Int64,
    "metric": pl.String,
    "n": pl.Int64,
    "set_effect": pl.Float64,
    "singles_sum": pl.Float64,
    "synergy": pl.Float64,
    "ci95_low": pl.Float64,
    "ci95_high": pl.Float64,
}


def _synergy_table(run) -> pl.DataFrame:
    return run.table("synergy")


def synergy_heatmap(table: pl.DataFrame, metric: str) -> alt.Chart:
    """Layer × set (sets of two or more, by size): mean synergy over pairs, centred on 0."""
    data = table.filter(pl.col("metric") == metric).with_columns(
        pl.col("positions").list.join(",").alias("set"),
        pl.format("L{}", pl.col("layer")).alias("layer_label"),
    )
    require_finite(data["synergy"], f"synergy of {metric} in any set")
    sets = data.sort("size", "positions")["set"].unique(maintain_order=True).to_list()
    layers = [f"L{layer}" for layer in sorted(data["layer"].unique().drop_nulls().to_list())]
    bound = max(data["synergy"].abs().max() or 0, 1e-9)
    return (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_rect()
        .encode(
            x=alt.X("set:N", sort=sets, title="position set"),
            y=alt.Y("layer_label:N", sort=layers, title="layer"),
            color=alt.Color(
                "synergy:Q",
                scale=alt.Scale(
                    scheme="redblue", domain=[-bound, bound], domainMid=0, reverse=True
                ),
                title="synergy",
            ),
            tooltip=[
                "set:N",
                "layer_label:N",
                alt.Tooltip("set_effect:Q", format="+.3f", title="set effect"),
                alt.Tooltip("singles_sum:Q", format="+.3f", title="sum of singles"),
                alt.Tooltip("synergy:Q", format="+.3f"),
                alt.Tooltip("ci95_low:Q", format="+.3f", title="CI low"),
                alt.Tooltip("ci95_high:Q", format="+.3f", title="CI high"),
                "n:Q",
            ],
        )
        .properties(
            title=f"{metric}: set effect - sum of single effects (mean over pairs)",
            width=max(220, 30 * len(sets)),
            height=max(140, 28 * len(layers)),
        )
    )


def synergy_scatter(table: pl.DataFrame, metric: str) -> alt.Chart:
    """Each set's mean effect against the sum of its members' (the diagonal: additive)."""
    data = table.filter(
        (pl.col("metric") == metric)
        & pl.col("set_effect").is_not_null()
        & pl.col("singles_sum").is_not_null()
    ).with_columns(
        pl.format("L{} {}", pl.col("layer"), pl.col("positions").list.join(",")).alias("set")
    )
    if data.is_empty():
        raise Undrawable(f"no set has a finite effect on {metric}")
    low = min(data["set_effect"].min(), data["singles_sum"].min())
    high = max(data["set_effect"].max(), data["singles_sum"].max())
    diagonal = alt.Chart(alt.Data(values=[{"x": low, "y": low}, {"x": high, "y": high}]))
    points = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_circle(size=50)
        .encode(
            x=alt.X("singles_sum:Q", title=f"sum of single effects ({metric})"),
            y=alt.Y("set_effect:Q", title=f"set effect ({metric})"),
            color=alt.Color("size:O", title="set size"),
            tooltip=["set:N", alt.Tooltip("synergy:Q", format="+.3f"), "n:Q"],
        )
    )
    line = diagonal.mark_line(color="gray", strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    return (line + points).properties(
        title=f"{metric}: each set against the sum of its members (dashed: additive)",
        width=360,
        height=300,
    )
