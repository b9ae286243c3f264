"""The lens: what each thought holds. Every cell of the recipe (site `resid`: a decoder
layer's output; site `thought`: the thought input itself), in each pair's clean and
corrupted run, read through the model's own final norm and LM head (the logit lens), with
no patching.

The activations come from the baseline pass, which records both runs at every cell in one
traced forward per chunk of pairs; the head is applied after it, on the device, a chunk of
rows at a time. Per (pair, run, cell): the top-k tokens and probabilities (`lens.parquet`),
and for each tracked value (the run's own answer, the other run's answer, and the run's own
step results when the pairs carry them) the probability and rank of its first token, as the
model writes it after the answer prefix (`results.parquet`, long form).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import polars as pl
import torch
from pydantic import Field

from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, check_site, selected_layers, selected_positions
from nnpatch.fields import Int, Layers, Positions, Section
from nnpatch.report import charts
from nnpatch.report.stats import cell_stats
from nnpatch.report.summary import cell_label
from nnpatch.report.top import Table

RUNS = ("clean", "corrupted")
ROWS_PER_HEAD = 256  # rows read through the head at once: [rows, vocab] float32 at a time


class LensPatch(Section):
    """Every cell read through the final norm and LM head, in both runs of every pair."""

    mode: Literal["lens"]
    site: Literal["resid", "thought"] = "resid"  # resid: layer outputs; thought: the latents
    # the layers read or patched: all, or a list such as [0, 3]
    layers: Layers = "all"
    # thoughts 0..K-1 (plain LMs: span token indices); a list may name bot and eot
    positions: Positions = "all"
    top_k: Int = Field(default=5, ge=1, le=100)  # tokens kept per cell in lens.parquet


class Lens(Mode):
    sections = (LensPatch,)
    reads_both_runs = True
    sized_by_memory = False
    compare_refusal = "its rows are readouts of the unpatched runs, not effects of a patch"
    decode_refusal = "it reads the unpatched runs' cells through the head, not their answers"
    remote_refusal = (
        "the lens applies the model's final norm and head on this machine, and a remote "
        "model's weights stay on NDIF (mode record exports the activations from there)"
    )

    def plan(self, patch, shape, source) -> list[PatchSpec]:
        check_site(patch, shape, source)
        layers = selected_layers(patch, shape, source)
        selected = selected_positions(patch.positions, shape, source, "patch.positions", patch.site)
        return [PatchSpec(layer, (p,)) for layer in layers for p in selected]

    def compute(self, sweep: Sweep) -> Computed:
        clock = time.perf_counter()
        model, pairs, patch = sweep.model, sweep.pairs, sweep.recipe.patch
        tracked = [tracked_values(model, pair) for pair in pairs]
        tokens = [[model.position_tokens(getattr(p, f"{r}_question")) for r in RUNS] for p in pairs]
        inside = sweep.inside_spans(
            [(spec, i, i) for spec in sweep.plan for i in range(len(pairs))]
        )
        tick = sweep.progress(len(sweep.plan) * len(pairs))
        cells, values = [], []
        for s, spec in enumerate(sweep.plan):
            cell = (spec.layer, spec.positions[0])
            top, found = read_cell(model, sweep.baselines.runs[cell], tracked, patch.top_k)
            for i, pair in enumerate(pairs):
                if not inside[s * len(pairs) + i]:
                    continue
                for r, run in enumerate(RUNS):
                    index, name = tokens[i][r][cell[1]]
                    where = {"pair_id": pair.id, "run": run, "layer": cell[0], "position": cell[1]}
                    where |= {"token_index": index, "token": name}
                    ids, probs = top[r][i]
                    cells.append(
                        where
                        | {
                            "top_token_ids": ids,
                            "top_tokens": [model.tokenizer.decode([t]) for t in ids],
                            "top_probs": probs,
                            "tracked": found[r][i],
                        }
                    )
                    values += [where | value for value in found[r][i]]
            tick(len(pairs))
        lens = pl.DataFrame(cells, schema_overrides={"layer": pl.Int64}, infer_schema_length=None)
        results = pl.DataFrame(values, schema=RESULT_SCHEMA).with_columns(
            (~pl.col("probability").is_finite()).alias("nonfinite")
        )
        rows = len(sweep.plan) * len(pairs) * len(RUNS)
        return Computed(results, rows, time.perf_counter() - clock, tables={"lens": lens})

    def summarize(self, results: pl.DataFrame, recipe) -> pl.DataFrame:
        return lens_summary(results, recipe.run.seed)

    def key_table(self, summary: pl.DataFrame, metrics: list[str]) -> Table:
        rows = [
            [
                value_label(r["value"], r["step"]),
                cell_label(r),
                f"{r['mean']:.3f}",
                _ci(r),
                f"{r['top1']:.0%}",
                f"{r['rank']:.1f}",
                str(r["n"]),
            ]
            for r in holds(summary).iter_rows(named=True)
        ]
        return Table(
            "Which cell holds which value",
            ["value", "cell", "mean probability", "95% CI", "top-1 share", "mean rank", "n"],
            rows,
            "For each tracked value, the cell where its first token has the highest mean "
            "probability through the lens (each pair's two runs averaged, the run's own value); "
            "95% CIs are percentile bootstraps over pairs; top-1 share: pairs whose lens names "
            "it first.",
        )

    def screen_lines(self, summary: pl.DataFrame, recipe) -> list[str]:
        table = self.key_table(summary, recipe.metrics.numeric)
        lines = ["which cell holds which value (lens, both runs):"]
        for value, cell, mean, ci, top1, rank, n in table.rows:
            lines.append(
                f"  {value:<14} {cell:<10} p {mean} {ci}  top-1 {top1}  rank {rank}  n={n}"
            )
        return lines

    def charts(self, run) -> dict:
        both = run.summary.filter(pl.col("run") == "both")
        out = {}
        for (value, step), group in both.group_by(["value", "step"], maintain_order=True):
            name = value_label(value, step).replace(" ", "_")
            for metric in ("probability", "rank"):
                title = f"{value_label(value, step)}: mean {metric} through the lens (both runs)"
                out[f"lens_{name}_{metric}"] = partial(
                    charts.heatmap, group, metric, run.positions, title
                )
        return out


RESULT_SCHEMA = {
    "pair_id": pl.String,
    "run": pl.String,
    "layer": pl.Int64,
    "position": pl.String,
    "token_index": pl.Int64,
    "token": pl.String,
    "value": pl.String,
    "step": pl.Int64,
    "text": pl.String,
    "value_token": pl.String,
    "probability": pl.Float64,
    "rank": pl.Int64,
    "top1": pl.Boolean,
}


def tracked_values(model, pair) -> list[list[tuple[str, int | None, str, int]]]:
    """Per run (clean, corrupted): (value, step, text, first token id) for its own answer,
    the other run's answer and its own steps (numbered from 1)."""
    out = []
    for own, other, steps in (
        (pair.clean_answer, pair.corrupted_answer, pair.clean_steps),
        (pair.corrupted_answer, pair.clean_answer, pair.corrupted_steps),
    ):
        values = [("answer", None, own), ("other_answer", None, other)]
        values += [("step", k, text) for k, text in enumerate(steps, start=1)]
        out.append([(v, k, text, model.answer_ids(text)[0]) for v, k, text in values])
    return out


@torch.no_grad()
def read_cell(model, runs: torch.Tensor, tracked: list, top_k: int):
    """One cell's activations [2, pairs, d] through the lens: per run and pair, the top-k
    (ids, probabilities) and each tracked value's row (probability, rank, top-1)."""
    flat = runs.reshape(-1, runs.shape[-1])  # [2 * pairs, d], the clean run first
    pairs = runs.shape[1]
    wanted = [[t[3] for t in tracked[i][r]] for r in range(2) for i in range(pairs)]
    top_ids, top_probs, chosen_p, chosen_rank = [], [], [], []
    for start in range(0, flat.shape[0], ROWS_PER_HEAD):
        probs = torch.softmax(model.lens_logits(flat[start : start + ROWS_PER_HEAD]), dim=-1)
        best = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        top_ids += best.indices.tolist()
        top_probs += best.values.double().tolist()
        for row in range(probs.shape[0]):
            ids = torch.tensor(wanted[start + row], device=probs.device, dtype=torch.long)
            p = probs[row].index_select(0, ids)
            chosen_p.append(p.double().tolist())
            chosen_rank.append((1 + (probs[row].unsqueeze(0) > p.unsqueeze(1)).sum(-1)).tolist())
    top = [[None] * pairs for _ in range(2)]
    found = [[None] * pairs for _ in range(2)]
    for row in range(flat.shape[0]):
        r, i = divmod(row, pairs)
        top[r][i] = (top_ids[row], top_probs[row])
        found[r][i] = [
            {
                "value": value,
                "step": step,
                "text": text,
                "value_token": model.tokenizer.decode([token]),
                "probability": chosen_p[row][j],
                "rank": chosen_rank[row][j],
                "top1": chosen_rank[row][j] == 1,
            }
            for j, (value, step, text, token) in enumerate(tracked[i][r])
        ]
    return top, found


METRICS = ("probability", "rank", "top1")


def lens_summary(results: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Per (value, step, cell) and per run (and `both`: each pair's two runs averaged):
    n, mean, sem and bootstrap CI over pairs of the probability, rank and top-1 of the run's
    own value. Laid out as the per-cell summary is, so the heatmaps read it too."""
    keys = ["value", "step", "layer", "position"]
    scored = results.with_columns(pl.col("rank").cast(pl.Float64), pl.col("top1").cast(pl.Float64))
    both = scored.group_by([*keys, "pair_id"], maintain_order=True).agg(
        [pl.col(m).mean() for m in METRICS]
    )
    frames = [("both", both)] + [(run, scored.filter(pl.col("run") == run)) for run in RUNS]
    rows = []
    for run, frame in frames:
        for key, group in frame.sort("pair_id", maintain_order=True).group_by(
            keys, maintain_order=True
        ):
            where = dict(zip(keys, key, strict=True))
            for metric in METRICS:
                name = "|".join(map(str, ["lens", run, *key, metric]))
                stats = cell_stats(group[metric].to_numpy().astype(float), None, seed, name)
                rows.append({**where, "run": run, "metric": metric, **stats})
    summary = pl.DataFrame(rows, infer_schema_length=None, schema_overrides=SUMMARY_TYPES)
    return summary.with_columns(
        pl.concat_list(pl.col("position")).alias("positions"),
        pl.lit("lens").alias("mode"),
    )


SUMMARY_TYPES = {
    "layer": pl.Int64,
    "step": pl.Int64,
    "sem": pl.Float64,
    "ci95_low": pl.Float64,
    "ci95_high": pl.Float64,
    "control_mean": pl.Float64,
    "control_ci95_low": pl.Float64,
    "control_ci95_high": pl.Float64,
    "diff_ci95_low": pl.Float64,
    "diff_ci95_high": pl.Float64,
    "differs_from_control": pl.Boolean,
}


def holds(summary: pl.DataFrame) -> pl.DataFrame:
    """Per tracked value: the cell with the highest mean probability (both runs), with its
    CI, top-1 share and mean rank there; steps in order, then the answers."""
    both = summary.filter(pl.col("run") == "both")
    wide = (
        both.filter(pl.col("metric") == "probability")
        .join(
            both.filter(pl.col("metric") == "top1").select(
                "value", "step", "layer", "position", pl.col("mean").alias("top1")
            ),
            on=["value", "step", "layer", "position"],
            nulls_equal=True,
        )
        .join(
            both.filter(pl.col("metric") == "rank").select(
                "value", "step", "layer", "position", pl.col("mean").alias("rank")
            ),
            on=["value", "step", "layer", "position"],
            nulls_equal=True,
        )
    )
    best = (
        wide.sort("mean", descending=True, nulls_last=True)
        .group_by(["value", "step"], maintain_order=True)
        .first()
    )
    order = {"step": 0, "answer": 1, "other_answer": 2}
    return best.sort(pl.col("value").replace_strict(order, default=3), "step", nulls_last=True)


def value_label(value: str, step: int | None) -> str:
    return f"step {step}" if value == "step" else value.replace("_", " ")


def _ci(row: dict) -> str:
    return "" if row["ci95_low"] is None else f"[{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
