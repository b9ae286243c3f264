"""The docs show what runs: every recipe a page or the README names is a file the suite runs,
every command of the tutorial runs one of them, and every figure is a chart those runs draw
(`docs/figures.py` makes them). `mkdocs build --strict` (in .ci/run) checks the links."""

from __future__ import annotations

import importlib.util
import re

from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RECIPE = re.compile(r"recipes/[\w./-]+\.toml")
IMAGE = re.compile(r"(?:!\[[^\]]*\]\(|src=\")([^)\"]+\.png)")
COMMAND = re.compile(r"^nnpatch (run|eval|record) (recipes/\S+\.toml)", re.M)


def _figures() -> dict:
    spec = importlib.util.spec_from_file_location("figures", ROOT / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FIGURES


def test_every_recipe_a_page_names_exists():
    missing = [
        f"{page.relative_to(ROOT)}: {name}"
        for page in PAGES
        for name in RECIPE.findall(page.read_text(encoding="utf-8"))
        if not (ROOT / name).is_file()
    ]
    assert not missing, missing


def test_every_figure_is_a_chart_a_shown_recipe_draws():
    """Each image is in docs/img/, listed in docs/figures.py with the recipe that draws it,
    and that recipe is one the tutorial runs."""
    figures = _figures()
    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    shown = {name for _, name in COMMAND.findall(tutorial)}
    for page in PAGES:
        for image in IMAGE.findall(page.read_text(encoding="utf-8")):
            name = image.rsplit("/", 1)[-1]
            assert name in figures, f"{page.name}: {image} is not made by docs/figures.py"
            assert (ROOT / "docs" / "img" / name).is_file(), image
    for name, (recipe, _) in figures.items():
        assert recipe in shown, f"{name}: {recipe} is not a command of the tutorial"


def test_the_tutorials_commands_run(tmp_path):
    """Every `nnpatch run/record/eval recipes/...` of the tutorial runs (on 3 pairs; the
    suite also runs every sweep recipe in tests/run/test_batching.py)."""
    from nnpatch.evaluate import evaluate
    from nnpatch.recipe import record_override
    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare

    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    commands = COMMAND.findall(tutorial)
    assert len(commands) >= 8
    for verb, recipe in commands:
        overrides = ["data.limit=3", 'run.report="none"', f'run.output="{tmp_path}"']
        if verb == "eval":
            assert evaluate(ROOT / recipe, overrides).accuracy.height > 0
            continue
        if verb == "record":
            overrides.append(record_override(ROOT / recipe))
        finished = execute(prepare(ROOT / recipe, overrides))
        assert finished.results.height > 0, recipe
