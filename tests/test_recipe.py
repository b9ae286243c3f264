"""Recipes: the shipped files validate; bad fields and overrides fail with one clear line."""

from __future__ import annotations

import pytest
from helpers import ROOT, write_recipe

from nnpatch.errors import RecipeError
from nnpatch.recipe import apply_override, load_recipe

RECIPES = sorted((ROOT / "recipes").glob("**/*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    """Every recipe in recipes/ loads."""
    assert load_recipe(path).name


def test_defaults_are_filled(tmp_path):
    """Unset sections get their documented defaults."""
    recipe = load_recipe(write_recipe(tmp_path))
    assert recipe.patch.site == "resid" and recipe.patch.direction == "denoise"
    assert recipe.metrics.names[:2] == ["logit_diff", "recovery"]


def test_recipe_is_frozen(tmp_path):
    """A loaded recipe cannot be changed by accident."""
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(Exception, match="frozen"):
        recipe.name = "other"


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"patch": {"mode": "single", "stie": "resid"}}, r"patch\.stie: unknown key"),
        ({"patch": {"mode": "single", "site": "residual"}}, r"patch\.site: .*'resid'"),
        ({"patch": {"mode": "diagonal"}}, r"patch\.mode: .*single"),
        ({"patch": {"mode": "single", "sets": [[0]]}}, r"patch\.sets: unknown key"),
        ({"patch": {"mode": "single", "layers": "some"}}, r"patch\.layers"),
        ({"patch": {"mode": "sets", "sets": [[]]}}, r"patch\.sets: .*at least one position"),
        ({"run": {"batch_size": 0}}, r"run\.batch_size: .*greater than or equal to 1"),
        ({"run": {"batch_size": "big"}}, r"run\.batch_size"),
        ({"data": {"limit": -1}}, r"data\.limit"),
        ({"metrics": {"names": ["recovry"]}}, r"metrics\.names: .*did you mean 'recovery'"),
    ],
)
def test_bad_fields_name_the_file_and_field(tmp_path, sections, match):
    """A wrong type, value or key is one line naming the file and the dotted field."""
    path = write_recipe(tmp_path, **sections)
    with pytest.raises(RecipeError, match=match) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_malformed_toml(tmp_path):
    """TOML syntax errors name the file."""
    path = tmp_path / "bad.toml"
    path.write_text("name = \n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad\.toml: \(toml\): malformed TOML"):
        load_recipe(path)


def test_name_cannot_escape_the_output_folder(tmp_path):
    """A recipe name like ../../etc is rejected: run folders stay under run.output."""
    with pytest.raises(RecipeError, match="name"):
        load_recipe(write_recipe(tmp_path), ["name=../../etc"])


def test_overrides_parse_toml_values():
    """--set values are TOML (numbers, lists), falling back to plain text."""
    raw: dict = {"patch": {}}
    apply_override(raw, "patch.layers=[0, 2]", "r.toml")
    apply_override(raw, "patch.direction=noise", "r.toml")
    apply_override(raw, "run.batch_size=8", "r.toml")
    assert raw == {"patch": {"layers": [0, 2], "direction": "noise"}, "run": {"batch_size": 8}}


def test_override_without_equals_is_an_error():
    """--set needs key=value."""
    with pytest.raises(RecipeError, match=r"--set: 'patch.site' has no '='"):
        apply_override({}, "patch.site", "r.toml")
