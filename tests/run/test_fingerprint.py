"""Content hashes: stable for the same inputs, different after any change a resume must see."""

from __future__ import annotations

import torch
from helpers import write_recipe

from nnpatch.models.presets import PRESETS
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import load_recipe
from nnpatch.run.fingerprint import model_hash, pairs_hash, recipe_hash


def test_model_hash_sees_one_changed_weight():
    first, second = PRESETS["tiny-random-codi"](), PRESETS["tiny-random-codi"]()
    assert model_hash(first) == model_hash(second)
    with torch.no_grad():
        second.module.prj.ln.bias[3] += 1e-3
    assert model_hash(first) != model_hash(second)


def test_recipe_hash_ignores_the_output_folder_only(tmp_path):
    a = load_recipe(write_recipe(tmp_path))
    moved = load_recipe(write_recipe(tmp_path), ["run.output='elsewhere'"])
    changed = load_recipe(write_recipe(tmp_path), ["run.seed=1"])
    assert recipe_hash(a) == recipe_hash(moved) != recipe_hash(changed)


def test_pairs_hash_sees_order_and_text():
    pairs = tiny_arithmetic()
    assert pairs_hash(pairs) == pairs_hash(list(pairs))
    assert pairs_hash(pairs) != pairs_hash(pairs[::-1])


def test_recipes_hash_as_before_fields_were_added():
    """The starter recipe hashes as it did before model.eos_before_thought and model.prompt
    existed (value measured at 85840c4), so runs started then still resume; set, they
    change the hash."""
    from helpers import ROOT

    recipe = load_recipe(ROOT / "recipes" / "position.toml")
    assert recipe_hash(recipe) == "1c0d2def5a5de9f5"
    assert (
        recipe_hash(
            recipe.model_copy(
                update={"model": recipe.model.model_copy(update={"prompt": "answer-only"})}
            )
        )
        != "1c0d2def5a5de9f5"
    )
