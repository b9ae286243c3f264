"""`mode = "mediation"`: total, direct and indirect effects of a cell, against the forward-hook
reference (one hooked recurrent forward per effect), and the identities they must obey."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import write_recipe
from reference import mediation_reference_rows

from nnpatch.engine.metrics import METRICS
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare


def run(tmp_path, name="mediation", model=None, **patch):
    sections = {"patch": {"mode": "mediation", **patch}}
    if model:
        sections["model"] = model
    finished = execute(prepare(write_recipe(tmp_path, name=name, **sections)))
    return finished


@pytest.mark.parametrize(
    ("family", "site", "direction", "layers", "positions"),
    [
        ("llama", "resid", "denoise", [0, 2], ["bot", 1, 4, 5]),
        ("llama", "thought", "noise", "all", [0, 3]),
        ("gpt2", "resid", "noise", [1], [0, 2, "eot"]),
    ],
)
def test_each_effect_equals_the_hook_reference(
    tmp_path, request, family, site, direction, layers, positions
):
    """Every metric of every effect within 1e-4 of hooked forwards (Llama with grouped-query
    attention, GPT-2), for bot, thoughts, the last thought and eot."""
    model = request.getfixturevalue(family)
    preset = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    patch = {"site": site, "direction": direction, "positions": positions}
    if site == "resid":
        patch["layers"] = layers
    results = run(tmp_path, model={"preset": preset}, **patch).results
    own = results.filter(~pl.col("control"))
    cells = sorted({(r["layer"], r["position"]) for r in own.iter_rows(named=True)}, key=str)
    expected = mediation_reference_rows(model, tiny_arithmetic()[:3], cells, site, direction)
    assert own.height == len(expected) == 3 * len(cells) * 3
    for row in own.iter_rows(named=True):
        want = expected[(row["pair_id"], row["layer"], row["position"], row["effect"])]
        for name in METRICS:
            np.testing.assert_allclose(
                row[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{name} {row}"
            )


def test_with_one_thought_direct_is_total_and_indirect_is_nothing(tmp_path):
    """K = 1: no later thought, so the direct row is the total row and the indirect row
    leaves the receiver as it was (recovery 0, KL from it 0)."""
    model = {"preset": "tiny-random-codi", "num_thoughts": 1}
    results = run(tmp_path, model=model, layers=[0, 3]).results
    by = {
        effect: results.filter(pl.col("effect") == effect).sort("control", "pair_id", "layer")
        for effect in ("total", "direct", "indirect")
    }
    for name in METRICS:
        np.testing.assert_allclose(by["direct"][name], by["total"][name], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by["indirect"]["recovery"], 0, atol=1e-5)
    np.testing.assert_allclose(by["indirect"]["kl_from_corrupt"], 0, atol=1e-6)
    assert by["total"]["kl_from_corrupt"].abs().max() > 1e-4  # the patch did something


def test_the_last_thought_has_no_indirect_effect_and_its_table(tmp_path):
    """Patching the last thought (and eot) reaches the answer only directly; the mediation
    table's effects are the rows' means minus the unpatched receiver's."""
    finished = run(tmp_path, layers=[1, 2], positions=[0, 5, "eot"])
    results = finished.results.filter(~pl.col("control"))
    last = results.filter(pl.col("position").is_in(["5", "eot"]))
    np.testing.assert_allclose(
        last.filter(pl.col("effect") == "indirect")["recovery"], 0, atol=1e-5
    )
    table = pl.read_parquet(finished.path / "mediation.parquet")
    base = {
        r["pair_id"]: r["corrupted_logit_diff"] for r in finished.baselines.iter_rows(named=True)
    }
    for row in table.filter(pl.col("metric") == "logit_diff").iter_rows(named=True):
        cell = results.filter(
            (pl.col("layer") == row["layer"]) & (pl.col("position") == row["position"])
        )
        for effect in ("total", "direct", "indirect"):
            part = cell.filter(pl.col("effect") == effect)
            want = np.mean(
                [v - base[p] for p, v in zip(part["pair_id"], part["logit_diff"], strict=True)]
            )
            np.testing.assert_allclose(row[effect], want, rtol=1e-9, atol=1e-9)
        if row["direct_share"] is not None:
            np.testing.assert_allclose(row["direct_share"], row["direct"] / row["total"], rtol=1e-9)
            assert row["total_ci95_low"] > 0 or row["total_ci95_high"] < 0


def test_control_rows_measure_the_same_three_effects_from_another_pair(tmp_path):
    results = run(tmp_path, layers=[1], positions=[1]).results
    control = results.filter(pl.col("control"))
    assert sorted(control["effect"].unique()) == ["direct", "indirect", "total"]
    assert (control["donor_id"] != control["pair_id"]).all()


def test_batches_that_split_a_cells_effects_give_the_same_rows(tmp_path):
    """Batch sizes that cut a total from its indirect row (the indirect row then reads a
    total of its own) give the rows of one large batch."""
    rows = {}
    for size in (2, 5, 64):
        recipe = write_recipe(
            tmp_path,
            name=f"b{size}",
            patch={"mode": "mediation", "layers": [0, 2], "positions": [0, 2, 4]},
            run={"batch_size": size},
        )
        rows[size] = execute(prepare(recipe)).results.sort(
            "control", "pair_id", "layer", "position", "effect"
        )
    for size in (2, 5):  # float32 through two traces of the loop: batch shapes move ~2e-5
        for name in METRICS:
            np.testing.assert_allclose(rows[size][name], rows[64][name], rtol=0, atol=1e-4)
