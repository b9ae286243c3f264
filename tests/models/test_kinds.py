"""Model kinds are modules behind one protocol: each recognises its own release layout, a
folder named without a kind gets the one its files fit (or one line asking for model.kind),
and the engine, run and report never name a kind."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from helpers import write_recipe
from release_builders import write_coconut_release, write_codi_release

import nnpatch
from nnpatch.errors import RecipeError
from nnpatch.models.kinds import KINDS, recognise
from nnpatch.models.tiny import tiny_random_lm
from nnpatch.recipe import load_recipe

PACKAGE = Path(nnpatch.__file__).parent


def test_a_codi_folder_is_recognised_as_codi(tmp_path):
    _, base, checkpoint = write_codi_release(tmp_path, "gpt2", "bin")
    assert recognise(checkpoint) == ["codi"]
    assert recognise(base) == []  # a config and a tokenizer are no release
    model = load_recipe(
        write_recipe(tmp_path, model={"checkpoint": str(checkpoint), "base": str(base)})
    ).model
    assert model.kind == "codi"


def test_a_coconut_folder_is_recognised_by_its_checkpoint_file(tmp_path):
    _, _, base, path = write_coconut_release(tmp_path)
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.move(path, folder / path.name)
    assert recognise(folder) == ["coconut"]


def test_a_plain_model_folder_is_a_causal_lm(tmp_path):
    lm = tiny_random_lm("gpt2")
    lm.module.save_pretrained(tmp_path / "lm")
    assert recognise(tmp_path / "lm") == ["causal_lm"]


@pytest.mark.parametrize("content", ["", "not a checkpoint"])
def test_a_folder_no_layout_fits_asks_for_the_kind(tmp_path, content):
    """Nothing recognisable (an empty folder, a junk file): one line naming model.kind."""
    folder = tmp_path / "mystery"
    folder.mkdir()
    if content:
        (folder / "pytorch_model.bin").write_text(content)
    recipe = write_recipe(tmp_path, model={"checkpoint": str(folder)})
    with pytest.raises(RecipeError, match=r"model: .*mystery: no known layout .*set model.kind"):
        load_recipe(recipe)


def test_a_folder_two_layouts_fit_asks_for_the_kind(tmp_path):
    _, base, checkpoint = write_codi_release(tmp_path, "gpt2", "bin")
    lm = tiny_random_lm("gpt2")
    lm.module.save_pretrained(checkpoint)  # a causal LM's files beside CODI's
    recipe = write_recipe(tmp_path, model={"checkpoint": str(checkpoint), "base": str(base)})
    with pytest.raises(RecipeError, match=r"fit codi and causal_lm; set model.kind"):
        load_recipe(recipe)


def test_every_kind_declares_its_fields_and_loader():
    for name, kind in KINDS.items():
        assert kind.name == name and callable(kind.load) and kind.fields
        assert "checkpoint" in kind.fields


def _names_in_code(path: Path) -> set[str]:
    """Every identifier, attribute and string constant in a module, docstrings and comments
    left out (prose may give examples)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            names.add(str(node.value))
    return names


@pytest.mark.parametrize("part", ["engine", "run", "report"])
def test_engine_run_and_report_never_name_a_kind(part):
    """A new family is one module under models/kinds: nothing downstream branches on one."""
    for path in sorted((PACKAGE / part).rglob("*.py")):
        words = {w.lower() for name in _names_in_code(path) for w in _words(name)}
        named = words & set(KINDS)
        assert not named, f"{path.relative_to(PACKAGE)} names kind(s) {sorted(named)}"


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z_]+", text.lower())
