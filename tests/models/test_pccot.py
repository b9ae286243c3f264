"""PCCoT (kind "pccot") on a tiny release written by the authors' own code
(tests/golden/pccot): a cell is a slot at a Jacobi iteration, and patching it through the
engine gives what one hooked forward per patch gives; modes that need a sequential loop
are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_recipe, write_recipe
from reference import assert_matches_reference

from nnpatch.errors import RecipeError
from nnpatch.models.kinds.pccot import load_pccot
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import ModelSection

GOLDEN = Path(__file__).parent.parent / "golden" / "pccot"
FIELDS = {
    "kind": "pccot",
    "base": str(GOLDEN / "gpt2"),
    "checkpoint": str(GOLDEN / "whyNLP" / "pccot-gpt2"),
}


@pytest.fixture(scope="module")
def model():
    return load_pccot(ModelSection(**FIELDS))


def test_positions_are_slots_at_iterations(model):
    """bot, each earlier iteration's slots (s@t, t = 0 the placeholder pass), the last
    iteration's slots, eot."""
    slots, iterations = model.num_thoughts, model.num_iterations
    assert (slots, iterations) == (4, 3)
    labels = model.position_labels()
    assert labels[0] == "bot" and labels[-1] == "eot"
    assert labels[1 : 1 + slots] == ["0@0", "1@0", "2@0", "3@0"]
    assert labels[-1 - slots : -1] == ["0", "1", "2", "3"]
    assert len(labels) == 2 + slots * (iterations + 1)


@pytest.mark.parametrize(
    ("site", "positions"),
    [("resid", ["bot", "0@0", "1@1", "0@2", 1, "eot"]), ("thought", ["1@1", "0@2", 2])],
)
def test_patched_rows_equal_the_hook_reference(tmp_path, model, site, positions):
    """Every (layer, slot@iteration) row of a run is what one unpadded forward with a plain
    hook at that decoder call and token gives."""
    patch = {"mode": "single", "site": site, "positions": positions}
    if site != "thought":
        patch["layers"] = [0, 1]
    results = run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch, data={"limit": 3}))
    assert_matches_reference(results, model, site, "denoise", tiny_arithmetic()[:3])


def test_a_slot_beyond_reach_of_the_answer_moves_nothing(tmp_path):
    """Slot s of iteration t reaches the answer only through s + (T - t) < N shifts: 3@2
    (one shift to slot 4, which does not exist) moves no answer logit beyond float32 noise,
    while 3 does."""
    patch = {"mode": "single", "layers": [0], "positions": ["3@2", 3]}
    results = run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch, data={"limit": 3}))
    moved: dict[str, float] = {}
    for row in results.filter(~results["control"]).iter_rows(named=True):
        position = row["positions"][0]
        moved[position] = max(moved.get(position, 0.0), abs(row["l2"]))
    assert moved["3@2"] < 1e-4 < moved["3"], moved  # float32 noise against a real move


@pytest.mark.parametrize("mode", ["mediation", "knockout"])
def test_sequential_loop_modes_are_refused_in_one_line(tmp_path, mode):
    recipe = write_recipe(tmp_path, model=FIELDS, patch={"mode": mode})
    with pytest.raises(RecipeError, match=rf"patch.mode: {mode} does not apply to .*; use one"):
        run_recipe(recipe)


@pytest.mark.parametrize("position", ["4@1", "1@3", "0@9"])
def test_a_slot_or_iteration_out_of_range_is_named(tmp_path, position):
    patch = {"mode": "single", "layers": [0], "positions": [position]}
    recipe = write_recipe(tmp_path, model=FIELDS, patch=patch)
    with pytest.raises(RecipeError, match=rf"has no position '{position}'; use thoughts 0\.\.3"):
        run_recipe(recipe)


def test_the_placeholder_pass_has_no_thought_input(tmp_path):
    patch = {"mode": "single", "site": "thought", "positions": ["1@0"]}
    with pytest.raises(RecipeError, match=r"site 'thought' has only thought positions"):
        run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pccot_args.json", None),
        ("config.json", None),
        ("adapter_config.json", "{not json"),
        ("pccot_args.json", "[1, 2]"),
        ("adapter_model.safetensors", "garbage"),
    ],
)
def test_a_broken_release_file_is_one_line_naming_it(tmp_path, name, content):
    """Each file of the release missing or unreadable: one line naming it, no run folder."""
    import shutil

    from nnpatch.errors import ModelError

    release = tmp_path / "release"
    shutil.copytree(FIELDS["checkpoint"], release)
    if content is None:
        (release / name).unlink()
    else:
        (release / name).write_text(content)
    recipe = write_recipe(tmp_path, model=FIELDS | {"checkpoint": str(release)})
    with pytest.raises((ModelError, RecipeError)) as err:
        run_recipe(recipe)
    assert name in str(err.value) and "\n" not in str(err.value)
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir())
