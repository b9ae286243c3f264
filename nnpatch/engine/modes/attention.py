"""Attention: where each query position looks. For both runs of every pair, with no patching,
the attention probabilities from each chosen query position to every key it sees (each
question token, bot, each thought, eot, the answer prefix up to the query), per layer and per
query head.

Queries: thought indices, "bot", "eot" and "answer" (the token whose logits predict the first
answer token: the last token of the answer prefix, see `nnpatch.engine.attention`); "all" is
every thought, eot and answer (plain LMs: every span token and answer). The probabilities are
eager attention's own (grouped-query heads each have theirs), read in the engine's traced
forward: one forward per chunk of pairs, both runs of each pair in the batch, with the model
set to eager attention for that forward only.

Tables: `results.parquet` in long form, one row per (pair, run, layer, head, query, key):
`weight` is the probability, keys are labelled "q{i}" (question token i of the run's own
sequence, its text in `key_token`), "bot", "t" (thought t), "eot" and "p{j}" (prefix token j);
plain LMs' span tokens "t" of kind `span`. Padding never appears, and a query's weights over
its keys sum to 1. `summary.parquet`: per (run, layer, query, key), the mean over heads, then
over pairs with a bootstrap CI (`scope` "key"); and per key kind the total over its keys
(`scope` "kind": how much goes to the question as a whole, to the thoughts, ...). Run "both"
averages each pair's two runs first. Question tokens are matched by index, so "q{i}" of pairs
whose questions differ in length are different words: the kind totals compare across pairs.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Literal

import polars as pl
import torch
from pydantic import Field

from nnpatch.engine import attention as read
from nnpatch.engine.modes.attention_charts import (
    KIND_ORDER,
    attended_tokens,
    key_name,
    layer_key_heatmap,
    main_run,
    ordered_queries,
    plural,
    short_query,
)
from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, selected_layers, selected_positions
from nnpatch.errors import RecipeError
from nnpatch.fields import Int, Layers, Section, distinct
from nnpatch.report.stats import cell_stats
from nnpatch.report.top import Table

RUNS = ("clean", "corrupted")
QueryPosition = Int | Literal["bot", "eot", "answer"]
Runs = Annotated[list[Literal["clean", "corrupted"]], Field(min_length=1), distinct("a run")]
TOP = 5  # keys listed per query in the report and on screen


class AttentionPatch(Section):
    """Attention probabilities from query positions to every key, per layer and head."""

    mode: Literal["attention"]
    # the layers read or patched: all, or a list such as [0, 3]
    layers: Layers = "all"
    # the query positions read: thoughts, "bot", "eot", "answer" (the token whose logits
    # predict the answer); all: every thought, eot and answer
    queries: (
        Literal["all"]
        | Annotated[
            list[Annotated[QueryPosition, Field(union_mode="left_to_right")]],
            Field(min_length=1),
            distinct("a query"),
        ]
    ) = "all"
    # every query head, or a list (grouped-query attention: each query head has its own)
    heads: (
        Literal["all"]
        | Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1), distinct("a head")]
    ) = "all"
    runs: Runs = ["clean", "corrupted"]  # which runs of each pair are read

    @property
    def site(self) -> str:
        return "attn"  # what it reads: the attention modules


class Attention(Mode):
    sections = (AttentionPatch,)
    remote_refusal = (
        "it reads attention probabilities from eager-attention forwards, which needs the "
        "model's attention implementation switched here, not on NDIF"
    )
    sized_by_memory = False
    compare_refusal = "its rows are attention readouts of the unpatched runs, not effects"
    decode_refusal = "it reads the unpatched runs' attention, not their answers"

    def primary(self, patch) -> tuple[str, str]:
        return "resid", "denoise"  # the baseline pass only scores the runs

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        layers = selected_layers(patch, shape, source)
        if patch.heads != "all" and shape.num_heads is not None:
            check_heads(patch.heads, shape.num_heads, shape.name, source)
        queries = query_labels(patch, shape, source)
        return [PatchSpec(layer, (query,)) for layer in layers for query in queries]

    def cells(self, plan) -> list:
        return []  # nothing is recorded in the baseline pass

    def row_count(self, recipe, shape, plan, pairs: int) -> int:
        return len(plan) * pairs * len(recipe.patch.runs)  # one readout per (layer, query, run)

    def check(self, recipe, model, pairs, plan, source) -> None:
        patch = recipe.patch
        heads = heads_of(patch, model)
        if patch.heads != "all":
            check_heads(patch.heads, model.num_heads, model.name, source)
        labels = labels_of(plan)
        keys = 0
        for pair in pairs:
            for run in patch.runs:
                question = getattr(pair, f"{run}_question")
                answer = [model.eos_id]
                encoded = model.encode([question], [answer], [answer])
                layout = read.layouts(model, [question], encoded, labels)[0]
                keys += sum(len(query.keys) for query in layout.values())
        rows, limit = keys * len(layers_of(plan)) * len(heads), recipe.run.max_rows
        if rows > limit:
            raise RecipeError(
                source,
                "run.max_rows",
                f"the attention table would have {rows:,} rows (pairs × runs × layers × heads "
                f"× query keys), more than run.max_rows = {limit:,}",
                "raise run.max_rows, or narrow patch.layers, patch.heads, patch.queries, "
                "patch.runs or data.limit",
            )

    def notes(self, recipe, pairs, model) -> list[str]:
        own = model.lm.config._attn_implementation
        if own == "eager":
            return []
        return [
            f"{model.name} runs {own} attention, which returns no probabilities: this mode's "
            f"own forwards run eager attention, and {own} is set back after each"
        ]

    def compute(self, sweep: Sweep) -> Computed:
        clock = time.perf_counter()
        model, pairs, patch = sweep.model, sweep.pairs, sweep.recipe.patch
        labels, layers = labels_of(sweep.plan), layers_of(sweep.plan)
        heads, runs = heads_of(patch, model), [r for r in RUNS if r in patch.runs]
        chunk = sweep.baseline_chunk or max(1, sweep.recipe.run.batch_size // 2)
        tick = sweep.progress(len(sweep.plan) * len(pairs) * len(runs))
        frames = []
        for start in range(0, len(pairs), chunk):
            index = list(range(start, min(start + chunk, len(pairs))))
            frames += self._chunk(sweep, index, runs, labels, layers, heads)
            tick(len(index) * len(runs) * len(sweep.plan))
        results = pl.concat(frames) if frames else pl.DataFrame(schema=read.RESULT_SCHEMA)
        results = results.with_columns((~pl.col("weight").is_finite()).alias("nonfinite"))
        readouts = len(sweep.plan) * len(pairs) * len(runs)
        return Computed(results, readouts, time.perf_counter() - clock)

    def _chunk(self, sweep, index, runs, labels, layers, heads) -> list[pl.DataFrame]:
        """The rows of pairs `index` (both runs in one traced forward); on CUDA out of memory,
        its halves one after the other."""
        model, pairs, answers = sweep.model, sweep.pairs, sweep.answers
        who = [(i, run) for run in runs for i in index]
        questions = [getattr(pairs[i], f"{run}_question") for i, run in who]
        encoded = model.encode(
            questions, [answers.clean[i] for i, _ in who], [answers.corrupt[i] for i, _ in who]
        )
        rows = read.layouts(model, questions, encoded, labels)
        try:
            weights = read.read(model, sweep.engine.traced, encoded, rows, layers, heads)
        except torch.cuda.OutOfMemoryError:
            if len(index) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(index) // 2
            return [
                frame
                for part in (index[:half], index[half:])
                for frame in self._chunk(sweep, part, runs, labels, layers, heads)
            ]
        order = {(i, run): row for row, (i, run) in enumerate(who)}
        return [
            read.table(pairs[i].id, run, label, rows[order[(i, run)]][label], found, layers, heads)
            for i in index
            for run in runs
            for label in labels
            if (found := weights.get((order[(i, run)], label))) is not None
        ]

    def summarize(self, results: pl.DataFrame, recipe) -> pl.DataFrame:
        return attention_summary(results, recipe.run.seed)

    def key_table(self, summary: pl.DataFrame, metrics: list[str]) -> Table:
        present = set(summary["key_kind"].to_list())
        kinds = [k for k in KIND_ORDER if k in present]
        rows = []
        for query, by_key in overall(summary).items():
            totals = {r["key"]: r["mean"] for r in by_key if r["scope"] == "kind"}
            top = next((r for r in by_key if r["scope"] == "key"), None)
            cells = [f"{totals[k]:.3f}" if k in totals else "" for k in kinds]
            rows.append(
                [
                    short_query(query, present),
                    *cells,
                    "" if top is None else f"{key_name(top)} {top['mean']:.3f}",
                ]
            )
        return Table(
            "Where each query's attention goes",
            ["query", *[plural(k) for k in kinds], "top key"],
            rows,
            "Mean attention probability over the layers read, the heads and the pairs (each "
            "pair's runs averaged); a kind's column is the total over its keys (question: every "
            "question token), so a row sums to 1; a question token shown without its text is a "
            "different word in different runs (a number, say).",
        )

    def screen_lines(self, summary: pl.DataFrame, recipe) -> list[str]:
        lines = [f"attention ({main_run(summary)} runs; mean over layers, heads and pairs):"]
        present = set(summary["key_kind"].to_list())
        for query, by_key in overall(summary).items():
            top = [r for r in by_key if r["scope"] == "key"][:TOP]
            kinds = [r for r in by_key if r["scope"] == "kind"]
            keys = ", ".join(f"{key_name(r)} {r['mean']:.2f}" for r in top)
            totals = ", ".join(f"{plural(r['key'])} {r['mean']:.2f}" for r in kinds)
            lines.append(f"  {short_query(query, present):<7} → {keys}  |  {totals}")
        return lines

    def report_lines(self, run) -> list[str]:
        lines = ["", "## Top attended keys per query", ""]
        lines.append(
            "Mean attention over the layers read, heads and pairs; in brackets the layer where "
            "the key draws the most, with its mean and 95% CI over pairs. A question token "
            "shown without its text is a different word in different runs."
        )
        best = peak_layers(run.summary)
        present = set(run.summary["key_kind"].to_list())
        for query, by_key in overall(run.summary).items():
            top = [r for r in by_key if r["scope"] == "key"][:TOP]
            parts = []
            for r in top:
                peak = best[(query, r["key"])]
                low, high = peak["ci95_low"], peak["ci95_high"]
                ci = "" if low is None else f" [{low:.3f}, {high:.3f}]"
                parts.append(
                    f"{key_name(r)} {r['mean']:.3f} (L{peak['layer']} {peak['mean']:.3f}{ci})"
                )
            lines.append(f"- **{short_query(query, present)}**: " + "; ".join(parts))
        return lines

    def charts(self, run) -> dict:
        out = {}
        present = set(run.summary["key_kind"].to_list())
        for query in ordered_queries(run.summary["query"].unique().to_list()):
            stem = short_query(query, present)
            out[f"attention_{stem}"] = partial(layer_key_heatmap, run.summary, query)
            out[f"attended_{stem}"] = partial(attended_tokens, run.results, query)
        return out


# ---- the plan -----------------------------------------------------------------------------
def query_labels(patch, shape, source) -> list[str]:
    """The query labels in sequence order, "answer" last."""
    if patch.queries == "all":
        named = ["eot"] if shape.named_positions else []
        return [*[p for p in shape.position_labels() if p.isdigit()], *named, "answer"]
    listed = [q for q in patch.queries if q != "answer"]
    labels = selected_positions(listed, shape, source, "patch.queries", "resid") if listed else []
    return labels + (["answer"] if "answer" in patch.queries else [])


def check_heads(heads: list[int], count: int, name: str, source) -> None:
    wrong = next((h for h in heads if h >= count), None)
    if wrong is not None:
        raise RecipeError(
            source,
            "patch.heads",
            f"head {wrong} is out of range for {name} (heads 0..{count - 1})",
            "use heads in range or 'all'",
        )


def heads_of(patch, model) -> list[int]:
    return list(range(model.num_heads)) if patch.heads == "all" else list(patch.heads)


def labels_of(plan: list[PatchSpec]) -> list[str]:
    return list(dict.fromkeys(spec.positions[0] for spec in plan))


def layers_of(plan: list[PatchSpec]) -> list[int]:
    return list(dict.fromkeys(spec.layer for spec in plan))


# ---- the statistics -----------------------------------------------------------------------
CELL = ["layer", "query", "key", "key_kind", "scope"]


def attention_summary(results: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Per (run, layer, query, key): n, mean, sem and bootstrap CI over pairs of the
    head-averaged weight; per key kind (scope "kind") the same of its keys' total. Run "both"
    averages each pair's runs first (present when both runs were read)."""
    weight = pl.col("weight").cast(pl.Float64)
    by_key = results.group_by(
        ["pair_id", "run", "layer", "query", "key", "key_kind"], maintain_order=True
    ).agg(weight.mean())
    by_kind = by_key.group_by(
        ["pair_id", "run", "layer", "query", "key_kind"], maintain_order=True
    ).agg(pl.col("weight").sum())
    cells = pl.concat(
        [
            by_key.with_columns(pl.lit("key").alias("scope")),
            by_kind.with_columns(pl.col("key_kind").alias("key"), pl.lit("kind").alias("scope")),
        ],
        how="diagonal",
    )
    runs = cells["run"].unique(maintain_order=True).to_list()
    frames = [(run, cells.filter(pl.col("run") == run)) for run in runs]
    if len(runs) > 1:
        both = cells.group_by(["pair_id", *CELL], maintain_order=True).agg(pl.col("weight").mean())
        frames.insert(0, ("both", both))
    tokens = shared_tokens(results)
    rows = []
    for run, frame in frames:
        for key, group in frame.sort("pair_id", maintain_order=True).group_by(
            CELL, maintain_order=True
        ):
            where = dict(zip(CELL, key, strict=True))
            name = "|".join(map(str, ["attention", run, *key]))
            stats = cell_stats(group["weight"].to_numpy(), None, seed, name)
            token = tokens.get(where["key"]) if where["scope"] == "key" else None
            rows.append(
                {"run": run, **where, "key_token": token, "key_order": key_order(where)}
                | {k: stats[k] for k in STATS}
            )
    summary = pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
    return summary.with_columns(pl.lit("attention").alias("mode"), pl.lit("weight").alias("metric"))


STATS = ("n", "mean", "sem", "ci95_low", "ci95_high", "nonfinite_pairs")
SUMMARY_SCHEMA = {
    "run": pl.String,
    "layer": pl.Int64,
    "query": pl.String,
    "key": pl.String,
    "key_kind": pl.String,
    "scope": pl.String,
    "key_token": pl.String,
    "key_order": pl.Int64,
    "n": pl.Int64,
    "mean": pl.Float64,
    "sem": pl.Float64,
    "ci95_low": pl.Float64,
    "ci95_high": pl.Float64,
    "nonfinite_pairs": pl.Int64,
}


def shared_tokens(results: pl.DataFrame) -> dict[str, str | None]:
    """Each key label's text where every run has the same one there (else None)."""
    texts = results.group_by("key").agg(pl.col("key_token").unique())
    return {k: t[0] if len(t) == 1 else None for k, t in texts.iter_rows()}


def key_order(where: dict) -> int:
    """Sequence order of keys: question (its total first), bot, thoughts or span, eot, prefix."""
    label = where["key"]
    digits = "".join(c for c in label if c.isdigit())
    within = -1 if where["scope"] == "kind" or not digits else int(digits)
    return KIND_ORDER.get(where["key_kind"], 5) * 1_000_000 + within + 1


def overall(summary: pl.DataFrame) -> dict[str, list[dict]]:
    """Per query: its keys and kinds, each averaged over the layers read (the main run),
    highest first."""
    means = (
        summary.filter(pl.col("run") == main_run(summary))
        .group_by(["query", "key", "key_kind", "scope", "key_token"], maintain_order=True)
        .agg(pl.col("mean").mean())
        .sort("mean", descending=True, nulls_last=True)
    )
    return {
        query: [r for r in means.iter_rows(named=True) if r["query"] == query]
        for query in ordered_queries(means["query"].unique().to_list())
    }


def peak_layers(summary: pl.DataFrame) -> dict[tuple[str, str], dict]:
    """Per (query, key): the layer where its mean is highest (main run, single keys)."""
    own = summary.filter((pl.col("run") == main_run(summary)) & (pl.col("scope") == "key"))
    best = own.sort("mean", descending=True, nulls_last=True).group_by(
        ["query", "key"], maintain_order=True
    )
    return {(r["query"], r["key"]): r for r in best.first().iter_rows(named=True)}
