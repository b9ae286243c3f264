"""`mode = "subsets"`: every non-empty subset of the selected positions at each layer. Its
singletons are `single` rows, its full set is the `layer` row, and its synergy table equals
a direct computation from the run's own results and baselines."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
from helpers import write_recipe

from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

PATCH = {"layers": [0, 2], "positions": [0, 2, 4]}
METRICS = ["recovery", "logit_diff", "kl_from_corrupt"]


def run(tmp_path, name: str, **patch) -> object:
    recipe = write_recipe(tmp_path, name=name, patch=patch, metrics={"names": METRICS})
    return execute(prepare(recipe))


def by_cell(results: pl.DataFrame) -> dict:
    own = results.filter(~pl.col("control"))
    return {
        (r["pair_id"], r["layer"], tuple(r["positions"])): [r[m] for m in METRICS]
        for r in own.iter_rows(named=True)
    }


def test_subsets_are_every_set_singles_are_single_and_the_full_set_is_layer(tmp_path):
    subsets = by_cell(run(tmp_path, "subsets", mode="subsets", **PATCH).results)
    single = by_cell(run(tmp_path, "single", mode="single", **PATCH).results)
    layer = by_cell(run(tmp_path, "layer", mode="layer", **PATCH).results)
    sets = {c for n in (1, 2, 3) for c in itertools.combinations(("0", "2", "4"), n)}
    assert {key[2] for key in subsets} == sets
    assert len(subsets) == 3 * 2 * 7  # pairs × layers × (2^3 - 1)
    for wanted in (single, layer):
        assert wanted.keys() <= subsets.keys()
        for key, values in wanted.items():
            np.testing.assert_allclose(subsets[key], values, rtol=1e-5, atol=1e-5, err_msg=key)


def test_synergy_is_the_set_effect_minus_its_members_effects(tmp_path):
    """Per pair: (set - unpatched) - sum over members of (single - unpatched), unpatched the
    corrupted run (denoise); the table's means are over pairs."""
    finished = run(tmp_path, "subsets", mode="subsets", **PATCH)
    cells = by_cell(finished.results)
    unpatched = {
        r["pair_id"]: [r[f"corrupted_{m}"] for m in METRICS]
        for r in finished.baselines.iter_rows(named=True)
    }
    table = pl.read_parquet(finished.path / "synergy.parquet")
    assert table.height == 2 * 4 * len(METRICS)  # layers × sets of 2+ × metrics
    for row in table.iter_rows(named=True):
        m = METRICS.index(row["metric"])
        synergy, effects, sums = [], [], []
        for pair, base in unpatched.items():
            effect = cells[(pair, row["layer"], tuple(row["positions"]))][m] - base[m]
            singles = sum(cells[(pair, row["layer"], (p,))][m] - base[m] for p in row["positions"])
            effects.append(effect)
            sums.append(singles)
            synergy.append(effect - singles)
        assert row["n"] == len(unpatched)
        np.testing.assert_allclose(row["set_effect"], np.mean(effects), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(row["singles_sum"], np.mean(sums), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(row["synergy"], np.mean(synergy), rtol=1e-9, atol=1e-9)
        assert row["ci95_low"] <= row["synergy"] <= row["ci95_high"]


def test_noising_subsets_measure_effects_from_the_clean_run(tmp_path):
    finished = run(tmp_path, "noise", mode="subsets", direction="noise", **PATCH)
    cells = by_cell(finished.results)
    base = {r["pair_id"]: r["clean_logit_diff"] for r in finished.baselines.iter_rows(named=True)}
    table = pl.read_parquet(finished.path / "synergy.parquet").filter(
        (pl.col("metric") == "logit_diff") & (pl.col("layer") == 2) & (pl.col("size") == 3)
    )
    (row,) = table.iter_rows(named=True)
    m = METRICS.index("logit_diff")
    want = np.mean(
        [
            cells[(pair, 2, ("0", "2", "4"))][m]
            - sum(cells[(pair, 2, (p,))][m] for p in ("0", "2", "4"))
            + 2 * clean
            for pair, clean in base.items()
        ]
    )
    np.testing.assert_allclose(row["synergy"], want, rtol=1e-9, atol=1e-9)
