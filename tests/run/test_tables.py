"""Result tables: columns by name, and per-cell statistics equal to a direct computation."""

from __future__ import annotations

import json
import zlib

import numpy as np
import polars as pl
from helpers import write_recipe

from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare


def test_run_folder_holds_every_table(tmp_path):
    """A finished run writes the recipe, resolved config, manifest and four tables."""
    recipe = write_recipe(tmp_path, data={"limit": 4}, run={"report": "full"})
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
        "summary.md",
        "report.html",
        "charts",
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
    assert results.height == 2 * 4 * 4 * 6  # real and control rows
    baselines = pl.read_parquet(finished.path / "baselines.parquet")
    np.testing.assert_allclose(baselines["clean_recovery"], 1.0, atol=1e-6)
    np.testing.assert_allclose(baselines["corrupted_recovery"], 0.0, atol=1e-6)


def test_summary_matches_numpy(tmp_path):
    """mean, sem and the bootstrap CIs per cell equal numpy on the stored per-pair rows."""
    finished = execute(prepare(write_recipe(tmp_path, data={"limit": 5})))
    results = pl.read_parquet(finished.path / "results.parquet")
    summary = pl.read_parquet(finished.path / "summary.parquet")
    row = summary.filter(
        (pl.col("metric") == "recovery") & (pl.col("layer") == 2) & (pl.col("position") == "3")
    ).row(0, named=True)
    cell = results.filter((pl.col("layer") == 2) & (pl.col("position") == "3")).sort("pair_id")
    values = cell.filter(~pl.col("control"))["recovery"].to_numpy()
    control = cell.filter(pl.col("control"))["recovery"].to_numpy()

    def bootstrap(x, key):
        rng = np.random.default_rng([0, zlib.crc32(key.encode())])
        means = x[rng.integers(0, len(x), size=(2000, len(x)))].mean(axis=1)
        return np.percentile(means, [2.5, 97.5])

    key = "2|3|recovery"
    assert row["n"] == 5
    np.testing.assert_allclose(
        [row["mean"], row["sem"]], [values.mean(), values.std(ddof=1) / np.sqrt(5)], rtol=1e-9
    )
    np.testing.assert_allclose([row["ci95_low"], row["ci95_high"]], bootstrap(values, key))
    np.testing.assert_allclose(
        [row["control_ci95_low"], row["control_ci95_high"]], bootstrap(control, key + "|control")
    )
    diff = bootstrap(values - control, key + "|diff")
    np.testing.assert_allclose([row["diff_ci95_low"], row["diff_ci95_high"]], diff)
    assert row["differs_from_control"] == bool(diff[0] > 0 or diff[1] < 0)
    csv = pl.read_csv(finished.path / "summary.csv")
    assert csv.height == summary.height


def test_control_rows_come_from_mismatched_pairs(tmp_path):
    """Every real row has a control twin on the same cells whose donor is another pair."""
    finished = execute(prepare(write_recipe(tmp_path, data={"limit": 4})))
    results = pl.read_parquet(finished.path / "results.parquet")
    real, control = results.filter(~pl.col("control")), results.filter(pl.col("control"))
    assert real.height == control.height == 4 * 24
    assert (real["donor_id"] == real["pair_id"]).all()
    assert (control["donor_id"] != control["pair_id"]).all()
    assert control["donor_id"].n_unique() == 4  # a derangement: every pair donates once


def test_control_can_be_turned_off(tmp_path):
    """patch.control = 'none' runs only the real patches."""
    recipe = write_recipe(tmp_path, patch={"mode": "layer", "control": "none"})
    results = pl.read_parquet(execute(prepare(recipe)).path / "results.parquet")
    assert not results["control"].any() and results.height == 3 * 4


def test_recipe_copy_is_the_file_byte_for_byte(tmp_path):
    """CRLF line ends, a BOM-free UTF-8 comment and trailing spaces survive into the run."""
    text = write_recipe(tmp_path).read_text()
    data = ("# café  \r\n" + text.replace("\n", "\r\n")).encode("utf-8")
    recipe = tmp_path / "crlf.toml"
    recipe.write_bytes(data)
    finished = execute(prepare(recipe))
    assert (finished.path / "recipe.toml").read_bytes() == data


def test_a_single_pair_says_no_control_could_be_made(tmp_path):
    """random-donor needs another pair: with one, the manifest and the screen say so."""
    from click.testing import CliRunner

    from nnpatch.cli import main

    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path)), "--limit", "1"])
    assert result.exit_code == 0, result.output
    (manifest,) = (tmp_path / "outputs").glob("*/*/manifest.json")
    note = (
        "control: not made: the random-donor control needs at least 2 pairs and this run has "
        "1; no cell is compared with a noise floor"
    )
    assert json.loads(manifest.read_text())["notes"] == [note]
    assert f"note: {note}" in result.output
    results = pl.read_parquet(manifest.parent / "results.parquet")
    assert not results["control"].any()


def test_codi_rows_name_their_patched_tokens(tmp_path, llama):
    """token_index is the position's index in the receiver's unpadded sequence (bot at n,
    thought t at n+1+t, eot at n+K+1) and token its name; lists align with positions."""
    from nnpatch.pairs.builtin import tiny_arithmetic

    recipe = write_recipe(
        tmp_path, patch={"mode": "single", "positions": ["bot", 0, 5, "eot"], "layers": [0]}
    )
    results = pl.read_parquet(execute(prepare(recipe)).path / "results.parquet")
    by_id = {p.id: p for p in tiny_arithmetic()}
    for row in results.iter_rows(named=True):
        n = len(llama.question_ids(by_id[row["pair_id"]].corrupted_question)) - 1
        index = {"bot": n, "0": n + 1, "5": n + 6, "eot": n + 7}[row["position"]]
        name = {"bot": "<bot>", "0": "<thought 0>", "5": "<thought 5>", "eot": "<eot>"}
        assert (row["token_index"], row["token"]) == (index, name[row["position"]])
        assert row["token_indices"] == [index] and row["tokens"] == [row["token"]]
