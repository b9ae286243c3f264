"""The docs' reference pages are the code's: the committed pages equal what
`python -m nnpatch.reference` writes, they list every recipe field and results column the
code has and none it lacks, and no page or README names a recipe field that does not exist."""

from __future__ import annotations

import re

from helpers import ROOT, write_recipe

from nnpatch.engine.metrics import DEFINITIONS
from nnpatch.engine.modes import SECTIONS
from nnpatch.recipe import (
    DataSection,
    MetricsSection,
    ModelSection,
    RunSection,
    StatsSection,
    WandbSection,
)
from nnpatch.reference import PAGES
from nnpatch.report.summary import SUMMARY_COLUMNS
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare
from nnpatch.run.tables import (
    BASELINE_COLUMNS,
    FLAG_COLUMNS,
    MODE_RESULT_COLUMNS,
    RESULT_COLUMNS,
)

REFERENCE = ROOT / "docs" / "reference"
TABLES = {
    "[model]": ModelSection,
    "[data]": DataSection,
    "[metrics]": MetricsSection,
    "[run]": RunSection,
    "[run.wandb]": WandbSection,
    "[stats]": StatsSection,
}


def keys(cls) -> set[str]:
    return {field.alias or name for name, field in cls.model_fields.items()}


def page_keys(page: str, heading: str) -> set[str]:
    """The backticked keys of the table under `heading`."""
    part = page.split(heading, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", part, re.M))


def test_committed_reference_pages_are_what_the_code_writes():
    """Run `python -m nnpatch.reference docs/reference` after changing a field or column."""
    for name, page in PAGES.items():
        assert (REFERENCE / name).read_text(encoding="utf-8") == page(), name


def test_the_recipe_page_lists_every_field_and_no_other():
    page = PAGES["recipe.md"]()
    for heading, cls in TABLES.items():
        assert page_keys(page, f"## {heading}\n") == keys(cls), heading
    for section in SECTIONS:
        mode = section.model_fields["mode"].annotation.__args__[0]
        assert page_keys(page, f'### mode = "{mode}"\n') == keys(section) - {"mode"}, mode


def test_the_columns_page_matches_a_real_run_both_ways(tmp_path):
    """A run's results, baselines and summary hold exactly the documented columns (metrics
    and per-metric baselines by their pattern)."""
    names = ["recovery", "top1_changed", "answer", "correct", "gives_corrupted"]
    recipe = write_recipe(
        tmp_path,
        model={"preset": "toy-codi"},
        data={"pairs": "toy-arithmetic", "limit": 4},
        patch={"mode": "single", "layers": [1], "positions": [1]},
        metrics={"names": names, "answer_tokens": 6},
    )
    finished = execute(prepare(recipe))
    numeric = [n for n in names if n != "answer"]
    assert finished.results.columns == [*RESULT_COLUMNS, *numeric, "answer", *FLAG_COLUMNS]
    assert set(names) <= set(DEFINITIONS)
    documented = {c for c in BASELINE_COLUMNS if "<metric>" not in c}
    per_metric = {f"{run}_{n}" for run in ("clean", "corrupted") for n in numeric}
    assert set(finished.baselines.columns) == documented | per_metric
    assert set(finished.summary.columns) == set(SUMMARY_COLUMNS)
    page = PAGES["columns.md"]()
    for column in [*RESULT_COLUMNS, *MODE_RESULT_COLUMNS, *FLAG_COLUMNS, *BASELINE_COLUMNS]:
        assert f"| `{column}` |" in page, column


FIELD = re.compile(r"`(model|data|patch|metrics|run|stats)\.([a-z_]+)(?![\w.])")
FILES = {"py", "safetensors", "json", "toml", "parquet", "md", "yaml", "ckpt", "bin"}


def test_no_page_names_a_recipe_field_the_code_lacks():
    """Every `section.field` the README or a docs page names is a field of that table (for
    [patch], of some mode's)."""
    fields = {
        "model": keys(ModelSection),
        "data": keys(DataSection),
        "metrics": keys(MetricsSection),
        "run": keys(RunSection) | {"wandb"},
        "stats": keys(StatsSection),
        "patch": set().union(*(keys(s) for s in SECTIONS)),
    }
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    wrong = [
        f"{page.relative_to(ROOT)}: {table}.{field}"
        for page in pages
        for table, field in FIELD.findall(page.read_text(encoding="utf-8"))
        if field not in fields[table] and field not in FILES
    ]
    assert not wrong, wrong
