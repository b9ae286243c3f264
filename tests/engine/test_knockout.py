"""`mode = "knockout"`: attention cut from queries to a key through the 4D attention mask,
against a reference that edits the mask by hand in a pre-hook, one forward per row."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import write_recipe
from reference import knockout_reference_rows

from nnpatch.engine.metrics import METRICS
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare


def run(tmp_path, name="knockout", model=None, data=None, **patch):
    sections = {"patch": {"mode": "knockout", **patch}}
    if model:
        sections["model"] = model
    if data:
        sections["data"] = data
    return execute(prepare(write_recipe(tmp_path, name=name, **sections)))


def window_of(label: str) -> tuple[int, ...]:
    if "-" in label:
        first, last = map(int, label.split("-"))
        return tuple(range(first, last + 1))
    return tuple(map(int, label.split(",")))


@pytest.mark.parametrize(
    ("family", "queries", "to", "layers", "run_name", "pairs"),
    [
        ("llama", "answer", ["bot", 0, 3, 5], {"layers": [0, 3]}, "clean", 3),
        (
            "llama",
            [4, 5],
            ["bot", 1, 4],
            {"layer_groups": [[0, 1], [2, 3], [1, 3]]},
            "corrupted",
            3,
        ),
        ("gpt2", "answer", [0, 5], {"layer_groups": [[0, 1, 2]]}, "clean", 3),
        ("gpt2", [2], ["bot", 0, 2], {"layers": "all"}, "clean", 1),  # one row: no padding mask
    ],
)
def test_knockout_equals_a_hand_edited_attention_mask(
    tmp_path, request, family, queries, to, layers, run_name, pairs
):
    model = request.getfixturevalue(family)
    preset = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    finished = run(
        tmp_path,
        model={"preset": preset},
        data={"limit": pairs},
        to=to,
        run=run_name,
        **{"from": queries},
        **layers,
    )
    results = finished.results
    windows = sorted({window_of(label) for label in results["layers"]})
    keys = [str(k) for k in to]
    expected = knockout_reference_rows(
        model,
        tiny_arithmetic()[:pairs],
        windows,
        keys,
        queries if queries == "answer" else [str(q) for q in queries],
        run_name,
    )
    assert results.height == len(expected) and not results["control"].any()
    column = "clean_logit_diff" if run_name == "clean" else "corrupted_logit_diff"
    unpatched = dict(finished.baselines.select("pair_id", column).iter_rows())
    moved = 0
    for row in results.iter_rows(named=True):
        want = expected[(row["pair_id"], window_of(row["layers"]), row["positions"][0])]
        for name in METRICS:
            np.testing.assert_allclose(
                row[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{name} {row}"
            )
        moved += abs(row["logit_diff"] - unpatched[row["pair_id"]]) > 1e-4
    assert moved  # some cut changed the answer: the test can tell a no-op from a knockout


def test_a_knockout_of_no_positions_changes_nothing(llama):
    """Rows that cut nothing (no layer in the window) are the unpatched run, every metric,
    beside rows that do cut, in one batch: the mask path is only where it is asked for."""
    from nnpatch.engine.modes.knockout import KnockoutEngine, KnockoutSpec
    from nnpatch.engine.trace import Engine

    pairs = tiny_arithmetic()[:3]
    names = list(METRICS)
    engine = KnockoutEngine(Engine(llama, "resid", "noise", names))
    answers = engine.answers(pairs)
    base = engine.baselines(pairs, answers, [], chunk=3)
    nothing = KnockoutSpec(0, ("1",), window=(), queries=("answer",))
    cut = KnockoutSpec(0, ("1",), window=(0, 1, 2, 3), queries=("answer",))
    rows = [(spec, i, i) for spec in (nothing, cut) for i in range(3)]
    values = engine.patch(pairs, answers, base, rows, batch_size=8).numpy()
    np.testing.assert_allclose(values[:3], base.clean_metrics.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(values[3:, names.index("kl_to_clean")]).max() > 1e-4


def test_windows_and_queries_are_checked(tmp_path):
    from nnpatch.errors import RecipeError

    with pytest.raises(RecipeError, match="patch.to: key '3' comes after query thought '1'"):
        run(tmp_path, to=[3], **{"from": [1, 2]})
    with pytest.raises(RecipeError, match="patch.layer_groups: is given with patch.layers"):
        run(tmp_path, layers=[0], layer_groups=[[0, 1]])
    results = run(tmp_path, layer_groups=[[0, 1], [1, 2, 3]], to=[0]).results
    assert sorted(results["layers"].unique()) == ["0-1", "1-3"]
    assert pl.Series(results["layer"]).unique().sort().to_list() == [0, 1]
