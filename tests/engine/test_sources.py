"""What a patch writes (`patch.source`) and one attention head (`site = "head"`), against the
forward-hook reference: one hooked forward per patch, the written vector built from the
source's definition."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import run_recipe, write_recipe
from reference import source_reference_rows

from nnpatch.engine.metrics import METRICS
from nnpatch.engine.plan import PatchSpec
from nnpatch.pairs.builtin import tiny_arithmetic


def assert_rows(results: pl.DataFrame, expected: dict) -> None:
    results = results.filter(~pl.col("control"))
    assert results.height == len(expected)
    for row in results.iter_rows(named=True):
        want = expected[(row["pair_id"], row["layer"], row["head"], tuple(row["positions"]))]
        for name in METRICS:
            np.testing.assert_allclose(
                row[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{name} {row['pair_id']}"
            )


CASES = [
    ("donor", 1.0, "denoise"),
    ("mean", 1.0, "denoise"),
    ("zero", 1.0, "noise"),
    ("random", 1.0, "denoise"),
    ("steer", 1.5, "denoise"),
    ("steer", -0.5, "noise"),
]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("source", "scale", "direction"), CASES)
def test_every_source_equals_the_hook_reference(
    tmp_path, request, family, source, scale, direction
):
    """Each source's rows equal one hooked recurrent forward per patch (Llama with grouped-
    query attention, GPT-2), every metric within 1e-4; results record source and scale."""
    model = request.getfixturevalue(family)
    preset = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    patch = {
        "mode": "single",
        "source": source,
        "direction": direction,
        "layers": [1],
        "positions": [0, 4],
    }
    if source == "steer":
        patch["scale"] = scale
    results = run_recipe(write_recipe(tmp_path, model={"preset": preset}, patch=patch))
    own = results.filter(~pl.col("control"))
    assert set(own["source"]) == {source}
    assert own["scale"].to_list() == [scale if source == "steer" else None] * own.height
    specs = [PatchSpec(1, ("0",)), PatchSpec(1, ("4",))]
    pairs = tiny_arithmetic()[:3]
    expected = source_reference_rows(model, pairs, specs, "resid", direction, source, scale)
    assert_rows(results, expected)


@pytest.mark.parametrize(
    ("family", "source"), [("llama", "donor"), ("llama", "mean"), ("gpt2", "random")]
)
def test_one_head_equals_the_hook_reference(tmp_path, request, family, source):
    """site = "head" writes one query head's slice of the output projection's input; under
    grouped-query attention (4 query heads, 2 key/value heads) each query head is its own."""
    model = request.getfixturevalue(family)
    preset = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    patch = {
        "mode": "layer",
        "site": "head",
        "source": source,
        "layers": [0],
        "positions": [1, 3],
        "heads": [0, 3],
    }
    results = run_recipe(write_recipe(tmp_path, model={"preset": preset}, patch=patch))
    assert set(results["head"]) == {0, 3}
    specs = [PatchSpec(0, ("1", "3"), 0), PatchSpec(0, ("1", "3"), 3)]
    expected = source_reference_rows(model, tiny_arithmetic()[:3], specs, "head", "denoise", source)
    assert_rows(results, expected)


def test_every_head_of_a_layer_from_the_donor_is_the_attn_site(llama):
    """Patching all heads of a layer together writes the whole output-projection input, so
    the attention block's output is the donor's: the same rows as site `attn`."""
    from nnpatch.engine.trace import Engine

    pairs = tiny_arithmetic()[:3]
    names = list(METRICS)
    rows_of = {}
    for site, spec in [
        ("head", PatchSpec(2, ("1", "4"), (0, 1, 2, 3))),
        ("attn", PatchSpec(2, ("1", "4"))),
    ]:
        engine = Engine(llama, site, "denoise", names)
        answers = engine.answers(pairs)
        base = engine.baselines(pairs, answers, [(2, "1"), (2, "4")], chunk=3)
        rows = [(spec, i, i) for i in range(len(pairs))]
        rows_of[site] = engine.patch(pairs, answers, base, rows, batch_size=8).numpy()
    np.testing.assert_allclose(rows_of["head"], rows_of["attn"], rtol=1e-4, atol=1e-5)


def test_steering_by_zero_changes_nothing(tmp_path):
    """source = "steer" with scale 0 writes the receiver's own activation: every row is the
    unpatched receiver run."""
    patch = {"mode": "layer", "source": "steer", "scale": 0.0, "control": "none"}
    results = run_recipe(write_recipe(tmp_path, patch=patch))
    np.testing.assert_allclose(results["kl_from_corrupt"], 0, atol=1e-6)
    np.testing.assert_allclose(results["l2"], 0, atol=1e-4)
    assert results["top1_changed"].sum() == 0


def test_a_grid_gives_the_rows_and_summary_of_its_single_runs(tmp_path):
    """site, direction and source as lists: each combination's rows, control rows and
    summary equal those of the recipe run with that one combination (all but the q-values,
    whose family is the run's cells)."""
    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare

    common = {"mode": "single", "layers": [1], "positions": [0, 3]}
    grid = {
        **common,
        "site": ["resid", "attn"],
        "direction": ["denoise", "noise"],
        "source": ["donor", "mean"],
    }
    finished = execute(prepare(write_recipe(tmp_path, name="grid", patch=grid)))
    rows, summary = finished.results, finished.summary
    keys = ["pair_id", "layer", "position", "control"]
    drop = ["token_index", "token", "token_indices", "tokens"]
    for site in ("resid", "attn"):
        for direction in ("denoise", "noise"):
            for source in ("donor", "mean"):
                one = {**common, "site": site, "direction": direction, "source": source}
                name = f"{site}-{direction}-{source}"
                alone = execute(prepare(write_recipe(tmp_path, name=name, patch=one)))
                mine = rows.filter(
                    (pl.col("site") == site)
                    & (pl.col("direction") == direction)
                    & (~pl.col("control") & (pl.col("source") == source) | pl.col("control"))
                )
                assert_same(mine.drop(drop).sort(keys), alone.results.drop(drop).sort(keys), name)
                cells = summary.filter(
                    (pl.col("site") == site)
                    & (pl.col("direction") == direction)
                    & (pl.col("source") == source)
                )
                # q-values correct over the run's cells: a grid's family is the whole grid
                family = ["q_value", "differs_from_control_fdr"]
                assert_same(cells.drop(family), alone.summary.drop(family), name)


def assert_same(a: pl.DataFrame, b: pl.DataFrame, name: str) -> None:
    """Equal tables: every column exactly, floats within 1e-5 (other rows share batches)."""
    assert a.columns == b.columns and a.height == b.height, name
    for column in a.columns:
        if a[column].dtype == pl.Float64:
            np.testing.assert_allclose(
                a[column].to_numpy().astype(float),
                b[column].to_numpy().astype(float),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{name} {column}",
            )
        else:
            assert a[column].equals(b[column]), (name, column)
