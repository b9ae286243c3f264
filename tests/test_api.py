"""`nnpatch.run`: the CLI's run in one call, with the CLI's tables, errors and folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import ROOT, write_recipe

import nnpatch
from nnpatch.api import recipe_path, toml_literal
from nnpatch.cli import main
from nnpatch.errors import RecipeError
from nnpatch.recipe import load_recipe


def _cli_run(recipe, *args) -> pl.DataFrame:
    result = CliRunner().invoke(main, ["run", str(recipe), *args])
    assert result.exit_code == 0, result.output
    folder = result.output.split("run folder: ")[1].split()[0]
    return pl.read_parquet(f"{folder}/results.parquet")


def test_the_call_gives_the_tables_the_command_gives(tmp_path):
    recipe = write_recipe(tmp_path, data={"limit": 3})
    run = nnpatch.run(recipe, patch__site="attn", progress=False)
    expected = _cli_run(recipe, "--set", "patch.site=attn")
    assert run.results.equals(expected)
    assert run.summary.equals(pl.read_parquet(run.path / "summary.parquet"))
    assert json.loads((run.path / "manifest.json").read_text())["overrides"] == [
        'patch.site="attn"'
    ]


def test_a_text_a_recipe_object_and_a_dict_of_overrides_run_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, data={"limit": 2})
    text = path.read_text()
    from_text = nnpatch.run(text, {"patch.layers": [0, 1]}, progress=False)
    from_object = nnpatch.run(load_recipe(path), patch__layers=[0, 1], progress=False)
    from_file = nnpatch.run(path, {"patch.layers": [0, 1]}, progress=False)
    assert from_text.results.equals(from_file.results)
    assert from_object.results.equals(from_file.results)
    kept = sorted(tmp_path.glob(".nnpatch-recipe-*.toml"))
    assert len(kept) == 2 and text in [k.read_text() for k in kept]  # a resume can find them


def test_bad_input_raises_the_clis_one_line_error(tmp_path):
    recipe = write_recipe(tmp_path)
    with pytest.raises(
        RecipeError, match=r"test.toml: patch\.site: Input should be .*got 'nowhere'"
    ):
        nnpatch.run(recipe, patch__site="nowhere", progress=False)
    with pytest.raises(TypeError, match="cannot write object"):
        nnpatch.run(recipe, patch__site=object(), progress=False)


def test_values_become_the_toml_the_command_line_parses():
    assert toml_literal([0, "eot", 1.5, True]) == '[0, "eot", 1.5, true]'
    assert toml_literal({"project": 'a "b"'}) == '{project = "a \\"b\\""}'
    assert toml_literal(float("-inf")) == "-inf"
    for text in ["plain", "emoji \U0001f600 and é", "tab\tnew\nline", "del\x7f", 'q"\\']:
        assert tomllib.loads(f"v = {toml_literal(text)}")["v"] == text


def test_a_text_too_long_for_a_file_name_is_still_a_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "x = " + "a" * 400  # one line: no file system takes it as a name
    assert recipe_path(text).read_text() == text


def test_a_run_shows_itself_in_jupyter(tmp_path):
    recipe = write_recipe(tmp_path, data={"limit": 3}, run={"report": "full"})
    run = nnpatch.run(recipe, progress=False)
    page = run._repr_html_()
    assert "Top cells by mean recovery" in page and "data:image/png;base64," in page
    assert run.charts["heatmap_recovery"].suffix == ".png"
    assert run.table("baselines").height == 3


def test_the_example_script_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "notebook.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "heatmap:" in done.stdout and (tmp_path / "out" / "position").is_dir()
