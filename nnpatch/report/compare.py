"""`nnpatch compare RUN_A RUN_B`: per-cell differences between two runs, with CIs.

For each cell and metric both runs share: mean(A) - mean(B) and a bootstrap 95% CI of that
difference, paired by pair when the runs used the same pairs (e.g. resid vs thought site,
denoise vs noise), unpaired otherwise. `differs` marks CIs that exclude zero.
"""

from __future__ import annotations

import html
import json
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from nnpatch.engine.modes import mode_for
from nnpatch.errors import NnpatchError
from nnpatch.report import charts
from nnpatch.report.facts import html_table
from nnpatch.report.load import load_run
from nnpatch.report.page import BUNDLE, draw_charts, vega_bundle
from nnpatch.report.stats import MIN_PAIRS, RESAMPLES, bootstrap_ci, excludes_zero, generator
from nnpatch.run.folder import write_table, write_text


def compare_runs(a: str | Path, b: str | Path, out: str | Path, seed: int = 0) -> pl.DataFrame:
    out = Path(out)
    inside = next((p for p in [out, *out.parents] if (p / "manifest.json").is_file()), None)
    if inside is not None:
        raise NnpatchError(
            f"--out {out} is inside the run folder {inside}, which is never edited; "
            "choose another --out"
        )
    run_a, run_b = load_run(a), load_run(b)
    for run in (run_a, run_b):
        mode = run.resolved["patch"]["mode"]
        why = mode_for(mode).compare_refusal
        if why is not None:
            raise NnpatchError(
                f"{run.path}: a {mode} run cannot be compared ({why}); compare two runs of "
                "the modes that patch"
            )
    metrics = [m for m in run_a.metrics if m in run_b.metrics]
    keyed = [_real_rows(run_a), _real_rows(run_b)]
    # site `thought` has no layers: its cells stand against every layer of the other run
    for mine, other in ((0, 1), (1, 0)):
        if keyed[mine]["layer"].is_null().all() and not keyed[other]["layer"].is_null().all():
            layers = keyed[other].select(pl.col("layer").unique().alias("layer_"))
            keyed[mine] = (
                keyed[mine].drop("layer").join(layers, how="cross").rename({"layer_": "layer"})
            )
    keys = ["layer", "where", *_matched_facets(*keyed)]
    cells = (
        keyed[0]
        .select(keys)
        .unique()
        .join(keyed[1].select(keys).unique(), on=keys, nulls_equal=True)
    )
    if cells.is_empty() or not metrics:
        raise NnpatchError(f"{a} and {b} share no (cell, metric) to compare")
    rows = []
    for cell in cells.sort(keys, nulls_last=True).iter_rows(named=True):
        side = []
        for k in keyed:
            for key in keys:
                k = k.filter(pl.col(key).eq_missing(cell[key]))
            side.append(k.sort("pair_id"))
        paired = side[0]["pair_id"].to_list() == side[1]["pair_id"].to_list()
        facets = {key: cell[key] for key in keys[2:]}
        for metric in metrics:
            va, vb = (s[metric].to_numpy().astype(float) for s in side)
            name = "|".join(f"{k}={v}" for k, v in facets.items())
            key = f"{name}{'|' if name else ''}{cell['layer']}|{cell['where']}|{metric}"
            rows.append(
                {
                    "layer": cell["layer"],
                    "positions": cell["where"].split(","),
                    **facets,
                    "metric": metric,
                    **_difference(va, vb, paired, seed, key),
                }
            )
    table = pl.DataFrame(
        rows,
        schema_overrides={
            "layer": pl.Int64,
            "head": pl.Int64,
            "scale": pl.Float64,
            "mean_a": pl.Float64,
            "mean_b": pl.Float64,
            "mean": pl.Float64,
            "ci95_low": pl.Float64,
            "ci95_high": pl.Float64,
            "differs": pl.Boolean,
        },
        infer_schema_length=None,
    )
    _write(table, run_a, run_b, Path(out))
    return table


FACETS = ("site", "direction", "source", "scale", "effect", "head")


def _matched_facets(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    """The facets cells are matched on: those either run holds several values of (a grid),
    and heads. Runs of one value each stand against each other whatever it is (resid
    against thought, denoise against noise)."""
    matched = []
    for facet in FACETS:
        if facet not in a.columns or facet not in b.columns:
            continue
        several = a[facet].n_unique() > 1 or b[facet].n_unique() > 1
        if several or (facet == "head" and a[facet].is_not_null().any()):
            matched.append(facet)
    return matched


def _real_rows(run) -> pl.DataFrame:
    return run.results.filter(~pl.col("control")).with_columns(
        pl.col("positions").list.join(",").alias("where")
    )


def _difference(va: np.ndarray, vb: np.ndarray, paired: bool, seed: int, key: str) -> dict:
    """mean(A) - mean(B) over finite values, its CI and whether that excludes zero. Paired
    runs keep the pairs finite on both sides; below MIN_PAIRS there is no CI and no verdict."""
    if paired:
        keep = np.isfinite(va) & np.isfinite(vb)
        va, vb = va[keep], vb[keep]
    else:
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
    n = min(len(va), len(vb))
    mean_a = float(va.mean()) if len(va) else None
    mean_b = float(vb.mean()) if len(vb) else None
    low = high = None
    if n >= MIN_PAIRS:
        if paired:
            low, high = bootstrap_ci(va - vb, generator(seed, key))
        else:
            low, high = _unpaired_ci(va, vb, seed, key)
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean": None if mean_a is None or mean_b is None else mean_a - mean_b,
        "ci95_low": low,
        "ci95_high": high,
        "n": n,
        "paired": paired,
        "differs": excludes_zero(low, high),
    }


def _unpaired_ci(va: np.ndarray, vb: np.ndarray, seed: int, key: str) -> tuple[float, float]:
    """Bootstrap the two means independently; the CI of their difference."""
    ra, rb = generator(seed, key + "|a"), generator(seed, key + "|b")
    ma = va[ra.integers(0, len(va), (RESAMPLES, len(va)))].mean(1)
    mb = vb[rb.integers(0, len(vb), (RESAMPLES, len(vb)))].mean(1)
    low, high = np.percentile(ma - mb, [2.5, 97.5])
    return float(low), float(high)


def _write(table: pl.DataFrame, run_a, run_b, out: Path) -> None:

    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "compare.parquet", table)
    write_table(out / "compare.csv", table)
    as_summary = table.with_columns(
        pl.lit(None, dtype=pl.String).alias("position"),
        pl.lit(None).alias("control_mean"),
        pl.col("differs").alias("differs_from_control"),
    )
    bundle = vega_bundle()
    write_text(out / BUNDLE, bundle)
    facets = [k for k in FACETS if k in table.columns and k != "head"]
    parts = table.partition_by(facets, as_dict=True) if facets else {(): table}
    makers = {}
    for values, part in parts.items():
        suffix = "".join(f"_{v}" for v in values if v is not None).replace(".", "p")
        shown = as_summary.filter(pl.col("metric").is_in(part["metric"].unique()))
        for key, value in zip(facets, values, strict=True):
            shown = shown.filter(pl.col(key).eq_missing(value))
        for metric in part["metric"].unique(maintain_order=True):
            title = f"{metric}{suffix.replace('_', ' ')}: A - B (* = CI excludes zero)"
            makers[f"diff_{metric}{suffix}"] = partial(
                charts.heatmap, shown, metric, run_a.positions, title
            )
    specs, notes, _ = draw_charts(out, makers)
    header = ["metric", "cells", "cells that differ"]
    counts = [
        [m, str(g.height), str(int(g["differs"].sum()))]
        for (m,), g in table.group_by("metric", maintain_order=True)
    ]
    divs = "".join(f'<div id="c{i}"></div>' for i in range(len(specs)))
    divs += "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    embeds = "".join(
        f"vegaEmbed('#c{i}', {json.dumps(s)}, {{actions: false}});"
        for i, s in enumerate(specs.values())
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>compare</title>'
        f"<script>{bundle}</script></head><body><h1>A: {run_a.path}<br>B: {run_b.path}</h1>"
        f"{html_table(header, counts)}{divs}<script>{embeds}</script></body></html>\n"
    )
    write_text(out / "compare.html", page)
