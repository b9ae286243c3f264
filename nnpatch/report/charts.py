"""Altair charts of a run, built from its stored tables only.

- `heatmap`: layer × position (or position set) per metric; diverging scale centred on zero
  for signed metrics; tooltips with mean, CI, n and the control; `*` marks cells whose
  paired CI against the control excludes zero.
- `chained_lines`: recovery (or any metric) against k for `chained` mode, CI bands.
- `layer_bars`: per-layer bars with CI whiskers and the control mean, for `layer` mode.
- `top_distributions`: per-pair values of the top cells, with their control.

A mode's own charts live with the mode (attribution's estimate against exact, for one).
"""

from __future__ import annotations

import altair as alt
import polars as pl


class Undrawable(Exception):
    """A chart whose data holds nothing to draw; the message says why, in a few words."""


def require_finite(values: pl.Series, what: str) -> None:
    if values.is_empty() or not values.cast(pl.Float64).is_finite().any():
        raise Undrawable(f"no finite {what}")


SIGNED = {"logit_diff", "recovery", "logprob_diff"}
TOOLTIP = [
    alt.Tooltip("cell:N", title="cell"),
    alt.Tooltip("mean:Q", format="+.3f"),
    alt.Tooltip("ci95_low:Q", format="+.3f", title="CI low"),
    alt.Tooltip("ci95_high:Q", format="+.3f", title="CI high"),
    alt.Tooltip("n:Q"),
    alt.Tooltip("control_mean:Q", format="+.3f", title="control"),
    alt.Tooltip("differs_from_control:N", title="differs from control"),
]


def _with_labels(summary: pl.DataFrame) -> pl.DataFrame:
    """Add display columns: a layer label, a position label and its order, a cell name."""
    window = pl.col("layers") if "layers" in summary.columns else pl.lit(None, pl.String)
    return summary.with_columns(
        pl.when(pl.col("layer").is_null())
        .then(pl.lit("thought"))
        .when(window.is_not_null())
        .then(pl.format("L{}", window))
        .otherwise(pl.format("L{}", pl.col("layer")))
        .alias("layer_label"),
        pl.col("positions").list.join(",").alias("where"),
        pl.col("positions").list.len().alias("k_plus_1"),
    ).with_columns(
        pl.format("{} {}", pl.col("layer_label"), pl.col("where")).alias("cell"),
        pl.when(pl.col("differs_from_control"))
        .then(pl.lit("*"))
        .otherwise(pl.lit(""))
        .alias("mark"),
    )


def _order(summary: pl.DataFrame, positions: list[str]) -> tuple[list[str], list[str]]:
    layers = summary.select("layer", "layer_label").unique().sort("layer", nulls_last=True)
    wheres = summary["where"].unique(maintain_order=True).to_list()
    rank = {p: i for i, p in enumerate(positions)}
    wheres.sort(key=lambda w: [rank.get(p, len(rank)) for p in w.split(",")])
    return layers["layer_label"].to_list(), wheres


def heatmap(
    summary: pl.DataFrame, metric: str, positions: list[str], title: str | None = None
) -> alt.Chart:
    data = _with_labels(summary.filter(pl.col("metric") == metric))
    require_finite(data["mean"], f"mean {metric} in any cell")
    layers, wheres = _order(data, positions)
    scale = _scale(data, metric)
    base = alt.Chart(alt.Data(values=data.to_dicts())).encode(
        x=alt.X("where:N", sort=wheres, title="position"),
        y=alt.Y("layer_label:N", sort=layers, title="layer"),
    )
    rects = base.mark_rect().encode(
        color=alt.Color("mean:Q", scale=scale, title=f"mean {metric}"), tooltip=TOOLTIP
    )
    marks = base.mark_text(fontSize=16, color="black").encode(text="mark:N")
    title = title or f"{metric}: mean over pairs (* = differs from the random-donor control)"
    return (rects + marks).properties(
        title=title, width=max(220, 40 * len(wheres)), height=max(140, 28 * len(layers))
    )


def head_heatmap(summary: pl.DataFrame, metric: str, position: str) -> alt.Chart:
    """Site `head`: layer × head at one position, mean over pairs; `*` as in `heatmap`."""
    data = _with_labels(
        summary.filter((pl.col("metric") == metric) & (pl.col("position") == position))
    ).with_columns(pl.format("h{}", pl.col("head")).alias("head_label"))
    require_finite(data["mean"], f"mean {metric} at position {position}")
    layers, _ = _order(data, [position])
    heads = [f"h{h}" for h in sorted(data["head"].unique().to_list())]
    scale = _scale(data, metric)
    base = alt.Chart(alt.Data(values=data.to_dicts())).encode(
        x=alt.X("head_label:N", sort=heads, title="head"),
        y=alt.Y("layer_label:N", sort=layers, title="layer"),
    )
    rects = base.mark_rect().encode(
        color=alt.Color("mean:Q", scale=scale, title=f"mean {metric}"), tooltip=TOOLTIP
    )
    marks = base.mark_text(fontSize=16, color="black").encode(text="mark:N")
    where = position if not position.isdigit() else f"thought {position}"
    return (rects + marks).properties(
        title=f"{metric} by head at {where} (* = differs from the random-donor control)",
        width=max(220, 30 * len(heads)),
        height=max(140, 28 * len(layers)),
    )


def _scale(data: pl.DataFrame, metric: str) -> alt.Scale:
    """A diverging scale centred on zero for signed metrics, viridis for the others."""
    if metric in SIGNED:
        bound = max(abs(data["mean"].min() or 0), abs(data["mean"].max() or 0), 1e-9)
        return alt.Scale(scheme="redblue", domain=[-bound, bound], domainMid=0, reverse=True)
    return alt.Scale(scheme="viridis")


def chained_lines(summary: pl.DataFrame, metric: str) -> alt.Chart:
    frame = _with_labels(summary.filter(pl.col("metric") == metric))
    require_finite(frame["mean"], f"mean {metric} at any k")
    data = frame.with_columns((pl.col("k_plus_1") - 1).alias("k")).to_dicts()
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("k:O", title="k (thoughts 0..k patched)"),
        color=alt.Color("layer_label:N", title="layer"),
    )
    band = base.mark_errorband(opacity=0.15).encode(
        y=alt.Y("ci95_low:Q", title=f"mean {metric}"), y2="ci95_high:Q"
    )
    line = base.mark_line(point=True).encode(y="mean:Q", tooltip=TOOLTIP)
    return (band + line).properties(title=f"chained: {metric} against k", width=420, height=260)


def layer_bars(summary: pl.DataFrame, metric: str) -> alt.Chart:
    frame = _with_labels(summary.filter(pl.col("metric") == metric))
    require_finite(frame["mean"], f"mean {metric} at any layer")
    data = frame.to_dicts()
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("layer_label:N", sort=None, title="layer")
    )
    bars = base.mark_bar().encode(y=alt.Y("mean:Q", title=f"mean {metric}"), tooltip=TOOLTIP)
    whiskers = base.mark_rule().encode(y="ci95_low:Q", y2="ci95_high:Q")
    control = base.mark_tick(color="black", thickness=2, size=24).encode(y="control_mean:Q")
    title = f"layer: {metric} per layer (ticks: random-donor control)"
    return (bars + whiskers + control).properties(
        title=title, width=max(220, 40 * len(data)), height=260
    )


def top_distributions(
    results: pl.DataFrame, summary: pl.DataFrame, metric: str, top: int = 6
) -> alt.Chart:
    best = (
        _with_labels(summary.filter(pl.col("metric") == metric))
        .filter(pl.col("mean").is_not_null() & pl.col("mean").is_finite())
        .sort(pl.col("mean").abs(), descending=True)
        .head(top)
    )
    if best.is_empty():
        raise Undrawable(f"no cell has a finite mean {metric}")
    keep = best.select("layer", "where", "cell")
    rows = results.with_columns(pl.col("positions").list.join(",").alias("where")).join(
        keep, on=["layer", "where"], how="inner", nulls_equal=True
    )
    finite = rows.filter(pl.col(metric).is_finite())  # a NaN has no place on the axis
    left_out = rows.height - finite.height
    data = finite.select(
        "cell",
        "pair_id",
        pl.col(metric).alias("value"),
        pl.when(pl.col("control")).then(pl.lit("control")).otherwise(pl.lit("patch")).alias("kind"),
    ).to_dicts()
    chart = (
        alt.Chart(alt.Data(values=data))
        .mark_circle(size=40, opacity=0.7)
        .encode(
            x=alt.X("value:Q", title=metric),
            y=alt.Y("cell:N", sort=best["cell"].to_list(), title=None),
            yOffset="kind:N",
            color=alt.Color("kind:N", title=None),
            tooltip=["pair_id:N", alt.Tooltip("value:Q", format="+.3f"), "kind:N"],
        )
    )
    title = f"per-pair {metric} in the top cells"
    if left_out:
        title += f" ({left_out} non-finite values left out)"
    return chart.properties(title=title, width=420, height=max(120, 40 * len(best)))
