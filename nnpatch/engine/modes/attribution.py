"""Attribution patching: every (layer, position) cell estimated from gradients through the
whole thought loop (`nnpatch.engine.gradients`), then the `verify_top` cells with the largest
estimated effect patched exactly, in the same run, so the report shows how far to trust the
estimates. Estimated rows have `estimate = true`; the exact ones are `single` rows."""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import altair as alt
import polars as pl
import torch
from pydantic import Field

from nnpatch.engine.gradients import estimate
from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, check_site, selected_layers, selected_positions
from nnpatch.fields import Int, PatchCommon
from nnpatch.report import charts
from nnpatch.report.summary import signed
from nnpatch.run.tables import Facets, results_table


class AttributionPatch(PatchCommon):
    """Every (layer, position) cell estimated by attribution patching (gradients), then the
    `verify_top` cells with the largest estimated effect patched exactly."""

    mode: Literal["attribution"]
    verify_top: Int = Field(default=10, ge=0)
    control: Literal["none"] = "none"  # estimates have no random-donor control


class Attribution(Mode):
    sections = (AttributionPatch,)
    remote_refusal = "attribution takes its gradients with local hooks, not through NDIF"

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        check_site(patch, shape, source)
        layers = selected_layers(patch, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", patch.site)
        return [PatchSpec(layer, (p,)) for layer in layers for p in selected]

    def compute(self, sweep: Sweep) -> Computed:
        """Estimated rows for every cell, then the `verify_top` strongest cells patched
        exactly (mode `single`, `estimate` false)."""
        recipe, pairs, base = sweep.recipe, sweep.pairs, sweep.baselines
        names, patch = recipe.metrics.names, recipe.patch
        clock = time.perf_counter()
        chunk = max(1, recipe.run.batch_size // 2)
        estimates = estimate(sweep.engine, pairs, sweep.answers, base, sweep.plan, chunk)
        receiver = base.corrupt_metrics if patch.direction == "denoise" else base.clean_metrics
        verify = verify_cells(estimates, receiver.cpu(), sweep.plan, names, patch.verify_top)
        every = [(spec, i, i) for spec in sweep.plan for i in range(len(pairs))]  # as estimated
        inside = sweep.inside_spans(every)
        estimate_rows = [row for row, ok in zip(every, inside, strict=True) if ok]
        exact_rows = [(spec, i, i) for spec in verify for i in range(len(pairs))]
        exact_rows = [
            r for r, ok in zip(exact_rows, sweep.inside_spans(exact_rows), strict=True) if ok
        ]
        tick = sweep.progress(len(estimate_rows) + len(exact_rows))
        tick(len(estimate_rows))
        values, computed = sweep.patched(exact_rows, tick)
        tokens = sweep.receiver_tokens()
        frames = [
            results_table(
                estimate_rows,
                pairs,
                estimates[torch.tensor(inside, dtype=torch.bool)],
                names,
                Facets(patch.mode, patch.site, patch.direction),
                single=True,
                estimate=True,
                tokens=tokens,
            ),
            results_table(
                exact_rows,
                pairs,
                values,
                names,
                Facets("single", patch.site, patch.direction),
                single=True,
                tokens=tokens,
            ),
        ]
        return Computed(pl.concat(frames), computed, time.perf_counter() - clock)

    def charts(self, run) -> dict:
        """Heatmaps of the estimates; estimate against exact, and the exact cells' per-pair
        values."""
        out = {}
        estimated = run.summary.filter(pl.col("mode") == "attribution")
        exact = run.summary.filter(pl.col("mode") == "single")
        for metric in run.metrics:
            if estimated.filter(pl.col("metric") == metric)["mean"].is_nan().all():
                continue  # no first-order estimate for this metric
            title = f"{metric}: attribution estimate, mean over pairs"
            out[f"heatmap_{metric}"] = partial(
                charts.heatmap, estimated, metric, run.positions, title
            )
            if exact.height:
                out[f"estimate_vs_exact_{metric}"] = partial(estimate_vs_exact, run.summary, metric)
        if exact.height:
            results = run.results.filter(pl.col("mode") == "single")
            out[f"top_{run.lead_metric}"] = partial(
                charts.top_distributions, results, exact, run.lead_metric
            )
        return out

    def report_lines(self, run) -> list[str]:
        table = estimate_exact_table(run.summary, run.lead_metric)
        lines = [
            "",
            f"## Attribution: estimate against exact patching ({run.lead_metric}, verified cells)",
            "",
            "| cell | estimate | exact | exact 95% CI |",
            "|---|---|---|---|",
        ]
        return lines + [
            f"| {r['cell']} | {signed(r['estimate'])} | {signed(r['exact'])} | "
            f"[{signed(r['ci95_low'])}, {signed(r['ci95_high'])}] |"
            for r in table.iter_rows(named=True)
        ]


def verify_cells(
    estimates: torch.Tensor,
    unpatched: torch.Tensor,
    specs: list[PatchSpec],
    names: list[str],
    top: int,
) -> list[PatchSpec]:
    """The `top` cells with the largest mean estimated change of the lead estimable metric.

    `estimates` [specs * pairs, metrics] spec-major; `unpatched` [pairs, metrics] of the
    receiver run, so the change is estimate - unpatched whatever the metric's level.
    """
    lead = next((n for n in ("recovery", "logit_diff", "logprob_diff") if n in names), None)
    if lead is None or top == 0:
        return []
    column = names.index(lead)
    pairs = unpatched.shape[0]
    change = estimates[:, column].reshape(len(specs), pairs) - unpatched[:, column]
    effect = change.nanmean(dim=1).abs().nan_to_num(-1.0)
    order = torch.argsort(effect, descending=True, stable=True)
    return [specs[i] for i in order[:top].tolist()]


def estimate_vs_exact(summary: pl.DataFrame, metric: str) -> alt.Chart:
    """Mean attribution estimate (x) against the mean exact patch (y, 95% CI) per verified
    cell; points on the diagonal are cells the estimate got right."""
    data = estimate_exact_table(summary, metric).filter(
        pl.col("estimate").is_finite() & pl.col("exact").is_finite()
    )
    if data.is_empty():
        raise charts.Undrawable(f"no verified cell has a finite estimate and exact {metric}")
    base = alt.Chart(alt.Data(values=data.to_dicts()))
    bound = [
        min(data["estimate"].min(), data["exact"].min()),
        max(data["estimate"].max(), data["exact"].max()),
    ]
    diagonal = (
        alt.Chart(alt.Data(values=[{"v": bound[0]}, {"v": bound[1]}]))
        .mark_line(color="gray", strokeDash=[4, 4])
        .encode(x="v:Q", y="v:Q")
    )
    bars = base.mark_rule().encode(
        x="estimate:Q", y=alt.Y("ci95_low:Q", title=f"exact {metric}"), y2="ci95_high:Q"
    )
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("estimate:Q", title=f"estimated {metric}"),
        y="exact:Q",
        tooltip=[
            "cell:N",
            alt.Tooltip("estimate:Q", format="+.3f"),
            alt.Tooltip("exact:Q", format="+.3f"),
        ],
    )
    return (diagonal + bars + points).properties(
        title=f"{metric}: attribution estimate against exact patching (verified cells)",
        width=320,
        height=320,
    )


def estimate_exact_table(summary: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Verified cells: layer, position, mean estimate, mean exact value and its CI."""
    rows = summary.filter(pl.col("metric") == metric)
    keys = ["layer", "position"]
    estimated = rows.filter(pl.col("mode") == "attribution").select(
        *keys, pl.col("mean").alias("estimate")
    )
    exact = rows.filter(pl.col("mode") == "single").select(
        *keys, pl.col("mean").alias("exact"), "ci95_low", "ci95_high"
    )
    return (
        exact.join(estimated, on=keys, nulls_equal=True)
        .with_columns(pl.format("L{} t{}", pl.col("layer"), pl.col("position")).alias("cell"))
        .sort(pl.col("estimate").abs(), descending=True)
    )
