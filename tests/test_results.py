"""Result tables: columns by name, and per-cell statistics equal to a direct computation."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from helpers import write_recipe

from nnpatch.runner import execute, prepare


def test_run_folder_holds_every_table(tmp_path):
    """A finished run writes the recipe, resolved config, manifest and four tables."""
    recipe = write_recipe(tmp_path, data={"limit": 4})
    finished = execute(prepare(recipe))
    names = {p.name for p in finished.path.iterdir()}
    assert names == {
        "recipe.toml",
        "resolved.json",
        "manifest.json",
        "results.parquet",
        "baselines.parquet",
        "summary.parquet",
        "summary.csv",
    }
    assert (finished.path / "recipe.toml").read_text() == recipe.read_text()
    manifest = json.loads((finished.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["pairs"] == {
        "source": "tiny-arithmetic",
        "read": 24,
        "kept": 4,
    }
    assert finished.path.parent == tmp_path / "outputs" / "test"
    results = pl.read_parquet(finished.path / "results.parquet")
    assert results.columns[:7] == [
        "pair_id",
        "mode",
        "site",
        "direction",
        "layer",
        "position",
        "positions",
    ]
    assert results.height == 4 * 4 * 6
    baselines = pl.read_parquet(finished.path / "baselines.parquet")
    np.testing.assert_allclose(baselines["clean_recovery"], 1.0, atol=1e-6)
    np.testing.assert_allclose(baselines["corrupted_recovery"], 0.0, atol=1e-6)


def test_summary_matches_numpy(tmp_path):
    """mean, sem and the 95% CI per cell equal numpy on the stored per-pair rows."""
    finished = execute(prepare(write_recipe(tmp_path, data={"limit": 5})))
    results = pl.read_parquet(finished.path / "results.parquet")
    summary = pl.read_parquet(finished.path / "summary.parquet")
    row = summary.filter(
        (pl.col("metric") == "recovery") & (pl.col("layer") == 2) & (pl.col("position") == "3")
    ).row(0, named=True)
    values = results.filter((pl.col("layer") == 2) & (pl.col("position") == "3"))["recovery"]
    values = values.to_numpy()
    sem = values.std(ddof=1) / np.sqrt(len(values))
    assert row["n"] == 5
    np.testing.assert_allclose(
        [row["mean"], row["sem"], row["ci95_low"], row["ci95_high"]],
        [values.mean(), sem, values.mean() - 1.959964 * sem, values.mean() + 1.959964 * sem],
        rtol=1e-6,
    )
    csv = pl.read_csv(finished.path / "summary.csv")
    assert csv.height == summary.height
