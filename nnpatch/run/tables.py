"""The run's tables: one row per (pair, patch) in results, one per pair in baselines (polars).
The per-cell summary is the statistics stage's (`nnpatch.report.summary`)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from nnpatch.engine.trace import Row
from nnpatch.pairs import Pair

# results.parquet's columns before the metrics: type and meaning (one source for the table
# and for the docs' columns page)
RESULT_COLUMNS = {
    "pair_id": (pl.String, "the pair (receiver) the row patches into"),
    "mode": (pl.String, "the analysis mode"),
    "site": (pl.String, "resid, attn, mlp, head or thought"),
    "direction": (pl.String, "denoise (clean into corrupted) or noise; knockout: the run cut"),
    "layer": (pl.Int64, "the layer patched (null for site thought)"),
    "position": (pl.String, "the one position of a single-position row, else null"),
    "positions": (pl.List(pl.String), "every position the row patches"),
    "head": (pl.Int64, "the query head (site head), else null"),
    "source": (pl.String, "what the row writes: donor, mean, zero, random or steer"),
    "scale": (pl.Float64, "source steer's scale, else null"),
    "token_index": (pl.Int64, "a single-position row's token index in the receiver's sequence"),
    "token": (pl.String, "that token's text"),
    "token_indices": (pl.List(pl.Int64), "each patched position's token index"),
    "tokens": (pl.List(pl.String), "each patched position's token text"),
    "control": (pl.Boolean, "a control row: the same cells written from a mismatched pair"),
    "donor_id": (pl.String, "the pair whose run was copied"),
}
# columns some modes add to results.parquet
MODE_RESULT_COLUMNS = {
    "layers": "knockout: the window of layers cut (e.g. 0-3)",
    "queries": "knockout: the queries cut (answer, or thought labels)",
    "effect": "mediation: total, direct or indirect",
}
FLAG_COLUMNS = {
    "nonfinite": "some metric of the row is NaN or inf",
    "estimate": "rows estimated from gradients (mode attribution), not patched",
}
# baselines.parquet: one row per pair (<metric> stands for each metric the run measures)
BASELINE_COLUMNS = {
    "pair_id": "the pair",
    "clean_answer": "its clean answer, as the pair file gives it",
    "corrupted_answer": "its corrupted answer",
    "diff_index": "the answer token where the two answers first differ",
    "clean_top1_is_clean_answer": "the unpatched clean run's top token is the clean answer's",
    "corrupted_top1_is_corrupted_answer": "the same for the corrupted run",
    "span_tokens": "plain LMs: the pair's span length (null for thought models)",
    "clean_decoded": "with decoded metrics: the clean run's greedy answer",
    "corrupted_decoded": "with decoded metrics: the corrupted run's greedy answer",
    "clean_<metric>": "each metric of the unpatched clean run",
    "corrupted_<metric>": "each metric of the unpatched corrupted run",
}


@dataclass(frozen=True)
class Facets:
    """What every row of one group of rows shares: how it was made."""

    mode: str
    site: str
    direction: str
    source: str = "donor"  # what the rows write (control rows: always a mismatched donor)
    scale: float | None = None  # source `steer` only


def results_table(
    rows: list[Row],
    pairs: list[Pair],
    values: torch.Tensor,
    names: list[str],
    facets: Facets,
    single: bool,
    estimate: bool = False,
    tokens: list[dict[str, tuple[int, str]]] | None = None,
    texts: list[str] | None = None,
) -> pl.DataFrame:
    """One row per (pair, patch): how it was made (mode, site, direction, source, scale), the
    cell (layer, position(s), head), the patched tokens, the donor, one column per metric,
    `nonfinite` (some metric of the row is NaN or inf) and `estimate` (attribution estimates
    rather than patched values).

    `single`: every row patches one position, named in `position` (else it is null).
    `control` rows patch the same cells from another pair's run (the noise floor).
    `tokens` gives, per pair, each position's absolute index in the receiver's sequence and
    its token's text: `token_indices` and `tokens` per row, aligned with `positions`, and
    `token_index` / `token` for one-position rows. `texts`: each row's decoded answer, the
    `answer` column (after the metrics) when the run decodes answers.
    """
    where = [
        [tokens[p][label] if tokens else (None, None) for label in spec.positions]
        for spec, p, _ in rows
    ]
    columns = {
        "pair_id": [pairs[p].id for _, p, _ in rows],
        "mode": [facets.mode] * len(rows),
        "site": [facets.site] * len(rows),
        "direction": [facets.direction] * len(rows),
        "layer": [spec.layer for spec, _, _ in rows],
        "position": [spec.positions[0] if single else None for spec, _, _ in rows],
        "positions": [list(spec.positions) for spec, _, _ in rows],
        "head": [spec.head for spec, _, _ in rows],
        "source": [facets.source if p == d else "donor" for _, p, d in rows],
        "scale": [facets.scale if p == d else None for _, p, d in rows],
        "token_index": [cells[0][0] if single else None for cells in where],
        "token": [cells[0][1] if single else None for cells in where],
        "token_indices": [[index for index, _ in cells] for cells in where],
        "tokens": [[text for _, text in cells] for cells in where],
        "control": [p != d for _, p, d in rows],
        "donor_id": [pairs[d].id for _, _, d in rows],
    }
    schema = {name: dtype for name, (dtype, _) in RESULT_COLUMNS.items()}
    frame = pl.DataFrame(columns, schema=schema)
    metrics = pl.DataFrame(values.double().numpy(), schema=names, orient="row")
    if texts is not None:
        metrics = metrics.with_columns(pl.Series("answer", texts, dtype=pl.String))
    # flagged rather than dropped: recovery is NaN by definition when a pair's gap vanishes
    flags = pl.DataFrame(
        {
            "nonfinite": (~torch.isfinite(values).all(dim=1)).tolist(),
            "estimate": [estimate] * len(rows),
        },
        schema={"nonfinite": pl.Boolean, "estimate": pl.Boolean},
    )
    return pl.concat([frame, metrics, flags], how="horizontal")


def baselines_table(
    pairs: list[Pair],
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    names: list[str],
    extra: dict[str, list],
) -> pl.DataFrame:
    """One row per pair: the unpatched clean and corrupted runs scored by every metric."""
    table = {
        "pair_id": [p.id for p in pairs],
        "clean_answer": [p.clean_answer for p in pairs],
        "corrupted_answer": [p.corrupted_answer for p in pairs],
        **extra,
    }
    for j, name in enumerate(names):
        table[f"clean_{name}"] = clean[:, j].double().tolist()
        table[f"corrupted_{name}"] = corrupt[:, j].double().tolist()
    return pl.DataFrame(
        table, schema_overrides={"span_tokens": pl.Int64} if "span_tokens" in table else None
    )
