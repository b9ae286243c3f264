"""Attribution patching: every (layer, position) cell estimated from gradients through the
whole thought loop (`nnpatch.engine.gradients`), then the `verify_top` cells with the largest
estimated effect patched exactly, in the same run, so the report shows how far to trust the
estimates. Estimated rows have `estimate = true`; the exact ones are `single` rows."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Literal

import altair as alt
import polars as pl
import torch
from pydantic import Field

from nnpatch.engine.gradients import estimate_sites, unaligned_pairs
from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, check_site, selected_layers, selected_positions
from nnpatch.errors import RecipeError
from nnpatch.fields import Int, PatchCommon
from nnpatch.report import charts
from nnpatch.report.summary import signed
from nnpatch.run.tables import Facets, results_table

Site = Literal["resid", "attn", "mlp", "thought"]


class AttributionPatch(PatchCommon):
    """Every (layer, position) cell estimated by attribution patching (gradients), then the
    `verify_top` cells with the largest estimated effect patched exactly. `site` may be a
    list: every site's cells come from the same forward and backward passes."""

    mode: Literal["attribution"]
    site: Site | Annotated[list[Site], Field(min_length=1)] = "resid"
    # each site's strongest estimated cells re-run exactly (mode single rows)
    verify_top: Int = Field(default=10, ge=0)
    control: Literal["none"] = "none"  # estimates have no random-donor control
    # atp: the gradient at the receiver run; ig: averaged over ig_steps points on the line
    # to the donor's activations (integrated gradients), ig_steps forward+backward passes
    estimator: Literal["atp", "ig"] = "atp"
    # estimator ig: steps from the receiver's activation to the donor's
    ig_steps: Int = Field(default=5, ge=1, le=256)

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(self.site)) if isinstance(self.site, list) else [self.site]

    @property
    def steps(self) -> int:
        return self.ig_steps if self.estimator == "ig" else 1


class Attribution(Mode):
    decode_refusal = "its rows are gradient estimates of the answer logits, and text has none"
    sections = (AttributionPatch,)
    remote_refusal = "attribution takes its gradients with local hooks, not through NDIF"
    sized_by_memory = False

    def primary(self, patch) -> tuple[str, str]:
        return patch.sites[0], patch.direction

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        """The first site's cells (every site is checked)."""
        return [self.site_plan(patch, shape, source, site) for site in patch.sites][0]

    def check_fields(self, patch, source) -> None:
        if "ig_steps" in patch.model_fields_set and patch.estimator != "ig":
            raise RecipeError(
                source, "patch.ig_steps", "applies to estimator 'ig' only", "remove it"
            )

    def site_plan(self, patch, shape, source, site: str) -> list[PatchSpec]:
        one = patch.model_copy(update={"site": site})
        check_site(one, shape, source)
        layers = selected_layers(one, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", site)
        return [PatchSpec(layer, (p,)) for layer in layers for p in selected]

    def check(self, recipe, model, pairs, plan, source) -> None:
        if recipe.patch.estimator == "ig" and not model.shape.named_positions:
            raise RecipeError(
                source,
                "patch.estimator",
                "'ig' moves a thought model's question embeddings and this is a plain LM",
                "use estimator 'atp'",
            )

    def notes(self, recipe, pairs, model) -> list[str]:
        if recipe.patch.estimator != "ig":
            return []
        unaligned = unaligned_pairs(model, pairs)
        if not unaligned:
            return []
        return [
            f"estimator: {len(unaligned)} of {len(pairs)} pairs have clean and corrupted "
            "questions of different token counts, so ig cannot move one onto the other; "
            f"their estimates are atp (e.g. {unaligned[0]!r})"
        ]

    def row_count(self, recipe, shape, plan, pairs: int) -> int:
        patch = recipe.patch
        cells = sum(len(self.site_plan(patch, shape, "<recipe>", s)) for s in patch.sites)
        return (cells + patch.verify_top * len(patch.sites)) * pairs

    def compute(self, sweep: Sweep) -> Computed:
        """Estimated rows for every cell of every site (one set of forward and backward
        passes), then each site's `verify_top` strongest cells patched exactly (mode
        `single`, `estimate` false)."""
        recipe, pairs = sweep.recipe, sweep.pairs
        names, patch, shape = recipe.metrics.names, recipe.patch, sweep.model.shape
        clock = time.perf_counter()
        plans = {
            site: sweep.plan if site == patch.sites[0] else self.site_plan(patch, shape, "", site)
            for site in patch.sites
        }
        groups = {
            site: sweep.group(site, patch.direction, self.cells(plans[site]), False)
            for site in patch.sites
        }
        chunk = max(1, recipe.run.batch_size // 2)
        sites = {site: (groups[site][1], plans[site]) for site in patch.sites}
        estimates = estimate_sites(sweep.engine, pairs, sweep.answers, sites, chunk, patch.steps)
        base = sweep.baselines
        receiver = base.corrupt_metrics if patch.direction == "denoise" else base.clean_metrics
        tokens = sweep.receiver_tokens()
        frames, computed, work = [], 0, []
        for site in patch.sites:
            plan = plans[site]
            verify = verify_cells(estimates[site], receiver.cpu(), plan, names, patch.verify_top)
            every = [(spec, i, i) for spec in plan for i in range(len(pairs))]  # as estimated
            inside = sweep.inside_spans(every)
            estimate_rows = [row for row, ok in zip(every, inside, strict=True) if ok]
            exact_rows = [(spec, i, i) for spec in verify for i in range(len(pairs))]
            exact_rows = [
                r for r, ok in zip(exact_rows, sweep.inside_spans(exact_rows), strict=True) if ok
            ]
            work.append((site, estimates[site], inside, estimate_rows, exact_rows))
        tick = sweep.progress(sum(len(w[3]) + len(w[4]) for w in work))
        for site, estimated, inside, estimate_rows, exact_rows in work:
            tick(len(estimate_rows))
            shards = None if len(patch.sites) == 1 else site
            values, _, count = sweep.patched(exact_rows, tick, None, groups[site], shards)
            computed += count
            frames += [
                results_table(
                    estimate_rows,
                    pairs,
                    estimated[torch.tensor(inside, dtype=torch.bool)],
                    names,
                    Facets(patch.mode, site, patch.direction),
                    single=True,
                    estimate=True,
                    tokens=tokens,
                ),
                results_table(
                    exact_rows,
                    pairs,
                    values,
                    names,
                    Facets("single", site, patch.direction),
                    single=True,
                    tokens=tokens,
                ),
            ]
        # per row, the estimator that made it: ig cannot mix pairs of unequal token counts
        plain = unaligned_pairs(sweep.model, pairs) if patch.estimator == "ig" else []
        results = pl.concat(frames).with_columns(
            pl.when(~pl.col("estimate"))
            .then(pl.lit(None, pl.String))
            .when(pl.col("pair_id").is_in(plain))
            .then(pl.lit("atp"))
            .otherwise(pl.lit(patch.estimator))
            .alias("estimator")
        )
        return Computed(results, computed, time.perf_counter() - clock)

    def charts(self, run) -> dict:
        """Per site: heatmaps of the estimates; estimate against exact, and the exact cells'
        per-pair values."""
        out = {}
        estimator = run.resolved["patch"].get("estimator", "atp")
        sites = run.summary["site"].unique(maintain_order=True).to_list()
        for site in sites:
            suffix = "" if len(sites) == 1 else f"_{site}"
            summary = run.summary.filter(pl.col("site") == site)
            estimated = summary.filter(pl.col("mode") == "attribution")
            exact = summary.filter(pl.col("mode") == "single")
            for metric in run.metrics:
                if estimated.filter(pl.col("metric") == metric)["mean"].is_nan().all():
                    continue  # no first-order estimate for this metric
                title = f"{metric}: {estimator} estimate at {site}, mean over pairs"
                out[f"heatmap_{metric}{suffix}"] = partial(
                    charts.heatmap, estimated, metric, run.positions, title
                )
                if exact.height:
                    out[f"estimate_vs_exact_{metric}{suffix}"] = partial(
                        estimate_vs_exact, summary, metric, estimator
                    )
            if exact.height:
                results = run.results.filter(
                    (pl.col("mode") == "single") & (pl.col("site") == site)
                )
                out[f"top_{run.lead_metric}{suffix}"] = partial(
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


def estimate_vs_exact(summary: pl.DataFrame, metric: str, estimator: str = "atp") -> alt.Chart:
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
        title=f"{metric}: {estimator} estimate against exact patching (verified cells)",
        width=320,
        height=320,
    )


def estimate_exact_table(summary: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Verified cells: layer, position, mean estimate, mean exact value and its CI."""
    rows = summary.filter(pl.col("metric") == metric)
    keys = ["site", "layer", "position"]
    estimated = rows.filter(pl.col("mode") == "attribution").select(
        *keys, pl.col("mean").alias("estimate")
    )
    exact = rows.filter(pl.col("mode") == "single").select(
        *keys, pl.col("mean").alias("exact"), "ci95_low", "ci95_high"
    )
    return (
        exact.join(estimated, on=keys, nulls_equal=True)
        .with_columns(
            pl.format("L{} t{}", pl.col("layer"), pl.col("position")).alias("cell")
            if rows["site"].n_unique() == 1
            else pl.format("{} L{} t{}", pl.col("site"), pl.col("layer"), pl.col("position")).alias(
                "cell"
            )
        )
        .sort(pl.col("estimate").abs(), descending=True)
    )
