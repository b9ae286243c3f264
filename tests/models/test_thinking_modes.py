"""`thinking`: a checkpoint trained in several modes (Dilgren & Wiegreffe's multimode,
Cywiński et al.'s) read in another. "direct": no bot, no thoughts; patching its bot (the
question's last token) and eot gives what one hooked forward per patch gives. "verbalized":
thought t is the t-th token the model wrote after bot; its rows equal the reference too."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_recipe, write_recipe
from reference import assert_matches_reference

from nnpatch.errors import RecipeError
from nnpatch.models import build_model
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import ModelSection

GOLDEN = Path(__file__).parent.parent / "golden" / "multimode_codi" / "llama"
FIELDS = {
    "kind": "codi",
    "base": str(GOLDEN / "base"),
    "checkpoint": str(GOLDEN / "checkpoint"),
    "thought_tokens": "multimode",
    "eos_before_thought": True,
    "lora_r": 8,
    "thinking": "direct",
}


def test_direct_patched_rows_equal_the_hook_reference(tmp_path):
    patch = {"mode": "single", "layers": [0, 1], "positions": ["bot", "eot"]}
    results = run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch, data={"limit": 3}))
    model = build_model(ModelSection(**FIELDS))
    assert model.num_thoughts == 0 and model.position_labels() == ["bot", "eot"]
    assert_matches_reference(results, model, "resid", "denoise", tiny_arithmetic()[:3])


def test_a_thought_position_in_direct_mode_is_refused(tmp_path):
    patch = {"mode": "single", "layers": [0], "positions": [0]}
    refused = r"patch.positions: thought position 0 is out of range: .* thinks no thoughts here"
    with pytest.raises(RecipeError, match=refused):
        run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch))


def test_verbalized_patched_rows_equal_the_hook_reference(tmp_path):
    fields = FIELDS | {"thinking": "verbalized"}
    patch = {"mode": "single", "layers": [0], "positions": ["bot", 0, 1, "eot"]}
    results = run_recipe(write_recipe(tmp_path, model=fields, patch=patch, data={"limit": 2}))
    model = build_model(ModelSection(**fields))
    # the thoughts it writes are found as a run finds them (the pairs' questions batched):
    # argmax ties in this tiny model can tip between a batched and a single float32 pass
    model.bind_pairs(tiny_arithmetic()[:2])
    assert model.shape.sites == ("resid", "attn", "mlp", "head")
    assert_matches_reference(results, model, "resid", "denoise", tiny_arithmetic()[:2])


def test_verbalized_has_no_thought_site(tmp_path):
    fields = FIELDS | {"thinking": "verbalized"}
    patch = {"mode": "single", "site": "thought", "positions": [0]}
    with pytest.raises(RecipeError, match=r"patch.site"):
        run_recipe(write_recipe(tmp_path, model=fields, patch=patch, data={"limit": 1}))
