"""The patch plan: rows per mode, and range checks against the model."""

from __future__ import annotations

import pytest
from helpers import write_recipe

from nnpatch.engine.modes import build_plan
from nnpatch.engine.plan import PatchSpec
from nnpatch.errors import RecipeError
from nnpatch.recipe import load_recipe


def plan(tmp_path, model, **patch):
    return build_plan(load_recipe(write_recipe(tmp_path, patch=patch)), model.shape)


def test_single_is_every_layer_by_every_thought(tmp_path, llama):
    """single: L × K rows, one cell each."""
    rows = plan(tmp_path, llama, mode="single")
    assert len(rows) == llama.num_layers * llama.num_thoughts
    assert rows[0] == PatchSpec(0, ("0",)) and rows[-1] == PatchSpec(3, ("5",))


def test_layer_and_chained(tmp_path, llama):
    """layer: one row per layer; chained: prefixes t ≤ k in sequence order."""
    assert plan(tmp_path, llama, mode="layer", layers=[1])[0].positions == tuple("012345")
    chained = plan(tmp_path, llama, mode="chained", layers=[1], positions=[2, "bot", 0])
    assert [s.positions for s in chained] == [("bot",), ("bot", "0"), ("bot", "0", "2")]


def test_sets(tmp_path, llama):
    """sets: one row per layer and set."""
    rows = plan(tmp_path, llama, mode="sets", layers=[0], sets=[[1, 0], [2, "eot"]])
    assert rows == [PatchSpec(0, ("0", "1")), PatchSpec(0, ("2", "eot"))]


def test_thought_site_has_no_layers(tmp_path, llama):
    """site thought: rows have layer None."""
    rows = plan(tmp_path, llama, mode="single", site="thought")
    assert {s.layer for s in rows} == {None} and len(rows) == llama.num_thoughts


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"mode": "single", "layers": [4]}, r"patch\.layers: layer 4 is out of range .*0\.\.3"),
        (
            {"mode": "single", "positions": [6]},
            r"patch\.positions: thought position 6 .*thoughts 0\.\.5",
        ),
        ({"mode": "sets", "sets": [[0], [9]]}, r"patch\.sets\.1: thought position 9"),
        ({"mode": "single", "site": "thought", "positions": ["bot"]}, r"patch\.positions: site"),
        ({"mode": "single", "site": "thought", "layers": [0]}, r"patch\.layers: site 'thought'"),
        ({"mode": "single", "positions": [1, 1]}, r"listed twice"),
        ({"mode": "layer", "positions": []}, r"patch\.positions: no positions listed"),
    ],
)
def test_out_of_range_cells_are_rejected(tmp_path, llama, patch, match):
    """Layers and positions are checked against the model before anything runs."""
    with pytest.raises(RecipeError, match=match):
        plan(tmp_path, llama, **patch)
