"""Known releases by hub id: `nnpatch models` lists them, and a recipe naming only an id gets
its kind, base and settings (its own fields winning), or one line saying why it cannot load."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import write_recipe

from nnpatch.cli import main
from nnpatch.errors import RecipeError
from nnpatch.models.registry import RELEASES
from nnpatch.recipe import load_recipe

LOADABLE = [r for r in RELEASES.values() if r.kind is not None]


def test_models_lists_every_release():
    """Every registered id appears once, with its family and whether it loads."""
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for release in RELEASES.values():
        (line,) = [line for line in lines if line.startswith(release.hub_id + " ")]
        assert release.family in line
        assert ("yes (kind" in line) == (release.kind is not None)


@pytest.mark.parametrize("release", LOADABLE, ids=lambda r: r.hub_id)
def test_an_id_alone_brings_the_release_settings(tmp_path, release):
    """checkpoint = "<id>" alone: the kind, base, K, prj and LoRA of the release."""
    recipe = load_recipe(write_recipe(tmp_path, model={"checkpoint": release.hub_id}))
    model = recipe.model
    assert (model.kind, model.base, model.checkpoint) == (
        release.kind,
        release.base,
        release.hub_id,
    )
    assert model.num_thoughts == release.num_thoughts
    assert (model.prj_dim, model.lora_r) == (release.prj_dim, release.lora_r)
    assert (model.eos_before_thought, model.prompt) == (release.eos_before_thought, release.prompt)


def test_the_recipe_own_fields_win(tmp_path):
    """A field the recipe sets overrides the release's (K = 3 for an ablation, say)."""
    fields = {"checkpoint": "internlm/SIM_COT-GPT2-CODI", "num_thoughts": 3, "lora_alpha": 16.0}
    model = load_recipe(write_recipe(tmp_path, model=fields)).model
    assert (model.num_thoughts, model.lora_alpha, model.base) == (3, 16.0, "gpt2")


def test_a_kind_other_than_the_release_is_refused(tmp_path):
    """kind = "coconut" for a CODI release is one line naming model, not a failed load."""
    fields = {"checkpoint": "zen-E/CODI-gpt2", "kind": "coconut"}
    with pytest.raises(RecipeError, match=r": model: zen-E/CODI-gpt2 is a 'codi' release"):
        load_recipe(write_recipe(tmp_path, model=fields))


@pytest.mark.parametrize("release", list(RELEASES.values()), ids=lambda r: r.hub_id)
def test_validate_offline_names_what_to_download(tmp_path, monkeypatch, release):
    """Offline and uncached, validate accepts every id and says what must be downloaded
    (the release or its base), never that the format is unknown."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    recipe = write_recipe(tmp_path, model={"checkpoint": release.hub_id})
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert f"ok ({release.hub_id}" in result.output
    assert "note: model not checked here" in result.output
    assert "hf download" in result.output and "unknown" not in result.output
